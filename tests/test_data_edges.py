"""Data-package behaviour that mutmut found unobserved (docs/mutation.md, section 2, data): each test
observes the component itself (pixels, channels, dtypes, crop geometry, hole positions, records,
messages) against an independent computation (PIL, numpy, the documented formula)."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from longtail.data import load_cifar
from longtail.data.datasets.imagefiles import BadImagesError
from longtail.data.loading.loader import FileLoader, InMemoryLoader
from longtail.data.loading.pair_loader import FilePairLoader, PairViewDataset
from longtail.data.sampling.pair_sampler import PairSampler
from longtail.data.sampling.samplers import build_sampler
from longtail.data.splits.analyze import analyze
from longtail.data.splits.groups import hold_out_groups
from longtail.data.transforms import views as views_module
from longtail.data.transforms.augment import BatchAugment, FileAugment, random_resized_crop
from longtail.data.transforms.convert import convert_channels, to_uint8_image
from longtail.data.transforms.mixing import Mixup
from longtail.data.transforms.preprocess import Preprocessing
from longtail.data.transforms.views import BatchViews, file_view_transforms


# -- geometry ----------------------------------------------------------------------------------

def test_random_resized_crop_reads_the_box_it_is_given():
    """A linear ramp survives bilinear resampling exactly, so every output pixel must hold the value
    at the source position of torchvision's resized-crop convention (align_corners=False):
    x = left + (j + 1/2) * box_w / W - 1/2 (and likewise for rows)."""
    height, width = 16, 32
    ys, xs = np.meshgrid(np.arange(height), np.arange(width), indexing="ij")
    images = torch.from_numpy(np.stack([4 * xs, 8 * ys, 0 * xs]).astype(np.uint8))[None]
    top, left, box_h, box_w = 4, 8, 8, 16
    out = random_resized_crop(images, torch.tensor([[top, left, box_h, box_w]]))[0].numpy()
    j = np.arange(width)
    i = np.arange(height)
    source_x = left + (j + 0.5) * box_w / width - 0.5
    source_y = top + (i + 0.5) * box_h / height - 0.5
    np.testing.assert_array_equal(out[0], np.broadcast_to(np.round(4 * source_x), (height, width)))
    np.testing.assert_array_equal(out[1], np.broadcast_to(np.round(8 * source_y)[:, None], (height, width)))


def _hole_rows(batch: torch.Tensor) -> list[list[int]]:
    """Per image, the rows that hold a zeroed pixel (the Cutout hole; the image is otherwise non-zero)."""
    return [sorted(set((image[0] == 0).nonzero()[:, 0].tolist())) for image in batch]


def test_in_memory_cutout_centres_cover_the_height_of_a_non_square_image():
    """Cutout centres are uniform over rows 0..H-1 even when H != W (here H = 4 W); with size 2 the
    hole is rows [cy - 1, cy + 1), so its last row is the centre."""
    height, width, count = 32, 8, 256
    images = torch.full((count, 1, height, width), 200, dtype=torch.uint8)
    loader = InMemoryLoader(images, labels=torch.zeros(count, dtype=torch.long), mean=[0.0], std=[1.0],
                            batch_size=count, augment=BatchAugment(crop_padding=0, flip=False, cutout_size=2), seed=3)
    (batch, _), = list(loader)
    centres = torch.tensor([rows[-1] for rows in _hole_rows(batch)])
    assert int(centres.max()) == height - 1 and int(centres.min()) == 0
    assert 0.35 < float((centres >= height // 2).double().mean()) < 0.65  # uniform: half in the lower half


def test_file_cutout_centres_include_the_first_row():
    """FileAugment's Cutout centre is uniform over 0..H-1: centre row 0 gives a one-row hole (size 2,
    rows [-1, 1) clipped), and every centre row turns up about 1/H of the time."""
    preprocessing = Preprocessing(size=(8, 8), mean=(0.0,), std=(1.0,), color="L")
    augment = FileAugment(preprocessing, crop_padding=0, flip=False, cutout=2)
    image = Image.fromarray(np.full((8, 8), 255, dtype=np.uint8), mode="L")
    torch.manual_seed(0)
    centres = [_hole_rows(augment(image)[None])[0][-1] for _ in range(400)]
    counts = np.bincount(centres, minlength=8)
    assert counts.min() >= 20, counts  # expected 50 each; centre 0 is the one-row hole [0]


# -- channels and dtypes -------------------------------------------------------------------------

def test_rgba_tensors_lose_their_alpha_as_pil_does():
    rng = np.random.RandomState(0)
    rgba = rng.randint(0, 256, size=(5, 6, 4), dtype=np.uint8)
    expected = np.asarray(Image.fromarray(rgba, mode="RGBA").convert("RGB"))
    converted = convert_channels(torch.from_numpy(rgba).permute(2, 0, 1)[None], "RGB")
    assert converted.shape == (1, 3, 5, 6)
    np.testing.assert_array_equal(converted[0].permute(1, 2, 0).numpy(), expected)
    np.testing.assert_array_equal(to_uint8_image(torch.from_numpy(rgba).permute(2, 0, 1), "RGB").permute(1, 2, 0).numpy(),
                                  expected)


def test_to_uint8_image_refuses_a_batch_tensor():
    with pytest.raises(ValueError, match=r"uint8 tensor \(C, H, W\).*\(1, 3, 4, 4\)"):
        to_uint8_image(torch.zeros(1, 3, 4, 4, dtype=torch.uint8), "RGB")


def test_mixup_of_float64_images_gives_float64_targets():
    """Targets in the images' dtype (float64 in, float64 out): lam * onehot(y) + (1 - lam) * onehot(y[perm]),
    checked in float64 against the mixing weights read off basis-vector images."""
    size, classes = 6, 4
    images = torch.eye(size, dtype=torch.float64).view(size, size, 1, 1).expand(size, size, 2, 2).clone()
    labels = torch.tensor([0, 1, 2, 3, 0, 1])
    mixed, targets = Mixup(alpha=0.7)(images, labels, classes, torch.Generator().manual_seed(5))
    weights = mixed[:, :, 0, 0].numpy()  # (B, B) share of each source image
    assert targets.dtype == torch.float64 and mixed.dtype == torch.float64
    np.testing.assert_allclose(targets.numpy(), weights @ np.eye(classes)[labels.numpy()], rtol=0, atol=1e-15)


# -- ConCutMix views -------------------------------------------------------------------------------

def test_grey_views_are_repeated_to_the_models_channels():
    """A one-channel data set feeding a 3-channel model: every view has 3 identical channels, in the
    batched views and in the file views."""
    images = torch.randint(0, 256, (4, 1, 16, 16), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    views = BatchViews("cifar", [0.5], [0.25], policy="none", repeat_channels=3)
    for view in (views.classification(images, seed=1), views.contrastive(images, seed=2)):
        assert view.shape == (4, 3, 16, 16)
        assert torch.equal(view[:, 0], view[:, 1]) and torch.equal(view[:, 0], view[:, 2])
    # The one-channel view is what the three channels repeat.
    single = BatchViews("cifar", [0.5], [0.25], policy="none").classification(images, seed=1)
    assert torch.equal(views.classification(images, seed=1)[:, :1], single)
    image = Image.fromarray(images[0, 0].numpy(), mode="L")
    for transform in file_view_transforms("cifar", (16, 16), [0.5], [0.25], policy="none", grey=True, repeat_channels=3):
        view = transform(image)
        assert view.shape == (3, 16, 16) and torch.equal(view[0], view[1]) and torch.equal(view[0], view[2])


def _jitters(transform) -> list:
    from torchvision.transforms import v2

    found = []
    for step in transform.transforms:
        if isinstance(step, v2.RandomApply):
            found += [t for t in step.transforms if isinstance(t, v2.ColorJitter)]
        elif isinstance(step, v2.ColorJitter):
            found.append(step)
    return found


def _ranges(jitter):
    return [tuple(round(float(v), 6) for v in value) if value is not None else None
            for value in (jitter.brightness, jitter.contrast, jitter.saturation, jitter.hue)]


def test_file_view_colour_jitter_is_the_released_recipe():
    """BCL / ConCutMix's released views: contrastive ColorJitter(0.4, 0.4, 0.4, 0.1) (brightness /
    contrast only for grey images), ImageNet classification ColorJitter(0.4, 0.4, 0.4, 0) (saturation
    dropped for grey)."""
    full = [(0.6, 1.4), (0.6, 1.4), (0.6, 1.4), (-0.1, 0.1)]
    _, contrastive = file_view_transforms("cifar", (8, 8), [0.5] * 3, [0.25] * 3, policy="none")
    assert [_ranges(j) for j in _jitters(contrastive)] == [full]
    _, grey_contrastive = file_view_transforms("cifar", (8, 8), [0.5], [0.25], policy="none", grey=True)
    assert [_ranges(j) for j in _jitters(grey_contrastive)] == [[(0.6, 1.4), (0.6, 1.4), None, None]]
    classification, _ = file_view_transforms("imagenet", (8, 8), [0.5] * 3, [0.25] * 3, policy="none")
    assert [_ranges(j) for j in _jitters(classification)] == [[(0.6, 1.4), (0.6, 1.4), (0.6, 1.4), None]]


def test_batched_colour_jitter_factors_span_one_plus_and_minus_the_spread(monkeypatch):
    """The batched contrastive view's jitter draws brightness / contrast / saturation factors uniform in
    [1 - 0.4, 1 + 0.4] and hue in [-0.1, 0.1] (seen on the factors color_jitter_batched receives)."""
    seen = []
    original = views_module.color_jitter_batched

    def recording(images, *factors_and_order):
        seen.append([f.clone() for f in factors_and_order[:4]])
        return original(images, *factors_and_order)

    monkeypatch.setattr(views_module, "color_jitter_batched", recording)
    images = torch.randint(0, 256, (512, 3, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    BatchViews("cifar", [0.5] * 3, [0.25] * 3, policy="none").contrastive(images, seed=0)
    (brightness, contrast, saturation, hue), = seen
    for factors in (brightness, contrast, saturation):
        assert 0.6 <= float(factors.min()) < 0.65 and 1.35 < float(factors.max()) <= 1.4
    assert -0.1 <= float(hue.min()) < -0.09 and 0.09 < float(hue.max()) <= 0.1


# -- loaders and samplers -------------------------------------------------------------------------

class _TensorImages:
    """A file-dataset stand-in: item i is (image i, label i); ``transform`` None as PairViewDataset needs."""

    transform = None

    def __init__(self, labels):
        self.labels = np.asarray(labels)

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, index):
        return torch.full((1, 2, 2), float(index)), int(self.labels[index])


def test_file_pair_loader_batches_follow_the_sampler_and_mix_by_global_batch_index():
    """Batch k holds the sampler's pairs k * B .. (k + 1) * B - 1 and has a foreground exactly when
    mixes(epoch, k); a resumed epoch (start_batch 2) yields the uninterrupted epoch's batches 2, 3."""
    labels = [0] * 8 + [1] * 4 + [2] * 4
    sampler = PairSampler(labels, seed=4)
    dataset = PairViewDataset(_TensorImages(labels), classification=lambda x: x, contrastive=lambda x: x + 0.5)
    loader = FilePairLoader(dataset, sampler, batch_size=4, mixes=lambda epoch, k: k in (1, 2),
                            device=torch.device("cpu"), workers=0)
    loader.set_epoch(1)
    pairs = sampler.rank_indices().t().tolist()
    batches = list(loader)
    assert len(batches) == 4
    for k, (batch, labels_a) in enumerate(batches):
        chunk = pairs[k * 4:(k + 1) * 4]
        assert batch.background[:, 0, 0, 0].long().tolist() == [a for a, _ in chunk]
        assert labels_a.tolist() == [labels[a] for a, _ in chunk]
        assert batch.labels_b.tolist() == [labels[b] for _, b in chunk]
        assert (batch.foreground is not None) == (k in (1, 2))
        if batch.foreground is not None:
            assert batch.foreground[:, 0, 0, 0].long().tolist() == [b for _, b in chunk]
    loader.set_epoch(1, start_batch=2)
    resumed = list(loader)
    assert len(resumed) == 2
    for (batch, _), (full, _) in zip(resumed, batches[2:]):
        assert torch.equal(batch.background, full.background)
        assert (batch.foreground is None) == (full.foreground is None)


