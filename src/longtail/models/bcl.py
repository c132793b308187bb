"""The BCL framework's three heads on one backbone (spec concutmix.md section 1).

:class:`BCLModel` wraps any model of :func:`longtail.models.create_model` (``.features`` /
``.head`` / ``.feature_dim``: CIFAR ResNets, torchvision ResNet-50 / ResNeXt-50, timm ViTs):

- ``head``: the classifier (cosine, scale 30, by default in the ConCutMix presets; linear as an option);
- ``projection``: Linear - BatchNorm - ReLU - Linear to ``feat_dim`` on the pooled feature h;
- ``prototype_head``: an MLP of the same shape applied to each classifier weight row W_k, giving the
  class prototype c_k.

``model(x)`` returns the logits, so evaluation, post-hoc adjustment and inference treat it like
any other model. ``model(x, heads=True, num_classify=B)`` is the training forward: logits of the
first B images, the raw projections g(h) of all images and the raw prototypes. The projection and
prototype heads appear only in the contrastive loss (and, detached, in the rectified label), so
they get gradient only from it.

Hidden width as in the BCL / ConCutMix code: 512 for narrow backbones (CIFAR ResNet-32, 64-d
features), the feature dimension itself for wide ones (ResNet-50 / ResNeXt-50: 2048).
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

__all__ = ["BCLModel", "projection_mlp"]


def projection_mlp(in_features: int, out_features: int, hidden: Optional[int] = None) -> nn.Sequential:
    """Linear - BatchNorm1d - ReLU - Linear."""
    hidden = int(hidden) if hidden else (512 if in_features < 512 else in_features)
    return nn.Sequential(nn.Linear(in_features, hidden), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True),
                         nn.Linear(hidden, out_features))


class BCLModel(nn.Module):
    """``backbone_model`` (with ``.features``, ``.head``, ``.feature_dim``) plus projection and prototype heads."""

    def __init__(self, backbone_model: nn.Module, feat_dim: int = 128, hidden_dim: Optional[int] = None) -> None:
        super().__init__()
        for attribute in ("features", "head", "feature_dim"):
            if not hasattr(backbone_model, attribute):
                raise TypeError(f"BCLModel needs a model with .{attribute} (from longtail.models.create_model)")
        weight = getattr(backbone_model.head, "weight", None)
        if not isinstance(weight, torch.Tensor) or weight.dim() != 2:
            raise TypeError(f"BCLModel needs a classifier with a (K, D) weight (linear or cosine head), got "
                            f"{type(backbone_model.head).__name__}")
        if int(feat_dim) < 1:
            raise ValueError(f"feat_dim must be positive, got {feat_dim}")
        self.model = backbone_model
        self.feature_dim = int(backbone_model.feature_dim)
        self.feat_dim = int(feat_dim)
        self.projection = projection_mlp(self.feature_dim, self.feat_dim, hidden_dim)
        self.prototype_head = projection_mlp(self.feature_dim, self.feat_dim, hidden_dim)

    @property
    def head(self) -> nn.Module:
        return self.model.head

    @head.setter
    def head(self, value: nn.Module) -> None:
        self.model.head = value

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.features(x)

    def prototypes(self) -> torch.Tensor:
        """Raw (unnormalised) class prototypes c_k = prototype_head(W_k), (K, feat_dim)."""
        return self.prototype_head(self.model.head.weight)

    def forward(self, x: torch.Tensor, heads: bool = False, num_classify: Optional[int] = None):
        features = self.model.features(x)
        if not heads:
            return self.model.head(features)
        count = features.shape[0] if num_classify is None else int(num_classify)
        logits = self.model.head(features[:count])
        return logits, self.projection(features), self.prototypes()
