"""Feature cache for a frozen backbone: every training image goes through the backbone once.

When only the classifier trains (fine-tuning mode ``classifier``), the backbone computes the same
features every epoch (it is frozen and in eval mode). :func:`extract_features` runs it once per
image and view; :class:`CachedFeatures` is then a dataset of ``(feature, label)`` pairs that any
library sampler (it has ``.labels``) and any loss (it sees ``model.head(features)``, the same logits)
work on, so an epoch costs a matrix product instead of a forward pass.

Views: ``views=V`` passes the dataset V times; with a random augmentation in the dataset's
transform each pass stores a different augmented view, and epoch e trains on view ``e % V``
(``set_epoch``). ``views=1`` with a deterministic (evaluation) transform is the usual linear probe.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

__all__ = ["FeatureCache", "CachedFeatures", "extract_features", "check_backbone_frozen"]


@dataclasses.dataclass
class FeatureCache:
    """``features`` (V, N, D) float32 on the CPU, ``labels`` (N,) int64: V views of N images."""

    features: torch.Tensor
    labels: torch.Tensor

    @property
    def num_views(self) -> int:
        return self.features.shape[0]

    def dataset(self) -> "CachedFeatures":
        return CachedFeatures(self)

    def save(self, path) -> None:
        torch.save({"features": self.features, "labels": self.labels}, path)

    @classmethod
    def load(cls, path) -> "FeatureCache":
        state = torch.load(path, map_location="cpu", weights_only=True)
        return cls(state["features"], state["labels"])


class CachedFeatures(Dataset):
    """``(feature, label)`` of cached view ``epoch % V``; ``set_epoch`` as the library's samplers."""

    def __init__(self, cache: FeatureCache) -> None:
        self.cache = cache
        self.labels = cache.labels
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.cache.labels.shape[0]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.cache.features[self.epoch % self.cache.num_views, index], int(self.cache.labels[index])

    def class_counts(self, num_classes: int | None = None) -> list[int]:
        return torch.bincount(self.labels, minlength=num_classes or 0).tolist()


def check_backbone_frozen(model: nn.Module) -> None:
    """Raise ValueError when anything outside ``model.head`` trains (cached features would go stale)."""
    head_parameters = {id(p) for p in model.head.parameters()}
    trainable = [name for name, p in model.named_parameters() if p.requires_grad and id(p) not in head_parameters]
    if trainable:
        raise ValueError(
            f"the feature cache needs a frozen backbone, but {len(trainable)} backbone parameter tensor(s) train "
            f"(first: {', '.join(trainable[:3])}); use fine-tuning mode 'classifier' or turn the cache off"
        )


@torch.no_grad()
def extract_features(
    model: nn.Module,
    dataset: Dataset,
    views: int = 1,
    batch_size: int = 256,
    device: str | torch.device = "cpu",
    num_workers: int = 0,
) -> FeatureCache:
    """``model.features`` of every image of ``dataset`` (items ``(image, label)``), ``views`` passes.

    The model runs in eval mode (restored afterwards) without autograd; features are stored in
    float32 on the CPU. Raises ValueError if the backbone is not frozen or the labels of two passes
    differ (a dataset that reorders itself cannot be cached)."""
    if not isinstance(views, int) or isinstance(views, bool) or views < 1:
        raise ValueError(f"views must be a positive integer, got {views!r}")
    check_backbone_frozen(model)
    was_training = model.training
    model.eval()
    try:
        passes, labels = [], None
        for _ in range(views):
            chunks, label_chunks = [], []
            loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers)
            for images, targets in loader:
                chunks.append(model.features(images.to(device)).float().cpu())
                label_chunks.append(torch.as_tensor(targets, dtype=torch.long))
            pass_labels = torch.cat(label_chunks)
            if labels is not None and not torch.equal(labels, pass_labels):
                raise ValueError("the dataset returned different labels on a second pass; it cannot be cached")
            labels = pass_labels
            passes.append(torch.cat(chunks))
    finally:
        model.train(was_training)
    return FeatureCache(torch.stack(passes), labels)
