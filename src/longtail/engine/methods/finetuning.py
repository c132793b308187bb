"""Light fine-tuning of a pretrained backbone as a model-level method (``model.finetune``,
``model.classifier_init``, ``data.feature_cache``; docs/own-data.md).

Every run has one :class:`FineTuning` next to its loss and stage methods (``MethodPlan.model``);
with the defaults (``full``, no classifier initialisation) its hooks change nothing. Otherwise:

- ``wrap_model``: :func:`longtail.models.finetune.apply_finetune` freezes what the mode does not
  train (``requires_grad=False``) and pins those modules to eval mode, so ``model.train()`` in the
  trainer never reaches them (no start-of-epoch hook is needed) and ``eval`` / ``predict`` rebuild
  the same adapters before loading the weights.
- ``before_training`` (a fresh run, after the model is built, before the optimizer): the
  classifier starts from class-mean features or CLIP text embeddings, and when the backbone is
  frozen the training loader becomes a loader of cached features and the trained model its head
  (:class:`CachedFeatureLoader`): each training image goes through the backbone once, then every
  epoch is a pass over a (N, D) matrix with the run's own sampler, loss and regularizer.
  Checkpoints and evaluation keep using the whole model (the head's parameters are shared).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Iterator, Optional, Tuple

import torch
from torch import nn

from longtail.data.loading.loader import SampledBatches
from longtail.engine.errors import ConfigError
from longtail.engine.methods.base import Method
from longtail.models.finetune import apply_finetune

if TYPE_CHECKING:
    from longtail.engine.config.schema import RunConfig

__all__ = ["FineTuning", "CachedFeatureLoader", "HeadOnly", "backbone_features", "backbone_is_frozen"]


class CachedFeatureLoader(SampledBatches):
    """Batches ``(features[i], labels[i])`` in the order of ``sampler``, like the image loaders:
    ``set_epoch(epoch, start_batch)`` passes the epoch on to the sampler and resumes mid-epoch, and
    ``len`` is the number of batches, so a cached epoch draws exactly the samples an image epoch
    with the same sampler would."""

    def __init__(self, features: torch.Tensor, labels: torch.Tensor, batch_size: int, sampler,
                 drop_last: bool = False) -> None:
        self.features, self.labels = features, labels
        self.batch_size, self.sampler, self.drop_last = int(batch_size), sampler, bool(drop_last)
        self.epoch = 0
        self.start_batch = 0

    def __iter__(self) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
        indices = torch.as_tensor(list(iter(self.sampler)), dtype=torch.long)
        for batch in range(self.start_batch, len(self)):
            chosen = indices[batch * self.batch_size:(batch + 1) * self.batch_size].to(self.features.device)
            yield self.features[chosen], self.labels[chosen]


class HeadOnly(nn.Module):
    """The part of a model that trains on cached features: ``forward(features) = model.head(features)``."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.head = model.head

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.head(features)


def backbone_is_frozen(model: nn.Module) -> bool:
    """True when nothing outside ``model.head`` trains (its features are the same every epoch)."""
    head = {id(p) for p in model.head.parameters()}
    return not any(p.requires_grad for p in model.parameters() if id(p) not in head)


@torch.no_grad()
def backbone_features(model: nn.Module, loader) -> Tuple[torch.Tensor, torch.Tensor]:
    """``model.features`` of every batch of ``loader`` (float32, on the loader's device) and the labels,
    in the loader's order, with the model in eval mode (restored afterwards)."""
    was_training = model.training
    model.eval()
    try:
        chunks, labels = [], []
        for images, targets in loader:
            chunks.append(model.features(images).float())
            labels.append(targets)
    finally:
        model.train(was_training)
    return torch.cat(chunks), torch.cat(labels).long()


