"""ConCutMix options reach the component they configure (issue 22), seen on the tensors themselves:
what the model's forward receives, the label and logits the classification loss receives, the
features the contrastive loss receives, the label CAR receives, the images and labels the mixer
and the pair loaders yield. Expected values are computed here in float64 from the spec's formulas
(concutmix.md sections 3-4), not by the engine's helpers."""

from __future__ import annotations

import contextlib
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from longtail.data.loading.pair_loader import InMemoryPairLoader, PairBatch, PairViewDataset
from longtail.data.sampling.pair_sampler import PairSampler
from longtail.data.transforms import views as views_module
from longtail.data.transforms.concutmix import ConCutMix
from longtail.data.transforms.views import BatchViews, file_view_transforms
from longtail.engine.config import build_config
from longtail.engine.methods.contrastive import Contrastive
from test_contrastive import reference_loss

COUNTS = [30, 12, 6, 3]
K = len(COUNTS)
SIZE = 8


class Probe(nn.Module):
    """Stands in for BCLModel: linear logits / projection of the flattened images, learnable
    prototypes; records the images of every forward and whether it ran under autocast."""

    def __init__(self, pixels=3 * 8 * 8, feat=6):
        super().__init__()
        generator = torch.Generator().manual_seed(1)
        self.classify = nn.Parameter(torch.randn(pixels, K, generator=generator) * 0.1)
        self.project = nn.Parameter(torch.randn(pixels, feat, generator=generator) * 0.1)
        self.prototypes = nn.Parameter(torch.randn(K, feat, generator=generator))
        self.calls = []

    def forward(self, images, heads=True, num_classify=None):
        flat = images.flatten(1)
        logits = flat[:num_classify] @ self.classify
        self.calls.append({"images": images.detach().clone(), "autocast_dtype": logits.dtype})
        return logits, flat @ self.project, self.prototypes * 1.0


def pair_batch(seed=0):
    generator = torch.Generator().manual_seed(seed)
    images = [torch.randn(SIZE, 3, 8, 8, generator=generator) for _ in range(4)]
    labels_a = torch.tensor([0, 0, 0, 1, 1, 2, 3, 0])
    labels_b = torch.tensor([3, 2, 1, 0, 3, 2, 1, 0])
    return PairBatch(images[0], (images[1], images[2]), images[3], labels_b), labels_a


def objective_from(*overrides, epochs=4):
    config, _ = build_config("fashion-mnist-lt", method="concutmix",
                             overrides=[f"optim.epochs={epochs}", *overrides])
    return Contrastive().objective(config, COUNTS, torch.device("cpu"), 0, None)


class Recorder(nn.Module):
    """Wraps a loss module; records its inputs."""

    def __init__(self, inner=None):
        super().__init__()
        self.inner, self.calls = inner, []

    def forward(self, *args):
        self.calls.append([a.detach().clone() for a in args])
        return self.inner(*args) if self.inner is not None else args[0].sum() * 0


def run_step(objective, model, epoch=0, regularizer=None, autocast=contextlib.nullcontext):
    batch, labels_a = pair_batch()
    mixed = []
    original_mix = objective.mixer.mix
    objective.mixer.mix = lambda *a, **k: mixed.append(original_mix(*a, **k)) or mixed[-1]
    terms = objective.training_step(model, batch, labels_a, epoch, 0, autocast, regularizer, lambda t: None)
    return terms, batch, labels_a, mixed[-1]


def test_weights_tau_and_temperature_reach_both_losses():
    objective = objective_from("loss.a_cls=1.7", "loss.b_scl=0.35", "loss.tau=0.5", "loss.temperature=0.3",
                               "loss.cutmix_prob=0.0")
    model = Probe()
    terms, batch, labels, _ = run_step(objective, model)
    images = model.calls[-1]["images"]
    # the forward sees [classification view, contrastive view 1, contrastive view 2], in that order
    assert torch.equal(images[:SIZE], batch.background)
    assert torch.equal(images[SIZE:2 * SIZE], batch.views[0]) and torch.equal(images[2 * SIZE:], batch.views[1])

    flat = images.double().flatten(1)
    logits = flat[:SIZE] @ model.classify.double()
    prior = torch.tensor(COUNTS, dtype=torch.float64) / sum(COUNTS)
    expected_cls = 1.7 * F.cross_entropy(logits + 0.5 * prior.log(), labels)  # logit adjustment, tau 0.5
    assert terms["base_loss"].item() == pytest.approx(expected_cls.item(), rel=1e-5)

    projection = flat[SIZE:] @ model.project.double()
    features = torch.stack([F.normalize(projection[:SIZE], dim=1), F.normalize(projection[SIZE:], dim=1)], dim=1)
    prototypes = F.normalize(model.prototypes.double(), dim=1)
    expected_scl = 0.35 * reference_loss(features, labels, prototypes, 0.3)
    assert terms["contrastive"].item() == pytest.approx(expected_scl.item(), rel=1e-5)


