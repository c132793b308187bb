"""Models for long-tailed recognition: CIFAR ResNets, a small CPU CNN, torchvision / timm
backbones, and the classifier heads two-stage methods work on.

Every model from :func:`create_model` has ``.features(x) -> (B, D)`` and ``.head`` (features ->
logits), so that decoupled training (cRT / LWS / tau-norm / NCM, Kang et al. ICLR 2020) can
freeze, replace or re-initialise the classifier without knowing the backbone.
"""

from .bcl import BCLModel, projection_mlp
from .fold import fold_batchnorm
from .factory import BackboneWithHead, PretrainedReport, available_models, create_model, load_pretrained_weights
from .heads import (
    CosineHead,
    LinearHead,
    LWSHead,
    NCMHead,
    available_heads,
    build_head,
    class_mean_features,
    reinitialize_head,
    tau_normalize,
    tau_normalized_head,
)
from .resnet_cifar import ResNetCifar
from .small_cnn import SmallCNN

__all__ = [
    "BCLModel",
    "projection_mlp",
    "create_model",
    "fold_batchnorm",
    "available_models",
    "load_pretrained_weights",
    "PretrainedReport",
    "BackboneWithHead",
    "ResNetCifar",
    "SmallCNN",
    "LinearHead",
    "CosineHead",
    "LWSHead",
    "NCMHead",
    "available_heads",
    "build_head",
    "class_mean_features",
    "reinitialize_head",
    "tau_normalize",
    "tau_normalized_head",
]
