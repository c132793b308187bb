"""File datasets decoded on the device: the decoded pixels are PIL's, the augmentation is the file
pipeline's (torchvision's parameter draws and ops), and a batch depends only on (seed, epoch, batch)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from longtail.data.device_decode import DeviceDecodedLoader, DeviceFileTransform, RawFiles, decode_images, is_jpeg
from longtail.data.imagefolder import ImageFolderDataset
from longtail.data.listfile import pil_loader
from longtail.data.transforms import build_file_transforms

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
    datas = [raw[i][0] for i in range(len(raw))]
    assert sum(is_jpeg(d) for d in datas) == len(datas) - 2  # the two PNGs go through PIL
    decoded = decode_images(datas, torch.device("cpu"))
    for path, image in zip(dataset.paths, decoded):
        expected = _pil_tensor(path)
        assert image.dtype == torch.uint8 and image.shape == expected.shape, path
        # libjpeg-turbo behind both (islow DCT, fancy upsampling): within one level, in practice equal.
        difference = (image.int() - expected.int()).abs()
        assert difference.max() <= 1, (path, difference.max())
        assert difference.float().mean() < 0.05, path


def test_random_resized_crop_params_are_torchvisions():
    from torchvision.transforms import v2

    transform = DeviceFileTransform("imagenet", train=True, image_size=24, min_scale=0.08)
    reference = v2.RandomResizedCrop(24, scale=(0.08, 1.0), antialias=True)
    for seed, (height, width) in enumerate([(37, 50), (500, 30), (30, 500), (224, 224), (7, 9)] * 4):
        torch.manual_seed(seed)
        expected = reference.make_params([torch.zeros(3, height, width, dtype=torch.uint8)])
        ours = transform.resized_crop_params(height, width, torch.Generator().manual_seed(seed))
        assert ours == (expected["top"], expected["left"], expected["height"], expected["width"])


@pytest.mark.parametrize("style, size", [("imagenet", 32), ("imagenet", 20)])
def test_eval_batch_equals_the_file_pipeline(image_root, style, size):
    dataset = ImageFolderDataset(image_root)
    reference = build_file_transforms(style, train=False, image_size=size)
    transform = DeviceFileTransform(style, train=False, image_size=size)
    datas = [RawFiles(dataset)[i][0] for i in range(len(dataset))]
    ours = transform(decode_images(datas, torch.device("cpu")))
    expected = torch.stack([reference(pil_loader(path)) for path in dataset.paths])
    assert ours.shape == expected.shape == (len(dataset), 3, size, size)
    # Same decoded pixels and the same v2 ops: equal up to a one-level decoder difference.
    torch.testing.assert_close(ours, expected, rtol=0, atol=1.01 / 255 / 0.224)


def test_train_batch_equals_the_file_pipeline_with_the_same_draws(image_root):
    from torchvision.transforms.v2 import functional as TF

    dataset = ImageFolderDataset(image_root)
    transform = DeviceFileTransform("imagenet", train=True, image_size=24)
    datas = [RawFiles(dataset)[i][0] for i in range(len(dataset))]
    ours = transform(decode_images(datas, torch.device("cpu")), torch.Generator().manual_seed(5))
    # Replay the draws: crops image by image, then one flip flag per image.
    generator = torch.Generator().manual_seed(5)
    params = [transform.resized_crop_params(*_pil_tensor(p).shape[-2:], generator) for p in dataset.paths]
    flipped = torch.rand(len(dataset), generator=generator) < 0.5
    assert 0 < int(flipped.sum()) < len(dataset)
    reference = build_file_transforms("imagenet", train=False, image_size=24)  # for ToDtype + Normalize only
    normalise = reference.transforms[-2:]
    expected = []
    for path, (top, left, h, w), flip in zip(dataset.paths, params, flipped):
        image = TF.resized_crop(_pil_tensor(path), top, left, h, w, [24, 24], antialias=True)
        image = TF.horizontal_flip(image) if flip else image
        expected.append(normalise[1](normalise[0](image)))
    torch.testing.assert_close(ours, torch.stack(expected), rtol=0, atol=1.01 / 255 / 0.224)


def test_cifar_style_train_is_a_padded_crop_and_flip(tmp_path):
    from longtail.data.transforms import CIFAR_MEAN, CIFAR_STD

    images = [torch.randint(0, 256, (3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(i))
              for i in range(4)]
    out = DeviceFileTransform("cifar", train=True, crop_padding=4)(images, torch.Generator().manual_seed(1))
    generator = torch.Generator().manual_seed(1)
    top = torch.randint(0, 9, (4,), generator=generator)
    left = torch.randint(0, 9, (4,), generator=generator)
    flipped = torch.rand(4, generator=generator) < 0.5
    mean = torch.tensor(CIFAR_MEAN).view(3, 1, 1)
    std = torch.tensor(CIFAR_STD).view(3, 1, 1)
    for i, image in enumerate(images):
        padded = torch.nn.functional.pad(image, [4] * 4)  # zeros, as RandomCrop(padding=4)
        crop = padded[:, top[i]:top[i] + 32, left[i]:left[i] + 32]
        crop = crop.flip(-1) if flipped[i] else crop
        torch.testing.assert_close(out[i], (crop.float() / 255 - mean) / std, rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="data.image_size"):
        DeviceFileTransform("cifar", train=True)([torch.zeros(3, 40, 40, dtype=torch.uint8)],
                                                 torch.Generator().manual_seed(0))


def test_loader_batches_depend_only_on_seed_epoch_and_batch(image_root):
    dataset = ImageFolderDataset(image_root)
    transform = DeviceFileTransform("imagenet", train=True, image_size=16)

    def batches(epoch, start_batch=0):
        loader = DeviceDecodedLoader(dataset, 5, list(range(len(dataset))), "cpu", transform, seed=3, workers=0)
        loader.set_epoch(epoch, start_batch)
        assert len(loader) == 4
        return list(loader)

    first = batches(0)
    assert [images.shape[0] for images, _ in first] == [5, 5, 5, 1]
    assert first[0][0].is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(first[0][1], dataset.labels[:5])
    for (a, la), (b, lb) in zip(first[2:], batches(0, start_batch=2)):  # resuming mid-epoch replays exactly
        assert torch.equal(a, b) and torch.equal(la, lb)
    assert not torch.equal(first[0][0], batches(1)[0][0])  # a new epoch draws new crops


def test_missing_file_is_named(tmp_path, image_root):
    dataset = ImageFolderDataset(image_root)
    dataset.paths[0] = str(tmp_path / "gone.jpg")
    with pytest.raises(FileNotFoundError, match="gone.jpg"):
        RawFiles(dataset)[0]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (nvJPEG)")
def test_gpu_decoding_matches_pil_within_decoder_tolerance(image_root):
    dataset = ImageFolderDataset(image_root)
    datas = [RawFiles(dataset)[i][0] for i in range(len(dataset))]
    decoded = decode_images(datas, torch.device("cuda"))
    for path, image in zip(dataset.paths, decoded):
        assert image.device.type == "cuda"
        difference = (image.cpu().int() - _pil_tensor(path).int()).abs().float()
        # nvJPEG's IDCT and chroma upsampling differ from libjpeg's by a few levels at most.
        assert difference.mean() < 2.0 and difference.max() <= 32, path


def test_the_engine_decodes_on_the_device_only_when_training_on_a_gpu(image_root):
    from longtail.engine.config import build_config
    from longtail.engine.data_setup import FileBatches, _file_batches

    config, _ = build_config(overrides=["data.image_size=96", "data.randaugment=true", "train.seed=4"])
    dataset = ImageFolderDataset(image_root)
    on_gpu = _file_batches(config, dataset, 8, list(range(len(dataset))), torch.device("cuda"), False, train=True)
    assert isinstance(on_gpu, DeviceDecodedLoader) and on_gpu.seed == 4
    assert on_gpu.transform == DeviceFileTransform("imagenet", train=True, image_size=96, randaugment=True, crop_padding=2)
    evaluation = _file_batches(config, dataset, 8, [0, 1], torch.device("cuda"), False, train=False)
    assert evaluation.transform == DeviceFileTransform("imagenet", train=False, image_size=96, crop_padding=2)
    assert isinstance(_file_batches(config, dataset, 8, [0], torch.device("cpu"), False, train=True), FileBatches)
