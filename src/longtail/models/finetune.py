"""Light fine-tuning of pretrained backbones: which parameters train, and small adapters.

:func:`apply_finetune(model, mode, ...)` turns any model of :func:`~longtail.models.create_model`
(it needs ``model.head``) into one where only a chosen part trains:

=============== ===================================================================================
``full``        everything (the default of a plain model)
``classifier``  the head only (linear probing; the backbone can then be cached, see feature_cache)
``norm_bias``   head + the affine parameters of every norm layer + every bias (BitFit-like)
``last_stage``  head + the backbone's last stage and what follows it (final norm / projection)
``lora``        head + low-rank adapters on the backbone's Linear and Conv2d layers (Hu et al. 2022):
                ``y = W x + (alpha / rank) * B A x`` with B zero-initialised, so training starts
                exactly at the pretrained model
``adaptformer`` head + AdaptFormer bottleneck adapters (Chen et al. 2022) parallel to the MLP of every
                ViT block, as in LIFT's released code (Shi et al. 2024, ``models/peft_modules.py``):
                ``x + mlp(norm2(x)) + s * up(relu(down(LN(x))))`` with ``up`` zero-initialised and
                ``s`` a learnable scalar starting at 1 (or a fixed float, AdaptFormer's 0.1)
=============== ===================================================================================

Frozen parameters get ``requires_grad=False`` (their ``.grad`` stays None) and every module outside the
trainable part is pinned to eval mode: ``model.train()`` no longer reaches it, so BatchNorm running
statistics and dropout of the pretrained network do not change. In ``norm_bias`` the norm layers'
affine parameters train but their running statistics stay the pretrained ones (re-estimating them
from small long-tailed batches is what a light mode is meant to avoid). :func:`parameter_counts`
reports trainable vs total parameters; :func:`merge_adapters` folds LoRA into the base weights for
export (AdaptFormer is non-linear and stays in the model as ordinary layers).

Why not HF ``peft``: it requires ``transformers`` and ``accelerate`` (hundreds of MB for two layer
types), has no AdaptFormer, and would wrap our models in its own classes, while the library's models
must keep ``.features`` / ``.head`` and export to ONNX as plain modules. The two adapters are ~100
lines here and are pinned against independent computations in tests/test_finetune.py.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Iterable

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "FINETUNE_MODES",
    "FineTuneReport",
    "LowRankFactors",
    "LoRALinear",
    "LoRAConv2d",
    "AdaptFormerAdapter",
    "ParallelAdapterMLP",
    "apply_finetune",
    "parameter_counts",
    "merge_adapters",
    "lift_adapter_dim",
]

FINETUNE_MODES = ("full", "classifier", "norm_bias", "last_stage", "lora", "adaptformer")

_NORM_TYPES = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm, nn.LocalResponseNorm)


# --------------------------------------------------------------------------------------------
# Adapters
# --------------------------------------------------------------------------------------------


class LowRankFactors(nn.Module):
    """LoRA's trainable part: A (kaiming-uniform, a=sqrt(5), as the LoRA paper / peft), B (zeros)
    and the input dropout, kept in one submodule so that "train the adapters" is "train this"."""

    def __init__(self, shape_a: tuple[int, ...], shape_b: tuple[int, ...], dropout: float, like: torch.Tensor) -> None:
        super().__init__()
        self.A = nn.Parameter(torch.empty(shape_a, device=like.device, dtype=like.dtype))
        self.B = nn.Parameter(torch.zeros(shape_b, device=like.device, dtype=like.dtype))
        nn.init.kaiming_uniform_(self.A, a=math.sqrt(5))
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()


class _WrapsBase:
    """The wrapped layer's ``weight`` / ``bias`` seen through the adapter: nn.MultiheadAttention and
    other code read them directly from the layers they hold."""

    @property
    def weight(self) -> torch.Tensor:
        return self.base.weight

    @property
    def bias(self) -> torch.Tensor | None:
        return self.base.bias


class LoRALinear(_WrapsBase, nn.Module):
    """``base(x) + (alpha / rank) * x A^T B^T`` around a frozen ``nn.Linear`` (A: (r, in), B: (out, r)).

    A starts as in the LoRA paper / peft (kaiming-uniform, a=sqrt(5)), B at zero: the wrapped layer
    computes exactly what the base layer did until B moves."""

    def __init__(self, base: nn.Linear, rank: int = 8, alpha: float = 8.0, dropout: float = 0.0) -> None:
        super().__init__()
        _check_rank(rank, alpha, dropout)
        self.base = base
        self.scaling = float(alpha) / rank
        self.lora = LowRankFactors((rank, base.in_features), (base.out_features, rank), dropout, base.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lora = self.lora
        return self.base(x) + self.scaling * F.linear(F.linear(lora.dropout(x), lora.A), lora.B)

    def merged(self) -> nn.Linear:
        """A plain ``nn.Linear`` with ``W + (alpha / rank) * B A``: same outputs (without dropout)."""
        merged = nn.Linear(self.base.in_features, self.base.out_features, bias=self.base.bias is not None)
        merged = merged.to(self.base.weight.device, self.base.weight.dtype)
        with torch.no_grad():
            merged.weight.copy_(self.base.weight + self.scaling * (self.lora.B @ self.lora.A))
            if self.base.bias is not None:
                merged.bias.copy_(self.base.bias)
        return merged


class LoRAConv2d(_WrapsBase, nn.Module):
    """LoRA for a frozen ``nn.Conv2d`` (as peft does it): A is a convolution with the base layer's
    kernel, stride, padding and dilation into ``rank`` channels, B a 1x1 convolution back (zero init).
    Since B is 1x1 and bias-free, ``conv(x, W) + s * B(A(x)) == conv(x, W + s * B @ A)``: exactly
    mergeable. Grouped / depthwise convolutions are not wrapped (see :func:`apply_finetune`)."""

    def __init__(self, base: nn.Conv2d, rank: int = 8, alpha: float = 8.0, dropout: float = 0.0) -> None:
        super().__init__()
        _check_rank(rank, alpha, dropout)
        if base.groups != 1:
            raise ValueError(f"LoRAConv2d supports groups=1 convolutions only, got groups={base.groups}")
        if base.padding_mode != "zeros":
            raise ValueError(f"LoRAConv2d supports padding_mode='zeros' only, got {base.padding_mode!r}")
        self.base = base
        self.scaling = float(alpha) / rank
        self.lora = LowRankFactors((rank, base.in_channels, *base.kernel_size), (base.out_channels, rank, 1, 1),
                                   dropout, base.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        base, lora = self.base, self.lora
        low = F.conv2d(lora.dropout(x), lora.A, None, base.stride, base.padding, base.dilation)
        return base(x) + self.scaling * F.conv2d(low, lora.B)

    def merged(self) -> nn.Conv2d:
        base = self.base
        merged = nn.Conv2d(base.in_channels, base.out_channels, base.kernel_size, base.stride, base.padding,
                           base.dilation, groups=1, bias=base.bias is not None)
        merged = merged.to(base.weight.device, base.weight.dtype)
        delta = (self.lora.B.flatten(1) @ self.lora.A.flatten(1)).view_as(base.weight)
        with torch.no_grad():
            merged.weight.copy_(base.weight + self.scaling * delta)
            if base.bias is not None:
                merged.bias.copy_(base.bias)
        return merged


class AdaptFormerAdapter(nn.Module):
    """LIFT's ``AdaptFormer`` module: ``s * up(relu(down(LayerNorm(x))))``.

    Initialisation as LIFT: down kaiming-normal (a=sqrt(5)), zero biases, up zero (so the adapter
    outputs 0 at the start). ``scale="learnable"`` (LIFT) is a parameter starting at 1; a float is
    AdaptFormer's fixed s (0.1 in Chen et al. 2022)."""

    def __init__(self, dim: int, bottleneck: int, scale: float | str = "learnable") -> None:
        super().__init__()
        if not isinstance(bottleneck, int) or bottleneck < 1:
            raise ValueError(f"adapter bottleneck dimension must be a positive integer, got {bottleneck!r}")
        self.norm = nn.LayerNorm(dim)
        self.down = nn.Linear(dim, bottleneck)
        self.up = nn.Linear(bottleneck, dim)
        nn.init.kaiming_normal_(self.down.weight, a=math.sqrt(5))
        nn.init.zeros_(self.down.bias)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)
        if scale == "learnable":
            self.scale = nn.Parameter(torch.ones(1))
        elif isinstance(scale, (int, float)) and not isinstance(scale, bool) and math.isfinite(scale):
            self.register_buffer("scale", torch.tensor([float(scale)]))
        else:
            raise ValueError(f"adapter scale must be 'learnable' or a finite number, got {scale!r}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(F.relu(self.down(self.norm(x)))) * self.scale


class ParallelAdapterMLP(nn.Module):
    """Replaces a transformer block's MLP so that it computes ``mlp(norm(x)) + adapter(x)``.

    The block's own pre-MLP norm moves in here (the block's slot becomes Identity), because the
    adapter reads the block's residual stream before that norm, as in LIFT. Blocks with LayerScale
    scale the sum (ViT-B and CLIP have none)."""

    def __init__(self, norm: nn.Module, mlp: nn.Module, adapter: AdaptFormerAdapter) -> None:
        super().__init__()
        self.norm = norm
        self.mlp = mlp
        self.adapter = adapter

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.norm(x)) + self.adapter(x)


