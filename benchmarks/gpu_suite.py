"""Every GPU figure of BENCHMARKS.md from one command, in under 8 minutes on one H100 / H200.

    python benchmarks/gpu_suite.py --out DIR            # on a CUDA machine: the full suite
    python benchmarks/gpu_suite.py --quick --out DIR    # CI-sized, any machine (automatic without CUDA)

Writes ``DIR/gpu_suite.json`` (after every section, so a cut-short run keeps what it measured)
and ``DIR/gpu_suite.md`` (the BENCHMARKS.md rows), and prints the rows last. Sections, in order:

1. ``pipeline``: the in-memory batched pipeline (crop + flip + normalise, batch 128) over 50,000
   CIFAR-shaped images resident on the device, images/s (median of 3 epochs after a warm-up).
2. ``files``: one epoch of a JPEG image folder (ImageNet-like 375x500 photos, RandomResizedCrop
   224 + flip + normalise, batch 128) through the CPU path (PIL decoding and per-image transforms
   in DataLoader workers) and through GPU decoding (``longtail.data.loading.device_decode``: nvJPEG,
   transforms on the device), images/s.
3. ``car``: CAR forward + backward at K = 8142, batch 128, power iteration vs the exact-SVD path
   (``exact_below`` above K: a full ``torch.linalg.svd`` per step), and plain cross-entropy.
4. ``recipe``: the 200-epoch CIFAR-100-LT ResNet-32 recipe (``cifar100-lt-r32/ce``,
   ``train.precision=auto``, per-epoch evaluation off, the final test evaluation on) end to end
   on CIFAR-shaped pickles it writes itself (random pixels: speed only, the accuracy means
   nothing), data resident on the device: eager, ``model.compile=true``, and torch.compile with
   CUDA graphs (``mode="reduce-overhead"``, set on the trainer's model by this script: no config
   key reaches it yet). Compile time = first epoch minus the median epoch, reported apart.
Each row also gives the peak GPU memory (``torch.cuda.max_memory_allocated``). A section that
would not fit in what is left of ``--budget-s`` is skipped with a line saying so.

On a lent device machine (see /work/.library/device/README.md), from the repository root:
    PYTHONPATH=src PYTHONUNBUFFERED=1 python3 benchmarks/gpu_suite.py --out $OUT
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # deterministic cuBLAS (train.deterministic=true)

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_car import median_ms, time_car  # noqa: E402
from bench_train import write_cifar100  # noqa: E402

SKIP_NO_CUDA = "skipped: needs a CUDA GPU"


class Suite:
    def __init__(self, args):
        self.args = args
        self.cuda = torch.cuda.is_available() and not args.force_cpu
        self.quick = args.quick or not self.cuda
        self.device = torch.device("cuda" if self.cuda else "cpu")
        self.started = time.perf_counter()
        self.out = Path(args.out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.results = {"environment": self.environment(), "sections": {}}
        self.rows: list[tuple[str, str, str, str]] = []  # (what, measured, peak memory, note)

    # -- bookkeeping --------------------------------------------------------------------------
    def environment(self) -> dict:
        from longtail.engine.runtime.precision import resolve_precision

        info = {"torch": torch.__version__, "python": platform.python_version(), "cpus": os.cpu_count(),
                "quick": self.quick, "command": sys.argv,
                "auto_precision": resolve_precision("auto", self.device).to_dict(),
                "started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())}
        if self.cuda:
            info["gpu"] = torch.cuda.get_device_name(self.device)
            info["capability"] = ".".join(map(str, torch.cuda.get_device_capability(self.device)))
            info["cuda"] = torch.version.cuda
        return info

    def left_s(self) -> float:
        return self.args.budget_s - (time.perf_counter() - self.started)

    def fits(self, name: str, needs_s: float) -> bool:
        if self.left_s() >= needs_s:
            return True
        self.skip(name, f"skipped: {self.left_s():.0f} s of the {self.args.budget_s:.0f} s budget left, needs ~{needs_s:.0f} s")
        return False

    def skip(self, what: str, why: str) -> None:
        print(f"[gpu_suite] {what}: {why}", flush=True)
        self.rows.append((what, why, "-", ""))

    def reset_memory(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()

    def peak_memory(self) -> str:
        if not self.cuda:
            return "-"
        return f"{torch.cuda.max_memory_allocated() / 2 ** 30:.2f} GiB"

    def record(self, section: str, data) -> None:
        self.results["sections"][section] = data
        self.results["elapsed_s"] = time.perf_counter() - self.started
        (self.out / "gpu_suite.json").write_text(json.dumps(self.results, indent=2))

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()

    # -- 1. in-memory pipeline ---------------------------------------------------------------
    def pipeline(self) -> None:
        from longtail.data.loading.loader import InMemoryLoader
        from longtail.data.sampling.samplers import build_sampler

        count = 2_000 if self.quick else 50_000
        epochs = 1 if self.quick else 3
        generator = torch.Generator().manual_seed(0)
        images = torch.randint(0, 256, (count, 3, 32, 32), generator=generator, dtype=torch.uint8)
        labels = torch.randint(0, 100, (count,), generator=generator)
        self.reset_memory()
        loader = InMemoryLoader(images, 128, build_sampler("instance", labels), augment=True, labels=labels,
                                mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), device=self.device,
                                channels_last=True)
        rates = []
        for epoch in range(epochs + 1):  # epoch 0 warms up
            loader.set_epoch(epoch)
            self.sync()
            start = time.perf_counter()
            seen = sum(batch.shape[0] for batch, _ in loader)
            self.sync()
            if epoch:
                rates.append(seen / (time.perf_counter() - start))
        rate = statistics.median(rates)
        what = f"in-memory pipeline, {count:,} CIFAR-shaped images on {self.device.type}, batch 128"
        self.rows.append((what, f"{rate:,.0f} images/s", self.peak_memory(), f"median of {epochs} epoch(s)"))
        self.record("pipeline", {"images": count, "images_per_s": rate, "epochs": rates,
                                 "peak_memory": self.peak_memory()})

    # -- 2. file dataset: CPU vs GPU JPEG decoding ----------------------------------------------
    def files(self) -> None:
        from longtail.data.loading.device_decode import DeviceDecodedLoader
        from longtail.data.datasets.imagefolder import ImageFolderDataset
        from longtail.data.loading.loader import FileLoader
        from longtail.data.transforms.preprocess import Preprocessing
        from longtail.data.transforms.augment import IMAGENET_MEAN, IMAGENET_STD, build_file_transforms

        count, (height, width), size = (32, (60, 80), 32) if self.quick else (4_096, (375, 500), 224)
        workers = 0 if self.quick else min(8, os.cpu_count() or 1)
        with tempfile.TemporaryDirectory() as directory:
            started = time.perf_counter()
            write_jpeg_folder(Path(directory), count, height, width, workers)
            written_s = time.perf_counter() - started
            print(f"[gpu_suite] wrote {count} JPEGs {width}x{height} in {written_s:.1f} s", flush=True)
            # What the engine trains large images with: RandomResizedCrop + flip, ImageNet statistics.
            preprocessing = Preprocessing(size=(size, size), mean=IMAGENET_MEAN, std=IMAGENET_STD,
                                          resize="resize_center_crop")
            dataset = ImageFolderDataset(directory, transform=build_file_transforms(preprocessing, train=True))
            order = list(range(count))
            options = dict(channels_last=True, workers=workers, drop_last=False, seed=0, augment=True)
            paths = {f"CPU decoding (PIL + per-image transforms, {workers} workers)":
                     FileLoader(dataset, 128, order, self.device, **options)}
            gpu_name = "GPU decoding (nvJPEG, transforms on the device)"
            device_loader = DeviceDecodedLoader(dataset, 128, order, self.device, **options)
            if self.cuda:
                paths[gpu_name] = device_loader
            else:
                self.skip(f"file dataset epoch, {gpu_name}", SKIP_NO_CUDA)
                paths["device-decoding path on the CPU (its fallback; CI check only)"] = device_loader
            data = {"images": count, "size": [height, width], "crop": size, "workers": workers, "rows": {}}
            for name, loader in paths.items():
                self.reset_memory()
                loader.set_epoch(0)
                self.sync()
                start = time.perf_counter()
                seen = sum(batch.shape[0] for batch, _ in loader)
                self.sync()
                rate = seen / (time.perf_counter() - start)
                data["rows"][name] = {"images_per_s": rate, "peak_memory": self.peak_memory()}
                self.rows.append((f"file dataset epoch ({count:,} JPEGs {width}x{height} -> {size}), {name}",
                                  f"{rate:,.0f} images/s", self.peak_memory(), "one epoch, worker start-up included"))
        self.record("files", data)

    # -- 3. CAR at K = 8142 ------------------------------------------------------------------
    def car(self) -> None:
        import torch.nn.functional as F

        from longtail.regularizers import CAR

        classes = 100 if self.quick else 8142
        generator = torch.Generator().manual_seed(0)
        counts = torch.randint(1, 500, (classes,), generator=generator)
        logits = (3 * torch.randn(128, classes, generator=generator)).to(self.device).requires_grad_(True)
        labels = torch.randint(0, classes, (128,), generator=generator).to(self.device)
        data = {"classes": classes, "batch": 128}
        rows = [("CAR (power iteration)", CAR(counts, exact_below=0).to(self.device), 21),
                ("CAR exact path (full SVD every step)", CAR(counts, exact_below=classes + 1).to(self.device),
                 3 if self.quick else 1)]
        for name, module, repeats in rows:
            if not self.fits(name, 5 if self.quick else 60):
                return
            self.reset_memory()
            # At full size the exact path is one SVD of 8142 x 8142 per step: one step, no warm-up
            # (its cold start computes the same SVD).
            warmup = 0 if (repeats == 1 and "exact" in name) else 1
            milliseconds = time_car(module, logits, labels, repeats, warmup=warmup)
            data[name] = {"ms": milliseconds, "peak_memory": self.peak_memory()}
            self.rows.append((f"{name} fwd + bwd, K = {classes}, batch 128, {self.device.type}",
                              f"{milliseconds:,.1f} ms", self.peak_memory(), f"median of {repeats}"))

        def cross_entropy():
            logits.grad = None
            F.cross_entropy(logits, labels).backward()

        data["cross_entropy_ms"] = median_ms(cross_entropy, 21, self.device)
        ratio = data[rows[1][0]]["ms"] / data[rows[0][0]]["ms"]
        data["exact_over_power"] = ratio
        self.rows.append((f"CAR: exact SVD path / power iteration, K = {classes}", f"{ratio:,.0f}x", "-",
                          f"plain CE fwd + bwd {data['cross_entropy_ms']:.2f} ms"))
        self.record("car", data)

    # -- 4. the 200-epoch recipe ---------------------------------------------------------------
    def recipe(self) -> None:
        epochs = 1 if self.quick else 200
        variants = [("eager", False, None)]
        compiled = [("torch.compile", True, None), ("torch.compile + CUDA graphs", False, "reduce-overhead")]
        if self.cuda or self.args.compile_on_cpu:
            variants += compiled  # on a CPU "reduce-overhead" compiles without graphs: a check of the code path
        else:
            self.skip("recipe with torch.compile / CUDA graphs", SKIP_NO_CUDA)
        data = {"epochs": epochs, "variants": {}}
        with tempfile.TemporaryDirectory() as directory:
            root = Path(directory) / "data"
            if self.quick:
                write_cifar100(root, train_per_class=10, test_per_class=2)
            else:
                write_cifar100(root)
            previous_wall = 0.0
            for name, compile_model, mode in variants:
                # A compiled variant trains faster than eager but compiles first: about as long.
                if not self.fits(f"recipe, {name}", 30 if self.quick else max(75.0, 0.9 * previous_wall)):
                    continue
                try:
                    result = self.train(root, Path(directory) / "runs", name, epochs, compile_model, mode)
                except Exception as error:  # one variant failing (e.g. a compiler problem) must not end the suite
                    self.skip(f"recipe, {name}", f"failed: {type(error).__name__}: {error}")
                    data["variants"][name] = {"error": f"{type(error).__name__}: {error}"}
                    continue
                data["variants"][name] = result
                previous_wall = max(previous_wall, result["wall_s"])
                note = (f"training {result['train_s']:.1f} s ({result['steady_epoch_s'] * 1e3:.0f} ms/epoch steady)"
                        + (f"; compile {result['compile_s']:.0f} s" if name != "eager" and result["compile_s"] is not None
                           else ""))
                self.rows.append((f"CIFAR-100-LT ResNet-32 recipe, {epochs} epoch(s), {name}, "
                                  f"precision {result['precision']}", f"{result['wall_s']:.1f} s end to end",
                                  result["peak_memory"], note))
                self.record("recipe", data)
        self.record("recipe", data)

    def train(self, root: Path, output: Path, name: str, epochs: int, compile_model: bool, mode) -> dict:
        from longtail.engine.config import build_config
        from longtail.engine.training.trainer import Trainer

        overrides = [f"data.root={root}", f"optim.epochs={epochs}", "train.eval_every=0", "train.eval_train=false",
                     "train.progress=false", f"train.output_dir={output}",
                     f"train.run_name={name.replace(' ', '_').replace('+', 'plus')}",
                     f"train.device={self.device.type}", f"model.compile={str(compile_model).lower()}"]
        if self.quick:
            overrides += ["data.imbalance_factor=10", "optim.warmup_epochs=0"]
        config, label = build_config(recipe="cifar100-lt-r32/ce", overrides=overrides)
        from torch._dynamo.utils import counters

        counters.clear()
        self.reset_memory()
        started = time.perf_counter()
        trainer = Trainer(config, label)
        try:
            if mode is not None:
                trainer.train_model = torch.compile(trainer.train_model, mode=mode)
            results = trainer.fit()
        finally:
            trainer.close()
        self.sync()
        wall = time.perf_counter() - started
        seconds = [h["seconds"] for h in trainer.state.history]
        steady = statistics.median(seconds[1:]) if len(seconds) > 1 else seconds[0]
        return {"wall_s": wall, "train_s": sum(seconds), "first_epoch_s": seconds[0], "steady_epoch_s": steady,
                # Compile time needs a steady epoch to compare the first one with.
                "compile_s": seconds[0] - steady if len(seconds) > 1 else None,
                "precision": results["precision"]["chosen"],
                "images_per_s": results["train_images_per_s"], "test_accuracy_random_pixels": results["test"]["accuracy"],
                "peak_memory": self.peak_memory(),
                # e.g. "cudagraph_skips": CUDA graphs refused (and why, in the log) for this variant
                "inductor_counters": {k: int(v) for k, v in counters["inductor"].items()}}

    # -- output --------------------------------------------------------------------------------
    def report(self) -> str:
        env = self.results["environment"]
        machine = env.get("gpu", f"CPU only ({platform.processor() or platform.machine()}, {env['cpus']} CPUs)")
        lines = [f"`python benchmarks/gpu_suite.py{' --quick' if self.quick else ''}` on {machine}, torch {env['torch']}, "
                 f"precision auto -> {env['auto_precision']['chosen']}, {env['started']}; "
                 f"suite took {time.perf_counter() - self.started:.0f} s", "",
                 "| what | measured | peak GPU memory | note |", "|---|---|---|---|"]
        lines += [f"| {what} | {measured} | {memory} | {note} |" for what, measured, memory, note in self.rows]
        text = "\n".join(lines) + "\n"
        (self.out / "gpu_suite.md").write_text(text)
        self.record("done", True)
        return text


def _write_one_jpeg(job) -> None:
    path, height, width, seed = job
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    phase = rng.uniform(0, 6, 3)
    image = np.stack([127 + 90 * np.sin(x / (20 + 7 * c) + y / (31 - 5 * c) + phase[c]) for c in range(3)], -1)
    image += rng.normal(0, 10, image.shape)  # texture, so the file is photo-sized (not a flat gradient)
    Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(path, quality=90)


def write_jpeg_folder(root: Path, count: int, height: int, width: int, workers: int, classes: int = 10) -> None:
    """root/<class>/<i>.jpg: ``count`` real JPEG photos-alike, spread over ``classes`` folders."""
    jobs = []
    for index in range(count):
        folder = root / f"class{index % classes:02d}"
        folder.mkdir(exist_ok=True)
        jobs.append((folder / f"{index:05d}.jpg", height, width, index))
    if workers > 1:
        import multiprocessing

        with multiprocessing.get_context("spawn").Pool(workers) as pool:
            pool.map(_write_one_jpeg, jobs, chunksize=32)
    else:
        for job in jobs:
            _write_one_jpeg(job)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="gpu_suite_results", help="folder for gpu_suite.json and gpu_suite.md")
    parser.add_argument("--quick", action="store_true", help="CI-sized (automatic without CUDA)")
    parser.add_argument("--force-cpu", action="store_true", help="ignore CUDA even where present (tests)")
    parser.add_argument("--budget-s", type=float, default=450.0,
                        help="skip sections that would not fit in this many seconds in all")
    parser.add_argument("--compile-on-cpu", action="store_true",
                        help="without CUDA, still run the compiled recipe variants (minutes; checks the code path)")
    parser.add_argument("--sections", nargs="+", default=["pipeline", "files", "car", "recipe"],
                        choices=["pipeline", "files", "car", "recipe"])
    args = parser.parse_args(argv)
    suite = Suite(args)
    print(f"[gpu_suite] {json.dumps(suite.results['environment'])}", flush=True)
    if not suite.cuda:
        print(f"[gpu_suite] no CUDA device: running the CI-sized form on the CPU; GPU rows are {SKIP_NO_CUDA}",
              flush=True)
    for section in args.sections:
        section_start = time.perf_counter()
        getattr(suite, section)()
        print(f"[gpu_suite] {section} done in {time.perf_counter() - section_start:.1f} s", flush=True)
    print(suite.report(), flush=True)
    return suite.results


if __name__ == "__main__":
    main()
