"""File datasets decoded on the device: the decoded pixels are PIL's, and the batches are the file
pipeline's (FileLoader's per-sample seeds, the same transforms), on real JPEG files."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from longtail.data.loading.device_decode import DeviceDecodedLoader, RawFiles, decode_files, is_jpeg
from longtail.data.datasets.imagefolder import ImageFolderDataset
from longtail.data.datasets.listfile import pil_loader
from longtail.data.transforms.augment import build_file_transforms

SIZES = [(37, 50), (64, 48), (40, 40), (23, 81), (48, 64), (50, 37)]


def _natural(height, width, seed):
    """Smooth colour gradients plus texture and noise: what a photo gives a JPEG encoder."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    channels = [127 + 100 * np.sin(x / (3 + c + seed % 5) + y / (5 + 2 * c)) for c in range(3)]
    image = np.stack(channels, -1) + rng.normal(0, 12, (height, width, 3))
    return np.clip(image, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def image_root(tmp_path_factory):
    """root/<class>/<files>: RGB JPEGs of several sizes and qualities, a greyscale JPEG, a PNG."""
    root = tmp_path_factory.mktemp("jpeg-folder")
    for label, name in enumerate(("cat", "dog")):
        (root / name).mkdir()
        for index, (height, width) in enumerate(SIZES):
            image = Image.fromarray(_natural(height, width, 10 * label + index))
            image.save(root / name / f"{index}.jpg", quality=70 + 5 * index)
        Image.fromarray(_natural(30, 44, label + 100)[..., 0]).save(root / name / "grey.jpg", quality=90)
        Image.fromarray(_natural(28, 36, label + 200)).save(root / name / "lossless.png")
    return root


def _pil_tensor(path):
    return torch.from_numpy(np.asarray(pil_loader(path)).copy()).permute(2, 0, 1)


def test_cpu_decoding_gives_pils_pixels(image_root):
    dataset = ImageFolderDataset(image_root)
    raw = RawFiles(dataset)
    datas = [raw[(i, None, i)][1] for i in range(len(raw))]
    assert sum(is_jpeg(d) for d in datas) == len(datas) - 2  # the two PNGs go through PIL
    decoded = decode_files(datas, torch.device("cpu"))
    for path, image in zip(dataset.paths, decoded):
        expected = _pil_tensor(path)
        assert image.dtype == torch.uint8 and image.shape == expected.shape, path
        # libjpeg-turbo behind both (islow DCT, fancy upsampling): within one level, in practice equal.
        difference = (image.int() - expected.int()).abs()
        assert difference.max() <= 1, (path, difference.max())
        assert difference.float().mean() < 0.05, path


def _loaders(dataset, transform, seed=3, **options):
    """(FileLoader, DeviceDecodedLoader on the CPU) over the same dataset, transform and keys."""
    from longtail.data.loading.loader import FileLoader

    copy = dataset.subset(range(len(dataset)))
    copy.transform = transform
    order = list(range(len(dataset)))[::-1]
    return [cls(copy, 5, order, "cpu", True, 0, False, seed=seed, **options) for cls in (FileLoader, DeviceDecodedLoader)]


def _assert_same_batches(first, second, epoch=0, start_batch=0):
    first.set_epoch(epoch, start_batch)
    second.set_epoch(epoch, start_batch)
    pairs = list(zip(first, second))
    assert len(pairs) == len(first) - start_batch
    for (a, labels_a), (b, labels_b) in pairs:
        assert torch.equal(labels_a, labels_b) and a.shape == b.shape and a.dtype == b.dtype
        assert b.is_contiguous(memory_format=torch.channels_last)
        # Same decoded pixels (within one level), same per-sample draws and the same ops.
        torch.testing.assert_close(b, a, rtol=0, atol=1.01 / 255 / 0.2)
    return pairs


IMAGENET = dict(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))


@pytest.mark.parametrize("resize, size", [("resize_center_crop", (24, 24)), ("resize", (20, 28))])
def test_evaluation_batches_are_the_file_pipelines(image_root, resize, size):
    from longtail.data.transforms.preprocess import Preprocessing

    preprocessing = Preprocessing(size=size, resize=resize, **IMAGENET)
    _assert_same_batches(*_loaders(ImageFolderDataset(image_root), preprocessing))


@pytest.mark.parametrize("options", [
    dict(resize="resize_center_crop", crop_padding=4, flip=True),                    # RandomResizedCrop + flip
    dict(resize="resize", crop_padding=3, flip=True, cutout=6, randaugment=True),    # resize, padded crop, policy
    dict(resize="resize", crop_padding=0, flip=False, autoaugment=True),
])
def test_training_batches_are_the_file_pipelines_with_the_same_draws(image_root, options):
    from longtail.data.transforms.preprocess import Preprocessing

    options = dict(options)
    preprocessing = Preprocessing(size=(24, 24), resize=options.pop("resize"), **IMAGENET)
    transform = build_file_transforms(preprocessing, train=True, **options)
    cpu, device = _loaders(ImageFolderDataset(image_root), transform, augment=True)
    pairs = _assert_same_batches(cpu, device, epoch=2)
    again = _assert_same_batches(cpu, device, epoch=2, start_batch=2)  # resuming mid-epoch replays exactly
    for (_, (full, _)), (_, (resumed, _)) in zip(pairs[2:], again):
        assert torch.equal(full, resumed)
    device.set_epoch(3)
    assert not torch.equal(next(iter(device))[0], pairs[0][1][0])  # another epoch, other draws


def test_the_engine_decodes_on_the_device_when_training_on_a_gpu(image_root, tmp_path):
    """build_data with a CUDA device (no CUDA needed: file loaders touch the device only when iterated)."""
    from longtail.data.loading.loader import FileLoader
    from longtail.engine.config import build_config
    from longtail.engine.training.data_setup import build_data
    from longtail.engine.runtime.distributed import DistributedContext

    overrides = ["data.name=imagefolder", f"data.root={image_root}", "data.imbalance_factor=null",
                 "data.in_memory=false", "data.image_size=24", "data.workers=0", "train.eval_train=false",
                 "data.test_fraction=0.25"]
    config, _ = build_config(overrides=overrides)
    on_gpu = build_data(config, torch.device("cuda"), DistributedContext())
    assert type(on_gpu.train_loader) is DeviceDecodedLoader
    assert all(type(loader) is DeviceDecodedLoader for loader in on_gpu.eval_loaders.values())
    on_cpu = build_data(config, torch.device("cpu"), DistributedContext())
    assert type(on_cpu.train_loader) is FileLoader


def test_missing_file_is_named(tmp_path, image_root):
    dataset = ImageFolderDataset(image_root)
    dataset.paths[0] = str(tmp_path / "gone.jpg")
    with pytest.raises(FileNotFoundError, match="gone.jpg"):
        RawFiles(dataset)[(0, None, 0)]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (nvJPEG)")
def test_gpu_decoding_matches_pil_within_decoder_tolerance(image_root):
    dataset = ImageFolderDataset(image_root)
    datas = [RawFiles(dataset)[(i, None, i)][1] for i in range(len(dataset))]
    decoded = decode_files(datas, torch.device("cuda"))
    for path, image in zip(dataset.paths, decoded):
        assert image.device.type == "cuda"
        difference = (image.cpu().int() - _pil_tensor(path).int()).abs().float()
        # nvJPEG's IDCT and chroma upsampling differ from libjpeg's by a few levels at most.
        assert difference.mean() < 2.0 and difference.max() <= 32, path