def _check_rank(rank, alpha, dropout) -> None:
    if not isinstance(rank, int) or isinstance(rank, bool) or rank < 1:
        raise ValueError(f"LoRA rank must be a positive integer, got {rank!r}")
    if not isinstance(alpha, (int, float)) or not alpha > 0:
        raise ValueError(f"LoRA alpha must be a positive number, got {alpha!r}")
    if not 0 <= dropout < 1:
        raise ValueError(f"LoRA dropout must be in [0, 1), got {dropout!r}")


def lift_adapter_dim(num_classes: int, num_blocks: int) -> int:
    """LIFT's default bottleneck: ``2 ** max(0, int(log2(K / (2 * blocks))))`` (1 for K < 4 * blocks)."""
    return 2 ** max(0, int(math.log2(num_classes / (num_blocks * 2))))


# --------------------------------------------------------------------------------------------
# Applying a mode
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass
class FineTuneReport:
    mode: str
    trainable: int
    total: int
    adapters: int = 0  # number of LoRA-wrapped layers or AdaptFormer blocks
    skipped: list[str] = dataclasses.field(default_factory=list)

    def __str__(self) -> str:
        share = 100.0 * self.trainable / max(self.total, 1)
        text = f"fine-tuning mode {self.mode}: {self.trainable:,} of {self.total:,} parameters trainable ({share:.2f}%)"
        if self.adapters:
            text += f", {self.adapters} adapted layer(s)"
        if self.skipped:
            text += f"; not adapted: {', '.join(self.skipped[:5])}{' ...' if len(self.skipped) > 5 else ''}"
        return text