def numpy_rectified(projection, prototypes, area, labels_a, labels_b, lam, topk, omega_s):
    """Spec section 3.4, row by row in float64 numpy."""
    counts = np.array(COUNTS, dtype=np.float64)
    out = np.zeros_like(area)
    for i in range(len(projection)):
        s = 1.0 / np.linalg.norm(projection[i][None, :] - prototypes, axis=1)
        kept = np.zeros_like(s)
        top = np.argsort(-s)[:topk]
        kept[top] = s[top]
        s_hat = kept / kept.sum()
        rho = math.log(lam * counts[labels_a[i]] + (1 - lam) * counts[labels_b[i]]) / np.log(counts).sum()
        out[i] = omega_s * rho * s_hat + (1 - omega_s * rho) * area[i]
    return out


@pytest.mark.parametrize("car_label", ["area", "rectified"])
def test_label_rule_by_epoch_default_omega_and_what_car_receives(car_label):
    epochs = 6  # default rectify_from_epoch = 6 // 2 = 3: epochs 0..3 use the area label, 4.. rectify
    objective = objective_from("loss.cutmix_prob=1.0", "loss.topk=2", f"loss.car_label={car_label}", epochs=epochs)
    objective.classification = Recorder(objective.classification)
    car = Recorder()
    model = Probe()
    for epoch in (3, 4):
        run = run_step(objective, model, epoch=epoch, regularizer=car)
        _, batch, labels_a, mixed = run
        images = model.calls[-1]["images"]
        lam = mixed.lam
        assert 0 < lam < 1 and not torch.equal(mixed.images, batch.background)
        area = (lam * F.one_hot(labels_a, K) + (1 - lam) * F.one_hot(mixed.labels_b, K)).double()
        received = objective.classification.calls[-1][1].double()
        if epoch == 3:
            torch.testing.assert_close(received, area, rtol=0, atol=1e-6)
            continue
        # the rectified label comes from the MIXED image's projection (rows :SIZE), omega_s = K / 1275
        projection = (images[:SIZE].double().flatten(1) @ model.project.double()).detach().numpy()
        rectified = torch.from_numpy(numpy_rectified(projection, model.prototypes.double().detach().numpy(),
                                                     area.numpy(), labels_a.numpy(), mixed.labels_b.numpy(),
                                                     lam, 2, K / 1275))
        assert (rectified - area).abs().max() > 1e-4  # the observable can tell the two labels apart
        torch.testing.assert_close(received, rectified, rtol=0, atol=1e-6)
        car_targets = car.calls[-1][1].double()
        torch.testing.assert_close(car_targets, area if car_label == "area" else rectified, rtol=0, atol=1e-6)
        torch.testing.assert_close(car.calls[-1][0], objective.classification.calls[-1][0])  # raw logits


def test_the_step_runs_the_forward_under_the_runs_autocast():
    objective = objective_from("loss.cutmix_prob=0.0")
    model = Probe()
    run_step(objective, model, autocast=lambda: torch.autocast("cpu", dtype=torch.bfloat16))
    assert model.calls[-1]["autocast_dtype"] == torch.bfloat16
    run_step(objective, model)
    assert model.calls[-1]["autocast_dtype"] == torch.float32


def test_the_mixer_pastes_the_foreground_whose_label_it_reports():
    mixer = ConCutMix(COUNTS, probability=1.0)
    background = torch.zeros(SIZE, 1, 16, 16)
    # foreground j is the constant j + 1, so the pasted pixels say which foreground went where
    foreground = torch.arange(1, SIZE + 1, dtype=torch.float32)[:, None, None, None].expand(SIZE, 1, 16, 16)
    labels_a = torch.zeros(SIZE, dtype=torch.long)
    labels_b = torch.tensor([1, 2, 3, 1, 2, 3, 1, 2])
    checked = 0
    for batch_index in range(6):
        mixed = mixer.mix(background, labels_a, foreground, labels_b, seed=0, epoch=0, batch_index=batch_index)
        if mixed.lam >= 1.0:
            continue
        sources = mixed.images.flatten(1).max(dim=1).values.long() - 1  # which foreground each image got
        assert len(set(sources.tolist())) == SIZE  # a permutation of the foregrounds
        assert torch.equal(mixed.labels_b, labels_b[sources])
        expected = mixed.lam * F.one_hot(labels_a, K) + (1 - mixed.lam) * F.one_hot(labels_b[sources], K)
        torch.testing.assert_close(mixed.area_targets.double(), expected.double(), rtol=0, atol=1e-6)
        checked += not torch.equal(sources, torch.arange(SIZE))
    assert checked  # at least one batch where the permutation moved the foregrounds


