"""CCAR: class-confidence aware reweighting, spec section 1 (seed paper "Class-Confidence Aware
Reweighting for Long-Tailed Learning").

A per-sample weight multiplied onto a base loss; it changes no logits and nothing at inference:

    f_c              = N_c / N                   (frequency of the sample's true class; variant: N_c / max_k N_k)
    f'_c             = f_c       if p_t <  omega
                       1 - f_c   if p_t >= omega                      (dual-phase frequency)
    Omega(p_t, f_c)  = (e - f'_c) ** (omega - p_t)                   (the CCAR weight)
    L                = Omega(p_t, f_c) * L_base(p_t),  reduced by mean (or sum / none)

``omega`` is the confidence pivot (default 0.75). p_t is the probability the base loss assigns to the
true class, from the same logits the base loss scores (for LA / BS the adjusted softmax
softmax(z + tau log pi)); ``confidence_from="raw"`` takes it from softmax(z) instead.

Gradient (default): it flows through Omega as well as L_base, which is what the paper's Lemma 1
derives; for the CE base, with gamma_c = e - f'_c::

    dL/dz = Psi * (p - onehot(y)),  Psi = gamma_c ** (omega - p_t) * (1 - p_t ln(gamma_c) ln(p_t))

``detach_weight=True`` treats Omega as a constant: dL/dz = Omega * (p - onehot(y)) for CE.

Properties (pinned by tests/test_ccar.py): Omega(omega, f) = 1 from both sides; Omega > 1 below the
pivot and < 1 above it; one-sided derivatives dOmega/dp_t at the pivot are -ln(e - f) and
-ln(e - 1 + f), differing by at most ln(e / (e - 1)) ~= 0.459; Omega <= e ** omega on [0, 1].

Numerics: log p_t comes from log_softmax (the base loss reports it), p_t = exp(log p_t); the weight
is computed in float32 (float64 for float64 logits) with autocast switched off, so float16 /
bfloat16 logits are fine; p_t -> 0 and p_t -> 1 give finite losses and gradients.

Soft targets q (mixup / CutMix): p_t = sum_c q_c p_c (see :mod:`longtail.losses.base`) and
f = sum_c q_c f_c, the frequency of a label drawn from q; both reduce to the hard case for one-hot q.

Note for users (spec section 1): with realistic frequencies f_c is tiny (CIFAR-100-LT IF=100:
f_c in [0.0005, 0.046]), so gamma_c is ~e below the pivot and ~e - 1 above it for every class: the
class dependence is weak and the confidence dependence dominates. ``frequency="max_normalized"``
(f_c = N_c / max_k N_k) is offered as a named variant with stronger class dependence; it is not
the paper's formula and never the default.

``weight_normalization="batch_mean"`` (named variant, not the paper's): Omega is divided by its
mean over the batch, detached (a per-batch scale, like rescaling the learning rate), so the
weighted loss has the base loss's scale: with mean reduction L = sum_i Omega_i l_i / sum_i Omega_i.
Why it exists: the mean of Omega is well above 1 early in training (up to e^omega ~= 2.1 at
p_t = 0), which raises the effective learning rate against the one the base was tuned with; this
variant tests whether that, rather than the reweighting itself, explains a loss to the base
(RESULTS.md). Under torchrun the mean is over each process's share of the batch.

Training statistics (off by default; :meth:`CCAR.track_statistics`): per class, the mass of
samples seen, the sums of Omega, Omega ** 2, p_t and the applied weight, and the mass with
p_t < omega, accumulated on the logits' device without reading values back, while gradients are
enabled (never during evaluation). :meth:`CCAR.epoch_statistics` summarises them per Many /
Medium / Few group of the training counts and resets them. The accumulators are buffers, so a
checkpoint taken mid-epoch resumes them exactly. They answer "what does CCAR do to training":
how far Omega is from 1 per class group, how many samples are below the pivot, and the scale the
weights put on the learning rate.
"""

from __future__ import annotations

import math
from typing import Union

import torch
import torch.nn.functional as F