def test_file_loader_defaults_to_the_cpu():
    assert FileLoader(_TensorImages([0, 1]), batch_size=1, sampler=[0, 1], device=None).device == torch.device("cpu")


def test_build_sampler_default_seed_is_zero():
    labels = [0] * 10 + [1] * 3
    for name in ("instance", "sqrt", "class_balanced"):
        assert torch.equal(build_sampler(name, labels).rank_indices(), build_sampler(name, labels, seed=0).rank_indices())


def test_labels_of_the_wrong_shape_are_refused_with_their_shape():
    with pytest.raises(ValueError, match=r"non-empty 1-D sequence .* got shape \(2, 3\)"):
        build_sampler("instance", [[0, 1, 2], [0, 1, 2]])


# -- records and messages --------------------------------------------------------------------------

def test_preprocessing_description_without_a_format_is_read_as_the_current_one():
    description = Preprocessing(size=(8, 6), mean=(0.5,), std=(0.25,), color="L").to_dict()
    description.pop("format")
    assert Preprocessing.from_dict(description) == Preprocessing(size=(8, 6), mean=(0.5,), std=(0.25,), color="L")


def test_group_holdout_record_counts_what_was_held_out():
    labels = np.array([0] * 6 + [1] * 6)
    groups = ["a", "a", "b", "b", "c", "c", "d", "d", "e", "e", "f", "f"]
    split = hold_out_groups(labels, groups, per_class=2, seed=0)
    record = split.to_dict()
    held_groups = {(int(labels[i]), groups[i]) for i in split.held_out}
    assert record["groups_held_out"] == len(held_groups) == 2
    assert record["groups_total"] == 6 and record["size"] == 4 and record["per_class"] == 2
    assert record["held_per_class"] == [2, 2] and record["scope"] == "class" and record["seed"] == 0


