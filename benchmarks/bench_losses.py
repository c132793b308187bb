"""What does CCAR cost? Training-step and loss-alone timings (a script, not a test).

1. One training step (forward + backward + SGD step) of ResNet-32 (CIFAR, 100 classes) at batch 128
   with plain cross-entropy vs CCAR on Balanced Softmax (issue 2 target: CCAR adds < 2 %).
2. The loss alone (forward + backward) at (B, K) = (128, 100), (256, 1000), (512, 8142).

The machine may be shared, so measurements are interleaved: every round times each variant back to
back (in a rotating order) and the overhead is the median over rounds of the *paired* ratio
CCAR / CE, with its interquartile range. Run:

    python benchmarks/bench_losses.py                 # full run, prints a markdown report
    python benchmarks/bench_losses.py --quick         # a smoke run
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch
import torch.nn.functional as F

from longtail import losses


def machine_description() -> str:
    model = "unknown"
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    import os

    return (
        f"CPU: {model}; nproc = {os.cpu_count()} (affinity {len(os.sched_getaffinity(0))}); "
        f"torch {torch.__version__} with {torch.get_num_threads()} threads; Python {platform.python_version()}"
    )


def long_tail_counts(num_classes: int, max_count: int = 500, imbalance: float = 100.0) -> list[int]:
    return [max(1, int(max_count * imbalance ** (-i / max(num_classes - 1, 1)))) for i in range(num_classes)]


def quartiles(values):
    if len(values) < 2:
        return values[0], values[0], values[0]
    q1, q2, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return q1, q2, q3


def interleaved(variants: dict, rounds: int, repeats: int) -> dict:
    """Per variant: list over rounds of the median time of ``repeats`` calls (seconds)."""
    names = list(variants)
    times = {name: [] for name in names}
    for round_index in range(rounds):
        order = names[round_index % len(names):] + names[: round_index % len(names)]
        for name in order:
            samples = []
            for _ in range(repeats):
                start = time.perf_counter()
                variants[name]()
                samples.append(time.perf_counter() - start)
            times[name].append(statistics.median(samples))
    return times


def paired_overhead(times: dict, name: str, reference: str):
    ratios = [a / b - 1.0 for a, b in zip(times[name], times[reference])]
    return quartiles(ratios)


def bench_training_step(rounds: int, repeats: int, lines: list) -> float:
    from longtail.models import create_model

    torch.manual_seed(0)
    num_classes, batch = 100, 128
    counts = long_tail_counts(num_classes)
    model = create_model("resnet32", num_classes=num_classes)
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    images = torch.randn(batch, 3, 32, 32)
    targets = torch.randint(0, num_classes, (batch,))
    criteria = {
        "torch F.cross_entropy": lambda z, y: F.cross_entropy(z, y),
        "longtail CE": losses.build_loss("ce", counts),
        "longtail Balanced Softmax": losses.build_loss("bs", counts),
        "CCAR + Balanced Softmax": losses.CCAR(counts, base="balanced_softmax"),
    }

    def step(criterion):
        def run():
            optimizer.zero_grad(set_to_none=True)
            criterion(model(images), targets).backward()
            optimizer.step()

        return run

    variants = {name: step(criterion) for name, criterion in criteria.items()}
    interleaved(variants, rounds=1, repeats=2)  # warm-up
    times = interleaved(variants, rounds=rounds, repeats=repeats)
    lines.append("### Training step: ResNet-32 (CIFAR, K = 100), batch 128, forward + backward + SGD step\n")
    lines.append(f"{rounds} interleaved rounds x {repeats} steps per variant; median over rounds of each round's median.\n")
    lines.append("| loss | step time (ms), median | IQR over rounds (ms) | CCAR+BS vs this, paired median [IQR] |")
    lines.append("|---|---:|---:|---:|")
    for name in criteria:
        q1, q2, q3 = quartiles(times[name])
        if name == "CCAR + Balanced Softmax":
            overhead = "-"
        else:
            o1, o2, o3 = paired_overhead(times, "CCAR + Balanced Softmax", name)
            overhead = f"{100 * o2:+.2f} % [{100 * o1:+.2f}, {100 * o3:+.2f}]"
        lines.append(f"| {name} | {1e3 * q2:.1f} | {1e3 * q1:.1f} - {1e3 * q3:.1f} | {overhead} |")
    lines.append("")
    return statistics.median(times["torch F.cross_entropy"])


def bench_loss_alone(shapes, rounds: int, repeats: int, lines: list) -> dict:
    lines.append("### Loss alone: forward + backward on (B, K) float32 logits\n")
    lines.append(f"{rounds} interleaved rounds x {repeats} calls; median (microseconds); last column: CCAR+BS vs plain BS, paired.\n")
    header = ["torch F.cross_entropy", "longtail CE", "longtail BS", "CCAR + CE", "CCAR + BS"]
    extra_cost = {}
    lines.append("| (B, K) | " + " | ".join(header) + " | CCAR+BS vs BS | CCAR+BS vs torch CE |")
    lines.append("|---|" + "---:|" * (len(header) + 2))
    for batch, num_classes in shapes:
        generator = torch.Generator().manual_seed(batch + num_classes)
        counts = long_tail_counts(num_classes, max_count=1000)
        logits = torch.randn(batch, num_classes, generator=generator).requires_grad_()
        targets = torch.randint(0, num_classes, (batch,), generator=generator)
        criteria = {
            "torch F.cross_entropy": lambda z, y: F.cross_entropy(z, y),
            "longtail CE": losses.build_loss("ce", counts),
            "longtail BS": losses.build_loss("bs", counts),
            "CCAR + CE": losses.CCAR(counts, base="ce"),
            "CCAR + BS": losses.CCAR(counts, base="balanced_softmax"),
        }

        def call(criterion):
            def run():
                logits.grad = None
                criterion(logits, targets).backward()

            return run

        variants = {name: call(criterion) for name, criterion in criteria.items()}
        interleaved(variants, rounds=1, repeats=3)
        times = interleaved(variants, rounds=rounds, repeats=repeats)
        cells = [f"{1e6 * statistics.median(times[name]):.0f}" for name in header]
        _, vs_bs, _ = paired_overhead(times, "CCAR + BS", "longtail BS")
        _, vs_torch, _ = paired_overhead(times, "CCAR + BS", "torch F.cross_entropy")
        lines.append(f"| ({batch}, {num_classes}) | " + " | ".join(cells) + f" | {100 * vs_bs:+.1f} % | {100 * vs_torch:+.1f} % |")
        differences = [a - b for a, b in zip(times["CCAR + BS"], times["torch F.cross_entropy"])]
        extra_cost[(batch, num_classes)] = statistics.median(differences)
    lines.append("")
    return extra_cost


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="few rounds (smoke test)")
    parser.add_argument("--step-rounds", type=int, default=12)
    parser.add_argument("--step-repeats", type=int, default=3)
    parser.add_argument("--loss-rounds", type=int, default=15)
    parser.add_argument("--loss-repeats", type=int, default=20)
    parser.add_argument("--skip-step", action="store_true", help="only the loss-alone table")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch.set_num_threads (1 is far steadier on a CPU shared with other jobs)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.quick:
        args.step_rounds, args.step_repeats, args.loss_rounds, args.loss_repeats = 2, 1, 3, 3
    lines = [f"Machine: {machine_description()}\n"]
    started = time.perf_counter()
    extra_cost = bench_loss_alone([(128, 100), (256, 1000), (512, 8142)], args.loss_rounds, args.loss_repeats, lines)
    if not args.skip_step:
        step_time = bench_training_step(args.step_rounds, args.step_repeats, lines)
        # The two training steps differ only in the loss, so the loss-alone difference at the
        # step's shape bounds what CCAR can add to the step, free of the step's much larger noise.
        extra = extra_cost[(128, 100)]
        lines.append(
            f"Decomposition: CCAR+BS loss (fwd+bwd) minus torch CE at (128, 100) = {1e6 * extra:.0f} us (paired median) "
            f"= {100 * extra / step_time:.3f} % of the median training step ({1e3 * step_time:.0f} ms).\n"
        )
    lines.append(f"(benchmark wall time {time.perf_counter() - started:.0f} s)")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
