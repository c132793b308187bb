"""Candidates for a faster CPU epoch of the CIFAR-size recipes (issue 20), as ratios to today's step.

Every variant trains its own ResNet-32 (same initial weights) on batches from the real
``InMemoryLoader`` (CIFAR-shaped uint8 images, crop pad 4 + flip, the loader the engine builds)
and reproduces one trainer step as ``engine/trainer.py`` does it today unless the variant
changes it: channels_last, forward under the run's autocast, float32 logits, the two finite
checks (a ``_foreach_norm`` over every parameter plus one ``.item()`` each), a Balanced Softmax
loss, backward, SGD with momentum 0.9 / weight decay 5e-4, ``zero_grad(set_to_none=True)``, the
float64 running loss sums, and ``torch.use_deterministic_algorithms(True)`` (the default
``train.deterministic=true``). The variants take turns step by step for ``--rounds`` rounds
(after a warm-up round), so the shared machine's load hits them alike; medians and minima.

Sections (``--sections``):

* ``step``: the training step candidates (``--variants``; see ``STEP_VARIANTS``).
* ``eval``: one pass over ``--eval-images`` test-shaped images, today's batch 500 against other
  batch sizes (``--eval-batches``), batch norm folded into the convolutions
  (:func:`longtail.models.fold.fold_batchnorm`), and the deterministic fill off.
* ``compile-cache``: the first compiled step of a fresh process with an empty inductor cache
  (cold) and again with the cache that run left (warm); each in its own subprocess.
* ``threads``: total images/s of 1 process x 2 threads against 2 processes x 1 thread (and 1 x 1),
  each configuration a set of subprocesses running the step for ``--seconds``.

    python benchmarks/bench_speed.py --sections step eval --rounds 5 --json out.json
    python benchmarks/bench_speed.py --sections compile-cache threads
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from longtail.data.loading.loader import InMemoryLoader
from longtail.data.sampling.samplers import build_sampler
from longtail.models import create_model
from longtail.models.fold import fold_batchnorm

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_pipeline import cpu_model  # noqa: E402

# The cifar5-jpeg-lt-r32 training split (IF 100) and its balanced test split.
CLASS_COUNTS = (5000, 1581, 500, 158, 50)
TEST_IMAGES = 5000


@dataclass(frozen=True)
class StepOptions:
    """One way of running the trainer's step; the defaults are today's engine."""
    precision: str = "bf16"          # autocast dtype of the forward (train.precision=auto -> bf16 here)
    channels_last: bool = True       # model.channels_last
    deterministic_fill: bool = True  # torch.utils.deterministic.fill_uninitialized_memory under deterministic mode
    sync_checks: bool = True         # the finite checks read a value every step (.item()); else once per epoch
    optimizer: str = "foreach"       # foreach (torch's default) | fused | for-loop
    compiled: bool = False           # torch.compile(model), default mode


STEP_VARIANTS = {
    "today": StepOptions(),
    "fp32": StepOptions(precision="fp32"),
    "nchw": StepOptions(channels_last=False),
    "no-fill": StepOptions(deterministic_fill=False),
    "no-sync": StepOptions(sync_checks=False),
    "fused-sgd": StepOptions(optimizer="fused"),
    "eager-all": StepOptions(deterministic_fill=False, sync_checks=False, optimizer="fused"),
    "compiled": StepOptions(compiled=True),
    "compiled-all": StepOptions(compiled=True, deterministic_fill=False, sync_checks=False, optimizer="fused"),
}


def set_determinism(fill: bool) -> None:
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.utils.deterministic.fill_uninitialized_memory = fill


def make_images(count: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    labels = torch.repeat_interleave(torch.arange(len(CLASS_COUNTS)), torch.tensor(CLASS_COUNTS))[:count]
    images = torch.randint(0, 256, (len(labels), 3, 32, 32), generator=generator, dtype=torch.uint8)
    return images, labels


def train_loader(channels_last: bool, batch: int = 128) -> InMemoryLoader:
    images, labels = make_images(sum(CLASS_COUNTS), seed=0)
    return InMemoryLoader(images, batch, build_sampler("instance", labels, seed=0), augment=True, labels=labels,
                          channels_last=channels_last, drop_last=True, mean=(0.5,) * 3, std=(0.25,) * 3)


class Step:
    """A model, optimizer and loader; ``run()`` is one trainer step (data included)."""

    def __init__(self, name: str, options: StepOptions):
        self.name, self.options = name, options
        torch.manual_seed(0)
        model = create_model(name="resnet32", num_classes=len(CLASS_COUNTS), in_channels=3)
        self.model = model.to(memory_format=torch.channels_last) if options.channels_last else model
        self.forward = torch.compile(self.model) if options.compiled else self.model
        kwargs = {"fused": True} if options.optimizer == "fused" else {"foreach": options.optimizer == "foreach"}
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4, **kwargs)
        self.loader = train_loader(options.channels_last)
        self.log_prior = torch.tensor(CLASS_COUNTS, dtype=torch.float32).log()
        self.batch_index, self.epoch = 0, 0
        self.loader.set_epoch(0)
        self.indices = self.loader._epoch_indices()
        self.bad = torch.zeros((), dtype=torch.bool)
        self.total = torch.zeros((), dtype=torch.float64)
        self.times: list[float] = []

    def check_finite(self, values: list[torch.Tensor]) -> None:
        stacked = torch.stack([v.detach().float() for v in values])
        bad = (~torch.isfinite(stacked)).any()
        if self.options.sync_checks:
            if bad.item():
                raise FloatingPointError(f"{self.name}: non-finite values")
        else:
            self.bad |= bad  # read once per epoch

    def next_batch(self):
        if self.batch_index == len(self.loader):
            if self.bad.item():  # the epoch-end read of the deferred checks
                raise FloatingPointError(f"{self.name}: non-finite values")
            self.epoch += 1
            self.loader.set_epoch(self.epoch)
            self.indices, self.batch_index = self.loader._epoch_indices(), 0
        batch = self.loader.batch_size
        chosen = self.indices[self.batch_index * batch:(self.batch_index + 1) * batch]
        self.batch_index += 1
        return self.loader.make_batch(chosen, self.batch_index - 1)

    def run(self) -> float:
        set_determinism(self.options.deterministic_fill)
        start = time.perf_counter()
        images, targets = self.next_batch()
        for group in self.optimizer.param_groups:
            group["lr"] = 0.1
        if self.options.precision == "fp32":
            logits = self.forward(images)
        else:
            with torch.autocast("cpu", dtype=torch.bfloat16):
                logits = self.forward(images)
        logits = logits.float()
        parameters = [p.detach() for p in self.model.parameters()]
        self.check_finite([logits.detach().sum(), torch.stack(torch._foreach_norm(parameters)).sum()])
        loss = F.cross_entropy(logits + self.log_prior, targets)  # Balanced Softmax
        self.check_finite([loss])
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.total += loss.detach() * targets.shape[0]
        return time.perf_counter() - start


def summarise(times: list[float]) -> dict:
    return {"median_ms": 1e3 * statistics.median(times), "min_ms": 1e3 * min(times), "n": len(times)}


def interleave(variants: dict, rounds: int, per_round: int, label: str) -> dict:
    """Every variant ``per_round`` calls per round, round 0 a warm-up; returns name -> times."""
    times = {name: [] for name in variants}
    for round_index in range(rounds + 1):
        for name, call in variants.items():
            for _ in range(per_round):
                elapsed = call()
                if round_index:
                    times[name].append(elapsed)
        print(f"{label}: round {round_index}/{rounds} done", flush=True)
    return times


def print_ratios(title: str, times: dict, reference: str, unit: str, count: int) -> list[dict]:
    ref = statistics.median(times[reference])
    ref_min = min(times[reference])
    print(f"\n{title}\n\n| variant | median ms | min ms | images/s (median) | speed-up vs {reference} "
          f"(median / min) |\n|---|---:|---:|---:|---:|")
    rows = []
    for name, values in times.items():
        row = {"variant": name, **summarise(values), "images_per_s": count / statistics.median(values),
               "speedup_median": ref / statistics.median(values), "speedup_min": ref_min / min(values)}
        rows.append(row)
        print(f"| {name} | {row['median_ms']:.1f} | {row['min_ms']:.1f} | {row['images_per_s']:.0f} | "
              f"{row['speedup_median']:.2f}x / {row['speedup_min']:.2f}x |")
    return rows


def step_section(args) -> dict:
    steps = {}
    for name in args.variants:
        start = time.perf_counter()
        step = Step(name, STEP_VARIANTS[name])
        first = step.run()  # compilation (if any), primitive caches
        steps[name] = step
        print(f"{name}: {STEP_VARIANTS[name]}; first step {first:.1f} s (built + run in "
              f"{time.perf_counter() - start:.1f} s)", flush=True)
    times = interleave({name: step.run for name, step in steps.items()}, args.rounds, args.steps, "step")
    return {"rows": print_ratios(f"Training step, batch 128, ResNet-32 32 px, {args.rounds} rounds x {args.steps} "
                                 f"steps per variant", times, "today", "step", 128)}


def eval_section(args) -> dict:
    torch.manual_seed(0)
    model = create_model(name="resnet32", num_classes=len(CLASS_COUNTS), in_channels=3)
    model = model.to(memory_format=torch.channels_last).eval()
    with torch.no_grad():  # non-trivial running statistics, so folding has something to fold
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)
    folded, described = fold_batchnorm(model)
    folded = folded.to(memory_format=torch.channels_last)
    print(f"fold_batchnorm: {described}", flush=True)
    images, labels = make_images(args.eval_images, seed=1)

    def evaluation(net, batch: int, fill: bool):
        loader = InMemoryLoader(images, batch, labels=labels, channels_last=True, mean=(0.5,) * 3, std=(0.25,) * 3)

        def run() -> float:
            set_determinism(fill)
            start = time.perf_counter()
            with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
                correct = sum(int((net(x).float().argmax(1) == y).sum()) for x, y in loader)
            assert 0 <= correct <= len(labels)
            return time.perf_counter() - start
        return run

    variants = {"today (batch 500)": evaluation(model, 500, True), "no-fill": evaluation(model, 500, False)}
    for batch in args.eval_batches:
        variants[f"no-fill, batch {batch}"] = evaluation(model, batch, False)
    for batch in [500, *args.eval_batches]:
        variants[f"no-fill, BN folded, batch {batch}"] = evaluation(folded, batch, False)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        x = next(iter(InMemoryLoader(images[:256], 256, labels=labels[:256], channels_last=True,
                                     mean=(0.5,) * 3, std=(0.25,) * 3)))[0]
        difference = (model(x).float() - folded(x).float()).abs().max().item()
        scale = model(x).float().abs().max().item()
    print(f"folded vs unfolded logits under bf16: max |difference| {difference:.3g} (max |logit| {scale:.3g})")
    times = interleave(variants, args.rounds, 1, "eval")
    return {"folded_max_abs_difference": difference, "rows": print_ratios(
        f"Evaluation pass over {args.eval_images} images (bf16 autocast, channels_last, no_grad)",
        times, "today (batch 500)", "pass", args.eval_images)}


def worker(args) -> None:
    """Subprocess body: run one variant's step for --seconds (or --steps) and print JSON."""
    torch.set_num_threads(args.threads)
    step = Step(args.worker, STEP_VARIANTS[args.worker])
    first = step.run()
    count, start = 0, time.perf_counter()
    deadline = start + args.seconds
    while (count < args.steps) if args.seconds <= 0 else (time.perf_counter() < deadline):
        step.run()
        count += 1
    elapsed = time.perf_counter() - start
    print(json.dumps({"first_step_s": first, "steps": count, "seconds": elapsed, "images_per_s": 128 * count / elapsed}))


