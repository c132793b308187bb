"""Starting a classifier from the data instead of at random (LIFT, Shi et al. 2024, ``init_head``).

- :func:`init_head_from_class_means`: class j's weight is the L2-normalised mean feature of its
  training images (LIFT's ``class_mean`` init, its choice for non-CLIP backbones). With a cosine
  head the start is the nearest-class-mean classifier (Kang et al. 2020, NCM with cosine).
- :func:`init_head_from_text`: class j's weight is CLIP's normalised text embedding of
  "a photo of a {class name}." (LIFT's ``text_feat`` init); the start is zero-shot CLIP.

Both set a :class:`~longtail.models.heads.CosineHead` (LIFT's classifier) or a
:class:`~longtail.models.heads.LinearHead` (weights as above, bias zero).
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .heads import CosineHead, LinearHead, class_mean_features

__all__ = ["init_head_from_class_means", "init_head_from_text", "set_head_weights"]


def set_head_weights(head: nn.Module, weights: torch.Tensor) -> nn.Module:
    """Copy (K, D) class vectors into a cosine or linear head (bias, if any, set to zero)."""
    if not isinstance(head, (CosineHead, LinearHead)):
        raise TypeError(f"classifier initialisation needs a cosine or linear head, got {type(head).__name__}")
    if tuple(weights.shape) != tuple(head.weight.shape):
        raise ValueError(
            f"initial class vectors have shape {tuple(weights.shape)} but the head's weight is "
            f"{tuple(head.weight.shape)} (classes x feature dimension)"
        )
    if not bool(torch.isfinite(weights).all()):
        raise ValueError("initial class vectors contain NaN or infinite values")
    with torch.no_grad():
        head.weight.copy_(weights.to(head.weight.device, head.weight.dtype))
        if getattr(head, "bias", None) is not None:
            head.bias.zero_()
    return head


def init_head_from_class_means(head: nn.Module, features: torch.Tensor, labels: torch.Tensor) -> nn.Module:
    """Class j's weight <- normalize(mean of features of class j). Every class needs an image."""
    num_classes = head.weight.shape[0]
    means = class_mean_features(features, labels.long(), num_classes)
    return set_head_weights(head, F.normalize(means, dim=1))


def init_head_from_text(model: nn.Module, class_names: Sequence[str], template: str | None = None) -> nn.Module:
    """Class j's weight <- CLIP text embedding of ``template.format(class_names[j])`` (normalised).

    ``model`` comes from ``create_model("clip:<name>", ...)`` (it carries ``model.clip_text``).
    Returns the head."""
    encoder = getattr(model, "clip_text", None)
    if encoder is None:
        raise ValueError(
            "text initialisation needs a CLIP model from create_model('clip:<name>', ...) (with its text tower); "
            "for other backbones use the class-mean initialisation"
        )
    if len(class_names) != model.head.weight.shape[0]:
        raise ValueError(f"{len(class_names)} class names for a head with {model.head.weight.shape[0]} classes")
    from .clip import CLIP_TEMPLATE

    return set_head_weights(model.head, encoder.class_embeddings(class_names, template or CLIP_TEMPLATE))
