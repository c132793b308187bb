#!/usr/bin/env python
"""Run mutmut (https://pypi.org/project/mutmut/, the ``mutation`` extra) over packages of
src/longtail and summarise the score per package. Not part of CI: see docs/mutation.md for the
measured time (hours for the whole library on two cores).

For each package a scratch copy of the repository (src/, tests/, pyproject.toml, README/docs) is made
under ``--workdir``; its pyproject.toml gets a ``[tool.mutmut]`` section that mutates only that
package and selects the tests mapped to it (``TESTS`` below). mutmut then runs there: it copies the
source to ``mutants/``, records which tests reach which function, and runs, per mutant, only those
tests (forked from a warm interpreter). The working tree is never modified. PYTHONPATH points at the
mutated copy so that tests which start subprocesses (the CLI) import the mutants too.

    python tools/mutmut_run.py losses regularizers metrics          # run, then summarise
    python tools/mutmut_run.py data --max-children 1 --output mutmut-data.json
    python tools/mutmut_run.py losses --sample 150 --seed 0          # a fixed-seed sample of mutants
    python tools/mutmut_run.py losses --summary-only                 # re-read a finished run
    cd <workdir>/losses && mutmut show <mutant name>                 # the diff of one survivor

A survivor is then judged by hand (docs/mutation.md): a test added, or equivalent and why.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# The tests that can catch a change in each package. mutmut narrows them further per function
# (only the tests that call the mutated function run against its mutants). The slow end-to-end files
# (test_resume.py, test_torchrun*.py, test_gpu_suite.py) are left out; a mutant only they would catch
# counts as a survivor, so the scores are lower bounds. test_engine_options.py (which also reaches the
# losses through training runs) is mapped to the engine only: with it every loss mutant would train.
# mutmut runs against a mutant only the tests it saw reach the mutated function in its own process:
# a function reached only in subprocesses (the two-process gloo tests, CLI subprocesses) is not
# tested by those, so what only they would catch also counts as a survivor.
TESTS = {
    "losses": ["test_losses.py", "test_losses_pinned.py", "test_ccar.py", "test_contrastive.py", "test_loss_options.py"],
    "regularizers": ["test_car.py", "test_bounds.py", "test_regularizer_edges.py"],
    "metrics": ["test_metrics.py", "test_metrics_edges.py", "test_bounds.py", "test_metrics_outputs.py"],
    "data": ["test_samplers.py", "test_mixing.py", "test_loader.py", "test_transforms.py", "test_data_cifar.py",
             "test_data_idx.py", "test_data_listfile.py", "test_data_longtail.py", "test_data_builtin.py",
             "test_concutmix_data.py", "test_preprocess.py", "test_image_files.py", "test_device_decode.py",
             "test_augment_distributed.py", "test_wiring_data.py", "test_wiring_concutmix.py", "test_class_names.py",
             "test_data_groups.py", "test_data_longtail_order.py", "test_data_fuzz.py", "test_feature_cache.py",
             "test_data_setup_groups.py", "test_safe_loading.py", "test_data_edges.py"],
    "engine": ["test_engine_options.py", "test_engine_config.py", "test_protocols.py", "test_selection.py",
               "test_posthoc.py", "test_inference.py", "test_compare.py", "test_compare_aggregation.py",
               "test_decoupled.py", "test_checkpoint.py", "test_interrupts.py", "test_concutmix_engine.py",
               "test_methods.py", "test_wiring_schedules.py", "test_wiring_concutmix.py",
               "test_wiring_predict.py", "test_config_properties.py", "test_recipe_references.py",
               "test_refusals.py", "test_input_refusals.py", "test_inference_refusals.py", "test_precision.py",
               "test_compare_headline.py", "test_data_setup_groups.py", "test_finetune_engine.py",
               "test_class_names_runs.py", "test_priors_cli.py", "test_engine_edges.py", "test_image_files.py",
               "test_compile.py"],
}


# Copied into the scratch src/ (so into mutants/src, on PYTHONPATH): while mutmut records which tests
# reach which function (MUTANT_UNDER_TEST=stats), a subprocess a test starts (a compare cell, the CLI,
# a torchrun worker) runs in another directory, where mutmut cannot find its configuration and the
# first mutated function it calls raises. Its hits could not be recorded anyway, so it runs unmutated.
# With a mutant active, subprocesses inherit it and run it like the test process does.
SITECUSTOMIZE = (
    "import os\n"
    "if os.environ.get('MUTANT_UNDER_TEST') == 'stats':  # see tools/mutmut_run.py\n"
    "    os.environ['MUTANT_UNDER_TEST'] = ''\n"
)


def prepare(package: str, workdir: Path) -> Path:
    """A scratch copy of the repository whose pyproject.toml configures mutmut for ``package``."""
    target = workdir / package
    if target.exists():
        shutil.rmtree(target)
    target.mkdir(parents=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", ".pytest_cache")
    for name in ("src", "tests"):
        shutil.copytree(ROOT / name, target / name, ignore=ignore)
    for name in ("README.md", "docs"):
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, target / name, ignore=ignore)
        elif (ROOT / name).exists():
            shutil.copy2(ROOT / name, target / name)
    tests = [f"tests/{name}" for name in TESTS[package] if (ROOT / "tests" / name).exists()]
    config = (ROOT / "pyproject.toml").read_text()
    config = re.sub(r"\n\[tool\.mutmut\][^\[]*", "\n", config)  # the copy gets its own section
    config += (
        "\n[tool.mutmut]\n"
        'source_paths = ["src"]\n'
        f'only_mutate = ["src/longtail/{package}/*"]\n'
        f"pytest_add_cli_args_test_selection = {json.dumps(tests)}\n"
        'pytest_add_cli_args = ["-p", "no:cacheprovider", "-q"]\n'
        # mutmut runs the tests from its copy mutants/tests: the files they read next to the tests
        # (docs/protocols.md, README.md) must be copied there too.
        'also_copy = ["docs", "README.md"]\n'
        "use_git_change_detection = false\n"
    )
    (target / "pyproject.toml").write_text(config)
    (target / "src" / "sitecustomize.py").write_text(SITECUSTOMIZE)
    # PYTHONPATH names mutants/src; it must exist when mutmut starts, or Python caches "no such
    # path entry" and the tests silently import the unmutated editable install instead.
    (target / "mutants" / "src").mkdir(parents=True)
    return target


def summarise(package: str, target: Path) -> dict:
    """Counts per status from ``mutmut results --all true`` (one ``name: status`` per line); mutants
    not run (outside a --sample) are "not checked" and left out of the score."""
    out = subprocess.run(["mutmut", "results", "--all", "true"], cwd=target, capture_output=True, text=True,
                         env=_env(target))
    statuses: dict[str, list[str]] = {}
    for line in out.stdout.splitlines():
        if ":" not in line:
            continue
        name, status = (part.strip() for part in line.rsplit(":", 1))
        statuses.setdefault(status, []).append(name)
    counts = {status: len(names) for status, names in statuses.items()}
    diffs = {name: changed_lines(target, name) for name in statuses.get("survived", [])}
    killed = counts.get("killed", 0) + counts.get("timeout", 0)
    judged = sum(counts.values()) - counts.get("skipped", 0) - counts.get("not checked", 0)
    return {"package": package, "counts": counts, "killed_or_timeout": killed, "run": judged,
            "score": round(killed / judged, 4) if judged else None,
            "survived": {name: diffs[name] for name in sorted(diffs)}, "no_tests": sorted(statuses.get("no tests", []))}


def changed_lines(target: Path, name: str) -> list[str]:
    """The -/+ lines of one mutant (``mutmut show``), for judging a survivor."""
    out = subprocess.run(["mutmut", "show", name], cwd=target, capture_output=True, text=True, env=_env(target))
    return [line for line in out.stdout.splitlines()
            if line[:1] in "-+" and not line.startswith(("---", "+++"))]


def mutant_names(target: Path) -> list[str]:
    """Every mutant mutmut generated in ``target`` (from its .meta files), in a stable order."""
    names = []
    for meta in sorted((target / "mutants").rglob("*.py.meta")):
        names += json.loads(meta.read_text())["exit_code_by_key"]
    return sorted(names)


def generate_only(target: Path) -> None:
    """Let mutmut generate the mutants and record which tests reach which function, running none:
    a name that matches no mutant stops it right after (it refuses an empty selection)."""
    subprocess.run(["mutmut", "run", "--max-children", "1", "longtail.__no_such_mutant__"], cwd=target,
                   env=_env(target), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _env(target: Path) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(target / "mutants" / "src")
    env.setdefault("OMP_NUM_THREADS", "1")
    # The tests find the shared data sets relative to their own path, which the mutants/ copy moves.
    shared = ROOT.parent / "shared" / "data"
    if shared.is_dir():
        env.setdefault("LONGTAIL_SHARED_DATA", str(shared))
    return env


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("packages", nargs="+", choices=sorted(TESTS))
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/longtail-mutmut"))
    parser.add_argument("--max-children", type=int, default=1, help="parallel mutants (default 1: shared machine)")
    parser.add_argument("--sample", type=int, help="run a fixed-seed sample of this many mutants per package")
    parser.add_argument("--seed", type=int, default=0, help="seed of --sample")
    parser.add_argument("--names", type=Path, help="run only the mutants named in this file (one a line), e.g. "
                                                   "an earlier run's survivors after tests were added")
    parser.add_argument("--summary-only", action="store_true", help="summarise an earlier run in --workdir")
    parser.add_argument("--output", type=Path, help="write the per-package summaries as JSON")
    args = parser.parse_args(argv)
    if shutil.which("mutmut") is None:
        parser.error("mutmut is not installed: pip install -e '.[mutation]'")
    summaries = []
    for package in args.packages:
        target = args.workdir / package
        if not args.summary_only:
            target = prepare(package, args.workdir)
            start = time.monotonic()
            chosen = []
            if args.names:
                chosen = [n.strip() for n in args.names.read_text().splitlines() if n.strip().startswith("longtail.")]
            elif args.sample:
                generate_only(target)
                names = mutant_names(target)
                chosen = sorted(random.Random(args.seed).sample(names, min(args.sample, len(names))))
                print(f"{package}: {len(chosen)} of {len(names)} mutants sampled (seed {args.seed})", flush=True)
            subprocess.run(["mutmut", "run", "--max-children", str(args.max_children), *chosen], cwd=target,
                           env=_env(target))
            print(f"{package}: mutmut run took {time.monotonic() - start:.0f} s", flush=True)
        summary = summarise(package, target)
        summaries.append(summary)
        print(f"{package}: {summary['counts']} score {summary['score']}", flush=True)
        for name, lines in summary["survived"].items():
            print(f"  survived: {name}: {' / '.join(line.strip() for line in lines)}")
    if args.output:
        args.output.write_text(json.dumps(summaries, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