def parameter_counts(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) numbers of parameter elements, each shared tensor counted once."""
    trainable = total = 0
    for parameter in model.parameters():  # .parameters() already de-duplicates shared tensors
        total += parameter.numel()
        if parameter.requires_grad:
            trainable += parameter.numel()
    return trainable, total


def _stay_in_eval(module: nn.Module, mode: bool = True) -> nn.Module:
    # Installed as a frozen module's .train: the parent's recursive train() no longer reaches it.
    nn.Module.train(module, False)
    return module


def _pin_eval(module: nn.Module) -> None:
    for sub in module.modules():
        sub.train = functools.partial(_stay_in_eval, sub)
        nn.Module.train(sub, False)


def _head_of(model: nn.Module) -> nn.Module:
    head = getattr(model, "head", None)
    if not isinstance(head, nn.Module):
        raise TypeError(f"apply_finetune needs a model with a .head module (from create_model), got {type(model).__name__}")
    return head


def _backbone_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    head = _head_of(model)
    head_modules = set(map(id, head.modules()))
    return [(name, module) for name, module in model.named_modules() if id(module) not in head_modules]


def _last_stage(model: nn.Module) -> tuple[list[nn.Module], list[nn.Parameter]]:
    """The last stage of the backbone and the layers after it (final norm, conv head, projection)."""
    network = getattr(model, "backbone", model)
    for attribute in ("layer4", "layer3"):  # torchvision / timm ResNets, CIFAR ResNets
        stage = getattr(network, attribute, None)
        if isinstance(stage, nn.Module):
            return [stage] + _registered_after(network, attribute), []
    for attribute in ("stages", "blocks"):  # timm ConvNeXt / EfficientNet / ViT
        container = getattr(network, attribute, None)
        if isinstance(container, (nn.Sequential, nn.ModuleList)) and len(container) > 0:
            return [container[-1]] + _registered_after(network, attribute), []
    transformer = getattr(network, "transformer", None)  # open_clip VisionTransformer
    if transformer is not None and isinstance(getattr(transformer, "resblocks", None), nn.ModuleList):
        extra = [p for p in (getattr(network, "proj", None),) if isinstance(p, nn.Parameter)]
        return [transformer.resblocks[-1]] + _registered_after(network, "transformer"), extra
    if isinstance(network, nn.Sequential) and model is not network:  # SmallCNN: the last conv block onward
        layers = list(network)
        convs = [i for i, layer in enumerate(layers) if isinstance(layer, nn.Conv2d)]
        if convs:
            return layers[convs[-1]:], []
    raise ValueError(
        f"fine-tuning mode last_stage does not know the stages of {type(network).__name__}; "
        "use classifier, norm_bias, lora or full"
    )


def _registered_after(parent: nn.Module, name: str) -> list[nn.Module]:
    names = list(parent._modules)
    return [module for module in list(parent._modules.values())[names.index(name) + 1:] if module is not None]


def _transformer_blocks(model: nn.Module) -> list[tuple[nn.Module, str, str]]:
    """(block, norm attribute, mlp attribute) for timm ViT blocks and open_clip residual blocks."""
    found = []
    for _, module in _backbone_modules(model):
        for norm_name in ("norm2", "ln_2"):
            if isinstance(getattr(module, norm_name, None), nn.Module) and isinstance(getattr(module, "mlp", None), nn.Module):
                found.append((module, norm_name, "mlp"))
                break
    return found


def apply_finetune(
    model: nn.Module,
    mode: str,
    *,
    lora_rank: int = 8,
    lora_alpha: float | None = None,
    lora_dropout: float = 0.0,
    lora_targets: Iterable[str] = ("linear", "conv"),
    adapter_dim: int | None = None,
    adapter_scale: float | str = "learnable",
) -> FineTuneReport:
    """Restrict training of ``model`` (in place) to the part that ``mode`` names; see the module doc.

    ``lora_alpha`` defaults to ``lora_rank`` (scaling 1). ``lora_targets`` picks "linear", "conv" or
    both. Layers LoRA does not wrap (listed in the report): grouped / depthwise convolutions (a few
    parameters each, no low-rank structure) and the projections inside ``nn.MultiheadAttention``
    (it reads their weights directly; open_clip's attention). ``adapter_dim`` defaults to LIFT's rule
    (:func:`lift_adapter_dim`). Returns a :class:`FineTuneReport`, also stored as ``model.finetune_report``.
    """
    if mode not in FINETUNE_MODES:
        raise ValueError(f"unknown fine-tuning mode {mode!r}; valid modes: {', '.join(FINETUNE_MODES)}")
    head = _head_of(model)
    if getattr(model, "finetune_report", None) is not None:
        raise ValueError(f"the model is already set up for fine-tuning mode {model.finetune_report.mode!r}; build a fresh model")
    targets = set(lora_targets)
    if mode == "lora" and (not targets or not targets <= {"linear", "conv"}):
        raise ValueError(f"lora_targets must be a non-empty subset of ('linear', 'conv'), got {sorted(targets)}")

    report = FineTuneReport(mode=mode, trainable=0, total=0)
    if mode == "full":
        for parameter in model.parameters():
            parameter.requires_grad_(True)
    else:
        for parameter in model.parameters():
            parameter.requires_grad_(False)
        trainable_roots: list[nn.Module] = [head]
        if mode == "norm_bias":
            for _, module in _backbone_modules(model):
                for name, parameter in module.named_parameters(recurse=False):
                    if isinstance(module, _NORM_TYPES) or name == "bias" or name.endswith("_bias"):
                        parameter.requires_grad_(True)
        elif mode == "last_stage":
            stage_modules, extra = _last_stage(model)
            trainable_roots += stage_modules
            for parameter in extra:
                parameter.requires_grad_(True)
        elif mode == "lora":
            alpha = float(lora_rank if lora_alpha is None else lora_alpha)
            trainable_roots += _insert_lora(model, lora_rank, alpha, lora_dropout, targets, report)
        elif mode == "adaptformer":
            trainable_roots += _insert_adaptformer(model, adapter_dim, adapter_scale, report)
        for root in trainable_roots:
            for parameter in root.parameters():
                parameter.requires_grad_(True)
        # Pin to eval every module outside the trainable roots that is not an ancestor of one (the
        # ancestors must pass train() on; their own forward does not depend on .training).
        inside = {id(m) for root in trainable_roots for m in root.modules()}
        for _, module in model.named_modules():
            if id(module) in inside:
                continue
            if not any(id(m) in inside for m in module.modules()):
                _pin_eval(module)
    report.trainable, report.total = parameter_counts(model)
    model.finetune_report = report
    return model.finetune_report


def _insert_lora(model, rank, alpha, dropout, targets, report) -> list[nn.Module]:
    head = _head_of(model)
    head_ids = set(map(id, head.modules()))
    attention_linears = {
        id(sub) for module in model.modules() if isinstance(module, nn.MultiheadAttention) for sub in module.modules()
    }
    adapters: list[nn.Module] = []
    for parent_name, parent in list(model.named_modules()):
        if id(parent) in head_ids or isinstance(parent, (LoRALinear, LoRAConv2d)):
            continue
        for child_name, child in list(parent.named_children()):
            if id(child) in head_ids:
                continue
            full_name = f"{parent_name}.{child_name}" if parent_name else child_name
            if isinstance(child, nn.Linear) and "linear" in targets:
                if id(child) in attention_linears:
                    report.skipped.append(f"{full_name} (inside nn.MultiheadAttention)")
                    continue
                wrapper = LoRALinear(child, rank, alpha, dropout)
            elif isinstance(child, nn.Conv2d) and "conv" in targets:
                if child.groups != 1 or child.padding_mode != "zeros":
                    report.skipped.append(f"{full_name} (groups={child.groups})")
                    continue
                wrapper = LoRAConv2d(child, rank, alpha, dropout)
            else:
                continue
            setattr(parent, child_name, wrapper)
            adapters.append(wrapper.lora)
    report.adapters = len(adapters)
    if not report.adapters:
        raise ValueError(f"fine-tuning mode lora found no {' / '.join(sorted(targets))} layer to adapt in the backbone")
    return adapters



def _insert_adaptformer(model, adapter_dim, adapter_scale, report) -> list[nn.Module]:
    blocks = _transformer_blocks(model)
    if not blocks:
        raise ValueError(
            f"fine-tuning mode adaptformer needs a vision transformer (timm vit_* or an open_clip ViT); "
            f"{type(getattr(model, 'backbone', model)).__name__} has no transformer blocks. Use lora instead."
        )
    head = _head_of(model)
    num_classes = getattr(head, "num_classes", None) or getattr(head, "out_features")
    bottleneck = lift_adapter_dim(int(num_classes), len(blocks)) if adapter_dim is None else adapter_dim
    adapters = []
    for block, norm_name, mlp_name in blocks:
        norm = getattr(block, norm_name)
        dim = _norm_dim(norm, block)
        reference = next(norm.parameters(), None)
        adapter = AdaptFormerAdapter(dim, bottleneck, adapter_scale)
        if reference is not None:
            adapter = adapter.to(reference.device, reference.dtype)
        setattr(block, mlp_name, ParallelAdapterMLP(norm, getattr(block, mlp_name), adapter))
        setattr(block, norm_name, nn.Identity())
        adapters.append(adapter)
    report.adapters = len(adapters)
    return adapters


def _norm_dim(norm: nn.Module, block: nn.Module) -> int:
    shape = getattr(norm, "normalized_shape", None)
    if shape:
        return int(shape[-1])
    raise ValueError(f"cannot tell the width of {type(block).__name__}'s MLP input ({type(norm).__name__})")


def merge_adapters(model: nn.Module) -> nn.Module:
    """Replace every LoRA wrapper by a plain layer holding ``W + (alpha / rank) B A`` (in place).

    The merged model computes the same function (dropout aside) with the base architecture's
    parameter names, for export; AdaptFormer adapters stay (they are ordinary layers)."""
    for parent in list(model.modules()):
        for child_name, child in list(parent.named_children()):
            if isinstance(child, (LoRALinear, LoRAConv2d)):
                merged = child.merged()
                merged.train(child.training)
                for parameter in merged.parameters():
                    parameter.requires_grad_(False)
                setattr(parent, child_name, merged)
    report = getattr(model, "finetune_report", None)
    if report is not None:
        report.trainable, report.total = parameter_counts(model)
    return model
