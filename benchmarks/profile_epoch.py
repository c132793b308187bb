"""Where the time of a training epoch goes: torch.profiler over the real engine path (issue 20).

Builds the ``Trainer`` of a recipe exactly as ``longtail train`` does, trains ``--warmup-steps``
steps unprofiled (allocator and oneDNN primitive caches warm), then profiles

* ``--steps`` training steps (data + augmentation + forward + loss + finite checks + backward +
  optimizer: the trainer's own ``train_epoch``, cut short), and
* one evaluation pass over the test split (the per-epoch evaluation of a run with
  ``train.eval_every=1``), after an unprofiled one,

and prints two tables: time per phase (a ``record_function`` label wrapped around the loader's
``make_batch``, the model's forward, the optimizer step, the finite checks; backward is the
autograd engine's own time) and time per op (self CPU time, top ``--top``, as a share of the
profiled wall time). Nothing in the engine is changed: the phases are labelled by wrapping
methods of the built objects.

    python benchmarks/profile_epoch.py --recipe cifar5-jpeg-lt-r32/bs \
        data.root=/tmp/speed/cifar10-5class-jpeg train.threads=1 --steps 20

Overrides (``key=value``) are passed on as on the ``longtail train`` command line.
"""

from __future__ import annotations

import argparse
import collections
import functools
import json
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile, record_function

from longtail.engine.config import build_config
from longtail.engine.training.trainer import Trainer, _StopFlag

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_pipeline import cpu_model  # noqa: E402


def labelled(name, function):
    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        with record_function(name):
            return function(*args, **kwargs)
    return wrapper


def run_steps(trainer: Trainer, steps: int) -> float:
    """``steps`` steps of the trainer's own train_epoch; returns the wall time."""
    class Done(Exception):
        pass

    count = [0]
    stop_check = trainer._stop_requested

    def stop_requested(stop):
        count[0] += 1
        if count[0] >= steps:
            raise Done
        return stop_check(stop)

    trainer._stop_requested = stop_requested
    trainer.state.batch = 0
    start = time.perf_counter()
    try:
        trainer.train_epoch(_StopFlag())
    except Done:
        pass
    finally:
        trainer._stop_requested = stop_check
    return time.perf_counter() - start


PHASES = ("data: make_batch", "forward", "finite checks", "optimizer step")


def phase_table(prof, wall_s: float) -> list[tuple[str, float]]:
    """Wall time inside each labelled phase; the rest of a step is backward (autograd) + loss + loop."""
    totals = collections.Counter()
    for event in prof.events():
        if event.name in PHASES:
            totals[event.name] += event.cpu_time_total / 1e6
        elif event.name.startswith("Optimizer.step#"):
            totals["optimizer step"] += event.cpu_time_total / 1e6
    rows = [(name, totals[name]) for name in PHASES if totals[name]]
    rows.append(("rest: backward, loss, metrics, loop", wall_s - sum(totals.values())))
    return rows


def op_table(prof, wall_s: float, top: int) -> list[tuple[str, float, int]]:
    averages = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    return [(e.key, e.self_cpu_time_total / 1e6, e.count) for e in averages[:top]]


def print_tables(title: str, prof, wall_s: float, top: int, denominator: int, unit: str) -> dict:
    print(f"\n### {title}: {wall_s:.2f} s wall\n")
    print(f"| phase | ms per {unit} | share |\n|---|---:|---:|")
    phases = phase_table(prof, wall_s)
    for name, seconds in phases:
        print(f"| {name} | {1e3 * seconds / denominator:.1f} | {100 * seconds / wall_s:.1f} % |")
    print(f"\n| op (self CPU time) | ms per {unit} | share | calls per {unit} |\n|---|---:|---:|---:|")
    ops = op_table(prof, wall_s, top)
    for name, seconds, count in ops:
        print(f"| `{name}` | {1e3 * seconds / denominator:.2f} | {100 * seconds / wall_s:.1f} % | {count / denominator:.0f} |")
    return {"wall_s": wall_s, "phases": phases, "ops": ops}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--recipe", default="cifar5-jpeg-lt-r32/bs")
    parser.add_argument("--steps", type=int, default=20, help="profiled training steps")
    parser.add_argument("--warmup-steps", type=int, default=5)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--trace", type=Path, help="also write a chrome trace of the training steps")
    args, overrides = parser.parse_known_args(argv)
    output = tempfile.mkdtemp(prefix="profile-epoch-")
    config, label = build_config(args.recipe, None, [*overrides, f"train.output_dir={output}",
                                                      "train.progress=false"], None)
    start = time.perf_counter()
    trainer = Trainer(config, label)
    print(f"machine: {cpu_model()}, torch {torch.__version__}, {torch.get_num_threads()} thread(s), "
          f"precision {trainer.precision.chosen}; built in {time.perf_counter() - start:.1f} s; "
          f"{len(trainer.data.train_loader)} steps per epoch, batch {config.data.batch_size}", flush=True)

    loader = trainer.data.train_loader
    loader.make_batch = labelled("data: make_batch", loader.make_batch)
    for eval_loader in trainer.data.eval_loaders.values():
        if hasattr(eval_loader, "make_batch"):
            eval_loader.make_batch = labelled("data: make_batch", eval_loader.make_batch)
    trainer.model.forward = labelled("forward", trainer.model.forward)
    trainer._check_finite = labelled("finite checks", trainer._check_finite)

    run_steps(trainer, args.warmup_steps)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        wall = run_steps(trainer, args.steps)
    result = {"machine": cpu_model(), "torch": torch.__version__, "threads": torch.get_num_threads(),
              "precision": trainer.precision.chosen, "command": sys.argv}
    result["step"] = print_tables(f"{args.steps} training steps", prof, wall, args.top, args.steps, "step")
    if args.trace:
        prof.export_chrome_trace(str(args.trace))

    test_loader = trainer.data.eval_loaders["test"]
    images = len(test_loader.sampler) if getattr(test_loader, "sampler", None) is not None else None
    trainer.evaluate("test")  # warm-up (eval-mode primitives)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        start = time.perf_counter()
        trainer.evaluate("test")
        wall = time.perf_counter() - start
    result["eval"] = print_tables(f"evaluation of the test split ({images} images, batch "
                                  f"{config.data.eval_batch_size})", prof, wall, args.top, 1, "pass")
    steps = len(loader)
    step_s = result["step"]["wall_s"] / args.steps
    print(f"\nan epoch here: {steps} steps x {1e3 * step_s:.0f} ms = {steps * step_s:.1f} s training "
          f"+ {wall:.1f} s test evaluation ({100 * wall / (wall + steps * step_s):.0f} % of the epoch if "
          f"evaluated every epoch)")
    trainer.close()
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
