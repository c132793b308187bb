"""CLIP image towers from open_clip (optional dependency ``longtail[clip]``) as classification models.

``create_model("clip:ViT-B-16", K, pretrained=FILE)`` builds the open_clip model (random weights,
never downloaded unless ``pretrained="hub:<tag>"`` and online), loads the file (an open_clip state
dict: ``open_clip_pytorch_model.bin`` / ``.safetensors``) and returns a :class:`BackboneWithHead`
whose backbone is ``clip.visual``: features are CLIP's image embeddings (after the projection),
so a cosine head initialised from the class-name text embeddings (:func:`init_head_from_text`)
starts out as exactly zero-shot CLIP.

LIFT (Shi et al. 2024) takes the features before the projection and maps the text embeddings
back through ``proj^T``; we keep the projection so that the start is the zero-shot classifier
itself (tested) and the feature is the one CLIP was trained to compare with text.

The text tower is not part of the classification model (it would double the weights of every
checkpoint and export): it is kept on the side as ``model.clip_text`` (a plain object, not a
submodule) until the head is initialised, then can be dropped (``del model.clip_text``).
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .heads import build_head

__all__ = ["ClipTextEncoder", "CLIP_TEMPLATE", "create_open_clip", "text_encoder", "clip_input_config", "clip_feature_dim"]

# LIFT's (and CLIP's ImageNet) single prompt.
CLIP_TEMPLATE = "a photo of a {}."


def _import_open_clip():
    try:
        import open_clip
    except ImportError as error:
        raise ImportError(
            "clip: models need the optional dependency open_clip: pip install 'longtail[clip]' "
            "(or pip install open_clip_torch)"
        ) from error
    return open_clip


class ClipTextEncoder:
    """Encodes prompts with the text tower of an open_clip model (not an nn.Module on purpose)."""

    def __init__(self, clip_model: nn.Module, tokenizer) -> None:
        self.clip_model = clip_model
        self.tokenizer = tokenizer

    @torch.no_grad()
    def encode(self, prompts: Sequence[str]) -> torch.Tensor:
        """L2-normalised text embeddings (len(prompts), D) in float32."""
        device = next(self.clip_model.parameters()).device
        was_training = self.clip_model.training
        self.clip_model.eval()
        try:
            tokens = self.tokenizer(list(prompts)).to(device)
            return F.normalize(self.clip_model.encode_text(tokens).float(), dim=-1)
        finally:
            self.clip_model.train(was_training)

    def class_embeddings(self, class_names: Sequence[str], template: str = CLIP_TEMPLATE) -> torch.Tensor:
        """One prompt per class, underscores read as spaces (as LIFT's ``get_tokenized_prompts``)."""
        if "{}" not in template:
            raise ValueError(f"the prompt template must contain '{{}}' for the class name, got {template!r}")
        return self.encode([template.format(str(name).replace("_", " ")) for name in class_names])

    def __deepcopy__(self, memo):  # copies of the classification model share the (frozen) text tower
        return self


def create_open_clip(clip_name: str, in_channels: int, tag=None, **options) -> nn.Module:
    """The open_clip model ``clip_name`` in eval mode: random weights, or the hub's ``tag`` (online only)."""
    open_clip = _import_open_clip()
    if in_channels != 3:
        raise ValueError(f"CLIP image towers take RGB images (in_channels=3), got in_channels={in_channels}")
    if clip_name not in open_clip.list_models():
        close = [n for n in open_clip.list_models() if clip_name.split("-")[0].lower() in n.lower()][:10]
        raise ValueError(f"unknown open_clip model {clip_name!r}; similar names: {', '.join(close) or 'none'}")
    import logging

    # open_clip logs a warning for every randomly initialised model; the weights come from the file.
    logger = logging.getLogger()
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        clip_model = open_clip.create_model(clip_name, pretrained=tag, **options)
    finally:
        logger.setLevel(level)
    return clip_model.eval()


def text_encoder(clip_model: nn.Module, clip_name: str) -> ClipTextEncoder:
    return ClipTextEncoder(clip_model, _import_open_clip().get_tokenizer(clip_name))


def clip_input_config(clip_model: nn.Module) -> dict:
    """What the engine needs to feed the image tower: its input size and CLIP's mean / std."""
    open_clip = _import_open_clip()
    visual = clip_model.visual
    return {
        "image_size": tuple(getattr(visual, "image_size", (224, 224))),
        "mean": tuple(float(v) for v in getattr(visual, "image_mean", None) or open_clip.OPENAI_DATASET_MEAN),
        "std": tuple(float(v) for v in getattr(visual, "image_std", None) or open_clip.OPENAI_DATASET_STD),
    }


def clip_feature_dim(clip_model: nn.Module) -> int:
    return int(getattr(clip_model.visual, "output_dim", None) or clip_model.text_projection.shape[-1])
