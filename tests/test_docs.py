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
