"""Image files as users have them (PNG / JPEG folders): native size, in memory, options, sizes, bad files, layouts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from conftest import image_run_overrides, write_image_folder
from longtail.cli import main
from longtail.data import FileLoader, InMemoryLoader, Preprocessing
from longtail.engine.config import ConfigError, build_config
from longtail.engine.training.data_setup import build_data
from longtail.engine.runtime.distributed import DistributedContext


def data_for(root: Path, *overrides: str):
    config, _ = build_config(None, None, ["data.name=imagefolder", f"data.root={root}", "data.workers=0",
                                          "data.batch_size=8", *overrides])
    return build_data(config, torch.device("cpu"), DistributedContext())


def all_batches(loader) -> torch.Tensor:
    return torch.cat([images for images, _ in loader])


@pytest.fixture(scope="module")
def jpeg_folder(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("jpeg")
    write_image_folder(root, [10, 6, 3], size=(12, 14), fmt="JPEG", split="train")
    write_image_folder(root, [3, 3, 3], size=(12, 14), fmt="JPEG", split="test", seed=1)
    return root


def test_small_images_train_at_native_size_in_memory_and_both_pipelines_evaluate_alike(jpeg_folder):
    memory = data_for(jpeg_folder)
    assert isinstance(memory.train_loader, InMemoryLoader)
    assert memory.preprocessing.size == (12, 14) and memory.preprocessing.resize == "none"
    # The run's record of how its images were read: 19 training + 9 test JPEGs of 12x14 RGB, kept native.
    assert memory.split_info["images"] == {"pipeline": "in-memory", "resize": "native", "size": [12, 14], "color": "RGB",
                                           "sizes_found": {"12x14": 28}, "check": "header"}
    files = data_for(jpeg_folder, "data.in_memory=false")
    assert isinstance(files.train_loader, FileLoader) and files.preprocessing == memory.preprocessing
    for split in ("test", "train"):
        assert torch.equal(all_batches(memory.eval_loaders[split]), all_batches(files.eval_loaders[split]))
    # Evaluation is exactly the recorded preprocessing applied to the decoded file.
    from PIL import Image

    first = sorted((jpeg_folder / "test" / "c0").iterdir())[0]
    assert torch.equal(all_batches(files.eval_loaders["test"])[0], memory.preprocessing(Image.open(first)))


@pytest.mark.parametrize("in_memory", ["true", "false"])
def test_crop_flip_cutout_options_take_effect_on_both_pipelines(jpeg_folder, in_memory):
    def train_and_eval(*options):
        data = data_for(jpeg_folder, f"data.in_memory={in_memory}", "data.sampler=instance", *options)
        data.train_loader.set_epoch(0)
        images, labels = zip(*data.train_loader)
        order = data.train_loader.sampler.rank_indices(0)[: sum(len(x) for x in labels)]
        return torch.cat(images), all_batches(data.eval_loaders["train"])[order]

    trained, evaluated = train_and_eval("data.crop_padding=0", "data.flip=false")
    assert torch.equal(trained, evaluated)  # nothing random left: training input = evaluation input
    trained, evaluated = train_and_eval("data.crop_padding=0", "data.flip=true")
    mirrored = torch.tensor([torch.equal(t, e.flip(-1)) for t, e in zip(trained, evaluated)])
    same = torch.tensor([torch.equal(t, e) for t, e in zip(trained, evaluated)])
    assert torch.all(mirrored | same) and mirrored.any() and same.any()
    trained, evaluated = train_and_eval("data.crop_padding=0", "data.flip=false", "data.cutout=4")
    holes = (trained != evaluated).any(dim=1)
    assert torch.all(trained.permute(1, 0, 2, 3)[:, holes] == 0) and holes.flatten(1).any(dim=1).all()
    trained, evaluated = train_and_eval("data.crop_padding=2", "data.flip=false")
    assert not torch.equal(trained, evaluated) and trained.shape == evaluated.shape


def test_grey_pngs_are_one_channel_and_channels_3_repeats_them(tmp_path):
    write_image_folder(tmp_path, [4, 4], size=(10, 10), grey=True, split="train")
    write_image_folder(tmp_path, [2, 2], size=(10, 10), grey=True, split="test")
    grey = data_for(tmp_path)
    assert grey.in_channels == 1 and grey.preprocessing.color == "L"
    for in_memory in ("true", "false"):
        rgb = data_for(tmp_path, "data.channels=3", f"data.in_memory={in_memory}")
        batch = all_batches(rgb.eval_loaders["test"])
        assert rgb.in_channels == 3 and batch.shape[1] == 3 and torch.equal(batch[:, 0], batch[:, 2])
        train_batch, _ = next(iter(rgb.train_loader))
        assert train_batch.shape[1] == 3


def test_options_a_pipeline_cannot_honour_are_refused(jpeg_folder, tmp_path, capsys):
    with pytest.raises(ConfigError, match="colour"):
        data_for(jpeg_folder, "data.channels=1")
    with pytest.raises(ConfigError, match="ImageNet-style"):
        data_for(jpeg_folder, "data.in_memory=true", "data.resize=imagenet")
    with pytest.raises(ConfigError, match="data.resize"):
        data_for(jpeg_folder, "data.resize=stretch")
    with pytest.raises(ConfigError, match="image_size"):
        data_for(jpeg_folder, "data.resize=native", "data.image_size=20")
    with pytest.raises(ConfigError, match="its own test split"):
        data_for(jpeg_folder, "data.test_fraction=0.3")  # only a single folder is split
    config, _ = build_config(None, None, ["data.bad_images=skip"])  # the embedded arrays have no files
    with pytest.raises(ConfigError, match="image files"):
        build_data(config, torch.device("cpu"), DistributedContext())
    code = main(["train", *image_run_overrides(jpeg_folder, tmp_path / "runs"), "data.channels=1"])
    assert code == 2 and "data.channels=1" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_image_size_resizes_training_and_evaluation_alike(jpeg_folder):
    for in_memory in ("true", "false"):
        data = data_for(jpeg_folder, "data.image_size=20", f"data.in_memory={in_memory}")
        assert data.preprocessing.resize == "resize" and data.preprocessing.size == (20, 20)
        assert all_batches(data.eval_loaders["test"]).shape[-2:] == (20, 20)
        assert next(iter(data.train_loader))[0].shape[-2:] == (20, 20)


def test_mixed_sizes_are_resized_to_the_most_common_with_a_line_or_refused_when_native(tmp_path, capsys):
    write_image_folder(tmp_path, [5, 5], size=lambda label, n: (16, 16) if n < 3 else (20, 24), split="train")
    write_image_folder(tmp_path, [2, 2], size=lambda label, n: (30, 30) if n == 0 else (16, 16), split="test")
    data = data_for(tmp_path)
    assert data.preprocessing.size == (16, 16) and data.preprocessing.resize == "resize"
    assert "3 different sizes" in capsys.readouterr().out
    assert all_batches(data.eval_loaders["test"]).shape == (4, 3, 16, 16)
    with pytest.raises(ConfigError, match="3 different sizes: 16x16"):
        data_for(tmp_path, "data.resize=native")


def test_large_images_are_trained_imagenet_style_with_a_line(tmp_path, capsys):
    write_image_folder(tmp_path, [2, 2], size=(150, 170), fmt="JPEG", split="train")
    write_image_folder(tmp_path, [1, 1], size=(150, 170), fmt="JPEG", split="test")
    data = data_for(tmp_path, "data.eval_batch_size=2")
    assert "images are large" in capsys.readouterr().out
    assert data.preprocessing.resize == "resize_center_crop" and data.preprocessing.size == (224, 224)
    assert isinstance(data.train_loader, FileLoader)
    assert data.preprocessing.mean == pytest.approx((0.485, 0.456, 0.406))
    assert all_batches(data.eval_loaders["test"]).shape == (2, 3, 224, 224)


def write_bad_files(folder: Path) -> list[Path]:
    """Zero-byte, not-an-image, truncated JPEG and PNG files among good ones."""
    good_jpeg = next(folder.glob("*.jpg"), None) or next(folder.glob("*.png"))
    from PIL import Image

    image = Image.open(good_jpeg).convert("RGB")
    bad = [folder / "empty.jpg", folder / "notes.png", folder / "cut.jpg", folder / "cut.png"]
    bad[0].write_bytes(b"")
    bad[1].write_text("this is not an image\n")
    image.save(folder / "whole.jpg", format="JPEG")
    bad[2].write_bytes((folder / "whole.jpg").read_bytes()[:-200])
    (folder / "whole.jpg").unlink()
    image.save(folder / "whole.png", format="PNG")
    bad[3].write_bytes((folder / "whole.png").read_bytes()[:-30])
    (folder / "whole.png").unlink()
    return bad


def test_bad_files_are_all_reported_before_training_or_skipped_and_recorded(tmp_path, capsys):
    root = tmp_path / "data"
    write_image_folder(root, [6, 6], size=(12, 12), fmt="JPEG", split="train")
    write_image_folder(root, [2, 2], size=(12, 12), fmt="JPEG", split="test")
    bad = write_bad_files(root / "train" / "c1") + write_bad_files(root / "test" / "c0")
    output = tmp_path / "runs"
    code = main(["train", *image_run_overrides(root, output)])
    err = capsys.readouterr().err
    assert code == 2 and "8 image file(s) cannot be read" in err and "data.bad_images=skip" in err
    for path in bad:
        assert str(path) in err
    assert "empty file" in err and "not an image" in err and "Truncated File" in err and "truncated PNG" in err
    assert not output.exists()  # nothing was trained or written

    assert main(["train", *image_run_overrides(root, output), "data.bad_images=skip"]) == 0
    run = next(output.iterdir())
    skipped = json.loads((run / "class_counts.json").read_text())["split"]["skipped_images"]
    assert sorted(entry["path"] for entry in skipped) == sorted(map(str, bad))
    assert json.loads((run / "metrics.json").read_text())["test"]["num_samples"] == 4


def test_full_decode_check_finds_corruption_the_header_scan_cannot(tmp_path):
    from longtail.data.datasets.imagefiles import scan_images

    write_image_folder(tmp_path, [1], size=(32, 32), fmt="PNG")
    path = next((tmp_path / "c0").iterdir())
    data = bytearray(path.read_bytes())
    start = data.index(b"IDAT") + 8
    data[start : start + 20] = bytes(20)  # damage the compressed pixels, keep header and IEND
    path.write_bytes(bytes(data))
    assert scan_images([str(path)]).problems == []
    problems = scan_images([str(path)], decode=True).problems
    assert len(problems) == 1 and problems[0][0] == str(path)


def test_a_single_folder_is_split_per_class_seeded_and_recorded(tmp_path, capsys):
    root = tmp_path / "flowers"
    write_image_folder(root, [10, 5, 2], size=(12, 12))
    output = tmp_path / "runs"
    assert main(["train", *image_run_overrides(root, output), "data.test_fraction=0.2"]) == 0
    assert "holding out 0.2 of each class" in capsys.readouterr().out
    run = next(output.iterdir())
    counts = json.loads((run / "class_counts.json").read_text())
    layout = counts["split"]["layout"]
    assert layout["test_per_class"] == [2, 1, 1] and layout["seed"] == 0
    assert counts["train_counts"] == [8, 4, 1] and counts["classes"] == ["c0", "c1", "c2"]
    assert json.loads((run / "metrics.json").read_text())["test"]["num_samples"] == 4
    # Seeded: the same seed holds out the same files, another seed others.
    config, _ = build_config(None, None, ["data.name=imagefolder", f"data.root={root}", "data.workers=0"])
    again = build_data(config, torch.device("cpu"), DistributedContext())
    assert again.split_info["layout"]["test_index_hash"] == layout["test_index_hash"]
    config.data.split_seed = 1
    other = build_data(config, torch.device("cpu"), DistributedContext())
    assert other.split_info["layout"]["test_index_hash"] != layout["test_index_hash"]

    capsys.readouterr()
    assert main(["data", "imagefolder", "--root", str(root)]) == 0
    table = capsys.readouterr().out
    assert "17 samples, 3 classes" in table and "c0" in table and "c2" in table and "single folder" in table


def test_a_class_too_small_to_split_is_refused(tmp_path, capsys):
    write_image_folder(tmp_path / "d", [4, 1], size=(8, 8))
    assert main(["train", *image_run_overrides(tmp_path / "d", tmp_path / "runs")]) == 2
    assert "fewer than 2 images" in capsys.readouterr().err


def test_randaugment_and_autoaugment_take_effect_in_memory(jpeg_folder):
    def first_batch(*options):
        data = data_for(jpeg_folder, "data.in_memory=true", "data.crop_padding=0", "data.flip=false", *options)
        data.train_loader.set_epoch(0)
        return next(iter(data.train_loader))[0]

    plain = first_batch()
    for option in ("data.randaugment=true", "data.autoaugment=true"):
        augmented = first_batch(option)
        assert not torch.equal(augmented, plain)
        assert torch.equal(augmented, first_batch(option))  # seeded per sample: reproducible
