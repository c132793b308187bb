"""BCL / ConCutMix / CAR + ConCutMix as a method that owns its training step
(spec concutmix.md sections 1-7; methods.md section 3).

Selected with ``loss.name: concutmix`` (or ``bcl``: the same objective, never mixing). Its
options, all in the ``loss`` section:

    tau                 logit-adjustment tau of the classification loss, or a mapping {imbalance
                        factor: tau} (the released scripts tune it per IF); a factor not in the
                        mapping is refused
    a_cls, b_scl        weights of L_cls and L_scl (CIFAR 2 / 0.6; ImageNet-LT, iNat 1 / 0.35)
    temperature         BalSCL temperature T (0.1 CIFAR, 0.07 ImageNet-LT / iNat)
    feat_dim, hidden_dim   projection / prototype heads (128 CIFAR, 1024 ImageNet; hidden: BCL's default)
    cutmix_prob         chance a batch is mixed (0.5)
    topk, omega_s       rectified label: top-k classes (30; 3 on CIFAR-10), scale (default K / 1275, as released)
    rectify_from_epoch  0-based epochs <= this use the area label, later ones the rectified label
                        (the released loop's rule); default optim.epochs // 2 (released CIFAR: 100 of
                        200); null = never rectify (CutMix with the area label: the ablation row)
    views               cifar | imagenet (default by image size: <= 64 px cifar)
    policy              auto (AutoAugment on cifar / RandAugment(2, 10) on imagenet views) | none
    keys                global (default: contrastive keys span the global batch under DDP) | local
    car_label           area (default) | rectified: CAR's column weights on mixed batches

The trainer keeps the loop, accumulation, autocast, DDP, checkpoints and signals; this module's
:class:`Contrastive` method supplies the rest: the projection / prototype heads (``BCLModel``), the
(background, foreground) pair sampler and pair loader with the contrastive views, and the step
(:meth:`ConCutMixObjective.training_step`): mixing (or not), one forward over [classification view,
contrastive view 1, contrastive view 2], L = a_cls L_cls + b_scl L_scl (+ alpha R with CAR on the
raw classification logits).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn

from longtail.data.loading.loader import InMemoryLoader
from longtail.data.loading.pair_loader import FilePairLoader, InMemoryPairLoader, PairViewDataset
from longtail.data.sampling.pair_sampler import PairSampler
from longtail.data.transforms.concutmix import ConCutMix, MixedBatch
from longtail.data.transforms.views import BatchViews, file_view_transforms
from longtail.engine.errors import ConfigError
from longtail.engine.methods.base import Method, StepContext
from longtail.losses import LogitAdjustedLoss
from longtail.losses.contrastive import BalancedContrastiveLoss, global_keys
from longtail.models import BCLModel

if TYPE_CHECKING:
    from longtail.engine.config.schema import RunConfig

CONTRASTIVE_METHODS = ("bcl", "concutmix")


@dataclass(frozen=True)
class ConCutMixSettings:
    tau: float = 1.0
    a_cls: float = 2.0
    b_scl: float = 0.6
    temperature: float = 0.1
    feat_dim: int = 128
    hidden_dim: Optional[int] = None
    cutmix_prob: float = 0.5
    topk: int = 30
    omega_s: Optional[float] = None
    rectify_from_epoch: Optional[int] = None
    views: Optional[str] = None
    policy: str = "auto"
    keys: str = "global"
    car_label: str = "area"


_MIXING_OPTIONS = ("cutmix_prob", "topk", "omega_s", "rectify_from_epoch", "car_label")


def settings_from_config(config: "RunConfig") -> ConCutMixSettings:
    """Validated settings of ``config.loss`` (ConfigError on unknown or bad options)."""
    name = config.loss.name
    options = dict(config.loss.options)
    valid = {f.name for f in dataclasses.fields(ConCutMixSettings)}
    unknown = sorted(set(options) - valid)
    if unknown:
        raise ConfigError(f"loss.name={name}: unknown option(s) {', '.join(unknown)}; valid: {', '.join(sorted(valid))}")
    if name == "bcl":
        given = sorted(set(options) & set(_MIXING_OPTIONS))
        if given:
            raise ConfigError(f"loss.name=bcl never mixes, so {', '.join(given)} would have no effect; "
                              f"use loss.name=concutmix")
        options["cutmix_prob"] = 0.0
    tau = options.get("tau")
    if isinstance(tau, dict):
        factor = config.data.imbalance_factor
        by_factor = {float(k): v for k, v in tau.items()}
        if factor is None or float(factor) not in by_factor:
            raise ConfigError(f"loss.tau is given per imbalance factor ({', '.join(str(k) for k in tau)}) but "
                              f"data.imbalance_factor is {factor}; set loss.tau=<number> for this factor")
        options["tau"] = float(by_factor[float(factor)])
    if name == "concutmix" and "rectify_from_epoch" not in options:
        options["rectify_from_epoch"] = config.optim.epochs // 2  # released CIFAR: 100 of 200
    try:
        settings = ConCutMixSettings(**options)
    except TypeError as error:
        raise ConfigError(f"loss.name={name}: {error}") from None
    checks = [
        (settings.keys in ("global", "local"), f"loss.keys must be global or local, got {settings.keys!r}"),
        (settings.car_label in ("area", "rectified"), f"loss.car_label must be area or rectified, got {settings.car_label!r}"),
        (settings.views in (None, "cifar", "imagenet"), f"loss.views must be cifar or imagenet, got {settings.views!r}"),
        (settings.policy in ("auto", "none"), f"loss.policy must be auto or none, got {settings.policy!r}"),
        (0 <= settings.cutmix_prob <= 1, f"loss.cutmix_prob must be in [0, 1], got {settings.cutmix_prob}"),
        (settings.temperature > 0, f"loss.temperature must be positive, got {settings.temperature}"),
        (settings.feat_dim >= 1, f"loss.feat_dim must be positive, got {settings.feat_dim}"),
        (settings.topk >= 1, f"loss.topk must be >= 1, got {settings.topk}"),
    ]
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)
    if config.data.mixing != "none":
        raise ConfigError(f"loss.name={name} does its own mixing (ConCutMix); set data.mixing=none "
                          f"(got {config.data.mixing})")
    if config.data.sampler != "instance":
        raise ConfigError(f"loss.name={name} pairs an instance-sampled background with a class-balanced "
                          f"foreground itself; data.sampler must stay 'instance' (got {config.data.sampler})")
    if config.model.decoupled != "none":
        raise ConfigError(f"loss.name={name} trains the BCL heads with the backbone; it is not a decoupled stage 2")
    return settings


def view_style(config: "RunConfig", settings: ConCutMixSettings) -> str:
    if settings.views is not None:
        return settings.views
    return "cifar" if (config.data.image_size or 32) <= 64 else "imagenet"


def build_mixer(settings: ConCutMixSettings, class_counts) -> ConCutMix:
    return ConCutMix(class_counts, probability=settings.cutmix_prob, topk=settings.topk, omega_s=settings.omega_s,
                     rectify_from_epoch=settings.rectify_from_epoch)


class ConCutMixObjective(nn.Module):
    """The ConCutMix step's losses; ``training_step`` is called by the trainer for every batch."""

    def __init__(self, settings: ConCutMixSettings, class_counts, seed: int, rank: int = 0) -> None:
        super().__init__()
        self.settings = settings
        self.classification = LogitAdjustedLoss(class_counts, tau=settings.tau)
        self.contrastive = BalancedContrastiveLoss(len(class_counts), settings.temperature)
        self.mixer = build_mixer(settings, class_counts)
        self.seed, self.rank = int(seed), int(rank)
        # Label mass the rectification moves (sum_c |y_rect - y_area|_c / 2 per sample), summed over
        # this epoch's rectified samples; reported per epoch in history.jsonl as rectified_label_mass.
        # Buffers, so a mid-epoch checkpoint carries the epoch's sums (an exact resume reports the
        # whole epoch), summed over processes at the epoch's end.
        self.register_buffer("moved_label_mass", torch.zeros((), dtype=torch.float64))
        self.register_buffer("rectified_samples", torch.zeros((), dtype=torch.float64))

    def training_step(self, model: nn.Module, batch, labels_a: torch.Tensor, epoch: int, batch_index: int,
                      autocast: Callable, regularizer: Optional[nn.Module], check_finite: Callable) -> dict:
        settings = self.settings
        mixed: MixedBatch = self.mixer.mix(batch.background, labels_a, batch.foreground, batch.labels_b,
                                           self.seed, epoch, batch_index, self.rank)
        size = labels_a.shape[0]
        images = torch.cat([mixed.images, batch.views[0], batch.views[1]])
        with autocast():
            logits, projection, prototypes = model(images, heads=True, num_classify=size)
        logits, projection, prototypes = logits.float(), projection.float(), prototypes.float()
        # The rectified label is checked in the same read: finite but huge projections (a diverging
        # model) give 0 / 0 in it, which the classification loss would refuse with a ValueError.
        targets = self.mixer.targets(mixed, epoch, projection[:size], prototypes)
        check_finite({"logits": logits.detach().sum(), "projection": projection.detach().sum(),
                      "rectified_targets": targets.detach().sum()})
        if mixed.mixed and self.mixer.rectifies(epoch):
            moved = (targets - mixed.area_targets).abs().sum().double() / 2
            self.moved_label_mass = self.moved_label_mass.to(targets.device) + moved
            self.rectified_samples = self.rectified_samples.to(targets.device) + size
        terms = {"base_loss": settings.a_cls * self.classification(logits, targets)}

        # Contrastive branch: A's two unmixed views; (B, 2, F) normalised, prototypes normalised.
        features = F.normalize(projection[size:], dim=1).view(2, size, -1).transpose(0, 1)
        keys_labels = labels_a
        if settings.keys == "global":
            features, keys_labels = global_keys(features, labels_a)
        contrastive = self.contrastive(features, keys_labels, F.normalize(prototypes, dim=1))
        terms["contrastive"] = settings.b_scl * contrastive

        if regularizer is not None:
            # CAR on the raw classification logits: soft surrogate with the label as column weights on
            # mixed batches, the hard surrogate otherwise (spec section 6).
            if mixed.mixed:
                car_targets = targets if settings.car_label == "rectified" else mixed.area_targets
            else:
                car_targets = labels_a
            terms["regularizer"] = regularizer(logits, car_targets)
        return terms

    def epoch_statistics(self) -> dict:
        """This epoch's mean label mass moved by the rectification over all processes' samples (only
        when it rectified), then reset. Called by every process: under torchrun it is a collective."""
        import torch.distributed as dist

        sums = torch.stack([self.moved_label_mass.cpu(), self.rectified_samples.cpu()])
        if dist.is_available() and dist.is_initialized():
            device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else sums.device
            sums = sums.to(device)
            dist.all_reduce(sums)
        moved, rectified = sums.tolist()
        self.moved_label_mass = torch.zeros_like(self.moved_label_mass)
        self.rectified_samples = torch.zeros_like(self.rectified_samples)
        return {"rectified_label_mass": moved / rectified} if rectified else {}

    def extra_repr(self) -> str:
        return f"{self.settings}, mixer={self.mixer}"


