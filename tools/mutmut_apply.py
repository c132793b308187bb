#!/usr/bin/env python
"""Check that a test kills one mutmut mutant without a whole mutmut re-run: take the mutant's diff
(``mutmut show``) from a run of tools/mutmut_run.py, apply it to a scratch copy of this tree's src/,
and run the given pytest arguments against that copy. Exit 0 when the tests fail (killed), 1 when
they pass (survived), 3 when the diff no longer applies (the source changed since the run).

    python tools/mutmut_apply.py /tmp/longtail-mutmut/data \\
        'longtail.data.transforms.convert.x_convert_channels__mutmut_6' tests/test_data_edges.py -k rgba

The working tree is never modified. docs/mutation.md says which survivors were checked this way.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def mutant_diff(workdir: Path, name: str) -> tuple[str, list[str], list[str]]:
    """(file, old lines, new lines) of one mutant; mutmut shows a method's body one level dedented."""
    env = dict(os.environ, PYTHONPATH=str(workdir / "mutants" / "src"))
    shown = subprocess.run(["mutmut", "show", name], cwd=workdir, capture_output=True, text=True, env=env).stdout
    match = re.search(r"^--- (\S+)", shown, re.M)
    if match is None:
        sys.exit(f"mutmut show {name} in {workdir} gave no diff:\n{shown}")
    lines = shown.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("@@"))
    body = lines[start + 1:]
    return (match.group(1), [line[1:] for line in body if line[:1] in " -"],
            [line[1:] for line in body if line[:1] in " +"])


def main(argv: list[str]) -> int:
    if len(argv) < 3:
        sys.exit(__doc__)
    workdir, name, pytest_args = Path(argv[0]), argv[1], argv[2:]
    path, old, new = mutant_diff(workdir, name)
    with tempfile.TemporaryDirectory(prefix="mutmut-apply-") as scratch:
        shutil.copytree(ROOT / "src", Path(scratch) / "src", ignore=shutil.ignore_patterns("__pycache__"))
        target = Path(scratch) / path
        text = target.read_text()
        for indent in ("", "    "):
            before = "\n".join(indent + line if line else line for line in old)
            after = "\n".join(indent + line if line else line for line in new)
            if text.count(before) == 1:
                break
        else:
            print(f"{name}: the diff does not apply to this tree's {path}")
            return 3
        target.write_text(text.replace(before, after))
        env = dict(os.environ, PYTHONPATH=str(Path(scratch) / "src"), OMP_NUM_THREADS="1")
        result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *pytest_args],
                                cwd=ROOT, env=env, capture_output=True, text=True)
    last = (result.stdout.strip().splitlines() or ["(no output)"])[-1]
    print(f"{name}: {'killed' if result.returncode else 'SURVIVED'} ({last})")
    return 0 if result.returncode else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
