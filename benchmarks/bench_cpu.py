"""CPU training against the machine's limit: step time fp32 vs train.precision=auto, FLOP/s
achieved against the measured matmul peak, and torch.compile on the CPU.

    python benchmarks/bench_cpu.py [--rounds 5] [--steps 3] [--threads 1] [--no-compile] [--json out.json]

What is measured, all in one process:
- **peak**: the best of ``--peak-repeats`` square matmuls (n in ``--matmul-sizes``) in fp32 and in
  bf16 (the rate a CPU's fp32 FMA units / bf16 units (AVX512-BF16, AMX) reach on the easiest
  kernel there is), 2 n^3 FLOP each;
- **steps**: a training step exactly as the trainer does it (channels_last, forward under
  ``autocast_context(precision)``, cross-entropy on float32 logits, backward, SGD with momentum)
  for ResNet-32 (CIFAR, 3x32x32, 100 classes) and the default recipe's small CNN (1x28x28, 10
  classes), batch 128, in fp32 and ``auto`` (what ``auto`` resolves to on this CPU is printed),
  eager and, unless ``--no-compile``, ``torch.compile``d (compile time = first step minus a
  steady step, reported separately). The variants take turns, ``--steps`` steps each per round,
  for ``--rounds`` rounds after one warm-up round; medians are reported, because the machine
  may be shared;
- **FLOP/s**: one step's floating-point operations counted with
  ``torch.utils.flop_counter.FlopCounterMode`` (convolutions and matmuls, forward + backward:
  what the peak measures too), divided by the median step time.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from longtail.engine.runtime.precision import autocast_context, resolve_precision
from longtail.models import create_model

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_pipeline import cpu_model  # noqa: E402  (one place for the machine's name)

MODELS = {  # name -> (create_model kwargs, input shape (C, H, W))
    "resnet32": (dict(name="resnet32", num_classes=100, in_channels=3), (3, 32, 32)),
    "small_cnn": (dict(name="small_cnn", num_classes=10, in_channels=1), (1, 28, 28)),
}


def matmul_peak(dtype: torch.dtype, size: int, repeats: int) -> float:
    """Best FLOP/s of a (size x size) @ (size x size) product in ``dtype`` (random data, not zeros)."""
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(size, size, generator=generator).to(dtype)
    b = torch.randn(size, size, generator=generator).to(dtype)
    torch.mm(a, b)  # warm-up: kernel selection, packing buffers
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - start)
    return 2 * size ** 3 / best


class Step:
    """One model + optimizer + batch; ``__call__`` runs one training step as the trainer does."""

    def __init__(self, model_name: str, precision: str, compiled: bool, batch: int):
        kwargs, shape = MODELS[model_name]
        torch.manual_seed(0)
        self.model = create_model(**kwargs).to(memory_format=torch.channels_last)
        self.forward = torch.compile(self.model) if compiled else self.model
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
        generator = torch.Generator().manual_seed(1)
        self.images = torch.randn(batch, *shape, generator=generator).contiguous(memory_format=torch.channels_last)
        self.labels = torch.randint(0, kwargs["num_classes"], (batch,), generator=generator)
        self.precision = precision
        self.device = torch.device("cpu")
        self.times: list[float] = []
        self.first_step_s = None

    def run(self) -> float:
        start = time.perf_counter()
        with autocast_context(self.device, self.precision):
            logits = self.forward(self.images)
        loss = F.cross_entropy(logits.float(), self.labels)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return time.perf_counter() - start


def step_flops(model_name: str, batch: int) -> int:
    """Forward + backward FLOP of one step (counted in fp32; the count does not depend on dtype)."""
    from torch.utils.flop_counter import FlopCounterMode

    kwargs, shape = MODELS[model_name]
    model = create_model(**kwargs)
    images = torch.randn(batch, *shape)
    labels = torch.randint(0, kwargs["num_classes"], (batch,))
    counter = FlopCounterMode(display=False)
    with counter:
        F.cross_entropy(model(images), labels).backward()
    return counter.get_total_flops()


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=3, help="steps per variant per round")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--no-compile", action="store_true")
    parser.add_argument("--matmul-sizes", type=int, nargs="+", default=[512, 1024, 2048],
                        help="the peak is the best over these square sizes (large ones fall out of cache)")
    parser.add_argument("--peak-repeats", type=int, default=5)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    auto = resolve_precision("auto", torch.device("cpu"))
    print(f"machine: {cpu_model()}, {os.cpu_count()} logical CPUs, torch {torch.__version__}, "
          f"{args.threads} torch thread(s); auto -> {auto.chosen} ({auto.reason})", flush=True)

    peaks = {}
    for _ in range(2):  # interleaved, best of both passes
        for size in args.matmul_sizes:
            for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
                peaks[name] = max(peaks.get(name, 0.0), matmul_peak(dtype, size, args.peak_repeats))
    print(f"matmul peak (best of sizes {args.matmul_sizes}): fp32 {peaks['fp32'] / 1e9:.1f} GFLOP/s, "
          f"bf16 {peaks['bf16'] / 1e9:.1f} GFLOP/s", flush=True)

    variants = {}
    for model_name in args.models:
        for precision in ("fp32", "auto"):
            for compiled in ((False,) if args.no_compile else (False, True)):
                variants[(model_name, precision, compiled)] = Step(model_name, precision, compiled, args.batch)
    for key, step in variants.items():  # first step: compilation (if any) and allocator warm-up
        step.first_step_s = step.run()
        print(f"first step {key}: {step.first_step_s:.2f} s", flush=True)
    for round_index in range(args.rounds + 1):  # round 0 warms up
        for step in variants.values():
            for _ in range(args.steps):
                elapsed = step.run()
                if round_index > 0:
                    step.times.append(elapsed)

    flops = {name: step_flops(name, args.batch) for name in args.models}
    rows = []
    for (model_name, precision, compiled), step in variants.items():
        median = statistics.median(step.times)
        chosen = resolve_precision(precision, torch.device("cpu")).chosen
        achieved = flops[model_name] / median
        peak = peaks["bf16" if chosen == "bf16" else "fp32"]
        reference = variants[(model_name, "fp32", False)]
        rows.append({
            "model": model_name, "precision": precision, "chosen": chosen, "compiled": compiled,
            "median_step_ms": 1e3 * median, "min_step_ms": 1e3 * min(step.times), "max_step_ms": 1e3 * max(step.times),
            "steps_timed": len(step.times),
            "compile_s": (step.first_step_s - median) if compiled else None,
            "step_gflop": flops[model_name] / 1e9, "achieved_gflop_s": achieved / 1e9,
            "fraction_of_peak": achieved / peak, "peak_used": "bf16" if chosen == "bf16" else "fp32",
            "speedup_vs_fp32_eager": statistics.median(reference.times) / median,
        })
    print(f"\nbatch {args.batch}, channels_last, {args.rounds} rounds x {args.steps} steps per variant, medians")
    print("| model | precision (chosen) | compiled | step ms (min-max) | vs fp32 eager | GFLOP/step | "
          "GFLOP/s | of that dtype's matmul peak | compile s |")
    print("|---|---|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        compile_text = f"{r['compile_s']:.0f}" if r["compile_s"] is not None else "-"
        print(f"| {r['model']} | {r['precision']} ({r['chosen']}) | {'yes' if r['compiled'] else 'no'} | "
              f"{r['median_step_ms']:.0f} ({r['min_step_ms']:.0f}-{r['max_step_ms']:.0f}) | "
              f"{r['speedup_vs_fp32_eager']:.2f}x | {r['step_gflop']:.2f} | {r['achieved_gflop_s']:.1f} | "
              f"{100 * r['fraction_of_peak']:.0f} % | {compile_text} |")
    result = {"machine": cpu_model(), "cpus": os.cpu_count(), "torch": torch.__version__, "threads": args.threads,
              "auto": auto.to_dict(), "matmul_peak_gflop_s": {k: v / 1e9 for k, v in peaks.items()},
              "matmul_sizes": args.matmul_sizes, "batch": args.batch, "rows": rows, "command": sys.argv}
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
