"""How well does CAR's EMA confusion track the model's confusion at large K? full vs masked update.

    python benchmarks/bench_car_tracking.py                       # K = 1000 and 8142, batch 128 and 256
    python benchmarks/bench_car_tracking.py --classes 1000 --samples 64000

The quantity CAR regularises is sigma_max(C * w) for C the surrogate confusion of the *current
model over the training distribution* (each column the mean over that class's images). The EMA
C_hat estimates it from batches. This script measures, for each EMA update, the relative error
of CAR's R (its own warm-started power iteration, 1 step per batch) against sigma_max(C_pop * w),
with C_pop computed from many images of every class.

The "partly trained model" (no real model can be trained at K = 8142 on 2 CPU cores):
features h = mu_y + noise (d = 64, class means mu_j random unit vectors * 3, noise N(0, 1)),
logits z = scale * h @ W^T + 0.5 * log(prior) with W = the class means (a classifier that has
learned the class directions) and a head-favouring bias of half the log prior (what CE on
long-tailed data drifts towards), logit scale 1.6: balanced accuracy about 35 %, head classes
well above tail classes (both printed per row), as a model early in training. Labels of the
training stream are drawn from an exponential long-tailed prior (IF 256 at K = 1000, like
ImageNet-LT's 1280 / 5; IF 500 at K = 8142, like iNat's 1000 / 2) by instance sampling.
The model is fixed while the EMA runs, so the target does not move: the error is the estimator's.
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

import torch

from longtail.regularizers import CAR
from longtail.regularizers.car import _per_sample_confusion, top_singular_pair

DIM = 64


class SyntheticModel:
    def __init__(self, num_classes: int, imbalance: float, seed: int = 0, scale: float = 1.6):
        generator = torch.Generator().manual_seed(seed)
        self.generator = generator
        means = torch.randn(num_classes, DIM, generator=generator)
        self.means = 3.0 * means / means.norm(dim=1, keepdim=True)
        counts = torch.tensor([max(1, int(1000 * imbalance ** (-i / (num_classes - 1)))) for i in range(num_classes)])
        self.counts = counts
        self.prior = counts.double() / counts.sum()
        self.bias = 0.5 * self.prior.log().float()
        self.scale = scale

    def logits(self, labels: torch.Tensor) -> torch.Tensor:
        features = self.means[labels] + torch.randn(labels.numel(), DIM, generator=self.generator)
        return self.scale * features @ self.means.t() + self.bias

    def sample_labels(self, batch: int) -> torch.Tensor:
        return torch.multinomial(self.prior, batch, replacement=True, generator=self.generator)


def population_confusion(model: SyntheticModel, per_class: int, chunk: int = 1024) -> tuple[torch.Tensor, dict]:
    """C_pop stored by true class (row j = column j of C): mean of the gated surrogate over
    ``per_class`` images of every class; also the model's accuracies on those images."""
    num_classes = model.means.shape[0]
    labels_all = torch.arange(num_classes).repeat_interleave(per_class)
    by_true_class = torch.zeros(num_classes, num_classes)
    correct = torch.zeros(num_classes)
    for start in range(0, labels_all.numel(), chunk):
        labels = labels_all[start:start + chunk]
        logits = model.logits(labels)
        by_true_class.index_add_(0, labels, _per_sample_confusion(logits, labels, "gated", 0.0, 1.0))
        correct.index_add_(0, labels, (logits.argmax(1) == labels).float())
    accuracy = correct / per_class
    third = num_classes // 3
    return by_true_class / per_class, {"balanced_accuracy": float(accuracy.mean()),
                                       "head_third": float(accuracy[:third].mean()),
                                       "tail_third": float(accuracy[-third:].mean())}


def sigma(by_true_class: torch.Tensor, weights: torch.Tensor) -> float:
    matrix = (by_true_class * weights[:, None]).t()  # C * w[None, :] in paper orientation
    if matrix.shape[0] <= 2000:
        return float(torch.linalg.svdvals(matrix.double())[0])
    value, _, _ = top_singular_pair(matrix, tol=1e-6, max_iterations=1000)
    return float(value)


def run(num_classes: int, imbalance: float, batch: int, samples: int, per_class: int) -> None:
    model = SyntheticModel(num_classes, imbalance)
    started = time.perf_counter()
    target_matrix, accuracy = population_confusion(model, per_class)
    steps = samples // batch
    results = {}
    weights = CAR(model.counts).class_weights
    target = sigma(target_matrix, weights)
    for update in ("full", "masked"):
        car = CAR(model.counts, exact_below=0, ema_update=update)
        generator_state = model.generator.get_state()
        errors = []
        for step in range(steps):
            labels = model.sample_labels(batch)
            car(model.logits(labels), labels)
            errors.append(float(car.spectral_norm) / target - 1.0)
        model.generator.set_state(generator_state)  # both updates see the same stream
        exact_end = sigma(car.ema_confusion_by_true_class * car._ema_scale, weights)
        seen = int((car.ema_confusion_by_true_class.abs().sum(1) > 0).sum())
        late = errors[len(errors) // 2:]
        results[update] = (target, statistics.median(late), min(late), max(late), exact_end / target - 1.0, seen)
    print(f"| {num_classes} | {imbalance:g} | {batch} | {steps} | {accuracy['balanced_accuracy']:.2f} "
          f"({accuracy['head_third']:.2f} / {accuracy['tail_third']:.2f}) | {results['full'][0]:.4f} | "
          + " | ".join(f"{r[1]:+.1%} [{r[2]:+.1%}, {r[3]:+.1%}] | {r[4]:+.1%}" for r in results.values())
          + f" | {results['masked'][5]} | {time.perf_counter() - started:.0f} s |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--classes", type=int, nargs="+", default=[1000, 8142])
    parser.add_argument("--batches", type=int, nargs="+", default=[128, 256])
    parser.add_argument("--samples", type=int, default=128_000, help="training images streamed through the EMA")
    parser.add_argument("--per-class", type=int, default=8, help="images per class behind C_pop")
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    print(f"# torch {torch.__version__}, threads {torch.get_num_threads()}; {args.samples} training images per run; "
          f"C_pop from {args.per_class} images per class; errors: R / sigma_max(C_pop w) - 1 over the last half "
          f"of the steps: median [min, max]; 'C_hat end': exact sigma_max(C_hat w) after the last step")
    print("| K | IF | batch | steps | model bal. acc (head / tail third) | sigma_max(C_pop w) | "
          "full: R error | full: C_hat end | masked: R error | masked: C_hat end | masked: columns seen | time |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for num_classes in args.classes:
        imbalance = 256.0 if num_classes <= 1000 else 500.0
        for batch in args.batches:
            run(num_classes, imbalance, batch, args.samples, args.per_class)


if __name__ == "__main__":
    main()