from .._checks import ClassCounts, as_class_counts
from .base import PerSampleLoss, autocast_enabled, compute_dtype, soft_log_p_true
from .ce import CrossEntropy
from .logit_adjusted import BalancedSoftmaxLoss, LogitAdjustedLoss

BASES = ("ce", "logit_adjusted", "balanced_softmax")
_BASE_ALIASES = {"la": "logit_adjusted", "bs": "balanced_softmax", "cross_entropy": "ce"}
CONFIDENCE_SOURCES = ("adjusted", "raw")
FREQUENCIES = ("raw", "max_normalized")
WEIGHT_NORMALIZATIONS = ("none", "batch_mean")


def class_frequencies(class_counts: ClassCounts, frequency: str = "raw") -> torch.Tensor:
    """f_c = N_c / N (``"raw"``, the paper) or N_c / max_k N_k (``"max_normalized"`` variant), float64."""
    counts = as_class_counts(class_counts)
    if frequency == "raw":
        return counts / counts.sum()
    if frequency == "max_normalized":
        return counts / counts.max()
    raise ValueError(f"frequency must be one of {FREQUENCIES}, got {frequency!r}")


def ccar_weight(p_true: torch.Tensor, frequency: torch.Tensor, omega: float = 0.75) -> torch.Tensor:
    """Omega(p_t, f) = (e - f') ** (omega - p_t), f' = f if p_t < omega else 1 - f (spec section 1).

    Elementwise over broadcastable ``p_true`` and ``frequency``; differentiable in ``p_true``.
    """
    log_gamma = torch.where(p_true < omega, torch.log(math.e - frequency), torch.log(math.e - 1.0 + frequency))
    return torch.exp((omega - p_true) * log_gamma)


