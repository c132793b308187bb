"""Time one CAR forward + backward at batch 128 against the exact-SVD path and plain CE.

    python benchmarks/bench_car.py                    # K = 100, 1000, 8142 (CPU), writes nothing
    python benchmarks/bench_car.py --device cuda      # the same figures on a GPU

What is timed, per K, all on the same logits in the same process:
  - CAR (power iteration, ema_update full and masked): surrogate + EMA + spectral norm + backward
    of ``ce + car`` minus nothing: we time ``car(logits, y).backward()`` alone.
  - CAR exact path (``exact_below`` above K: full ``torch.linalg.svd`` every step).
  - plain CE: ``F.cross_entropy(logits, y).backward()``.
  - at K = 100 also one ResNet-32 CIFAR training step (forward + backward + SGD, batch 128,
    32x32) from ``longtail.models.create_model("resnet32", num_classes=100)``.
Steady state: each CAR module is warmed up (first step = cold start) before timing. The
machine is shared, so every figure is the median of ``--repeats`` runs.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import torch
import torch.nn.functional as F

from longtail.regularizers import CAR


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_ms(step, repeats: int, device: torch.device) -> float:
    times = []
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        step()
        _sync(device)
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def time_car(car: CAR, logits: torch.Tensor, labels: torch.Tensor, repeats: int, warmup: int = 2) -> float:
    device = logits.device

    def step():
        logits.grad = None
        car(logits, labels).backward()

    for _ in range(warmup):
        step()
    return median_ms(step, repeats, device)


def time_resnet_step(device: torch.device, repeats: int) -> tuple[float, str]:
    try:
        from longtail.models import create_model

        model = create_model("resnet32", num_classes=100).to(device)
        source = "longtail.models.create_model('resnet32', num_classes=100)"
    except Exception as error:  # pragma: no cover - only when the models package is missing
        raise SystemExit(f"ResNet-32 not available from longtail.models: {error}")
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    images = torch.randn(128, 3, 32, 32, device=device)
    labels = torch.randint(0, 100, (128,), device=device)

    def step():
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(model(images), labels).backward()
        optimizer.step()

    for _ in range(2):
        step()
    return median_ms(step, repeats, device), source


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--classes", type=int, nargs="+", default=[100, 1000, 8142])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=21)
    parser.add_argument("--exact-repeats", type=int, default=3, help="repeats of the exact SVD path at K >= 1000")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--tracking-classes", type=int, default=1000,
                        help="K for the power-iteration tracking table (0 to skip)")
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)

    cpu_model = "unknown"
    if os.path.exists("/proc/cpuinfo"):
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    print(f"# torch {torch.__version__}, threads {torch.get_num_threads()}, nproc {os.cpu_count()}, "
          f"CPU {cpu_model}, python {platform.python_version()}, device {device}"
          + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""))
    print(f"# batch {args.batch}, medians of {args.repeats} runs (exact SVD at K >= 1000: {args.exact_repeats})")
    print("| K | CE fwd+bwd (ms) | CAR full (ms) | CAR masked (ms) | CAR exact SVD (ms) | exact / CAR full |")
    print("|---|---|---|---|---|---|")
    for num_classes in args.classes:
        counts = torch.randint(1, 500, (num_classes,))
        logits = (3 * torch.randn(args.batch, num_classes, device=device)).requires_grad_(True)
        labels = torch.randint(0, num_classes, (args.batch,), device=device)

        def ce_step():
            logits.grad = None
            F.cross_entropy(logits, labels).backward()

        ce_step()
        ce_ms = median_ms(ce_step, args.repeats, device)
        full_ms = time_car(CAR(counts, exact_below=0).to(device), logits, labels, args.repeats)
        masked_ms = time_car(CAR(counts, exact_below=0, ema_update="masked").to(device), logits, labels, args.repeats)
        exact_repeats = args.repeats if num_classes < 1000 else args.exact_repeats
        # The exact path has no cold start; at K >= 1000 one SVD is the whole cost, so skip warm-up.
        exact_ms = time_car(
            CAR(counts, exact_below=num_classes + 1).to(device), logits, labels, exact_repeats,
            warmup=1 if num_classes < 1000 else 0,
        )
        print(f"| {num_classes} | {ce_ms:.2f} | {full_ms:.2f} | {masked_ms:.2f} | {exact_ms:.1f} | "
              f"{exact_ms / full_ms:.0f}x |", flush=True)
        if num_classes == 100:
            default_ms = time_car(CAR(counts).to(device), logits, labels, args.repeats)
            resnet_ms, source = time_resnet_step(device, max(5, args.repeats // 3))
            print(f"#   K=100 default CAR (exact SVD path since K < exact_below=256): {default_ms:.2f} ms; "
                  f"ResNet-32 step ({source}, batch 128): {resnet_ms:.1f} ms; "
                  f"CAR power / ResNet step = {100 * full_ms / resnet_ms:.2f} %, "
                  f"CAR default / ResNet step = {100 * default_ms / resnet_ms:.2f} %", flush=True)

    if args.tracking_classes:
        tracking(args.tracking_classes, args.batch, device)


def tracking(num_classes: int, batch: int, device: torch.device, steps: int = 40) -> None:
    """How far the warm-started power iteration lags sigma_max (svdvals) on random batches."""
    print(f"\n# tracking at K={num_classes}, batch {batch}, random logits (std 2), relative error of R "
          f"vs torch.linalg.svdvals over steps 10..{steps}")
    print("| ema_update | power_iters | median rel. error | max rel. error |")
    print("|---|---|---|---|")
    for update in ("full", "masked"):
        for iterations in (1, 2, 4):
            generator = torch.Generator().manual_seed(0)
            car = CAR(torch.randint(1, 500, (num_classes,), generator=generator), exact_below=0,
                      ema_update=update, power_iters=iterations).to(device)
            errors = []
            for step in range(steps):
                logits = 2 * torch.randn(batch, num_classes, generator=generator)
                labels = torch.randint(0, num_classes, (batch,), generator=generator)
                car(logits.to(device), labels.to(device))
                if step >= 10:
                    exact = torch.linalg.svdvals((car.confusion * car.class_weights[None, :]).double())[0].item()
                    errors.append(abs(car.spectral_norm.item() - exact) / exact)
            print(f"| {update} | {iterations} | {statistics.median(errors):.1e} | {max(errors):.1e} |", flush=True)


if __name__ == "__main__":
    main()
