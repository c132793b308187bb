"""Model registry and factory (timm-style: names are the public interface, one ``create_model``).

``create_model(name, num_classes, ...)`` returns an ``nn.Module`` with

- ``model.features(x) -> (B, D)``: the backbone up to the pooled feature vector;
- ``model.head``: the classifier mapping features to logits (see :mod:`longtail.models.heads`);
- ``model(x) == model.head(model.features(x))``;
- ``model.feature_dim`` (D) and, when ``pretrained`` was given, ``model.pretrained_report``
  (:class:`PretrainedReport`: which keys were loaded, renamed, dropped or left newly initialised).

Names: ``resnet20/32/44/56`` (CIFAR ResNets), ``small_cnn``, ``resnet50`` / ``resnext50_32x4d``
(torchvision, built with ``weights=None``) and ``timm:<name>`` for any timm model (timm is an
optional dependency, imported only when such a name is used). Nothing is ever downloaded:
``pretrained=PATH`` loads a local state-dict file with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import dataclasses
import inspect
from pathlib import Path
from typing import Callable, Iterable, Mapping

import torch
from torch import nn

from .heads import LinearHead, available_heads, build_head
from .resnet_cifar import ResNetCifar
from .small_cnn import SmallCNN

__all__ = ["create_model", "available_models", "load_pretrained_weights", "PretrainedReport", "BackboneWithHead"]

TIMM_PREFIX = "timm:"


class BackboneWithHead(nn.Module):
    """Adapter for third-party networks (torchvision, timm): ``backbone`` maps images to pooled
    features (its own classifier replaced by identity), ``head`` maps features to logits."""

    def __init__(self, backbone: nn.Module, head: nn.Module, feature_dim: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.feature_dim = int(feature_dim)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))


# --------------------------------------------------------------------------------------------
# Loading local pretrained weights
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass
class PretrainedReport:
    """What ``load_pretrained_weights`` did; ``str(report)`` is a one-paragraph summary."""

    path: str
    loaded: int = 0
    renamed_by_order: bool = False
    dropped: list[str] = dataclasses.field(default_factory=list)
    missing: list[str] = dataclasses.field(default_factory=list)

    def __str__(self) -> str:
        how = "matched by position (names differ, shapes match one to one)" if self.renamed_by_order else "matched by name"
        text = f"loaded {self.loaded} tensors from {self.path}, {how}"
        if self.dropped:
            text += f"; dropped from the file (classifier not reused): {', '.join(self.dropped)}"
        if self.missing:
            text += f"; newly initialised in the model: {', '.join(self.missing)}"
        return text


_CONTAINER_KEYS = ("state_dict", "model", "model_state_dict", "module", "net")


def _read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    file = Path(path).expanduser()
    if not file.is_file():
        raise FileNotFoundError(f"pretrained weights file not found: {str(file)!r}")
    try:
        loaded = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises several types for corrupt / non-tensor pickles
        raise ValueError(
            f"could not read pretrained weights from {str(file)!r} ({type(error).__name__}: {error}). "
            "Expected a state_dict (or a checkpoint dict holding one) saved with torch.save; "
            "files are opened with weights_only=True, so pickled code objects are refused."
        ) from error
    # Training checkpoints wrap the weights; take the first usual container key.
    for _ in range(2):
        if isinstance(loaded, Mapping) and not all(isinstance(v, torch.Tensor) for v in loaded.values()):
            inner = next((loaded[k] for k in _CONTAINER_KEYS if isinstance(loaded.get(k), Mapping)), None)
            if inner is None:
                break
            loaded = inner
    if not isinstance(loaded, Mapping) or not loaded or not all(isinstance(v, torch.Tensor) for v in loaded.values()):
        raise ValueError(
            f"{str(file)!r} does not hold a state_dict of tensors (found {type(loaded).__name__}"
            f"{' with keys ' + ', '.join(list(map(str, loaded))[:5]) if isinstance(loaded, Mapping) else ''})"
        )
    state = dict(loaded)
    # Weights saved from DistributedDataParallel / torch.compile carry a wrapper prefix.
    for wrapper in ("module.", "_orig_mod."):
        if all(key.startswith(wrapper) for key in state):
            state = {key[len(wrapper):]: value for key, value in state.items()}
    return state


def _is_counter(key: str) -> bool:
    # BatchNorm's step counter: a 0-d int tensor, absent from some exports, not a learned weight.
    return key.endswith("num_batches_tracked")


def _module_of(key: str) -> str:
    return key.rsplit(".", 1)[0] if "." in key else ""


def load_pretrained_weights(
    model: nn.Module,
    path: str | Path,
    classifier_prefixes: Iterable[str],
    keep_classifier: bool = True,
) -> PretrainedReport:
    """Load a local state-dict file into ``model``; strict on the backbone, lenient on the classifier.

    - Keys are matched by name when every backbone tensor of the model is in the file; otherwise by
      position (file order vs model order, batch-norm counters aside), which is what re-exports of
      the same architecture with other names need (e.g. the EfficientNet-Lite0 package weights vs
      timm's ``efficientnet_lite0``). In that mode the file's classifier is assumed to be its last
      tensors.
    - Classifier tensors (keys under ``classifier_prefixes``) are copied only when
      ``keep_classifier`` and their shapes match; otherwise they are dropped and the model's
      classifier keeps its fresh initialisation. Both lists are in the returned report.
    - Any backbone mismatch (missing tensor, different shape, extra tensors: a different
      architecture or ``in_channels``) raises ValueError naming the keys; the model is untouched.
    """
    source = _read_state_dict(path)
    prefixes = tuple(p.rstrip(".") + "." for p in classifier_prefixes if p)
    target = model.state_dict()

    def is_classifier(key: str) -> bool:
        return key.startswith(prefixes)

    target_backbone = [k for k in target if not is_classifier(k) and not _is_counter(k)]
    target_classifier = [k for k in target if is_classifier(k) and not _is_counter(k)]
    report = PretrainedReport(path=str(path))

    mapping: dict[str, str] = {}  # source key -> target key
    if all(key in source for key in target_backbone):
        for key in target_backbone:
            mapping[key] = key
        unexpected = [k for k in source if k not in target and not is_classifier(k) and not _is_counter(k)]
        if unexpected:
            raise ValueError(
                f"pretrained file {str(path)!r} has {len(unexpected)} backbone tensor(s) the model lacks "
                f"(first: {', '.join(unexpected[:5])}); it was saved from a different architecture"
            )
        source_classifier = [k for k in source if is_classifier(k) and not _is_counter(k)]
        classifier_pairs = [(k, k) for k in source_classifier if k in target]
    else:
        report.renamed_by_order = True
        source_tensors = [k for k in source if not _is_counter(k)]
        if len(source_tensors) < len(target_backbone):
            raise ValueError(
                f"pretrained file {str(path)!r} has {len(source_tensors)} tensors but the model's backbone "
                f"needs {len(target_backbone)} and the names differ (e.g. model {target_backbone[0]!r}); "
                "it does not hold this architecture"
            )
        for source_key, target_key in zip(source_tensors, target_backbone):
            mapping[source_key] = target_key
        source_classifier = source_tensors[len(target_backbone):]
        # What is left over must be a classifier (weight + bias, or as many tensors as the model's
        # classifier has); more than that means the file holds a bigger network.
        if len(source_classifier) > max(len(target_classifier), 2):
            raise ValueError(
                f"pretrained file {str(path)!r} has {len(source_classifier)} more tensors than the model's "
                f"backbone (first extra: {source_classifier[0]!r}); it does not hold this architecture"
            )
        classifier_pairs = list(zip(source_classifier, target_classifier))
        # Carry the batch-norm counters along with their layers.
        module_map = {_module_of(s): _module_of(t) for s, t in mapping.items()}
        for key in source:
            if _is_counter(key) and _module_of(key) in module_map:
                renamed = f"{module_map[_module_of(key)]}.num_batches_tracked"
                if renamed in target:
                    mapping[key] = renamed

    mismatched = [
        f"{s} {tuple(source[s].shape)} -> {t} {tuple(target[t].shape)}"
        for s, t in mapping.items()
        if source[s].shape != target[t].shape
    ]
    if mismatched:
        raise ValueError(
            f"pretrained file {str(path)!r} does not fit the model: {len(mismatched)} backbone tensor(s) "
            f"differ in shape (file -> model): {'; '.join(mismatched[:5])}. "
            "Check the model name, in_channels and model options against the weights."
        )

    new_state = {target_key: source[source_key] for source_key, target_key in mapping.items()}
    loaded_classifier = set()
    if keep_classifier:
        for source_key, target_key in classifier_pairs:
            if source[source_key].shape == target[target_key].shape:
                new_state[target_key] = source[source_key]
                loaded_classifier.add(source_key)
        # All or nothing: a classifier whose weight fits but whose bias does not is not reused.
        if len(loaded_classifier) != len(target_classifier):
            for source_key, target_key in classifier_pairs:
                new_state.pop(target_key, None)
            loaded_classifier.clear()
    report.dropped = [k for k in source_classifier if k not in loaded_classifier]
    report.missing = [k for k in target_classifier if k not in new_state]
    report.loaded = sum(1 for k in new_state if not _is_counter(k))
    model.load_state_dict(new_state, strict=False)
    return report


# --------------------------------------------------------------------------------------------
# Builders
# --------------------------------------------------------------------------------------------


def _attach_pretrained(model: nn.Module, pretrained) -> nn.Module:
    if pretrained is not None:
        model.pretrained_report = load_pretrained_weights(model, pretrained, ["head"], keep_classifier=True)
    return model


def _native_builder(constructor: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    def build(num_classes, in_channels, head, head_scale, pretrained, **options):
        model = constructor(num_classes=num_classes, in_channels=in_channels, **options)
        if head != "linear":
            model.head = build_head(head, model.feature_dim, num_classes, head_scale)
        return _attach_pretrained(model, pretrained)

    build.options = [p for p in inspect.signature(constructor).parameters if p not in ("num_classes", "in_channels", "head")]
    build.constructor = constructor  # the config checks option types against its defaults before any work
    build.__doc__ = constructor.__doc__
    return build


def _head_from_linear(classifier: nn.Module, in_features: int, num_classes: int, head: str, head_scale: float) -> nn.Module:
    """Turn a third-party classifier into our head, keeping its (possibly pretrained) weights when
    a linear head is asked for."""
    new_head = build_head(head, in_features, num_classes, head_scale)
    if isinstance(new_head, LinearHead) and isinstance(classifier, nn.Linear):
        new_head.load_state_dict(classifier.state_dict())
    return new_head


def _torchvision_builder(model_name: str) -> Callable[..., nn.Module]:
    def build(num_classes, in_channels, head, head_scale, pretrained, **options):
        import torchvision

        network = getattr(torchvision.models, model_name)(weights=None, num_classes=num_classes, **options)
        if in_channels != 3:
            stem = network.conv1
            network.conv1 = nn.Conv2d(in_channels, stem.out_channels, stem.kernel_size, stem.stride, stem.padding, bias=False)
            nn.init.kaiming_normal_(network.conv1.weight, mode="fan_out", nonlinearity="relu")
        report = None
        if pretrained is not None:
            report = load_pretrained_weights(network, pretrained, ["fc"], keep_classifier=head == "linear")
        feature_dim = network.fc.in_features
        new_head = _head_from_linear(network.fc, feature_dim, num_classes, head, head_scale)
        network.fc = nn.Identity()
        model = BackboneWithHead(network, new_head, feature_dim)
        if report is not None:
            model.pretrained_report = report
        return model

    build.options = ["zero_init_residual", "groups", "width_per_group", "replace_stride_with_dilation", "norm_layer"]
    build.__doc__ = f"torchvision.models.{model_name} (weights=None; pretrained=PATH loads a local state_dict)."
    return build


def _import_timm():
    try:
        import timm
    except ImportError as error:
        raise ImportError(
            "timm models need the optional dependency timm: pip install 'longtail[timm]' (or pip install timm)"
        ) from error
    return timm


def _build_timm(timm_name, num_classes, in_channels, head, head_scale, pretrained, **options):
    timm = _import_timm()
    if not timm_name:
        raise ValueError("timm model name is empty; use e.g. 'timm:efficientnet_lite0'")
    try:
        # pretrained=False always: timm would try to download, and these machines are offline.
        network = timm.create_model(timm_name, pretrained=False, num_classes=num_classes, in_chans=in_channels, **options)
    except RuntimeError as error:
        if "Unknown model" in str(error):
            close = timm.list_models(f"*{timm_name.split('_')[0]}*")[:10]
            raise ValueError(f"unknown timm model {timm_name!r}; similar names: {', '.join(close) or 'none'}") from error
        raise
    classifier_key = network.pretrained_cfg.get("classifier", "classifier") if hasattr(network, "pretrained_cfg") else "classifier"
    classifier_prefixes = [classifier_key] if isinstance(classifier_key, str) else list(classifier_key)
    report = None
    if pretrained is not None:
        report = load_pretrained_weights(network, pretrained, classifier_prefixes, keep_classifier=head == "linear")
    classifier = network.get_classifier()
    feature_dim = classifier.in_features if isinstance(classifier, nn.Linear) else getattr(
        network, "head_hidden_size", network.num_features
    )
    new_head = _head_from_linear(classifier, feature_dim, num_classes, head, head_scale)
    # num_classes=0 keeps timm's pooling (and pre-logits) and makes forward() return features.
    network.reset_classifier(0)
    model = BackboneWithHead(network, new_head, feature_dim)
    if report is not None:
        model.pretrained_report = report
    return model


_MODELS: dict[str, Callable[..., nn.Module]] = {
    "resnet20": _native_builder(lambda num_classes, in_channels: ResNetCifar(20, num_classes, in_channels)),
    "resnet32": _native_builder(lambda num_classes, in_channels: ResNetCifar(32, num_classes, in_channels)),
    "resnet44": _native_builder(lambda num_classes, in_channels: ResNetCifar(44, num_classes, in_channels)),
    "resnet56": _native_builder(lambda num_classes, in_channels: ResNetCifar(56, num_classes, in_channels)),
    "small_cnn": _native_builder(
        lambda num_classes, in_channels, width=32: SmallCNN(num_classes, in_channels, width=width)
    ),
    "resnet50": _torchvision_builder("resnet50"),
    "resnext50_32x4d": _torchvision_builder("resnext50_32x4d"),
}
_MODELS["resnet20"].__doc__ = "CIFAR ResNet-20 (0.27M parameters), option-A shortcuts."
_MODELS["resnet32"].__doc__ = "CIFAR ResNet-32 (0.46M parameters), the standard CIFAR-LT network."
_MODELS["resnet44"].__doc__ = "CIFAR ResNet-44 (0.66M parameters)."
_MODELS["resnet56"].__doc__ = "CIFAR ResNet-56 (0.85M parameters)."
_MODELS["small_cnn"].__doc__ = "Small VGG-style CNN for 28x28 grey images (0.28M parameters; option width=32)."


def available_models() -> list[str]:
    """Registered model names; any ``timm:<name>`` is accepted as well (needs ``longtail[timm]``)."""
    return sorted(_MODELS)


def create_model(
    name: str,
    num_classes: int,
    in_channels: int = 3,
    head: str = "linear",
    head_scale: float = 30.0,
    pretrained: str | Path | None = None,
    **options,
) -> nn.Module:
    """Build a model by name with ``.features`` / ``.head``; see the module docstring.

    Args:
        name: one of :func:`available_models` or ``"timm:<timm model name>"``.
        num_classes: number of classes K of the new classifier.
        in_channels: image channels (1 for grey images).
        head: ``"linear"`` or ``"cosine"`` (:class:`~longtail.models.heads.CosineHead`, logits = scale * cos).
        head_scale: the cosine head's scale s (30 as in LDAM / ConCutMix); ignored by the linear head.
        pretrained: path of a local state-dict file. A classifier of another shape is dropped and
            re-initialised (see ``model.pretrained_report``); backbone mismatches raise ValueError,
            a missing file FileNotFoundError.
        options: model-specific options (e.g. ``width`` for small_cnn, timm kwargs for timm models).
    """
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
    if not isinstance(in_channels, int) or in_channels < 1:
        raise ValueError(f"in_channels must be a positive integer, got {in_channels!r}")
    if head not in available_heads():
        raise ValueError(f"unknown head {head!r}; valid heads: {', '.join(available_heads())}")
    if head == "cosine" and not head_scale > 0:
        raise ValueError(f"head_scale must be positive for the cosine head, got {head_scale!r}")
    if isinstance(name, str) and name.startswith(TIMM_PREFIX):
        return _build_timm(name[len(TIMM_PREFIX):], num_classes, in_channels, head, head_scale, pretrained, **options)
    if name not in _MODELS:
        raise ValueError(
            f"unknown model {name!r}; valid models: {', '.join(available_models())}, "
            f"or '{TIMM_PREFIX}<name>' for any timm model (pip install 'longtail[timm]')"
        )
    builder = _MODELS[name]
    unknown = sorted(set(options) - set(builder.options))
    if unknown:
        raise ValueError(
            f"unknown option(s) {', '.join(unknown)} for model {name!r}; "
            f"valid options: {', '.join(builder.options) or 'none'}"
        )
    return builder(num_classes, in_channels, head, head_scale, pretrained, **options)
