"""ConCutMix speed (issue 14, "Speed"), two side-by-side comparisons in one run.

1. Training-step time of ``concutmix`` vs ``bs`` on a ResNet-32, CIFAR-shaped batch: one SGD step
   (forward, losses, backward, update) on ready-made batches. ``bs`` forwards B images and takes
   Balanced Softmax; ``concutmix`` forwards 3B images (mixed classification view + two contrastive
   views) through the BCL model (cosine classifier, projection and prototype heads) and takes the
   logit-adjusted soft CE + BalSCL with the rectified label (the most expensive epoch phase).
2. View generation for one ConCutMix batch (classification view + two contrastive views of B
   backgrounds + the classification view of B foregrounds):
   * batched: ``longtail.data.transforms.views.BatchViews`` on uint8 tensors (kornia per-sample parameters,
     CIFAR AutoAugment from torchvision v2 per image), on the training device;
   * per-sample, two variants, in the main process (what one DataLoader worker does per batch):
     "PIL": the released code's style, ``torchvision.transforms`` (v1) on PIL images, ToTensor +
     Normalize at the end; "v2": the library's file path (``file_view_transforms``: PIL decoded
     to a uint8 tensor, then torchvision v2 per image).

The two sides of each comparison take turns round by round; medians and minima are reported, and
ratios are what to read (the machine is shared; the minimum is the run least disturbed by others).

    python benchmarks/bench_concutmix.py --batch 128 --rounds 5
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

from longtail.data.loading.pair_loader import PairBatch
from longtail.data.transforms.views import BatchViews, file_view_transforms
from longtail.engine.methods.contrastive import ConCutMixObjective, ConCutMixSettings
from longtail.losses import BalancedSoftmaxLoss
from longtail.models import BCLModel, create_model

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_pipeline import cpu_model  # noqa: E402

MEAN = (0.4914, 0.4822, 0.4465)
STD = (0.2023, 0.1994, 0.2010)


def class_counts(num_classes: int = 100, imbalance: float = 100.0):
    return [int(500 * imbalance ** (-j / (num_classes - 1))) for j in range(num_classes)]


def step_bs(model, optimizer, loss_fn, images, labels):
    optimizer.zero_grad(set_to_none=True)
    loss_fn(model(images), labels).backward()
    optimizer.step()


def step_concutmix(model, optimizer, objective, batch, labels):
    optimizer.zero_grad(set_to_none=True)
    terms = objective.training_step(model, batch, labels, epoch=1, batch_index=0, autocast=contextlib.nullcontext,
                                    regularizer=None, check_finite=lambda terms: None)
    sum(terms.values()).backward()
    optimizer.step()


def timed(function, *args) -> float:
    start = time.perf_counter()
    function(*args)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    counts = class_counts()
    num_classes = len(counts)
    batch = args.batch
    generator = torch.Generator().manual_seed(0)
    images = [torch.randn(batch, 3, 32, 32, generator=generator) for _ in range(4)]
    labels = torch.randint(0, num_classes, (batch,), generator=generator)

    bs_model = create_model("resnet32", num_classes)
    bs_optimizer = torch.optim.SGD(bs_model.parameters(), lr=0.01, momentum=0.9)
    bs_loss = BalancedSoftmaxLoss(counts)
    ccm_model = BCLModel(create_model("resnet32", num_classes, head="cosine"), feat_dim=128)
    ccm_optimizer = torch.optim.SGD(ccm_model.parameters(), lr=0.01, momentum=0.9)
    # cutmix_prob 1 and rectify from epoch 0: every timed step mixes and computes the rectified label.
    objective = ConCutMixObjective(ConCutMixSettings(cutmix_prob=1.0, rectify_from_epoch=0, tau=0.9), counts, seed=0)
    pair = PairBatch(images[0], (images[1], images[2]), images[3], labels.flip(0))

    uint8 = torch.randint(0, 256, (2 * batch, 3, 32, 32), dtype=torch.uint8, generator=generator)
    backgrounds, foregrounds = uint8[:batch], uint8[batch:]
    views = BatchViews("cifar", MEAN, STD)
    from PIL import Image
    pil_backgrounds = [Image.fromarray(image.permute(1, 2, 0).numpy()) for image in backgrounds]
    pil_foregrounds = [Image.fromarray(image.permute(1, 2, 0).numpy()) for image in foregrounds]
    classification, contrastive = file_view_transforms("cifar", (32, 32), MEAN, STD)
    from torchvision import transforms as T
    tail = [T.ToTensor(), T.Normalize(MEAN, STD)]
    pil_classification = T.Compose([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(),
                                    T.AutoAugment(T.AutoAugmentPolicy.CIFAR10), *tail])
    pil_contrastive = T.Compose([T.RandomResizedCrop(32, scale=(0.2, 1.0)), T.RandomHorizontalFlip(),
                                 T.RandomApply([T.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8), T.RandomGrayscale(p=0.2),
                                 T.RandomApply([T.GaussianBlur(13, (0.1, 2.0))], p=0.5), *tail])

    def batched_views(seed):
        views.classification(backgrounds, seed), views.contrastive(backgrounds, seed + 1)
        views.contrastive(backgrounds, seed + 2), views.classification(foregrounds, seed + 3)

    def per_sample_views(classification, contrastive):
        torch.stack([classification(image) for image in pil_backgrounds])
        torch.stack([contrastive(image) for image in pil_backgrounds])
        torch.stack([contrastive(image) for image in pil_backgrounds])
        torch.stack([classification(image) for image in pil_foregrounds])

    # warm-up (first calls build kernels / import policies)
    step_bs(bs_model, bs_optimizer, bs_loss, images[0], labels)
    step_concutmix(ccm_model, ccm_optimizer, objective, pair, labels)
    batched_views(0)
    per_sample_views(classification, contrastive)
    per_sample_views(pil_classification, pil_contrastive)

    results = {"bs step": [], "concutmix step": [], "batched views": [], "per-sample PIL views": [],
               "per-sample v2 views": []}
    for round_index in range(args.rounds):
        results["bs step"].append(timed(step_bs, bs_model, bs_optimizer, bs_loss, images[0], labels))
        results["concutmix step"].append(timed(step_concutmix, ccm_model, ccm_optimizer, objective, pair, labels))
        results["batched views"].append(timed(batched_views, 10 * round_index))
        results["per-sample PIL views"].append(timed(per_sample_views, pil_classification, pil_contrastive))
        results["per-sample v2 views"].append(timed(per_sample_views, classification, contrastive))

    median = {name: statistics.median(values) for name, values in results.items()}
    best = {name: min(values) for name, values in results.items()}
    print(f"machine: {cpu_model()}, {os.cpu_count()} cores "
          f"(shared with other jobs: read the ratios), torch {torch.__version__}, {args.threads} thread(s), "
          f"batch {batch}, {args.rounds} interleaved rounds; median and minimum (the minimum is the least "
          f"disturbed by other processes)")
    for name, value in median.items():
        print(f"  {name:>22}: {value * 1000:8.1f} ms median, {best[name] * 1000:8.1f} ms min   "
              f"(all: {', '.join(f'{v * 1000:.0f}' for v in results[name])})")
    for label, numerator, denominator in (("concutmix / bs step time", "concutmix step", "bs step"),
                                          ("per-sample PIL / batched views", "per-sample PIL views", "batched views"),
                                          ("per-sample v2 / batched views", "per-sample v2 views", "batched views")):
        print(f"  {label}: {median[numerator] / median[denominator]:.2f}x (medians), "
              f"{best[numerator] / best[denominator]:.2f}x (minima)")
    total = median["concutmix step"] + median["batched views"]
    print(f"  views are {100 * median['batched views'] / total:.0f} % of a concutmix step with batched views")

if __name__ == "__main__":
    main()