def spawn(variant: str, threads: int, seconds: float, steps: int = 0, env: dict | None = None) -> subprocess.Popen:
    command = [sys.executable, __file__, "--worker", variant, "--threads", str(threads), "--seconds", str(seconds),
               "--steps", str(steps)]
    return subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env={**os.environ, **(env or {})})


def collect(process: subprocess.Popen) -> dict:
    out, _ = process.communicate()
    if process.returncode:
        raise RuntimeError(f"worker failed ({process.returncode})")
    return json.loads(out.strip().splitlines()[-1])


def compile_cache_section(args) -> dict:
    results = {}
    with tempfile.TemporaryDirectory(prefix="inductor-cache-") as cache:
        env = {"TORCHINDUCTOR_CACHE_DIR": cache}
        for label in ("cold cache", "warm cache"):
            result = collect(spawn("compiled", 1, 0, steps=2, env=env))
            results[label] = result["first_step_s"]
            print(f"compiled ResNet-32 step, {label}: first step {result['first_step_s']:.1f} s", flush=True)
    return results


def threads_section(args) -> dict:
    configurations = {"1 process x 2 threads": [2], "2 processes x 1 thread": [1, 1], "1 process x 1 thread": [1]}
    rates = {name: [] for name in configurations}
    for round_index in range(args.rounds):
        for name, threads in configurations.items():
            processes = [spawn(args.thread_variant, t, args.seconds) for t in threads]
            total = sum(collect(p)["images_per_s"] for p in processes)
            rates[name].append(total)
            print(f"threads round {round_index + 1}: {name}: {total:.0f} images/s in total", flush=True)
    print(f"\nTotal training images/s ({args.thread_variant} step), {args.rounds} rounds of {args.seconds:.0f} s\n\n"
          f"| configuration | median images/s | min | max |\n|---|---:|---:|---:|")
    for name, values in rates.items():
        print(f"| {name} | {statistics.median(values):.0f} | {min(values):.0f} | {max(values):.0f} |")
    return rates


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sections", nargs="+", default=["step", "eval"],
                        choices=["step", "eval", "compile-cache", "threads"])
    parser.add_argument("--variants", nargs="+", default=list(STEP_VARIANTS), choices=list(STEP_VARIANTS))
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=3, help="steps per variant per round")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--eval-images", type=int, default=TEST_IMAGES)
    parser.add_argument("--eval-batches", type=int, nargs="+", default=[128, 256, 1000],
                        help="evaluation batch sizes to compare with today's 500")
    parser.add_argument("--seconds", type=float, default=60, help="per configuration and round (threads)")
    parser.add_argument("--thread-variant", default="today", choices=list(STEP_VARIANTS))
    parser.add_argument("--worker", choices=list(STEP_VARIANTS), help=argparse.SUPPRESS)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    if args.worker:
        return worker(args)
    torch.set_num_threads(args.threads)
    print(f"machine: {cpu_model()}, {os.cpu_count()} logical CPUs, torch {torch.__version__}, "
          f"{args.threads} torch thread(s); load average {os.getloadavg()[0]:.1f}", flush=True)
    result = {"machine": cpu_model(), "torch": torch.__version__, "threads": args.threads, "command": sys.argv}
    sections = {"step": step_section, "eval": eval_section, "compile-cache": compile_cache_section,
                "threads": threads_section}
    for name in args.sections:
        result[name] = sections[name](args)
        if args.json:
            args.json.write_text(json.dumps(result, indent=2))
    print(f"load average at the end {os.getloadavg()[0]:.1f}")
    return result


if __name__ == "__main__":
    main()
