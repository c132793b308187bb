"""Models for long-tailed recognition: CIFAR ResNets, a small CPU CNN, torchvision / timm / open_clip
backbones, the classifier heads two-stage methods work on, and light fine-tuning of pretrained
backbones (modes and adapters, classifier initialisation, a feature cache, test-time augmentation).

Every model from :func:`create_model` has ``.features(x) -> (B, D)`` and ``.head`` (features ->
logits), so that decoupled training (cRT / LWS / tau-norm / NCM, Kang et al. ICLR 2020) can
freeze, replace or re-initialise the classifier without knowing the backbone.
"""

from .bcl import BCLModel, projection_mlp
from .fold import fold_batchnorm
from .classifier_init import init_head_from_class_means, init_head_from_text, set_head_weights
from .factory import (
    PACKAGED_WEIGHTS,
    BackboneWithHead,
    PretrainedReport,
    available_models,
    create_model,
    load_pretrained_weights,
    resolve_pretrained,
)
from .feature_cache import CachedFeatures, FeatureCache, extract_features
from .finetune import FINETUNE_MODES, FineTuneReport, apply_finetune, merge_adapters, parameter_counts
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
from .tta import TTA_MODES, TTAModel, tta_logits, tta_views

__all__ = [
    "BCLModel",
    "projection_mlp",
    "create_model",
    "fold_batchnorm",
    "available_models",
    "load_pretrained_weights",
    "resolve_pretrained",
    "PACKAGED_WEIGHTS",
    "FINETUNE_MODES",
    "FineTuneReport",
    "apply_finetune",
    "merge_adapters",
    "parameter_counts",
    "FeatureCache",
    "CachedFeatures",
    "extract_features",
    "init_head_from_class_means",
    "init_head_from_text",
    "set_head_weights",
    "TTA_MODES",
    "TTAModel",
    "tta_logits",
    "tta_views",
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
