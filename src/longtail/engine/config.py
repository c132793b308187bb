"""Typed run configuration: dataclasses, YAML recipes and dotted command-line overrides.

A run is fully described by one :class:`RunConfig`. It is built in three layers, later ones
winning: the dataclass defaults, a recipe (a shipped protocol plus an optional method preset, or a
user YAML file), then ``section.key=value`` overrides from the command line. Every key is checked
against the dataclass fields and every value against the field's type *before* any work starts,
so a typo costs a second, not a training run.

Loss and regularizer sections are open: besides ``name`` they take the keyword options of the
chosen component (``loss.omega=0.5``), which the component's own builder validates.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import re
import types
import typing
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml


class ConfigError(ValueError):
    """A configuration problem found before any work started (the CLI exits with code 2)."""


class _Loader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that also reads ``5e-4`` / ``1E3`` as numbers.

    PyYAML follows YAML 1.1, whose float pattern needs a dot (``5.0e-4``), so ``5e-4`` would be
    the string "5e-4" and ``optim.weight_decay: 5e-4`` a type error. YAML 1.2 (and every user) reads
    it as a number; this resolver does too, in files and ``key=value`` overrides alike.
    """


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
                   |[-+]?(?:[0-9][0-9_]*)[eE][-+]?[0-9]+
                   |[-+]?\.[0-9_]+(?:[eE][-+]?[0-9]+)?
                   |[-+]?\.(?:inf|Inf|INF)
                   |\.(?:nan|NaN|NAN))$""", re.X),
    list("-+0123456789."))


def load_yaml(text) -> Any:
    """Parse YAML text (or a stream) safely, scientific notation included (see ``_Loader``)."""
    return yaml.load(text, Loader=_Loader)  # noqa: S506 - _Loader is a SafeLoader


def _help(text: str, default: Any = dataclasses.MISSING, factory: Any = dataclasses.MISSING):
    if factory is not dataclasses.MISSING:
        return field(default_factory=factory, metadata={"help": text})
    return field(default=default, metadata={"help": text})


@dataclass
class DataConfig:
    name: str = _help("dataset name (see `longtail data`)", "fashion-mnist-lt")
    root: Optional[str] = _help("dataset directory (not needed for the embedded default)", None)
    imbalance_factor: Optional[float] = _help(
        "build the long-tailed split with this imbalance factor (datasets that take one)", None)
    profile: str = _help("imbalance profile: exp | step", "exp")
    split_seed: int = _help("seed of the long-tailed split (LDAM-DRW generator)", 0)
    validation_per_class: int = _help(
        "hold out this many training images per class as a validation split (0 = none); "
        "tuning and checkpoint selection use it, never the test set", 0)
    sampler: str = _help("instance | sqrt | class_balanced | progressive | power", "instance")
    sampler_q: Optional[float] = _help("exponent q of the power sampler", None)
    batch_size: int = _help("global batch size (split evenly over processes)", 128)
    eval_batch_size: int = _help("batch size for evaluation", 512)
    crop_padding: int = _help("random-crop padding in pixels (0 = no crop)", 4)
    flip: bool = _help("random horizontal flip", True)
    cutout: int = _help("Cutout square side in pixels (0 = off)", 0)
    image_size: Optional[int] = _help(
        "model input side in pixels (None = the images' native size; 224 for large image files)", None)
    resize: str = _help(
        "image files: auto (native size; resize to the most common size if sizes differ; ImageNet-style if "
        "images are large or image_size > 64) | native | resize (to image_size, then crop / flip) | imagenet "
        "(RandomResizedCrop for training, resize + centre crop for evaluation)", "auto")
    in_memory: Optional[bool] = _help(
        "decode image files into memory once and train through the in-memory loader "
        "(None = automatic: when they fit in 2 GiB and no ImageNet-style crop is used)", None)
    check_images: str = _help(
        "image files are checked before training: header (fast: header + end marker) | decode (full decode)", "header")
    bad_images: str = _help(
        "unreadable image files: error (list them all and stop) | skip (train without them; recorded in "
        "class_counts.json)", "error")
    test_fraction: Optional[float] = _help(
        "single-folder image layouts root/<class>/*: fraction of each class held out as the test split "
        "(seeded by split_seed; None = 0.2)", None)
    channels: Optional[int] = _help(
        "repeat single-channel images to this many channels (3 for ImageNet-pretrained backbones)", None)
    randaugment: bool = _help("RandAugment, per image after crop and flip", False)
    autoaugment: bool = _help("AutoAugment, the ImageNet policy for ImageNet-style sizes, else CIFAR-10's", False)
    workers: int = _help("DataLoader workers (image files read per image)", 2)
    normalization: str = _help(
        "dataset (in-memory: the dataset's own mean / std; image files: the pipeline's choice) | imagenet "
        "(ImageNet's mean / std, for ImageNet-pretrained weights)", "dataset")
    crop_scale_min: Optional[float] = _help(
        "RandomResizedCrop area scale lower bound (scale in [min, 1], ratio 3/4-4/3). ImageNet-style image files: "
        "default 0.08; in-memory datasets: None = the padded crop, a value = a random resized crop back to the "
        "image size after data.image_size's resize (needs data.crop_padding=0)", None)
    mixing: str = _help("batch mixing: none | mixup | cutmix", "none")
    mixing_alpha: float = _help("Beta(alpha, alpha) parameter of mixup / CutMix", 1.0)
    mixing_prob: float = _help("probability that a batch is mixed", 1.0)
    mixing_until_epoch: Optional[int] = _help("stop mixing from this epoch on (None = never)", None)


@dataclass
class ModelConfig:
    name: str = _help("model name (see `longtail models`)", "small_cnn")
    head: str = _help("classifier head: linear | cosine", "linear")
    head_scale: float = _help("scale s of the cosine head", 30.0)
    pretrained: Optional[str] = _help("local weights file to fine-tune from", None)
    init_from: Optional[str] = _help(
        "run directory (or checkpoint) of a finished run on the same data whose weights start this one: "
        "stage 2 of decoupled training", None)
    decoupled: str = _help(
        "none | crt (freeze the backbone, re-initialise and retrain the classifier) | lws (freeze backbone "
        "and classifier, learn a per-class scale); both need model.init_from (Kang et al. 2020)", "none")
    channels_last: bool = _help("use channels_last memory format", True)
    compile: bool = _help("torch.compile the model", False)
    options: dict = _help("model-specific keyword options, e.g. {width: 16} for small_cnn", None, dict)


@dataclass
class OptimConfig:
    name: str = _help("sgd | adamw", "sgd")
    lr: float = _help("base learning rate (for the global batch size)", 0.1)
    momentum: float = _help("SGD momentum", 0.9)
    nesterov: bool = _help("Nesterov momentum", False)
    weight_decay: float = _help("weight decay", 5e-4)
    epochs: int = _help("training epochs", 200)
    warmup_epochs: float = _help("linear warm-up length in epochs", 5.0)
    schedule: str = _help("multistep | cosine | constant", "multistep")
    milestones: list = _help("epochs at which the multistep schedule changes the lr", None, lambda: [160, 180])
    milestone_factors: list = _help(
        "lr multiplier (of the base lr) from each milestone on", None, lambda: [0.01, 0.0001])
    min_lr: float = _help("final lr of the cosine schedule", 0.0)
    warmup_style: str = _help(
        "linear (per step, from optim.warmup_start_lr to optim.lr) | stepwise (LDAM-DRW: lr * e / warmup_epochs "
        "in epochs e = 1..warmup_epochs, constant within an epoch)", "linear")
    warmup_start_lr: Optional[float] = _help("lr at the start of a linear warm-up (None = 0)", None)
    iterations: Optional[int] = _help(
        "train for exactly this many batches instead of a number of epochs (the Balanced Softmax CIFAR "
        "protocol: 13000); optim.epochs is then set to ceil(iterations / batches per epoch) and the last "
        "epoch is cut short", None)
    warmup_iterations: Optional[int] = _help(
        "warm-up length in batches (iteration-based recipes; needs optim.warmup_epochs=0)", None)
    grad_accumulation: int = _help("accumulate gradients over this many batches", 1)
    clip_grad_norm: Optional[float] = _help("clip the gradient norm to this value", None)


@dataclass
class ComponentConfig:
    """A named component plus its keyword options (validated by the component's builder)."""

    name: str = "none"
    options: dict = field(default_factory=dict)


# Validation metrics train.select_on can maximise (keys of LongTailMetrics.compute()).
SELECTABLE_METRICS = ("accuracy", "balanced_accuracy", "worst_class_accuracy", "worst_10pct_accuracy",
                      "harmonic_mean_recall")


@dataclass
class TrainConfig:
    seed: int = _help("seed of initialisation, data order and augmentation", 0)
    device: str = _help("auto | cpu | cuda | cuda:N", "auto")
    precision: str = _help(
        "auto | fp32 | bf16 | fp16 (autocast of the model's forward; losses, CAR and metrics stay fp32). auto: "
        "bf16 where the hardware runs it natively (CUDA compute capability 8.0+, CPUs with avx512_bf16 or "
        "AMX), fp32 elsewhere; environment.json and metrics.json record the choice and why", "auto")
    eval_every: int = _help("evaluate on the test split every N epochs (0 = final only)", 0)
    checkpoint_every: int = _help("write the resumable checkpoint every N epochs", 1)
    eval_train: bool = _help("also evaluate the training set (eval transforms) at the end", True)
    select_on: str = _help(
        "which weights the final metrics come from: 'final' (the last epoch), or a validation metric to "
        f"maximise ({', '.join(SELECTABLE_METRICS)}); the validation split (data.validation_per_class > 0, "
        "or a file dataset's own val split) is then evaluated after every epoch and the best epoch's weights "
        "are kept. Never the test set", "final")
    output_dir: str = _help("where run directories are created", "runs")
    run_name: Optional[str] = _help("run directory name (default: recipe + time)", None)
    progress: bool = _help("show a progress bar", True)
    threads: Optional[int] = _help("torch CPU threads (None = torch default)", None)
    deterministic: bool = _help("use deterministic algorithms (bit-exact resume)", True)


@dataclass
class RunConfig:
    description: str = ""
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: ComponentConfig = field(default_factory=lambda: ComponentConfig(name="ce"))
    regularizer: ComponentConfig = field(default_factory=ComponentConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


OPEN_SECTIONS = ("loss", "regularizer")
TYPED_SECTIONS = ("data", "model", "optim", "train")

RECIPE_DIR = Path(__file__).resolve().parent.parent / "recipes"


# ----------------------------------------------------------------------------- type checking


def _check_value(value: Any, annotation: Any, key: str) -> Any:
    """Return ``value`` converted to ``annotation`` or raise a ConfigError naming ``key``."""
    if isinstance(annotation, str):
        annotation = eval_annotation(annotation)
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(annotation)
        if value is None and type(None) in options:
            return None
        inner = [a for a in options if a is not type(None)]
        return _check_value(value, inner[0], key)
    if annotation is bool:
        if isinstance(value, bool):
            return value
    elif annotation is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif annotation is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # "nan", "inf", "1e-3" written as text: a number, range-checked later
            try:
                return float(value)
            except ValueError:
                pass
    elif annotation is str:
        if isinstance(value, str):
            return value
    elif annotation is list or origin is list:
        if isinstance(value, (list, tuple)) and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in value
        ):
            return list(value)
        raise ConfigError(f"{key} must be a list of numbers like [160, 180], got {value!r}")
    elif annotation is dict:
        if isinstance(value, dict):
            return value
    else:  # pragma: no cover - every field type is handled above
        raise TypeError(f"unsupported annotation {annotation} for {key}")
    expected = getattr(annotation, "__name__", str(annotation))
    raise ConfigError(f"{key} must be of type {expected}, got {value!r} ({type(value).__name__})")


def eval_annotation(text: str) -> Any:
    return {"str": str, "int": int, "float": float, "bool": bool, "list": list, "dict": dict,
            "Optional[str]": Optional[str], "Optional[int]": Optional[int],
            "Optional[float]": Optional[float], "Optional[bool]": Optional[bool]}[text]


def _section_fields(section_cls) -> dict:
    return {f.name: f for f in dataclasses.fields(section_cls)}


def apply_mapping(config: RunConfig, mapping: dict, source: str) -> None:
    """Merge a nested mapping (from YAML) into ``config`` in place, checking keys and types."""
    if not isinstance(mapping, dict):
        raise ConfigError(f"{source}: the top level must be a mapping of sections, got {type(mapping).__name__}")
    for section, values in mapping.items():
        if section in ("base", "method"):
            continue  # consumed by the recipe loader
        if section == "description":
            config.description = str(values)
            continue
        if section in OPEN_SECTIONS:
            if isinstance(values, str):
                values = {"name": values}
            if not isinstance(values, dict):
                raise ConfigError(f"{source}: '{section}' must be a mapping with a 'name', got {values!r}")
            # `name` first: setting a new name drops the previous component's options, and options
            # written before `name` in the same mapping belong to the new component.
            for key, value in sorted(values.items(), key=lambda item: item[0] != "name"):
                if key == "options" and isinstance(value, dict):  # the saved form: {name, options: {...}}
                    for option, option_value in value.items():
                        set_override(config, f"{section}.{option}", option_value, source)
                else:
                    set_override(config, f"{section}.{key}", value, source)
            continue
        if section not in TYPED_SECTIONS:
            valid = ", ".join(("description",) + TYPED_SECTIONS + OPEN_SECTIONS)
            raise ConfigError(f"{source}: unknown section '{section}'; valid sections: {valid}")
        if not isinstance(values, dict):
            raise ConfigError(f"{source}: section '{section}' must be a mapping, got {values!r}")
        for key, value in values.items():
            set_override(config, f"{section}.{key}", value, source)


def set_override(config: RunConfig, dotted: str, value: Any, source: str = "override") -> None:
    """Set ``section.key`` to ``value`` with key and type checks."""
    parts = dotted.split(".")
    section = parts[0]
    if section in OPEN_SECTIONS:
        component: ComponentConfig = getattr(config, section)
        if len(parts) == 2 and parts[1] == "name":
            if not isinstance(value, str):
                raise ConfigError(f"{source}: {dotted} must be a name, got {value!r}")
            if value != component.name:
                component.options = {}  # options belong to the previous component
            component.name = value
            return
        if len(parts) == 2:
            component.options[parts[1]] = value
            return
        if len(parts) == 3 and parts[1] == "options":
            component.options[parts[2]] = value
            return
        raise ConfigError(f"{source}: '{dotted}' is not a valid key; use {section}.name or {section}.<option>")
    if section not in TYPED_SECTIONS or len(parts) != 2:
        valid = ", ".join(TYPED_SECTIONS + OPEN_SECTIONS)
        raise ConfigError(f"{source}: '{dotted}' is not a valid key; keys look like section.key with section in: {valid}")
    section_obj = getattr(config, section)
    fields = _section_fields(type(section_obj))
    key = parts[1]
    if key not in fields:
        raise ConfigError(
            f"{source}: unknown key '{dotted}'; valid keys in '{section}': {', '.join(fields)}"
        )
    setattr(section_obj, key, _check_value(value, fields[key].type, f"{source}: {dotted}"))


def parse_override(text: str) -> tuple[str, Any]:
    """Split ``section.key=value``; the value is read as YAML (numbers, booleans, lists, null)."""
    if "=" not in text:
        raise ConfigError(f"override '{text}' must look like section.key=value (e.g. optim.lr=0.05)")
    key, raw = text.split("=", 1)
    try:
        value = load_yaml(raw) if raw != "" else ""
    except yaml.YAMLError as error:
        raise ConfigError(f"override '{text}': cannot read value {raw!r}: {error}") from error
    return key.strip(), value


# ----------------------------------------------------------------------------- recipes


def available_protocols() -> list[str]:
    return sorted(p.stem for p in (RECIPE_DIR / "protocols").glob("*.yaml"))


def load_methods() -> dict:
    with open(RECIPE_DIR / "methods.yaml", encoding="utf-8") as handle:
        return load_yaml(handle)


def available_recipes() -> list[str]:
    """Every shipped recipe: each protocol alone and combined with each method it lists."""
    names = []
    for protocol in available_protocols():
        names.append(protocol)
        names.extend(f"{protocol}/{method}" for method in protocol_methods(protocol))
    return names


def _read_yaml(path: Path) -> dict:
    try:
        with open(path, encoding="utf-8") as handle:
            data = load_yaml(handle) or {}
    except FileNotFoundError as error:
        raise ConfigError(f"config file not found: {path}") from error
    except IsADirectoryError as error:
        raise ConfigError(f"config {path} is a directory; give a YAML file") from error
    except PermissionError as error:
        raise ConfigError(f"config {path} cannot be read (permission denied)") from error
    except UnicodeDecodeError as error:
        raise ConfigError(f"config {path} is not UTF-8 text (byte {error.start}: {error.reason}); "
                          f"save it as UTF-8 YAML") from error
    except yaml.YAMLError as error:
        raise ConfigError(f"{path} is not valid YAML: {error}") from error
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections")
    return data


def protocol_methods(protocol: str) -> list[str]:
    data = _read_yaml(RECIPE_DIR / "protocols" / f"{protocol}.yaml")
    return list(data.get("methods", []))


def method_overrides(method: str, protocol: Optional[str] = None) -> dict:
    """The section mapping a method preset adds (protocol-specific entries win)."""
    methods = load_methods()
    if method not in methods:
        raise ConfigError(f"unknown method '{method}'; valid methods: {', '.join(sorted(methods))}")
    preset = dict(methods[method])
    per_protocol = preset.pop("per_protocol", {}) or {}
    merged = {k: dict(v) if isinstance(v, dict) else v for k, v in preset.items()}
    if protocol and protocol in per_protocol:
        for section, values in per_protocol[protocol].items():
            if isinstance(values, dict) and isinstance(merged.get(section), dict):
                merged[section].update(values)
            else:
                merged[section] = values
    return merged


def load_recipe(name: str) -> tuple[RunConfig, str]:
    """Build the config of a shipped recipe ``protocol`` or ``protocol/method``."""
    protocol, _, method = name.partition("/")
    if protocol not in available_protocols():
        raise ConfigError(
            f"unknown recipe '{name}'; run `longtail recipes` for the list. Protocols: "
            f"{', '.join(available_protocols())}"
        )
    config = RunConfig()
    data = _read_yaml(RECIPE_DIR / "protocols" / f"{protocol}.yaml")
    data.pop("methods", None)
    data.pop("paper", None)
    apply_mapping(config, data, f"recipe {protocol}")
    if method:
        apply_mapping(config, method_overrides(method, protocol), f"method {method}")
    return config, name


def build_config(
    recipe: Optional[str] = None,
    config_file: Optional[str] = None,
    overrides: Optional[list[str]] = None,
    method: Optional[str] = None,
) -> tuple[RunConfig, str]:
    """Defaults <- recipe or YAML file <- method preset <- overrides. Returns (config, label)."""
    if recipe and config_file:
        raise ConfigError("give either --recipe or --config, not both")
    if config_file:
        config = RunConfig()
        data = _read_yaml(Path(config_file))
        base = data.get("base")
        if base:
            config, _ = load_recipe(str(base))
        apply_mapping(config, data, str(config_file))
        label = Path(config_file).stem
    else:
        config, label = load_recipe(recipe or "fashion-mnist-lt")
    if method:
        protocol = label.partition("/")[0]
        apply_mapping(config, method_overrides(method, protocol), f"method {method}")
        label = f"{protocol}/{method}"
    parsed = [parse_override(text) for text in overrides or []]
    # Option order never matters: `loss.omega=0.5 loss.name=ccar_bs` keeps omega. Component names
    # go first (stable sort), so a name given on the command line replaces the recipe's component
    # and every option given with it, before or after, is kept.
    parsed.sort(key=lambda item: not _is_component_name(item[0]))
    for key, value in parsed:
        set_override(config, key, value)
    validate(config)
    if not recipe and not config_file and config.data.name != RunConfig().data.name:
        # No recipe named: the default recipe's name would misname a run on other data (the
        # user's image folder), in the run directory, the log and the plots.
        label = dataset_title(config) + (f"/{method}" if method else "")
        # ...and its description would describe the embedded dataset instead of the user's data.
        config.description = (f"{config.data.name} data with the default recipe's model, optimiser and "
                              f"schedule (fashion-mnist-lt; see `longtail recipes` for others)")
    return config, label


def _is_component_name(dotted: str) -> bool:
    section, _, key = dotted.partition(".")
    return section in OPEN_SECTIONS and key == "name"


def dataset_title(config: "RunConfig") -> str:
    """The run's own dataset, for names and titles: an image folder by its folder name, else the dataset name."""
    name = config.data.name
    if name == "imagefolder" and config.data.root:
        return Path(str(config.data.root)).expanduser().resolve().name or name
    return name


def config_from_dict(mapping: dict) -> RunConfig:
    """Rebuild a RunConfig from its saved ``to_dict()`` form (e.g. inside a checkpoint)."""
    config = RunConfig()
    mapping = dict(mapping)
    for section in OPEN_SECTIONS:
        values = mapping.pop(section, None)
        if values is not None:
            setattr(config, section, ComponentConfig(name=values["name"], options=dict(values.get("options", {}))))
    apply_mapping(config, mapping, "saved config")
    validate(config)
    return config


_CHOICES = {
    "data.profile": ("exp", "step"),
    "data.mixing": ("none", "mixup", "cutmix"),
    "data.normalization": ("dataset", "imagenet"),
    "model.head": ("linear", "cosine"),
    "model.decoupled": ("none", "crt", "lws"),
    "optim.name": ("sgd", "adamw"),
    "optim.schedule": ("multistep", "cosine", "constant"),
    "optim.warmup_style": ("linear", "stepwise"),
    "train.precision": ("auto", "fp32", "bf16", "fp16"),
}


# Valid range of every numeric key: (lowest, lowest allowed?, highest, highest allowed?); None = unbounded.
# Every float must also be finite. A None value (for Optional keys) means "off" and is not checked.
_RANGES = {
    "data.imbalance_factor": (1, True, None, False),
    "data.split_seed": (0, True, None, False),
    "data.validation_per_class": (0, True, None, False),
    "data.sampler_q": (0, True, None, False),
    "data.batch_size": (1, True, None, False),
    "data.eval_batch_size": (1, True, None, False),
    "data.crop_padding": (0, True, None, False),
    "data.cutout": (0, True, None, False),
    "data.image_size": (1, True, None, False),
    "data.channels": (1, True, None, False),
    "data.workers": (0, True, None, False),
    "data.mixing_alpha": (0, False, None, False),
    "data.mixing_prob": (0, True, 1, True),
    "data.mixing_until_epoch": (0, True, None, False),
    "data.test_fraction": (0, False, 1, False),
    "data.crop_scale_min": (0, False, 1, True),
    "optim.warmup_start_lr": (0, True, None, False),
    "optim.iterations": (1, True, None, False),
    "optim.warmup_iterations": (0, True, None, False),
    "model.head_scale": (0, False, None, False),
    "optim.lr": (0, False, None, False),
    "optim.momentum": (0, True, 1, False),
    "optim.weight_decay": (0, True, None, False),
    "optim.epochs": (1, True, None, False),
    "optim.warmup_epochs": (0, True, None, False),
    "optim.min_lr": (0, True, None, False),
    "optim.grad_accumulation": (1, True, None, False),
    "optim.clip_grad_norm": (0, False, None, False),
    "train.seed": (0, True, None, False),
    "train.eval_every": (0, True, None, False),
    "train.checkpoint_every": (1, True, None, False),
    "train.threads": (1, True, None, False),
}
_LIST_RANGES = {"optim.milestones": (0, True, None, False), "optim.milestone_factors": (0, False, None, False)}


def _range_text(low, low_in, high, high_in) -> str:
    parts = []
    if low is not None:
        parts.append(f"{'>=' if low_in else '>'} {low:g}")
    if high is not None:
        parts.append(f"{'<=' if high_in else '<'} {high:g}")
    return " and ".join(parts) or "finite"


def _in_range(value, low, low_in, high, high_in) -> bool:
    if isinstance(value, float) and not math.isfinite(value):
        return False
    if low is not None and (value < low or (value == low and not low_in)):
        return False
    if high is not None and (value > high or (value == high and not high_in)):
        return False
    return True


def _check_ranges(config: RunConfig) -> None:
    for dotted, bounds in _RANGES.items():
        section, key = dotted.split(".")
        value = getattr(getattr(config, section), key)
        if value is not None and not _in_range(value, *bounds):
            raise ConfigError(f"{dotted}={value!r} is out of range; valid: {_range_text(*bounds)}")
    for dotted, bounds in _LIST_RANGES.items():
        section, key = dotted.split(".")
        values = getattr(getattr(config, section), key)
        for value in values:
            if not _in_range(value, *bounds):
                raise ConfigError(f"{dotted}={values!r}: entry {value!r} is out of range; every entry must be "
                                  f"{_range_text(*bounds)}")
    # Any float anywhere (model options, loss / regularizer options included) must be finite.
    for section in TYPED_SECTIONS + OPEN_SECTIONS:
        for path, value in _walk(dataclasses.asdict(getattr(config, section)), section):
            if isinstance(value, float) and not math.isfinite(value):
                raise ConfigError(f"{path}={value!r} is not a finite number")


def _walk(value, path):
    if isinstance(value, dict):
        for key, inner in value.items():
            yield from _walk(inner, f"{path}.{key}" if key != "options" else path)
    elif isinstance(value, (list, tuple)):
        for inner in value:
            yield from _walk(inner, path)
    else:
        yield path, value


def _check_component_options(section: str, name: str, options: dict, builder, engine_options=(),
                             kind: Optional[str] = None, not_options=("self", "class_counts")) -> None:
    """Refuse unknown options and values whose type cannot be the builder's: each option's type must
    match its default's (a number for a float, a whole number for an int, true/false for a bool, text
    for a string). The builder's own checks (ranges, choices) run when the component is built."""
    signature = inspect.signature(builder)
    kind = kind or section
    parameters = {k: p for k, p in signature.parameters.items()
                  if k not in not_options and p.kind is not inspect.Parameter.VAR_KEYWORD}
    for option, value in options.items():
        if option in engine_options:
            continue
        if option not in parameters:
            raise ConfigError(f"{section}.{option} is not an option of {kind} '{name}'; its options: "
                              f"{', '.join(parameters) or 'none'}")
        default = parameters[option].default
        expected = None
        if isinstance(default, bool):
            ok, expected = isinstance(value, bool), "true or false"
        elif isinstance(default, int):
            ok, expected = isinstance(value, int) and not isinstance(value, bool), "a whole number"
        elif isinstance(default, float):
            ok, expected = isinstance(value, (int, float)) and not isinstance(value, bool), "a number"
        elif isinstance(default, str):
            ok, expected = isinstance(value, str), "text"
        else:  # no default or None / an object default: the builder checks it
            ok = True
        if not ok:
            raise ConfigError(f"{section}.{option}={value!r} ({type(value).__name__}) is not valid for {kind} "
                              f"'{name}': expected {expected} like its default {default!r}")


def _check_components(config: RunConfig) -> None:
    """Check loss / regularizer names, option names and option types (and those of the library's own
    models' options) now, before any data is read."""
    _check_loss(config)
    from longtail.models.factory import _MODELS

    constructor = getattr(_MODELS.get(config.model.name), "constructor", None)
    if constructor is not None:  # timm and torchvision-style models check their options when built
        _check_component_options("model.options", config.model.name, config.model.options, constructor,
                                 kind="model", not_options=("self", "num_classes", "in_channels", "head"))
    regularizer = config.regularizer
    if regularizer.name == "none":
        if regularizer.options:
            raise ConfigError(f"regularizer options {regularizer.options} given but regularizer.name=none")
        return
    if regularizer.name != "car":
        raise ConfigError(f"unknown regularizer '{regularizer.name}'; valid: none, car")
    from longtail.regularizers import CAR

    _check_component_options("regularizer", "car", regularizer.options, CAR.__init__)
    try:  # CAR's own value checks (weighting, surrogate...) on a tiny class-count vector
        CAR([2, 1], **regularizer.options)
    except (ValueError, TypeError) as error:
        raise ConfigError(f"regularizer 'car' with options {regularizer.options}: {error}") from None


def _check_loss(config: RunConfig) -> None:
    from longtail.engine.concutmix import CONTRASTIVE_METHODS, settings_from_config
    from longtail.losses import build_loss
    from longtail.losses.registry import ALIASES, LOSSES

    loss = config.loss
    if loss.name in CONTRASTIVE_METHODS:  # methods with their own training step and option set
        try:
            settings_from_config(config)
        except ConfigError:
            raise
        except (TypeError, ValueError) as error:  # e.g. a text where a number belongs
            raise ConfigError(f"loss '{loss.name}' with options {loss.options}: {error}") from None
        return
    key = ALIASES.get(loss.name, loss.name)
    if key not in LOSSES:
        raise ConfigError(f"unknown loss '{loss.name}'; valid: {', '.join(sorted([*LOSSES, *ALIASES, *CONTRASTIVE_METHODS]))}")
    switch = loss.options.get("switch_fraction")
    if switch is not None and (isinstance(switch, bool) or not isinstance(switch, (int, float))
                               or not 0 <= switch <= 1):
        raise ConfigError(f"loss.switch_fraction={switch!r} is out of range; valid: a number in [0, 1]")
    _check_component_options("loss", loss.name, loss.options, LOSSES[key], engine_options=("switch_fraction",))
    # Build it once on a tiny class-count vector: the builder's own value checks (omega range,
    # unknown weighting...) then fire here, before any data is read.
    options = {k: v for k, v in loss.options.items() if k != "switch_fraction"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            build_loss(loss.name, [2, 1], **options)
        except (ValueError, TypeError) as error:
            raise ConfigError(f"loss '{loss.name}' with options {options}: {error}") from None


def check_run_name(run_name: Optional[str]) -> None:
    """train.run_name is one directory name inside train.output_dir, never a path out of it."""
    if run_name is None:
        return
    if (run_name in ("", ".", "..") or "/" in run_name or "\\" in run_name or "\0" in run_name
            or Path(run_name).is_absolute()):
        raise ConfigError(f"train.run_name={run_name!r} is not valid: it must be a single directory name inside "
                          f"train.output_dir (no '/', '\\', '..' or absolute path)")


def validate(config: RunConfig) -> None:
    """Cross-field checks that single-key type checks cannot do."""
    _check_ranges(config)
    check_run_name(config.train.run_name)
    for dotted, choices in _CHOICES.items():
        section, key = dotted.split(".")
        value = getattr(getattr(config, section), key)
        if value not in choices:
            raise ConfigError(f"{dotted}={value!r} is not valid; choose one of: {', '.join(choices)}")
    optim = config.optim
    if len(optim.milestones) != len(optim.milestone_factors):
        raise ConfigError(
            f"optim.milestones {optim.milestones} and optim.milestone_factors "
            f"{optim.milestone_factors} must have the same length"
        )
    if optim.min_lr > optim.lr:
        raise ConfigError(f"optim.min_lr={optim.min_lr:g} is out of range; valid: <= optim.lr ({optim.lr:g})")
    _validate_iterations(config)
    select_on = config.train.select_on
    if select_on != "final":
        if select_on not in SELECTABLE_METRICS:
            raise ConfigError(f"train.select_on={select_on!r} is not valid; choose final or one of: "
                              f"{', '.join(SELECTABLE_METRICS)}")
    _refuse_selection_on_test(config)
    check_ldam_head(config)
    if config.data.crop_scale_min is not None and not 0 < config.data.crop_scale_min <= 1:
        raise ConfigError(f"data.crop_scale_min must be in (0, 1], got {config.data.crop_scale_min}")
    if config.data.randaugment and config.data.autoaugment:
        raise ConfigError("data.randaugment and data.autoaugment are alternatives; switch on at most one")
    device = config.train.device
    if not (device in ("auto", "cpu", "cuda") or re.fullmatch(r"cuda:[0-9]+", device)):
        raise ConfigError(f"train.device={device!r} is not valid; use auto, cpu, cuda or cuda:N")
    _check_components(config)


def is_ldam(config: RunConfig) -> bool:
    from longtail.losses.registry import _canonical

    try:
        return _canonical(config.loss.name) in ("ldam", "ldam_drw")
    except ValueError:
        return False  # an unknown name is reported with the valid ones when the loss is built


def check_ldam_head(config: RunConfig) -> None:
    """LDAM's scale and the cosine head's scale are one setting (model.head_scale)."""
    if not is_ldam(config):
        return
    options = config.loss.options
    if config.model.head != "cosine":
        raise ConfigError(f"loss.name={config.loss.name} needs the cosine classifier it was built for: set "
                          f"model.head=cosine (its scale s is model.head_scale, {config.model.head_scale:g})")
    if "scale" in options:
        raise ConfigError(f"loss.scale: LDAM's scale is the cosine head's scale, one setting; set "
                          f"model.head_scale={options['scale']} instead of loss.scale")
    if options.get("logits_prescaled", True) is not True:
        raise ConfigError("loss.logits_prescaled: the engine's cosine head outputs s * cos; leave it True")
    if "head" in options:
        raise ConfigError("loss.head: the engine passes the model's own head")


def _refuse_selection_on_test(config: RunConfig) -> None:
    """train.select_on reads the 'val' split; refuse it where 'val' is the dataset's test split
    (iNaturalist 2018) unless data.validation_per_class carves a validation split from training."""
    if config.train.select_on == "final" or config.data.validation_per_class:
        return
    from longtail.data import dataset_test_splits

    try:
        test_splits = dataset_test_splits(config.data.name)
    except ValueError:
        return  # unknown dataset: reported with the valid names when the data is built
    if "val" in test_splits:
        raise ConfigError(
            f"train.select_on={config.train.select_on} would select on split 'val', which is the test split of "
            f"{config.data.name} (its val list is the test set of every paper); set data.validation_per_class=N to "
            f"carve a validation split from the training list, or train.select_on=final")


def _validate_iterations(config: RunConfig) -> None:
    """Iteration-based length and warm-up (optim.iterations / warmup_iterations / warmup_start_lr)."""
    optim = config.optim
    if optim.iterations is not None and optim.iterations < 1:
        raise ConfigError(f"optim.iterations must be at least 1 (or null for epoch-based training), got {optim.iterations}")
    if optim.warmup_iterations is not None:
        if optim.warmup_iterations < 0:
            raise ConfigError(f"optim.warmup_iterations must be >= 0, got {optim.warmup_iterations}")
        if optim.warmup_epochs:
            raise ConfigError(f"give optim.warmup_iterations or optim.warmup_epochs, not both "
                              f"(set optim.warmup_epochs=0; it is {optim.warmup_epochs})")
        if optim.warmup_style == "stepwise":
            raise ConfigError("optim.warmup_style=stepwise steps once per epoch; use optim.warmup_epochs with it")
    if optim.warmup_start_lr is not None:
        if optim.warmup_style == "stepwise":
            raise ConfigError("optim.warmup_start_lr applies to the linear warm-up; the stepwise one starts at "
                              "lr / warmup_epochs")
        if optim.warmup_start_lr < 0:
            raise ConfigError(f"optim.warmup_start_lr must be >= 0, got {optim.warmup_start_lr}")
    if optim.iterations is not None and config.data.sampler == "progressive":
        raise ConfigError("data.sampler=progressive schedules over optim.epochs, which optim.iterations derives "
                          "from the batches per epoch; give optim.epochs instead of optim.iterations")


def describe_keys() -> str:
    """Every key with its default and help text, for `longtail train --help`."""
    lines = []
    for section in TYPED_SECTIONS:
        cls = type(getattr(RunConfig(), section))
        lines.append(f"{section}:")
        for f in dataclasses.fields(cls):
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            lines.append(f"  {section}.{f.name} = {default!r}  -- {f.metadata.get('help', '')}")
    lines.append("loss:\n  loss.name = 'ce'  -- loss name (see `longtail losses`); loss.<option>=value passes options;\n"
                 "  loss.switch_fraction = f  -- place a DRW switch at fraction f of optim.epochs")
    lines.append("regularizer:\n  regularizer.name = 'none'  -- none | car; regularizer.<option>=value passes options")
    return "\n".join(lines)


def dump_yaml(config: RunConfig) -> str:
    return yaml.safe_dump(config.to_dict(), sort_keys=False)
