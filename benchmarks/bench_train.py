"""End-to-end training throughput: `longtail train` against a classic PyTorch loop, same run.

Both train ResNet-32 at batch 128 on CIFAR-shaped data with the CIFAR-100-LT IF 100 class counts
(10,847 images), written as real CIFAR-100 python pickles (random pixels: speed only).
- longtail: `longtail train --recipe cifar100-lt-r32/ce` (in-memory batched augmentation,
  channels_last), one epoch; images/s from the run's history.jsonl.
- classic: torchvision-style Dataset with PIL per-image RandomCrop(32, 4) + flip + ToTensor +
  Normalize, DataLoader with 2 workers, fp32, contiguous memory format; the same number of steps.

    python benchmarks/bench_train.py [--epochs 1] [--rounds 3]

The two sides alternate for --rounds rounds (this VM's step time drifts by +-20 % over minutes)
and the medians are reported.
"""

from __future__ import annotations

import argparse
import json
import pickle
import statistics
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def write_cifar100(root: Path, seed: int = 0, train_per_class: int = 500, test_per_class: int = 100) -> None:
    """Real CIFAR-100 python pickles (random pixels) under root/cifar-100-python."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True, exist_ok=True)
    for split, per_class in (("train", train_per_class), ("test", test_per_class)):
        labels = np.repeat(np.arange(100), per_class)
        data = rng.integers(0, 256, size=(labels.size, 3072), dtype=np.uint8)
        with open(folder / split, "wb") as handle:
            pickle.dump({b"data": data, b"fine_labels": labels.tolist(), b"coarse_labels": [0] * labels.size}, handle)
    with open(folder / "meta", "wb") as handle:
        pickle.dump({b"fine_label_names": [f"c{i}".encode() for i in range(100)]}, handle)


def run_longtail(root: Path, output: Path, epochs: int, threads: int, name: str) -> dict:
    command = [sys.executable, "-m", "longtail", "train", "--recipe", "cifar100-lt-r32/ce", f"data.root={root}",
               f"optim.epochs={epochs}", "train.eval_train=false", f"train.output_dir={output}",
               "train.progress=false", f"train.run_name={name}", f"train.threads={threads}"]
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    history = [json.loads(line) for line in (output / name / "history.jsonl").read_text().splitlines()]
    seconds = sum(h["seconds"] for h in history)
    images = sum(h["images_per_s"] * h["seconds"] for h in history)
    return {"images_per_s": images / seconds, "seconds": seconds, "images": images}


class PilCifar(torch.utils.data.Dataset):
    def __init__(self, images: np.ndarray, labels: np.ndarray):
        import torchvision.transforms as T

        self.images, self.labels = images, labels
        self.transform = T.Compose([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), T.ToTensor(),
                                    T.Normalize((0.507, 0.487, 0.441), (0.267, 0.256, 0.276))])

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, index):
        from PIL import Image

        return self.transform(Image.fromarray(self.images[index])), int(self.labels[index])


def run_classic(root: Path, steps: int, threads: int) -> dict:
    from longtail.data import build_dataset
    from longtail.models import create_model

    torch.set_num_threads(threads)
    data = build_dataset("cifar100-lt", "train", root=root)
    images = data.images.permute(0, 2, 3, 1).numpy()
    loader = torch.utils.data.DataLoader(PilCifar(images, data.labels.numpy()), batch_size=128, shuffle=True,
                                         num_workers=2, drop_last=False, persistent_workers=True)
    model = create_model("resnet32", 100)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    model.train()
    done, seen, started = 0, 0, None
    while done < steps:
        for x, y in loader:
            if started is None:
                started = time.perf_counter()  # exclude worker start-up, as the other side excludes set-up
            loss = torch.nn.functional.cross_entropy(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            done += 1
            seen += x.shape[0]
            if done >= steps:
                break
    seconds = time.perf_counter() - started
    return {"images_per_s": seen / seconds, "seconds": seconds, "images": seen}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    ours, classic = [], []
    with tempfile.TemporaryDirectory() as directory:
        root = Path(directory) / "data"
        write_cifar100(root)
        for round_index in range(args.rounds):
            ours.append(run_longtail(root, Path(directory) / "runs", args.epochs, args.threads, f"bench{round_index}"))
            steps = round(ours[-1]["images"] / 128)
            classic.append(run_classic(root, steps, args.threads))
    ours_rate = statistics.median(r["images_per_s"] for r in ours)
    classic_rate = statistics.median(r["images_per_s"] for r in classic)
    print(f"machine: {platform.processor() or platform.machine()}, {args.threads} torch threads, "
          f"torch {torch.__version__}; {args.rounds} alternating rounds, medians")
    def rounds(results):
        return ", ".join(f"{r['images_per_s']:.0f}" for r in results)

    print(f"longtail train : {ours_rate:8.1f} images/s  (rounds: {rounds(ours)})")
    print(f"classic loop   : {classic_rate:8.1f} images/s  (rounds: {rounds(classic)})")
    print(f"speed-up       : {ours_rate / classic_rate:.2f}x")


if __name__ == "__main__":
    main()
