"""Loaders of ConCutMix pair batches (spec concutmix.md section 2), in memory and from files.

Each batch is ``(PairBatch, labels_a)``: the background's classification view and two contrastive
views, and, only when the batch will be mixed (``mixes(epoch, batch_index)``, a pure function of
the seed), the foreground's classification view. Unmixed batches compute no foreground view, and
no view of a foreground is ever contrastive.

Both loaders follow the library's loader contract: ``set_epoch(epoch, start_batch)`` and ``len()``;
the in-memory one draws every random parameter from (seed, epoch, batch index, rank), so a resumed
run replays the remaining batches bit for bit.
"""

from __future__ import annotations

from typing import Callable, NamedTuple, Optional

import torch
from torch.utils.data import DataLoader, Dataset

from longtail.data.sampling.pair_sampler import PairSampler
from longtail.data.loading.loader import SampledBatches
from longtail.data.seeds import derive_seed
from longtail.data.transforms.views import BatchViews

__all__ = ["PairBatch", "InMemoryPairLoader", "FilePairLoader", "PairViewDataset"]

_VIEW_STREAM = 21


class PairBatch(NamedTuple):
    background: torch.Tensor             # (B, C, H, W) classification view of A
    views: tuple                         # two (B, C, H, W) contrastive views of A
    foreground: Optional[torch.Tensor]   # (B, C, H, W) classification view of B, None when unmixed
    labels_b: torch.Tensor               # (B,) labels of B

    @property
    def batch_size(self) -> int:
        return self.background.shape[0]


class InMemoryPairLoader(SampledBatches):
    """Pair batches from resident uint8 images (an ``InMemoryLoader``'s ``images`` / ``labels``)."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, sampler: PairSampler, views: BatchViews,
                 batch_size: int, mixes: Callable[[int, int], bool], seed: int = 0, rank: int = 0,
                 drop_last: bool = False) -> None:
        self.images, self.labels = images, labels
        self.sampler, self.views, self.mixes = sampler, views, mixes
        self.batch_size, self.seed, self.rank, self.drop_last = int(batch_size), int(seed), int(rank), bool(drop_last)
        self.device = images.device
        self.epoch = 0
        self.start_batch = 0

    def make_batch(self, pairs: torch.Tensor, batch_index: int):
        """``pairs`` (2, b): background and foreground dataset positions on the device."""
        seed = lambda view: derive_seed(self.seed, self.epoch, batch_index, self.rank, _VIEW_STREAM, view)  # noqa: E731
        background = self.images.index_select(0, pairs[0])
        labels_a = self.labels.index_select(0, pairs[0])
        labels_b = self.labels.index_select(0, pairs[1])
        foreground = None
        if self.mixes(self.epoch, batch_index):
            foreground = self.views.classification(self.images.index_select(0, pairs[1]), seed(3))
        batch = PairBatch(self.views.classification(background, seed(0)),
                          (self.views.contrastive(background, seed(1)), self.views.contrastive(background, seed(2))),
                          foreground, labels_b)
        return batch, labels_a

    def __iter__(self):
        pairs = self.sampler.rank_indices().to(self.device)
        for batch_index in range(self.start_batch, len(self)):
            chunk = pairs[:, batch_index * self.batch_size:(batch_index + 1) * self.batch_size]
            yield self.make_batch(chunk, batch_index)


class PairViewDataset(Dataset):
    """A file dataset (built without a transform, items are PIL images) as ConCutMix items.

    ``dataset[(a, b, with_foreground)]`` -> (classification view of a, contrastive view 1 of a,
    contrastive view 2 of a, label a, classification view of b or an empty tensor, label b).
    """

    def __init__(self, dataset, classification, contrastive) -> None:
        if getattr(dataset, "transform", None) is not None:
            raise ValueError("PairViewDataset needs the dataset built without a transform (it makes the views)")
        self.dataset, self.classification, self.contrastive = dataset, classification, contrastive

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key):
        a, b, with_foreground = key
        image_a, label_a = self.dataset[a]
        label_b = int(self.dataset.labels[b])
        foreground = self.classification(self.dataset[b][0]) if with_foreground else torch.empty(0)
        return (self.classification(image_a), self.contrastive(image_a), self.contrastive(image_a), label_a,
                foreground, label_b)


def _collate(items):
    background, view1, view2, labels_a, foreground, labels_b = zip(*items)
    stacked_foreground = torch.stack(foreground) if foreground[0].numel() else None
    return (torch.stack(background), torch.stack(view1), torch.stack(view2), torch.tensor(labels_a),
            stacked_foreground, torch.tensor(labels_b))


class FilePairLoader(SampledBatches):
    """Pair batches from a :class:`PairViewDataset` in a DataLoader with workers (per-image PIL views).

    As for the library's other file loader, a mid-epoch resume skips the done batches' indices and
    replays the data order exactly; per-image augmentation in worker processes is not replayed bit for bit.
    """

    def __init__(self, dataset: PairViewDataset, sampler: PairSampler, batch_size: int,
                 mixes: Callable[[int, int], bool], device: torch.device, workers: int = 2,
                 drop_last: bool = False, channels_last: bool = False) -> None:
        self.dataset, self.sampler, self.mixes = dataset, sampler, mixes
        self.batch_size, self.device, self.workers = int(batch_size), device, int(workers)
        self.drop_last, self.channels_last = bool(drop_last), bool(channels_last)
        self.epoch, self.start_batch = 0, 0

    def __iter__(self):
        pairs = self.sampler.rank_indices().t().tolist()
        batches = [pairs[i * self.batch_size:(i + 1) * self.batch_size] for i in range(self.start_batch, len(self))]
        keys = [[(a, b, self.mixes(self.epoch, self.start_batch + i)) for a, b in batch] for i, batch in enumerate(batches)]
        loader = DataLoader(self.dataset, batch_sampler=keys, num_workers=self.workers, collate_fn=_collate,
                            pin_memory=self.device.type == "cuda", persistent_workers=False)
        memory_format = torch.channels_last if self.channels_last else torch.contiguous_format

        def move(tensor):
            return None if tensor is None else tensor.to(self.device, non_blocking=True).contiguous(memory_format=memory_format)

        for background, view1, view2, labels_a, foreground, labels_b in loader:
            batch = PairBatch(move(background), (move(view1), move(view2)), move(foreground),
                              labels_b.to(self.device))
            yield batch, labels_a.to(self.device)
