"""Class-aware samplers for long-tailed training, correct under DDP.

The sampling family of Kang et al., "Decoupling Representation and Classifier for Long-Tailed
Recognition" (ICLR 2020), section 3 / eq. (1): class j is drawn with probability

    p_j = N_j ** q / sum_k N_k ** q,

so q = 1 is instance-balanced (the natural data distribution), q = 1/2 square-root sampling and
q = 0 class-balanced sampling. Progressively-balanced sampling moves from q = 1 to q = 0 during
training (spec: methods.md section 4).

Two properties the papers' code often lacks and this module guarantees:

* **Exact class quotas per epoch.** Instead of drawing every index independently with p_j (whose
  class counts fluctuate by ~sqrt(n p_j), which matters for tail classes with a handful of
  images), each epoch gives class j the integer quota ``round(num_samples * p_j)`` (largest
  remainder rounding, so the quotas sum to ``num_samples`` exactly). A class's quota is filled by
  walking through fresh random permutations of its images, so every image of the class is used
  once before any image is used twice. The epoch is then shuffled as a whole.
* **One global draw per epoch, split across ranks.** The draw depends only on ``(seed, epoch)``
  (and the labels / options); the number of replicas only decides how it is split. Like
  ``torch.utils.data.DistributedSampler``, the draw is padded (by repeating its beginning) to a
  multiple of the world size, and rank r takes positions r, r + R, r + 2R, ... So the ranks' shares
  are disjoint slices of the draw and their union is the draw (plus the padding).
"""

from __future__ import annotations

import math
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Union

import numpy as np
import torch
from torch.utils.data import Sampler

from longtail.data.seeds import derive_seed

Labels = Union[Sequence[int], np.ndarray, torch.Tensor]

__all__ = [
    "ClassPowerSampler",
    "ProgressiveSampler",
    "available_samplers",
    "build_sampler",
    "class_quotas",
    "derive_seed",
]



def _as_labels(labels: Labels) -> torch.Tensor:
    """Labels as a 1-D int64 CPU tensor of non-negative class indices."""
    tensor = torch.as_tensor(np.asarray(labels) if not isinstance(labels, torch.Tensor) else labels)
    tensor = tensor.detach().cpu()
    if tensor.dim() != 1 or tensor.numel() == 0:
        raise ValueError(f"labels must be a non-empty 1-D sequence of class indices, got shape {tuple(tensor.shape)}")
    if tensor.dtype.is_floating_point or tensor.dtype == torch.bool:
        raise ValueError(f"labels must be integer class indices, got dtype {tensor.dtype}")
    tensor = tensor.long()
    if int(tensor.min()) < 0:
        position = int((tensor < 0).nonzero()[0])
        raise ValueError(f"labels must be non-negative class indices; labels[{position}] = {int(tensor[position])}")
    return tensor