class FineTuning(Method):
    """``others_use_images``: the run's loss or stage method trains on image batches of its own
    (``Method.uses_image_batches``), which cached features cannot replace."""

    name = "finetuning"
    kind = "model"

    def __init__(self, others_use_images: bool = False) -> None:
        self.others_use_images = bool(others_use_images)

    def claims(self, config: "RunConfig") -> bool:
        return True  # every run has one; with model.finetune=full and no init it changes nothing

    def check(self, config: "RunConfig") -> None:
        spec = config.model
        if spec.adapter_scale is not None and isinstance(spec.adapter_scale, bool):
            raise ConfigError("model.adapter_scale must be a number (or null for a learnable scale)")
        if (spec.finetune != "full" and not spec.pretrained and not spec.init_from
                and not spec.random_backbone):
            raise ConfigError(
                f"model.finetune={spec.finetune} keeps most of the backbone as it starts, but no weights are given: "
                f"it would stay random. Set model.pretrained=PATH (a local weights file, or "
                f"efficientnet_lite0:package), or model.random_backbone=true if a random frozen backbone is meant")
        if spec.classifier_init == "text" and not spec.name.startswith("clip:"):
            raise ConfigError(f"model.classifier_init=text needs a CLIP model (model.name=clip:<name>), got "
                              f"{spec.name}; use class_mean for other backbones")
        if spec.classifier_init != "none" and spec.head not in ("linear", "cosine"):
            raise ConfigError(f"model.classifier_init needs a linear or cosine head, got model.head={spec.head}")
        if config.data.feature_cache:
            reason = self._cache_refusal(config)
            if reason:
                raise ConfigError(f"data.feature_cache=true: {reason}; leave it unset (automatic) or false")

    def _cache_refusal(self, config: "RunConfig") -> Optional[str]:
        """Why the configuration cannot train on cached features (None: it can, if the backbone is frozen)."""
        if self.others_use_images:
            return f"loss.name={config.loss.name} trains on its own image views, not on one feature per image"
        if config.data.mixing != "none":
            return f"data.mixing={config.data.mixing} mixes images, which cached features cannot do"
        if config.model.compile == "true":  # auto never compiles a cached run: its steps are too short to repay it
            return "model.compile=true compiles the whole model, which cached training does not run"
        return None

    def wrap_model(self, model: nn.Module, config: "RunConfig") -> nn.Module:
        spec = config.model
        if spec.finetune == "full":  # the model as built: everything trains
            return model
        scale = "learnable" if spec.adapter_scale is None else float(spec.adapter_scale)
        try:
            apply_finetune(model, spec.finetune, lora_rank=spec.lora_rank, lora_alpha=spec.lora_alpha,
                           lora_targets=tuple(spec.lora_targets.split("+")), adapter_dim=spec.adapter_dim, adapter_scale=scale)
        except (ValueError, TypeError) as error:
            raise ConfigError(f"model.finetune={spec.finetune} on {spec.name}: {error}") from None
        return model

    def before_training(self, model: nn.Module, train_model: nn.Module, data, config: "RunConfig",
                        device: torch.device, context, say) -> Tuple[nn.Module, object]:
        """Initialise the classifier, then (frozen backbone) switch to cached features. Returns the
        (model the loop trains, training loader); ``say`` prints on the main process."""
        spec = config.model
        features = labels = None
        if spec.classifier_init == "class_mean":
            features, labels = backbone_features(model, data.eval_loaders["train"])
            from longtail.models.classifier_init import init_head_from_class_means

            init_head_from_class_means(model.head, features, labels.to(features.device))
            say(f"classifier initialised from the class-mean features of {labels.numel()} training images")
        elif spec.classifier_init == "text":
            from longtail.models.classifier_init import init_head_from_text

            init_head_from_text(model, [str(name) for name in data.classes])
            say("classifier initialised from CLIP text embeddings of 'a photo of a {class}.'")
        cache = config.data.feature_cache
        if cache is False or (cache is None and spec.finetune == "full"):
            # Automatic caching is for the light fine-tuning modes only: a frozen backbone from
            # model.decoupled (cRT / LWS) keeps its published protocol, augmented image batches,
            # unless data.feature_cache=true asks for the cache.
            return train_model, data.train_loader
        reason = self._cache_refusal(config)
        if reason is None and context.world_size > 1:
            reason = "training runs on several processes (each would need every feature)"
        if reason is None and not backbone_is_frozen(model):
            reason = f"the backbone trains (model.finetune={spec.finetune})"
        if reason is not None:
            if cache:
                raise ConfigError(f"data.feature_cache=true: {reason}; leave it unset (automatic) or false")
            return train_model, data.train_loader
        if features is None:
            features, labels = backbone_features(model, data.eval_loaders["train"])
        loader = data.train_loader
        cached = CachedFeatureLoader(features, labels.to(features.device), loader.batch_size, loader.sampler,
                                     drop_last=loader.drop_last)
        if len(cached) != len(loader):
            raise RuntimeError(f"cached loader has {len(cached)} batches per epoch, the image loader {len(loader)}")
        say(f"feature cache: {labels.numel()} training images through the frozen backbone once "
            f"({features.shape[1]}-dimensional features, evaluation transform, no augmentation); the epochs "
            f"train the classifier on them")
        return HeadOnly(model), cached