class Contrastive(Method):
    """BCL / ConCutMix / CAR + ConCutMix: a method with its own heads, sampler, loader and step."""

    name = "contrastive"
    kind = "loss"
    uses_image_batches = True  # its own view pairs and projection heads

    def claims(self, config: "RunConfig") -> bool:
        return config.loss.name in CONTRASTIVE_METHODS

    def loss_names(self) -> tuple[str, ...]:
        return CONTRASTIVE_METHODS

    def check(self, config: "RunConfig") -> None:
        try:
            settings_from_config(config)
        except ConfigError:
            raise
        except (TypeError, ValueError) as error:  # e.g. a text where a number belongs
            raise ConfigError(f"loss '{config.loss.name}' with options {config.loss.options}: {error}") from None

    def wrap_model(self, model: nn.Module, config: "RunConfig") -> nn.Module:
        settings = settings_from_config(config)
        return BCLModel(model, feat_dim=settings.feat_dim, hidden_dim=settings.hidden_dim)

    def objective(self, config: "RunConfig", class_counts, device: torch.device, rank: int,
                  head: Optional[nn.Module]) -> nn.Module:
        return ConCutMixObjective(settings_from_config(config), class_counts, config.train.seed, rank).to(device)

    def sampler(self, config: "RunConfig", labels: torch.Tensor, num_classes: int, world_size: int, rank: int):
        # (background, foreground) pairs, concutmix.md section 2
        return PairSampler(labels, num_replicas=world_size, rank=rank, seed=config.train.seed, num_classes=num_classes)

    def train_loader(self, config: "RunConfig", loader, train_set, sampler, batch: int, device: torch.device,
                     rank: int, class_counts: list, preprocessing):
        """The pair-batch loader in place of the ordinary training loader (same data, same device)."""
        settings = settings_from_config(config)
        style = view_style(config, settings)
        mixer = build_mixer(settings, class_counts)
        seed = config.train.seed

        def mixes(epoch: int, batch_index: int) -> bool:
            return mixer.mixes(seed, epoch, batch_index, rank)

        if isinstance(loader, InMemoryLoader):  # its resident (resized) images and statistics
            views = BatchViews(style, loader.mean, loader.std, crop_padding=config.data.crop_padding,
                               policy=settings.policy, repeat_channels=loader.repeat_channels,
                               channels_last=config.model.channels_last, flip=config.data.flip)
            return InMemoryPairLoader(loader.images, loader.labels, sampler, views, batch, mixes, seed=seed,
                                      rank=rank, drop_last=loader.drop_last)
        classification, contrastive = file_view_transforms(
            style, preprocessing.size, preprocessing.mean, preprocessing.std, config.data.crop_padding,
            settings.policy, resize_first=preprocessing.resize == "resize", grey=preprocessing.color == "L",
            repeat_channels=preprocessing.channels, flip=config.data.flip)
        return FilePairLoader(PairViewDataset(train_set, classification, contrastive), sampler, batch, mixes, device,
                              workers=config.data.workers, drop_last=loader.drop_last,
                              channels_last=config.model.channels_last)

    def training_step(self, step: StepContext, images, targets: torch.Tensor, epoch: int, batch_index: int) -> dict:
        return step.objective.training_step(step.model, images, targets, epoch, batch_index, autocast=step.autocast,
                                            regularizer=step.regularizer, check_finite=step.check_finite)


METHODS = (Contrastive(),)
