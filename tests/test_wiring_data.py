"""Data options reach the pipeline they configure (issue 22), seen on what the pipeline yields:
the file pipeline's images under data.autoaugment / data.randaugment, the test split carved by
data.test_fraction, the files data.check_images=decode refuses, and the logits of the model the
engine builds with model.head_scale."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from conftest import write_image_folder
from longtail.data.datasets.imagefiles import BadImagesError
from longtail.engine.config import build_config
from longtail.engine.runtime.distributed import DistributedContext
from longtail.engine.training.components import build_model
from longtail.engine.training.data_setup import build_data
from longtail.models.heads import CosineHead


def data_for(root: Path, *overrides: str):
    config, _ = build_config(None, None, ["data.name=imagefolder", f"data.root={root}", "data.workers=0",
                                          "data.batch_size=8", *overrides])
    return build_data(config, torch.device("cpu"), DistributedContext())


@pytest.fixture(scope="module")
def png_folder(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("png")
    write_image_folder(root, [10, 6, 3], size=(12, 14), split="train")
    write_image_folder(root, [3, 3, 3], size=(12, 14), split="test", seed=1)
    return root


def test_randaugment_and_autoaugment_take_effect_on_image_files(png_folder):
    def first_batch(*options):
        data = data_for(png_folder, "data.in_memory=false", "data.crop_padding=0", "data.flip=false", *options)
        data.train_loader.set_epoch(0)
        return data, next(iter(data.train_loader))[0]

    _, plain = first_batch()
    _, again = first_batch()
    assert torch.equal(plain, again)  # without a policy the file batches are reproducible: a fair baseline
    for option, policy in (("data.randaugment=true", "RandAugment"), ("data.autoaugment=true", "AutoAugment")):
        data, augmented = first_batch(option)
        assert not torch.equal(augmented, plain), option
        assert type(data.train_loader.dataset.transform.policy).__name__ == policy


def test_test_fraction_is_the_share_of_each_class_held_out_rounded_to_nearest(tmp_path):
    root = tmp_path / "single"
    write_image_folder(root, [10, 6, 4], size=(8, 8))
    # 0.3 of (10, 6, 4) = (3, 1.8, 1.2) -> (3, 2, 1); ignoring the option (0.2) gives (2, 1, 1),
    # rounding up (3, 2, 2), rounding down (3, 1, 1).
    data = data_for(root, "data.test_fraction=0.3")
    layout = data.split_info["layout"]
    assert layout["test_fraction"] == 0.3 and layout["test_per_class"] == [3, 2, 1]
    test_labels = torch.cat([labels for _, labels in data.eval_loaders["test"]])
    assert torch.bincount(test_labels, minlength=3).tolist() == [3, 2, 1]
    assert data.class_counts == [7, 4, 3]


def test_check_images_decode_finds_a_file_whose_header_is_fine(tmp_path):
    root = tmp_path / "damaged"
    write_image_folder(root, [4, 4], size=(16, 16), split="train")
    write_image_folder(root, [2, 2], size=(16, 16), split="test", seed=1)
    path = root / "train" / "c0" / "000.png"
    data = bytearray(path.read_bytes())
    start = data.index(b"IDAT") + 8
    data[start:start + 20] = bytes(20)  # damage the compressed pixels, keep header and IEND
    path.write_bytes(bytes(data))
    files = "data.in_memory=false", "data.normalization=imagenet"  # nothing else decodes the files
    assert data_for(root, *files, "data.check_images=header").class_counts == [4, 4]  # the header scan passes it
    with pytest.raises(BadImagesError, match="000.png"):
        data_for(root, *files, "data.check_images=decode")
    assert data_for(root, *files, "data.check_images=decode", "data.bad_images=skip").class_counts == [3, 4]


def test_the_engine_builds_the_cosine_head_with_model_head_scale():
    config, _ = build_config("fashion-mnist-lt", None, ["model.name=resnet20", "model.head=cosine",
                                                        "model.head_scale=7.5"])
    model = build_model(config, 5, 1, torch.device("cpu")).eval()
    heads = [m for m in model.modules() if isinstance(m, CosineHead)]
    assert len(heads) == 1
    seen = []
    heads[0].register_forward_hook(lambda module, inputs, output: seen.append((inputs[0], output)))
    with torch.no_grad():
        model(torch.randn(4, 1, 28, 28, generator=torch.Generator().manual_seed(0)))
    features, logits = seen[0]
    expected = 7.5 * F.normalize(features.double(), dim=1) @ F.normalize(heads[0].weight.double(), dim=1).t()
    torch.testing.assert_close(logits.double(), expected, rtol=1e-5, atol=1e-5)