def class_quotas(class_probabilities: torch.Tensor, num_samples: int, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Integer per-class quotas summing to ``num_samples``, by largest-remainder (Hamilton) rounding.

    ``quota_j = floor(num_samples * p_j)`` plus one for the classes with the largest fractional
    parts until the total is ``num_samples``. Equal remainders (common: class-balanced sampling
    gives every class the same one) are ordered by a random permutation from ``generator`` so the
    spare samples do not always go to the lowest class indices; without a generator, ties go to
    the lower class index.
    """
    probabilities = torch.as_tensor(class_probabilities, dtype=torch.float64)
    probabilities = probabilities / probabilities.sum()
    ideal = probabilities * num_samples
    # The tolerance keeps exact integers (e.g. q = 1: num_samples * N_j / N) from flooring to
    # one less through rounding error.
    quotas = (ideal + 1e-9).floor().long()
    remainders = ideal - quotas.double()
    num_classes = remainders.numel()
    # Classes in random order, then a stable sort by remainder: equal remainders stay randomly ordered.
    tie_order = torch.randperm(num_classes, generator=generator) if generator is not None else torch.arange(num_classes)
    order = tie_order[torch.sort(remainders[tie_order], descending=True, stable=True).indices]
    missing = int(num_samples - int(quotas.sum()))
    if missing > 0:
        quotas[order[:missing]] += 1
    elif missing < 0:  # only through accumulated rounding error; take from the smallest remainders
        candidates = order.flip(0)[quotas[order.flip(0)] > 0]
        quotas[candidates[:-missing]] -= 1
    return quotas


def _fill_quotas(labels: torch.Tensor, quotas: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Dataset indices with exactly ``quotas[j]`` indices of class j, in class-major order.

    Class j's indices come from consecutive fresh random permutations of its N_j images
    ("cycles"), truncated to the quota, so no image repeats before all of its class are used.
    Vectorised over all classes and cycles: one random key per (class, cycle, image) slot, sorted
    within each (class, cycle) group.
    """
    num_classes = quotas.numel()
    class_sizes = torch.bincount(labels, minlength=num_classes)
    members = torch.argsort(labels, stable=True)  # dataset indices grouped by class
    member_start = torch.cumsum(class_sizes, 0) - class_sizes

    safe_sizes = class_sizes.clamp(min=1)
    cycles = torch.where(quotas > 0, (quotas + safe_sizes - 1) // safe_sizes, torch.zeros_like(quotas))
    block_lengths = cycles * class_sizes  # slots reserved for class j: whole permutations
    total = int(block_lengths.sum())
    slot_class = torch.repeat_interleave(torch.arange(num_classes), block_lengths)
    block_start = torch.cumsum(block_lengths, 0) - block_lengths
    position_in_block = torch.arange(total) - block_start[slot_class]
    position_in_cycle = position_in_block % class_sizes[slot_class]
    candidate = members[member_start[slot_class] + position_in_cycle]

    # Each (class, cycle) pair is a group of N_j consecutive slots; randomise the order inside
    # every group: sort by random key, then stably by group id (groups are already contiguous).
    group = torch.repeat_interleave(torch.arange(int(cycles.sum())), torch.repeat_interleave(class_sizes, cycles))
    by_key = torch.argsort(torch.rand(total, generator=generator, dtype=torch.float64))
    shuffled = by_key[torch.sort(group[by_key], stable=True).indices]
    candidate = candidate[shuffled]

    keep = position_in_block < quotas[slot_class]
    return candidate[keep]


class ClassPowerSampler(Sampler[int]):
    """Draws class j with probability proportional to N_j ** q, exact quotas per epoch, DDP-aware.

    Args:
        labels: training labels (N,), class indices.
        q: the power; 1 = instance-balanced, 0.5 = square-root, 0 = class-balanced
            (Kang et al. 2020, eq. 1).
        num_replicas, rank: the DDP world size and this process's rank.
        seed: the base seed; the epoch's draw depends only on (seed, epoch).
        num_samples: length of one epoch's global draw (default: the dataset size N).
        drop_last: drop the tail of the draw so it divides the world size, instead of padding.
        num_classes: size of the label space (default max label + 1). Classes with no images get
            no samples whatever q is.

    ``len(sampler)`` is this rank's share. Call ``set_epoch(epoch)`` before every epoch.
    """

    def __init__(
        self,
        labels: Labels,
        q: float = 1.0,
        num_replicas: int = 1,
        rank: int = 0,
        seed: int = 0,
        num_samples: Optional[int] = None,
        drop_last: bool = False,
        num_classes: Optional[int] = None,
    ) -> None:
        self.labels = _as_labels(labels)
        if num_classes is None:
            num_classes = int(self.labels.max()) + 1
        elif int(self.labels.max()) >= num_classes:
            raise ValueError(f"label {int(self.labels.max())} is out of range for num_classes={num_classes}")
        self.num_classes = int(num_classes)
        self.class_sizes = torch.bincount(self.labels, minlength=self.num_classes)
        if not math.isfinite(float(q)):
            raise ValueError(f"q must be a finite number, got {q}")
        self.q = float(q)
        if int(num_replicas) < 1 or not 0 <= int(rank) < int(num_replicas):
            raise ValueError(f"need num_replicas >= 1 and 0 <= rank < num_replicas, got rank={rank}, num_replicas={num_replicas}")
        self.num_replicas = int(num_replicas)
        self.rank = int(rank)
        self.seed = int(seed)
        self.num_samples = int(self.labels.numel() if num_samples is None else num_samples)
        if self.num_samples < 1:
            raise ValueError(f"num_samples must be positive, got {num_samples}")
        self.drop_last = bool(drop_last)
        if self.drop_last and self.num_samples < self.num_replicas:
            raise ValueError(f"drop_last with num_samples={self.num_samples} < num_replicas={self.num_replicas} leaves nothing to draw")
        self.epoch = 0

    # -- the schedule of q; overridden by the progressive sampler ------------------------------
    def q_at(self, epoch: int) -> float:
        """The power q used in ``epoch``."""
        return self.q

    def class_probabilities(self, epoch: Optional[int] = None) -> torch.Tensor:
        """p_j for ``epoch`` (default: the current one), float64, zero for classes without images."""
        q = self.q_at(self.epoch if epoch is None else epoch)
        present = self.class_sizes > 0
        weights = torch.where(present, self.class_sizes.double().clamp(min=1) ** q, torch.zeros((), dtype=torch.float64))
        return weights / weights.sum()

    # -- the global draw ------------------------------------------------------------------------
    def _epoch_generator(self, epoch: int) -> torch.Generator:
        return torch.Generator().manual_seed(derive_seed(self.seed, epoch))

    def class_quotas(self, epoch: Optional[int] = None) -> torch.Tensor:
        """Per-class sample counts of the global draw of ``epoch`` (before DDP padding)."""
        epoch = self.epoch if epoch is None else epoch
        return class_quotas(self.class_probabilities(epoch), self.num_samples, self._epoch_generator(epoch))

    def global_indices(self, epoch: Optional[int] = None) -> torch.Tensor:
        """The whole epoch's draw (all ranks, before padding): depends only on (seed, epoch)."""
        epoch = self.epoch if epoch is None else epoch
        generator = self._epoch_generator(epoch)
        probabilities = self.class_probabilities(epoch)
        if self.num_samples == self.labels.numel() and torch.equal(probabilities, self.class_sizes.double() / self.labels.numel()):
            # Instance-balanced with the natural epoch length: every image exactly once, i.e. a
            # plain permutation (the quota construction would give the same multiset).
            return torch.randperm(self.num_samples, generator=generator)
        quotas = class_quotas(probabilities, self.num_samples, generator)
        drawn = _fill_quotas(self.labels, quotas, generator)
        return drawn[torch.randperm(drawn.numel(), generator=generator)]

    def rank_indices(self, epoch: Optional[int] = None, rank: Optional[int] = None) -> torch.Tensor:
        """This (or ``rank``'s) share of the epoch's draw: padded / truncated, then strided."""
        draw = self.global_indices(epoch)
        total = self.num_replicas * len(self)
        if total > draw.numel():
            # Pad by repeating the draw's beginning, as DistributedSampler does (may wrap more
            # than once when num_samples < num_replicas).
            repeats = math.ceil(total / draw.numel())
            draw = draw.repeat(repeats)
        draw = draw[:total]
        return draw[(self.rank if rank is None else rank) :: self.num_replicas]

    # -- Sampler protocol -----------------------------------------------------------------------
    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose draw ``__iter__`` yields (call it before every epoch)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        if self.drop_last:
            return self.num_samples // self.num_replicas
        return math.ceil(self.num_samples / self.num_replicas)

    def __iter__(self) -> Iterator[int]:
        return iter(self.rank_indices().tolist())

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(q={self.q_at(self.epoch):g}, num_samples={self.num_samples}, "
            f"num_replicas={self.num_replicas}, rank={self.rank}, seed={self.seed}, epoch={self.epoch})"
        )


class ProgressiveSampler(ClassPowerSampler):
    """Progressively-balanced sampling: from instance-balanced (epoch 0) to class-balanced (last epoch).

    ``interpolate="q"`` (default, spec methods.md section 4): q(t) = 1 - t / (T - 1) for epoch
    t of T, so p_j(t) is proportional to N_j ** q(t).
    ``interpolate="probabilities"`` (Kang et al. 2020, eq. 2): p_j(t) = (1 - t/(T-1)) p_j^IB +
    t/(T-1) p_j^CB, a linear mix of the two distributions.
    Both use T - 1 in the denominator so that the last epoch really is class-balanced; epochs past
    the end stay class-balanced. With ``total_epochs=1`` the only epoch is class-balanced.
    """

    def __init__(self, labels: Labels, total_epochs: int, interpolate: str = "q", **kwargs) -> None:
        kwargs.pop("q", None)
        super().__init__(labels, q=1.0, **kwargs)
        if total_epochs is None or int(total_epochs) < 1:
            raise ValueError(f"progressive sampling needs total_epochs >= 1, got {total_epochs}")
        if interpolate not in ("q", "probabilities"):
            raise ValueError(f"interpolate must be 'q' or 'probabilities', got {interpolate!r}")
        self.total_epochs = int(total_epochs)
        self.interpolate = interpolate

    def progress(self, epoch: int) -> float:
        """Fraction t / (T - 1) of the way from instance- to class-balanced, clipped to [0, 1]."""
        if self.total_epochs == 1:
            return 1.0
        return min(max(epoch / (self.total_epochs - 1), 0.0), 1.0)

    def q_at(self, epoch: int) -> float:
        return 1.0 - self.progress(epoch)

    def class_probabilities(self, epoch: Optional[int] = None) -> torch.Tensor:
        epoch = self.epoch if epoch is None else epoch
        if self.interpolate == "q":
            return super().class_probabilities(epoch)
        present = (self.class_sizes > 0).double()
        instance = self.class_sizes.double() / self.class_sizes.sum()
        balanced = present / present.sum()
        fraction = self.progress(epoch)
        return (1.0 - fraction) * instance + fraction * balanced


def _power(q: float) -> Callable[..., ClassPowerSampler]:
    def build(labels: Labels, **kwargs) -> ClassPowerSampler:
        if "q" in kwargs:
            raise ValueError(f"this sampler fixes q = {q}; use 'power' with q=... for another power")
        return ClassPowerSampler(labels, q=q, **kwargs)

    return build


def _generic_power(labels: Labels, q: Optional[float] = None, **kwargs) -> ClassPowerSampler:
    if q is None:
        raise ValueError("the 'power' sampler needs q=... (1 instance-balanced, 0.5 square-root, 0 class-balanced)")
    return ClassPowerSampler(labels, q=q, **kwargs)


_SAMPLERS: Dict[str, Callable[..., ClassPowerSampler]] = {
    "instance": _power(1.0),
    "sqrt": _power(0.5),
    "class_balanced": _power(0.0),
    "power": _generic_power,
    "progressive": ProgressiveSampler,
}


def available_samplers() -> List[str]:
    """Names accepted by :func:`build_sampler`."""
    return sorted(_SAMPLERS)


def build_sampler(
    name: str,
    labels: Labels,
    num_replicas: int = 1,
    rank: int = 0,
    seed: int = 0,
    total_epochs: Optional[int] = None,
    **options,
) -> ClassPowerSampler:
    """Build a sampler by name: ``instance``, ``sqrt``, ``class_balanced``, ``power`` (with ``q``), ``progressive``.

    ``options`` go to the sampler: ``num_samples``, ``drop_last``, ``num_classes``, ``q`` (power),
    ``interpolate`` (progressive). ``total_epochs`` is required by ``progressive`` only.
    """
    key = str(name).lower().replace("-", "_")
    if key not in _SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}; valid samplers: {', '.join(available_samplers())}")
    common = dict(num_replicas=num_replicas, rank=rank, seed=seed, **options)
    if key == "progressive":
        if total_epochs is None:
            raise ValueError("the 'progressive' sampler needs total_epochs (the length of training)")
        return ProgressiveSampler(labels, total_epochs=total_epochs, **common)
    return _SAMPLERS[key](labels, **common)