def test_class_table_has_a_header_and_one_line_per_class_most_frequent_first():
    report = analyze(class_counts=[5, 200, 50], many_threshold=100, few_threshold=20)
    lines = report.class_table(["cat", "dog", "emu"]).splitlines()
    assert lines[0].split() == ["index", "class", "images", "group"]
    assert [line.split() for line in lines[1:]] == [["1", "dog", "200", "many"], ["2", "emu", "50", "medium"],
                                                     ["0", "cat", "5", "few"]]


def test_bad_images_error_counts_the_unlisted_files_only_when_there_are_any():
    few = str(BadImagesError([(f"f{i}.png", "truncated") for i in range(3)], "remove them"))
    assert "f2.png: truncated" in few and "more" not in few
    many = str(BadImagesError([(f"f{i}.png", "truncated") for i in range(25)], "remove them"))
    assert "f19.png" in many and "f20.png" not in many and "... and 5 more" in many


def _write_cifar10(root, batch):
    folder = root / "cifar-10-batches-py"
    folder.mkdir(exist_ok=True)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
    (folder / "batches.meta").write_bytes(pickle.dumps({b"label_names": [b"c%d" % i for i in range(10)]}, protocol=2))


def test_a_corrupt_cifar_batch_is_refused_naming_what_is_wrong(tmp_path):
    """A batch without its labels lists (the first 6 of) the keys it has; a b'data' entry of the
    wrong type names that type."""
    extra = {b"k%d" % i: 0 for i in range(6)}
    _write_cifar10(tmp_path, {b"data": np.zeros((2, 3072), dtype=np.uint8), **extra})
    keys = sorted(repr(key) for key in [b"data", *extra])[:6]
    with pytest.raises(ValueError) as error:
        load_cifar(tmp_path, "cifar10", "train")
    assert f"no b'labels' entry (keys: {keys}); not a CIFAR batch" in str(error.value)
    _write_cifar10(tmp_path, {b"data": [[0] * 3072] * 2, b"labels": [0, 1]})
    with pytest.raises(ValueError, match=r"b'data' must be a uint8 array \(N, 3072\).*got list ;"):
        load_cifar(tmp_path, "cifar10", "train")


