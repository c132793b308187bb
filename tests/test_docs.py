"""Every ```python block of README.md and docs/*.md runs, as written, in a fresh namespace.

Blocks are self-contained, except the names a guide says it assumes: `runs/my-run` (a run
directory made by `longtail train`) and `new-images/` (a folder of images), which the test
provides in the working directory the snippets run in.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)


def snippets():
    for document in DOCUMENTS:
        text = document.read_text()
        for match in BLOCK.finditer(text):
            line = text.count("\n", 0, match.start()) + 1
            yield pytest.param(match.group(1), id=f"{document.name}:{line}")


def test_there_are_snippets_to_run():
    assert len(list(snippets())) >= 3  # README, docs/car.md, docs/own-data.md


@pytest.mark.parametrize("code", snippets())
def test_snippet_runs(code, trained_folder_run, tmp_path, monkeypatch):
    (tmp_path / "runs").mkdir()
    shutil.copytree(trained_folder_run["run"], tmp_path / "runs" / "my-run")
    shutil.copytree(trained_folder_run["images"], tmp_path / "new-images")
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "<snippet>", "exec"), {"__name__": "__snippet__"})


def test_bare_import_exposes_the_subpackages_lazily():
    """`import longtail; longtail.losses.CCAR` works, and the bare import does not load torch."""
    code = ("import sys, longtail; assert 'torch' not in sys.modules; "
            "assert longtail.losses.CCAR and longtail.regularizers.CAR and longtail.data.make_longtail; "
            "assert callable(longtail.load_run) and 'losses' in dir(longtail); "
            "import pytest\n"
            "with pytest.raises(AttributeError): longtail.nonexistent")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


DOTTED = re.compile(r"`(longtail(?:\.[A-Za-z_][A-Za-z0-9_]*)+)")


def _resolve(dotted: str):
    """The module or attribute a dotted name names (the longest importable module, then attributes)."""
    import importlib

    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            target = importlib.import_module(".".join(parts[:cut]))
        except ModuleNotFoundError:
            continue
        for name in parts[cut:]:
            target = getattr(target, name)
        return target
    raise ModuleNotFoundError(dotted)


def test_every_name_the_docs_cite_exists():
    """Each `longtail.x.y` a document names (public imports users copy: longtail.losses.CCAR,
    longtail.data.build_dataset, longtail.load_run, ...) resolves in the installed package, so moving
    a module cannot silently break what the docs tell users to import."""
    names = {match.group(1) for document in DOCUMENTS for match in DOTTED.finditer(document.read_text())}
    assert len(names) >= 20  # the walk found the citations (a broken pattern would find none)
    missing = []
    for name in sorted(names):
        try:
            _resolve(name)
        except (ImportError, AttributeError) as error:
            missing.append(f"{name}: {error}")
    assert not missing, "names cited in the docs that do not exist:\n" + "\n".join(missing)


def test_public_imports_keep_working():
    """The imports the README and the guides show, and every name each public package exports."""
    import longtail

    for package in ("losses", "regularizers", "data", "models", "metrics"):
        module = getattr(longtail, package)
        for name in module.__all__:
            assert getattr(module, name) is not None, f"longtail.{package}.{name}"
    from longtail.data import build_dataset, make_longtail  # noqa: F401
    from longtail.engine.config import ConfigError, build_config  # noqa: F401
    assert callable(longtail.load_run)
