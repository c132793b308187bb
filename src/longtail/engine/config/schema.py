"""The run configuration's schema: the typed sections (``RunConfig`` and its dataclasses), the one
YAML reader, and the key reference for ``longtail train --help``.

A run is fully described by one :class:`RunConfig`. It is built in three layers, later ones
winning: the dataclass defaults, a recipe (a shipped protocol plus an optional method preset, or a
user YAML file), then ``section.key=value`` overrides from the command line (``recipes.py``,
``overrides.py``). Every key is checked against the dataclass fields and every value against the
field's type *before* any work starts (``validate.py``), so a typo costs a second, not a training run.

Loss and regularizer sections are open: besides ``name`` they take the keyword options of the
chosen component (``loss.omega=0.5``), which the component's own builder validates.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml

from longtail.engine.errors import ConfigError  # noqa: F401 - re-exported: the config's usage error

class _Loader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that also reads ``5e-4`` / ``1E3`` as numbers.

    PyYAML follows YAML 1.1, whose float pattern needs a dot (``5.0e-4``), so ``5e-4`` would be
    the string "5e-4" and ``optim.weight_decay: 5e-4`` a type error. YAML 1.2 (and every user) reads
    it as a number; this resolver does too, in files and ``key=value`` overrides alike.

    A key given twice in one mapping is refused (PyYAML keeps the last silently: a second ``optim:``
    section would drop the first one's settings without a word).
    """

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen = {}
            for key_node, _ in node.value:
                if not isinstance(key_node, yaml.ScalarNode):
                    continue  # complex keys: the base class refuses them where they cannot be used
                key = self.construct_object(key_node, deep=deep)
                if key in seen:
                    raise yaml.constructor.ConstructorError(
                        "while reading a mapping", node.start_mark,
                        f"the key {key!r} is given twice (first on line {seen[key].line + 1}); PyYAML would keep "
                        f"only the last one. Merge the two into one", key_node.start_mark)
                seen[key] = key_node.start_mark
        return super().construct_mapping(node, deep=deep)


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
    class_order: str = _help(
        "long-tailed split: index (class i gets the i-th largest count, LDAM-DRW) | frequency (the class with the "
        "i-th most training images gets it, ties by index: for naturally imbalanced sets such as GTSRB)", "index")
    n_max: Optional[int] = _help(
        "long-tailed split: images of the head class (None = the dataset's default, N / K); every class must "
        "have at least its target, or the run is refused naming the class", None)
    validation_per_class: int = _help(
        "hold out this many training images per class as a validation split (0 = none); "
        "tuning and checkpoint selection use it, never the test set", 0)
    validation_group_pattern: Optional[str] = _help(
        "image files: hold the validation split out as whole groups (tracks, videos, patients): a regular "
        "expression searched in each image's '<class folder>/<file>' path (list files: its listed path); its "
        "capture groups name the image's group. At least data.validation_per_class images per class, carved "
        "from the full training split before the long-tail generator", None)
    validation_group_file: Optional[str] = _help(
        "image files: like validation_group_pattern, but the groups come from a UTF-8 file of "
        "'<class folder>/<file><TAB><group>' lines", None)
    validation_group_scope: str = _help(
        "class (a group key names a group within its class: GTSRB track numbers restart per class) | dataset "
        "(a key is one group across classes: a patient with images of several classes)", "class")
    sampler: str = _help("instance | sqrt | class_balanced | progressive | power", "instance")
    sampler_q: Optional[float] = _help("exponent q of the power sampler", None)
    batch_size: int = _help("global batch size (split evenly over processes)", 128)
    eval_batch_size: int = _help(
        "batch size for evaluation (128: fastest per image for 32 px images on a CPU, BENCHMARKS.md)", 128)
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
    fingerprint: str = _help(
        "how image files enter the run's data fingerprint (checked by --resume, eval, init_from, compare): "
        "content (sha256 of every file: catches any edit) | stat (size + modification time: a second per 100k "
        "files) | auto (content when the files total at most 2 GiB, else stat); in-memory arrays: always content",
        "auto")
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
        "(ImageNet's mean / std, for ImageNet-pretrained weights) | clip (OpenAI CLIP's mean / std, for CLIP towers)", "dataset")
    crop_scale_min: Optional[float] = _help(
        "RandomResizedCrop area scale lower bound (scale in [min, 1], ratio 3/4-4/3). ImageNet-style image files: "
        "default 0.08; in-memory datasets: None = the padded crop, a value = a random resized crop back to the "
        "image size after data.image_size's resize (needs data.crop_padding=0)", None)
    feature_cache: Optional[bool] = _help(
        "train a frozen backbone's classifier on cached features (each training image through the backbone once, "
        "evaluation transform, no augmentation): None = automatic (with a light model.finetune mode, when nothing but "
        "the classifier trains, the method trains on plain batches, no batch mixing, one process; never for cRT / "
        "LWS, which keep augmented batches) | true (refuse otherwise) | false", None)
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
    finetune: str = _help(
        "which parameters train: full | classifier (head only; linear probe) | norm_bias (head + norm affine + "
        "biases) | last_stage (head + the backbone's last stage) | lora (head + low-rank adapters) | adaptformer "
        "(head + AdaptFormer adapters on ViT blocks); frozen parts stay in eval mode (docs/own-data.md)", "full")
    lora_rank: int = _help("rank r of the LoRA adapters (model.finetune=lora)", 8)
    lora_alpha: Optional[float] = _help("LoRA scaling numerator alpha (output scaled by alpha / rank); None = rank", None)
    lora_targets: str = _help("layer types LoRA adapts: linear+conv | linear | conv", "linear+conv")
    adapter_dim: Optional[int] = _help(
        "AdaptFormer bottleneck width (None = LIFT's rule 2^max(0, int(log2(classes / (2 * blocks)))))", None)
    adapter_scale: Optional[float] = _help("AdaptFormer output scale s (None = learnable, starting at 1, as LIFT)",
                                           None)
    classifier_init: str = _help(
        "none | class_mean (class j's weights = normalised mean backbone feature of its training images; LIFT's "
        "choice for non-CLIP backbones) | text (CLIP text embedding of 'a photo of a {class}.'; clip:* models)",
        "none")
    random_backbone: bool = _help(
        "allow model.finetune other than full without pretrained weights (model.pretrained / model.init_from): "
        "freezing randomly initialised layers is refused unless asked for (tests, ablations)", False)
    channels_last: bool = _help("use channels_last memory format", True)
    compile: str = _help("torch.compile the training model: true | false | auto (only when the run is long "
                         "enough to repay the compile time; engine/runtime/compilation.py)", "auto")
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
    headline_metric: str = _help(
        "the test metric `longtail compare` ranks, counts paired wins and gives deltas on: accuracy | "
        "balanced_accuracy (mean per-class recall: the honest headline when the test split is itself "
        "imbalanced, e.g. GTSRB; it equals accuracy on a balanced test split). Overall accuracy is always shown",
        "accuracy")
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

RECIPE_DIR = Path(__file__).resolve().parents[2] / "recipes"


def dataset_title(config: "RunConfig") -> str:
    """The run's own dataset, for names and titles: an image folder by its folder name, else the dataset name."""
    name = config.data.name
    if name == "imagefolder" and config.data.root:
        return Path(str(config.data.root)).expanduser().resolve().name or name
    return name



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