def test_refusals_name_what_is_wrong(tmp_path):
    from longtail.data import build_dataset, make_longtail
    from longtail.data.datasets.imagefiles import scan_images

    with pytest.raises(ValueError, match="^class_counts must be non-negative whole numbers$"):
        analyze(class_counts=[3, 1.5])
    with pytest.raises(ValueError, match="^crop_padding and cutout_size must be >= 0$"):
        BatchAugment(cutout_size=-1)
    with pytest.raises(ValueError, match=r"classes \[1, 2, 3, 4, 5, 6, 7, 8, 9, 10\]\.\.\. have no images"):
        make_longtail([0] * 5, imbalance_factor=2, num_classes=13)
    (tmp_path / "notes.png").write_text("not an image")
    assert scan_images([str(tmp_path / "notes.png")]).problems == [(str(tmp_path / "notes.png"), "not an image file PIL can read")]
    for split, classes in (("train", "ab"), ("test", "abc")):
        for name in classes:
            (tmp_path / split / name).mkdir(parents=True)
            Image.new("RGB", (4, 4)).save(tmp_path / split / name / "0.png")
    with pytest.raises(ValueError, match=f"add them \\(with images\\) to {tmp_path / 'train'} or move them out of"):
        build_dataset("imagefolder", "test", root=tmp_path)
