"""Whole training epochs, old code against new, interleaved (issue 20, item 1).

Each measurement is a fresh Python process whose ``PYTHONPATH`` points at one source tree (``--old``:
e.g. ``git archive bfd04cd src | tar -x -C /tmp/speed-base``; ``--new``: this checkout's ``src``).
The process builds the ``Trainer`` of the recipe exactly as ``longtail train`` does (each tree with
its own defaults: evaluation batch, deterministic-mode settings, folding, ...), then times
``--epochs`` full epochs, each = the trainer's own ``train_epoch`` (data, augmentation, forward,
loss, finite checks, backward, optimizer) + the per-epoch evaluation of the test split
(``Trainer.evaluate("test")``, what ``train.eval_every=1`` runs). Set-up (reading the images,
building the model) is excluded and reported apart. Old and new alternate within each round.

Two arrangements:

* ``single``: one run, ``train.threads`` as given (default 1: on a loaded machine a 2-thread run
  measures the load, not the code). Reports epoch images/s, new / old.
* ``compare``: the throughput of a 2-cell ``compare`` on 2 cores under each tree's defaults: old =
  ``--jobs 1`` (one cell at a time, torch's default of all cores as threads), new = one
  single-thread process per core. Two processes run at once for the new arrangement; images/s
  are summed.

    python benchmarks/bench_epoch_e2e.py --old /tmp/speed-base/src --new src \\
        --recipe cifar5-jpeg-lt-r32/bs data.root=/tmp/speed/cifar10-5class-jpeg --epochs 2 --rounds 2

Prints one JSON line per measurement and a summary (median ratio); ``--json`` writes them all.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

CHILD = r"""
import json, sys, tempfile, time
from longtail.engine.config import build_config
from longtail.engine.training.trainer import Trainer, _StopFlag
recipe, epochs, overrides = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
started = time.perf_counter()
with tempfile.TemporaryDirectory() as out:
    config, label = build_config(recipe=recipe, overrides=overrides + [f"train.output_dir={out}",
                                 "train.progress=false", f"optim.epochs={epochs}"])
    trainer = Trainer(config, label)
    setup = time.perf_counter() - started
    images, seconds = 0, []
    with _StopFlag() as stop:
        for epoch in range(epochs):
            begin = time.perf_counter()
            record = trainer.train_epoch(stop)
            trainer.evaluate("test")
            seconds.append(time.perf_counter() - begin)
            images += round(record["images_per_s"] * record["seconds"])
            trainer.state.epoch += 1
            trainer.state.batch = 0
    trainer.close()
print("RESULT " + json.dumps({"setup_s": setup, "epoch_s": seconds, "train_images": images,
                              "images_per_s": images / sum(seconds)}))
"""


def run_children(source: str, recipe: str, epochs: int, overrides: list, threads: list) -> dict:
    """One child per entry of ``threads``, all at once; their results and the summed images/s."""
    processes = []
    for count in threads:
        env = {**os.environ, "PYTHONPATH": str(Path(source).resolve())}
        extra = [] if count is None else [f"train.threads={count}"]
        if count is not None:
            env["OMP_NUM_THREADS"] = str(count)
        processes.append(subprocess.Popen([sys.executable, "-c", CHILD, recipe, str(epochs), *overrides, *extra],
                                          env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    results = []
    for process in processes:
        out, err = process.communicate()
        lines = [line for line in out.splitlines() if line.startswith("RESULT ")]
        if process.returncode != 0 or not lines:
            raise SystemExit(f"child failed ({source}):\n{err[-3000:]}")
        results.append(json.loads(lines[-1][len("RESULT "):]))
    return {"children": results, "images_per_s": sum(r["images_per_s"] for r in results)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--old", required=True, help="src folder of the old code")
    parser.add_argument("--new", required=True, help="src folder of the new code")
    parser.add_argument("--recipe", default="cifar5-jpeg-lt-r32/bs")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1, help="train.threads of the single-run arrangement")
    parser.add_argument("--arrangements", default="single,compare")
    parser.add_argument("--json", default=None)
    parser.add_argument("overrides", nargs="*", help="key=value, as on the longtail train command line")
    args = parser.parse_args()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    plans = {
        "single": {"old": [args.threads], "new": [args.threads]},
        # old default: compare --jobs 1, train.threads unset (torch: all cores); new: one 1-thread cell per core
        "compare": {"old": [None], "new": [1] * cores},
    }
    arrangements = args.arrangements.split(",")
    rows = []
    for round_index in range(args.rounds):
        for arrangement in arrangements:
            order = ("old", "new") if round_index % 2 == 0 else ("new", "old")  # alternate who goes first
            for which in order:
                source = args.old if which == "old" else args.new
                load = os.getloadavg()[0]
                result = run_children(source, args.recipe, args.epochs, args.overrides, plans[arrangement][which])
                row = {"round": round_index, "arrangement": arrangement, "code": which, "load_1min": load,
                       "processes": len(plans[arrangement][which]), **result}
                rows.append(row)
                print(json.dumps(row), flush=True)
    summary = {}
    for arrangement in arrangements:
        ratios = []
        for round_index in range(args.rounds):
            pick = {r["code"]: r["images_per_s"] for r in rows
                    if r["round"] == round_index and r["arrangement"] == arrangement}
            ratios.append(pick["new"] / pick["old"])
        summary[arrangement] = {"ratios": ratios, "median": statistics.median(ratios)}
    print("SUMMARY " + json.dumps(summary), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "summary": summary, "argv": sys.argv,
                                               "time": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())},
                                              indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