class IdentityViews:
    """View stand-in: the uint8 images as floats, so each view shows which image it came from."""

    def classification(self, images, seed):
        return images.float()

    def contrastive(self, images, seed):
        return images.float()


def encoded_images(n):
    """Image i is the constant i (uint8), so a view says which dataset image it was made from."""
    return torch.arange(n, dtype=torch.uint8)[:, None, None, None].expand(n, 1, 4, 4).contiguous()


def test_in_memory_pair_loader_takes_each_label_from_its_own_image():
    labels = torch.tensor([0] * 12 + [1] * 6 + [2] * 3 + [3] * 2)
    images = encoded_images(len(labels))
    sampler = PairSampler(labels, seed=0, num_classes=K)
    loader = InMemoryPairLoader(images, labels, sampler, IdentityViews(), 5, lambda epoch, index: True, seed=0)
    seen_b = []
    for batch, labels_a in loader:
        a = batch.background[:, 0, 0, 0].long()
        b = batch.foreground[:, 0, 0, 0].long()
        assert torch.equal(labels_a, labels[a]) and torch.equal(batch.labels_b, labels[b])
        assert torch.equal(batch.views[0][:, 0, 0, 0].long(), a) and torch.equal(batch.views[1][:, 0, 0, 0].long(), a)
        seen_b.append(batch.labels_b)
    assert not torch.equal(torch.cat(seen_b), torch.cat([labels[sampler.rank_indices()[0]]]))  # B is not A


def test_in_memory_pair_loader_makes_two_different_contrastive_views():
    labels = torch.tensor([0, 1, 2, 3] * 4)
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (16, 3, 16, 16), dtype=torch.uint8, generator=generator)
    views = BatchViews("cifar", [0.5] * 3, [0.25] * 3, policy="none")
    loader = InMemoryPairLoader(images, labels, PairSampler(labels, num_classes=K), views, 8, lambda e, i: False)
    batch, _ = next(iter(loader))
    assert batch.foreground is None  # unmixed batches make no foreground view
    assert (batch.views[0] - batch.views[1]).abs().amax(dim=(1, 2, 3)).min() > 0.05  # every sample's pair differs


class EncodedFiles:
    """A file-dataset stand-in whose PIL image i is the constant grey i."""

    def __init__(self, n):
        from PIL import Image

        self.images = [Image.fromarray(np.full((8, 8, 3), 10 * i, dtype=np.uint8)) for i in range(n)]
        self.labels = [i % K for i in range(n)]
        self.transform = None

    def __len__(self):
        return len(self.images)

    def __getitem__(self, index):
        return self.images[index], self.labels[index]


def test_file_pair_dataset_builds_each_view_from_its_own_image():
    from torchvision.transforms import v2

    to_tensor = v2.Compose([v2.ToImage(), v2.ToDtype(torch.float32, scale=False)])
    dataset = PairViewDataset(EncodedFiles(10), to_tensor, to_tensor)
    background, view1, view2, label_a, foreground, label_b = dataset[(2, 7, True)]
    assert background.max() == view1.max() == view2.max() == 20 and foreground.max() == 70
    assert (label_a, label_b) == (2, 3)
    assert dataset[(2, 7, False)][4].numel() == 0


def test_file_pair_dataset_makes_two_different_contrastive_views():
    _, contrastive = file_view_transforms("cifar", (16, 16), [0.5] * 3, [0.25] * 3, policy="none")
    from PIL import Image

    rng = np.random.default_rng(0)
    files = EncodedFiles(4)
    files.images = [Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)) for _ in range(4)]
    dataset = PairViewDataset(files, contrastive, contrastive)
    torch.manual_seed(0)
    for index in range(4):
        _, view1, view2, *_ = dataset[(index, 0, False)]
        assert (view1 - view2).abs().max() > 0.05


