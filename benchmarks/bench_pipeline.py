"""Images/s: the in-memory batched pipeline vs the classic per-image PIL pipeline (issue 4, "Speed").

Both produce the standard CIFAR training batch (random crop 32 with padding 4 + horizontal flip
+ normalise, batch 128) from CIFAR-shaped uint8 data (random pixels: content does not matter):

* in-memory: ``longtail.data.loading.loader.InMemoryLoader`` with an instance sampler and
  ``augment=True``: the dataset is one uint8 tensor, each batch is a gather + a few tensor ops.
* classic: ``torchvision.transforms`` ``RandomCrop(32, padding=4)``, ``RandomHorizontalFlip``,
  ``ToTensor``, ``Normalize`` applied per PIL image in a ``DataLoader`` with 2 worker processes
  (persistent, so worker start-up is not counted), shuffled: what the reference codebases do.

Each pipeline is warmed up for one epoch, then timed over ``--repeats`` full epochs, the
pipelines taking turns epoch by epoch; medians are reported because the machine is shared. The
in-memory CPU pipeline is timed with 1 and 2 torch intra-op threads: on an oversubscribed
machine two OpenMP threads can be many times slower than one (threads spin at barriers while
their partner is descheduled). With CUDA available the in-memory pipeline is also
timed on the GPU (synchronised per epoch).

    python benchmarks/bench_pipeline.py --num-images 10000 --repeats 5
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from longtail.data.loading.loader import InMemoryLoader
from longtail.data.sampling.samplers import build_sampler

MEAN = (0.4914, 0.4822, 0.4465)
STD = (0.2023, 0.1994, 0.2010)


class PILImages(Dataset):
    """The classic dataset: HWC uint8 array -> PIL image -> per-image torchvision transforms."""

    def __init__(self, images_hwc: np.ndarray, labels: np.ndarray, transform) -> None:
        self.images, self.labels, self.transform = images_hwc, labels, transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int):
        from PIL import Image

        return self.transform(Image.fromarray(self.images[index])), int(self.labels[index])


def classic_loader(images_hwc, labels, batch_size, workers):
    from torchvision import transforms

    transform = transforms.Compose(
        [transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip(), transforms.ToTensor(), transforms.Normalize(MEAN, STD)]
    )
    return DataLoader(
        PILImages(images_hwc, labels, transform),
        batch_size=batch_size,
        shuffle=True,
        num_workers=workers,
        persistent_workers=workers > 0,
        drop_last=False,
    )


def epoch_rate(loader, epoch, device=None, threads=None):
    """Images/s of one full epoch of ``loader`` (with ``threads`` torch intra-op threads if given)."""
    previous = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    if hasattr(loader, "set_epoch"):
        loader.set_epoch(epoch)
    count = 0
    start = time.perf_counter()
    for images, _ in loader:
        count += images.shape[0]
    if device is not None and device.type == "cuda":
        torch.cuda.synchronize(device)
    elapsed = time.perf_counter() - start
    torch.set_num_threads(previous)
    return count / elapsed


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--num-images", type=int, default=10000)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--gpu-images", type=int, default=50000, help="dataset size for the GPU run (CIFAR train size)")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="torch intra-op threads for the in-memory CPU runs")
    parser.add_argument("--skip-classic", action="store_true")
    args = parser.parse_args()

    print(f"machine: {os.cpu_count()} logical CPUs ({cpu_model()}), torch {torch.__version__}, torch threads {torch.get_num_threads()}")
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (args.num_images, 3, 32, 32), generator=generator, dtype=torch.uint8)
    labels = torch.randint(0, 100, (args.num_images,), generator=generator)

    # name -> (loader, device, threads); timed round-robin, one epoch each per round, so that
    # load from other users of the machine hits every pipeline alike.
    pipelines = {}
    sampler = build_sampler("instance", labels, seed=0)
    in_memory = InMemoryLoader(images, args.batch_size, sampler, augment=True, labels=labels, mean=MEAN, std=STD)
    for threads in args.threads:
        pipelines[f"in-memory, CPU, {threads} torch thread(s)"] = (in_memory, None, threads)
    if not args.skip_classic:
        images_hwc = images.permute(0, 2, 3, 1).contiguous().numpy()
        classic = classic_loader(images_hwc, labels.numpy(), args.batch_size, args.workers)
        pipelines[f"classic PIL per image, DataLoader {args.workers} workers"] = (classic, None, None)
    if torch.cuda.is_available():
        device = torch.device("cuda")
        gpu_images = torch.randint(0, 256, (args.gpu_images, 3, 32, 32), dtype=torch.uint8)
        gpu_labels = torch.randint(0, 100, (args.gpu_images,))
        gpu_loader = InMemoryLoader(
            gpu_images, args.batch_size, build_sampler("instance", gpu_labels), augment=True,
            labels=gpu_labels, mean=MEAN, std=STD, device=device, channels_last=True,
        )
        pipelines[f"in-memory, GPU ({torch.cuda.get_device_name(device)}), {args.gpu_images} images"] = (gpu_loader, device, None)

    results = {name: [] for name in pipelines}
    for round_index in range(args.repeats + 1):  # round 0 is the warm-up
        for name, (loader, device, threads) in pipelines.items():
            rate = epoch_rate(loader, round_index, device, threads)
            if round_index > 0:
                results[name].append(rate)

    print(f"\n{args.num_images} images 3x32x32, batch {args.batch_size}, crop(pad 4) + flip + normalise; {args.repeats} timed epochs after 1 warm-up")
    print("| pipeline | median images/s | min | max |")
    print("|---|---:|---:|---:|")
    for name, rates in results.items():
        print(f"| {name} | {statistics.median(rates):,.0f} | {min(rates):,.0f} | {max(rates):,.0f} |")
    classic_names = [name for name in results if name.startswith("classic")]
    if classic_names:
        classic_rate = statistics.median(results[classic_names[0]])
        print()
        for name in results:
            if name.startswith("in-memory"):
                print(f"{name}: {statistics.median(results[name]) / classic_rate:.1f}x the classic pipeline (ratio of medians)")


if __name__ == "__main__":
    main()