class CCAR(PerSampleLoss):
    """Class-confidence aware reweighting of a base loss (spec section 1).

    Args:
        class_counts: training counts N_j per class.
        base: ``"ce"``, ``"logit_adjusted"`` (LA with ``tau``) or ``"balanced_softmax"``, or a loss
            object with ``per_sample(logits, targets) -> (losses (B,), log_p_true (B,))`` (every
            :class:`~longtail.losses.base.PerSampleLoss`, e.g. a focal or DRW-wrapped loss).
        omega: confidence pivot in (0, 1] (default 0.75, the paper's best).
        tau: logit-adjustment strength for ``base="logit_adjusted"`` (must stay 1 otherwise).
        confidence_from: ``"adjusted"`` (default): p_t from the logits the base scores;
            ``"raw"``: p_t = softmax(z)_y of the unadjusted logits.
        detach_weight: treat Omega as a constant in the gradient (default False: Lemma 1 gradient).
        reduction: ``"mean"``, ``"weighted_mean"`` (normalised by the base loss's class weights;
            ``mean`` when it has none), ``"sum"`` or ``"none"``.
        frequency: ``"raw"`` (f_c = N_c / N, default) or ``"max_normalized"`` (variant).
        weight_normalization: ``"none"`` (default, the paper) or ``"batch_mean"`` (variant: Omega
            divided by its detached batch mean).
    """

    def __init__(
        self,
        class_counts: ClassCounts,
        base: Union[str, PerSampleLoss] = "ce",
        omega: float = 0.75,
        tau: float = 1.0,
        confidence_from: str = "adjusted",
        detach_weight: bool = False,
        reduction: str = "mean",
        frequency: str = "raw",
        weight_normalization: str = "none",
    ):
        frequencies = class_frequencies(class_counts, frequency)
        num_classes = frequencies.numel()
        super().__init__(reduction=reduction, num_classes=num_classes)
        if not (isinstance(omega, (int, float)) and 0.0 < omega <= 1.0):
            raise ValueError(f"omega (confidence pivot) must be in (0, 1], got {omega!r}")
        if confidence_from not in CONFIDENCE_SOURCES:
            raise ValueError(f"confidence_from must be one of {CONFIDENCE_SOURCES}, got {confidence_from!r}")
        if weight_normalization not in WEIGHT_NORMALIZATIONS:
            raise ValueError(
                f"weight_normalization must be one of {WEIGHT_NORMALIZATIONS}, got {weight_normalization!r}"
            )
        self.base = self._build_base(base, class_counts, tau, num_classes)
        self.confidence_pivot = float(omega)
        self.tau = float(tau)
        self.confidence_from = confidence_from
        self.detach_weight = bool(detach_weight)
        self.frequency = frequency
        self.weight_normalization = weight_normalization
        self.register_buffer("class_frequency", frequencies, persistent=False)
        self.register_buffer("class_count", as_class_counts(class_counts).to(torch.float64), persistent=False)
        self.statistic_groups = None  # {group: bool mask over classes} once track_statistics() is called

    # Rows of the per-class accumulator of track_statistics() (one float64 (6, K) buffer "statistics_sums").
    STATISTICS = ("mass", "omega", "omega_squared", "below_pivot", "p_true", "weight")

    def track_statistics(self, many_threshold: float = 100, few_threshold: float = 20) -> None:
        """Accumulate per-class training statistics from now on (see the module docstring); groups are
        the training counts' Many (> many_threshold) / Medium / Few (< few_threshold) classes."""
        from ..metrics.confusion import shot_group_masks

        masks = shot_group_masks(self.class_count, many_threshold, few_threshold)
        self.statistic_groups = {"all": torch.ones_like(masks["many"]), **masks}
        self.register_buffer("statistics_sums", self._zero_sums())
        # A checkpoint written before tracking was switched on has no accumulator: start it at 0.
        self.register_load_state_dict_pre_hook(
            lambda module, state_dict, prefix, *args: state_dict.setdefault(prefix + "statistics_sums",
                                                                            module._zero_sums()))

    def _zero_sums(self) -> torch.Tensor:
        return torch.zeros(len(self.STATISTICS), self.class_count.numel(), dtype=torch.float64)

    def _accumulate(self, targets, soft_targets, p_true, omega_weight, weight) -> None:
        # Per-class sums: a soft target spreads its sample over classes by its label weights.
        rows = torch.stack([torch.ones_like(p_true), omega_weight, omega_weight * omega_weight,
                            (p_true < self.confidence_pivot).to(p_true.dtype), p_true, weight]).detach().double()
        sums = self.statistics_sums.to(p_true.device)
        if soft_targets:
            sums = sums + rows @ targets.detach().double()
        else:
            sums = sums.index_add(1, targets, rows)
        self.statistics_sums = sums

    def epoch_statistics(self) -> dict:
        """Per group (all / many / medium / few): mean and std of Omega, mean p_t, the share of
        samples below the pivot and the mean applied weight over the samples trained on since the
        last call, then reset. Under torchrun every process must call it (a collective); a group
        without samples is left out. {} when tracking is off."""
        if self.statistic_groups is None:
            return {}
        import torch.distributed as dist

        sums = self.statistics_sums.cpu()
        if dist.is_available() and dist.is_initialized():
            device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else sums.device
            reduced = sums.to(device)
            dist.all_reduce(reduced)
            sums = reduced.cpu()
        self.statistics_sums = torch.zeros_like(self.statistics_sums)
        out = {}
        for group, mask in self.statistic_groups.items():
            mass, omega, omega_squared, below, p_true, weight = sums[:, mask.cpu()].sum(dim=1).tolist()
            if mass <= 0:
                continue
            mean = omega / mass
            out[f"ccar_omega_mean_{group}"] = mean
            out[f"ccar_omega_std_{group}"] = math.sqrt(max(omega_squared / mass - mean * mean, 0.0))
            out[f"ccar_below_pivot_{group}"] = below / mass
            out[f"ccar_p_true_mean_{group}"] = p_true / mass
            out[f"ccar_weight_mean_{group}"] = weight / mass
        return out

    @property
    def omega(self) -> float:
        return self.confidence_pivot

    @staticmethod
    def _build_base(base, class_counts, tau: float, num_classes: int):
        if isinstance(base, str):
            name = _BASE_ALIASES.get(base, base)
            if name not in BASES:
                raise ValueError(f"unknown CCAR base {base!r}; valid bases: {list(BASES)} or a loss object")
            if name == "logit_adjusted":
                return LogitAdjustedLoss(class_counts, tau=tau, reduction="none")
            if tau != 1.0:
                raise ValueError(
                    f"tau={tau} only applies to base='logit_adjusted' (Balanced Softmax is tau = 1, "
                    f"CE has no adjustment); got base={base!r}"
                )
            if name == "balanced_softmax":
                return BalancedSoftmaxLoss(class_counts, reduction="none")
            return CrossEntropy(class_counts, reduction="none")
        if not callable(getattr(base, "per_sample", None)):
            raise ValueError(
                f"a CCAR base loss object needs per_sample(logits, targets) -> (losses, log_p_true); "
                f"{type(base).__name__} has none. Use a longtail.losses loss or one of {list(BASES)}"
            )
        if tau != 1.0:
            raise ValueError("tau only applies to base='logit_adjusted'; configure a base loss object itself")
        base_classes = getattr(base, "num_classes", None)
        if base_classes is not None and base_classes != num_classes:
            raise ValueError(f"base loss has {base_classes} classes but class_counts has {num_classes}")
        return base

    def validate(self, logits, targets):
        soft = super().validate(logits, targets)
        if isinstance(self.base, PerSampleLoss) and type(self.base).validate is not PerSampleLoss.validate:
            self.base.validate(logits, targets)  # base-specific checks (e.g. LDAM's logit range)
        if soft and not getattr(self.base, "supports_soft_targets", True):
            raise ValueError(f"the CCAR base {type(self.base).__name__} needs class-index targets")
        return soft

    def sample_weights(self, targets, soft_targets):
        base_weights = getattr(self.base, "sample_weights", None)
        return base_weights(targets, soft_targets) if base_weights else None

    def _base_per_sample(self, logits, targets, soft_targets):
        if isinstance(self.base, PerSampleLoss):
            return self.base.compute(logits, targets, soft_targets)
        return self.base.per_sample(logits, targets)

    def compute(self, logits, targets, soft_targets):
        base_loss, log_p_true = self._base_per_sample(logits, targets, soft_targets)
        if autocast_enabled(logits):
            with torch.autocast(device_type=logits.device.type, enabled=False):
                weight = self._weight(logits, targets, soft_targets, log_p_true)
        else:
            weight = self._weight(logits, targets, soft_targets, log_p_true)
        return weight * base_loss.to(weight.dtype), log_p_true

    def _weight(self, logits, targets, soft_targets, log_p_true):
        dtype = compute_dtype(logits)
        if self.confidence_from == "raw":
            log_probs = F.log_softmax(logits.to(dtype), dim=1)
            if soft_targets:
                log_p_conf = soft_log_p_true(log_probs, targets.to(dtype))
            else:
                log_p_conf = log_probs.gather(1, targets.unsqueeze(1)).squeeze(1)
        else:
            log_p_conf = log_p_true.to(dtype)
        if self.detach_weight:
            log_p_conf = log_p_conf.detach()
        frequency = self.class_frequency.to(device=logits.device, dtype=dtype)
        sample_frequency = targets.to(dtype) @ frequency if soft_targets else frequency[targets]
        p_conf = log_p_conf.exp()
        omega_weight = ccar_weight(p_conf, sample_frequency, self.confidence_pivot)  # Omega, before normalisation
        weight = omega_weight / omega_weight.detach().mean() if self.weight_normalization == "batch_mean" else omega_weight
        if self.statistic_groups is not None and torch.is_grad_enabled():
            self._accumulate(targets, soft_targets, p_conf, omega_weight, weight)
        return weight

    def extra_repr(self) -> str:
        return (
            f"omega={self.confidence_pivot:g}, confidence_from={self.confidence_from!r}, "
            f"detach_weight={self.detach_weight}, frequency={self.frequency!r}, "
            f"weight_normalization={self.weight_normalization!r}, reduction={self.reduction!r}"
        )