@pytest.mark.parametrize("style, low", [("cifar", 0.2), ("imagenet", 0.08)])
def test_contrastive_crops_cover_the_released_area_range(style, low, monkeypatch):
    """BCL's contrastive RandomResizedCrop: scale (0.2, 1) on CIFAR, (0.08, 1) on ImageNet; seen on
    the crop boxes the batched view cuts and on the file pipeline's transform."""
    boxes = []
    original = views_module.uniforms_to_resized_crop

    def recording(uniforms, height, width, scale):
        result = original(uniforms, height, width, scale)
        boxes.append((result, height * width, scale))
        return result

    monkeypatch.setattr(views_module, "uniforms_to_resized_crop", recording)
    views = BatchViews(style, [0.5] * 3, [0.25] * 3, policy="none")
    images = torch.randint(0, 256, (512, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    views.contrastive(images, seed=0)
    (result, area, scale), = boxes
    assert scale == (low, 1.0)
    fractions = (result[:, 2] * result[:, 3]).double() / area  # the area each crop keeps
    assert low - 0.02 <= fractions.min() < low + 0.03, fractions.min()
    _, contrastive = file_view_transforms(style, (32, 32), [0.5] * 3, [0.25] * 3, policy="none")
    crops = [t for t in contrastive.transforms if type(t).__name__ == "RandomResizedCrop"]
    assert len(crops) == 1 and tuple(crops[0].scale) == (low, 1.0)


def _half_dark_images(count=256, size=16):
    """Grey images, left half black and right half white: a mirror image is easy to see."""
    images = torch.zeros(count, 3, size, size, dtype=torch.uint8)
    images[..., size // 2:] = 255
    return images


def _reversed(views: torch.Tensor) -> torch.Tensor:
    """Which views have their left half brighter than their right (mirrored). Crops, colour jitter,
    grayscale and blur keep the order of a black | white step; only a flip reverses it."""
    half = views.shape[-1] // 2
    return views[..., :half].mean(dim=(1, 2, 3)) > views[..., half:].mean(dim=(1, 2, 3)) + 1e-4


@pytest.mark.parametrize("style", ["cifar", "imagenet"])
def test_data_flip_false_reaches_both_views_of_both_pipelines(style, monkeypatch):
    """data.flip=false (traffic signs: a mirrored "keep left" is "keep right") turns off the flips of
    the classification and the contrastive views, batched and per file; with the default, mirrored
    views appear (so the check can fail)."""
    from PIL import Image

    images = _half_dark_images()
    for flip in (True, False):
        views = BatchViews(style, [0.5] * 3, [0.25] * 3, crop_padding=0, policy="none", flip=flip)
        for make in (views.classification, views.contrastive):
            mirrored = _reversed(make(images, seed=3))
            assert bool(mirrored.any()) is flip, (flip, make.__name__, int(mirrored.sum()))
        picture = Image.fromarray(images[0].permute(1, 2, 0).numpy())
        torch.manual_seed(0)
        for transform in file_view_transforms(style, (16, 16), [0.5] * 3, [0.25] * 3, crop_padding=0,
                                              policy="none", flip=flip):
            mirrored = _reversed(torch.stack([transform(picture) for _ in range(64)]))
            assert bool(mirrored.any()) is flip, (flip, int(mirrored.sum()))

    # The engine hands the run's data.flip to the views it builds.
    built = []
    monkeypatch.setattr("longtail.engine.methods.contrastive.BatchViews",
                        lambda *args, **kwargs: built.append(kwargs) or BatchViews(*args, **kwargs))
    from longtail.data.loading.loader import InMemoryLoader

    for flip in ("true", "false"):
        config, _ = build_config("fashion-mnist-lt", method="concutmix", overrides=[f"data.flip={flip}"])
        loader = InMemoryLoader(images[:8, :1], batch_size=4, labels=torch.arange(8) % K, mean=[0.5], std=[0.25])
        Contrastive().train_loader(config, loader, None, PairSampler(torch.arange(8) % K, seed=0), 4,
                                   torch.device("cpu"), 0, COUNTS, None)
        assert built[-1]["flip"] is (flip == "true")

    class Built(Exception):  # stops the file branch once its transforms are made
        pass

    def record(*args, **kwargs):
        built.append(kwargs)
        raise Built

    monkeypatch.setattr("longtail.engine.methods.contrastive.file_view_transforms", record)
    from types import SimpleNamespace

    preprocessing = SimpleNamespace(size=(16, 16), mean=[0.5] * 3, std=[0.25] * 3, resize="none", color="RGB",
                                    channels=3)
    for flip in ("true", "false"):
        config, _ = build_config("fashion-mnist-lt", method="concutmix", overrides=[f"data.flip={flip}"])
        with pytest.raises(Built):  # a file loader (not in memory): the per-image transforms
            Contrastive().train_loader(config, SimpleNamespace(), None, None, 4, torch.device("cpu"), 0, COUNTS,
                                       preprocessing)
        assert built[-1]["flip"] is (flip == "true")
