"""Classifier heads: the module that maps a feature vector (B, D) to logits (B, K).

Every model in :mod:`longtail.models` exposes its classifier as ``model.head`` so that the
two-stage methods of Kang et al., "Decoupling Representation and Classifier for Long-Tailed
Recognition" (ICLR 2020, https://github.com/facebookresearch/classifier-balancing) can work on
it without knowing the backbone:

- cRT: freeze the backbone, :func:`reinitialize_head`, retrain the head with class-balanced sampling.
- LWS: wrap the trained head in :class:`LWSHead` (frozen head, learnable per-class scale).
- tau-norm: :func:`tau_normalize` / :func:`tau_normalized_head` (w_j / ||w_j|| ** tau, no bias).
- NCM: :func:`class_mean_features` + :class:`NCMHead` (nearest class mean).

:class:`CosineHead` is the cosine-normalised classifier LDAM uses (Cao et al., NeurIPS 2019,
``NormedLinear`` in https://github.com/kaidic/LDAM-DRW), with the scale s = 30 applied here.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "LinearHead",
    "CosineHead",
    "LWSHead",
    "NCMHead",
    "tau_normalize",
    "tau_normalized_head",
    "reinitialize_head",
    "class_mean_features",
    "build_head",
    "available_heads",
]


class LinearHead(nn.Linear):
    """Plain dot-product classifier ``logits = x W^T + b`` (W: (K, D)).

    A subclass of :class:`torch.nn.Linear` (same parameters and state-dict keys) so that code written
    for ``nn.Linear`` (weight decay groups, tau-norm on ``.weight``) keeps working.
    """

    def __init__(self, in_features: int, num_classes: int, bias: bool = True) -> None:
        super().__init__(in_features, num_classes, bias=bias)

    @property
    def num_classes(self) -> int:
        return self.out_features


class CosineHead(nn.Module):
    """Cosine classifier ``logits_j = scale * cos(x, w_j)`` (LDAM's ``NormedLinear`` times s).

    Features and class weights are L2-normalised, so every logit lies in [-scale, scale]; this is
    what makes the LDAM margin (subtracted from cos) meaningful. LDAM-DRW and ConCutMix use s = 30.
    The cosine is computed in float32 even under autocast: normalising bf16 vectors of a few
    hundred dimensions loses about two decimal digits, which is most of a margin of 0.05.

    Weight layout is (K, D) like ``nn.Linear`` (LDAM-DRW stores the transpose); the initialisation
    is theirs: uniform(-1, 1) rows rescaled to unit norm.
    """

    def __init__(self, in_features: int, num_classes: int, scale: float = 30.0, eps: float = 1e-12) -> None:
        super().__init__()
        if scale <= 0:
            raise ValueError(f"CosineHead scale must be positive, got {scale}")
        self.in_features = int(in_features)
        self.scale = float(scale)
        self.eps = float(eps)
        self.weight = nn.Parameter(torch.empty(num_classes, in_features))
        self.reset_parameters()

    @property
    def num_classes(self) -> int:
        return self.weight.shape[0]

    def reset_parameters(self) -> None:
        with torch.no_grad():
            # LDAM-DRW: weight.uniform_(-1, 1).renorm_(2, 1, 1e-5).mul_(1e5) on a (D, K) matrix,
            # i.e. every class vector rescaled to unit norm.
            self.weight.uniform_(-1.0, 1.0)
            self.weight.div_(self.weight.norm(dim=1, keepdim=True).clamp_min(self.eps))

    def cosine(self, features: torch.Tensor) -> torch.Tensor:
        """cos(x_b, w_j) in float32, shape (B, K)."""
        with torch.autocast(device_type=features.device.type, enabled=False):
            unit_features = F.normalize(features.float(), dim=1, eps=self.eps)
            unit_weights = F.normalize(self.weight.float(), dim=1, eps=self.eps)
            return unit_features @ unit_weights.t()

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.scale * self.cosine(features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, num_classes={self.num_classes}, scale={self.scale}"


class LWSHead(nn.Module):
    """Learnable weight scaling (Kang et al. 2020, LWS): ``logits_j = s_j * base_head(x)_j``.

    The base head is frozen (``requires_grad=False`` on its parameters) and only the per-class
    scales s (initialised to 1, so the wrapped model starts out unchanged) are trained, as in
    classifier-balancing's ``DotProduct_Classifier`` (``x = self.fc(x); x *= self.scales``):
    the bias is scaled together with the dot product.
    """

    def __init__(self, base_head: nn.Module, num_classes: int | None = None) -> None:
        super().__init__()
        if num_classes is None:
            num_classes = _head_num_classes(base_head)
        self.base_head = base_head
        for parameter in self.base_head.parameters():
            parameter.requires_grad_(False)
        self.scales = nn.Parameter(torch.ones(num_classes))

    @property
    def num_classes(self) -> int:
        return self.scales.shape[0]

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.base_head(features) * self.scales


class NCMHead(nn.Module):
    """Nearest-class-mean classifier (Kang et al. 2020, NCM) from per-class mean features.

    ``metric="cosine"`` (their default): logits_j = cos(x, mu_j); ``"euclidean"``:
    logits_j = -||x - mu_j||_2. argmax of the logits is the nearest mean either way.
    """

    def __init__(self, class_means: torch.Tensor, metric: str = "cosine") -> None:
        super().__init__()
        if metric not in ("cosine", "euclidean"):
            raise ValueError(f"NCMHead metric must be 'cosine' or 'euclidean', got {metric!r}")
        if class_means.dim() != 2:
            raise ValueError(f"class_means must be (num_classes, feature_dim), got {tuple(class_means.shape)}")
        self.metric = metric
        self.register_buffer("class_means", class_means.detach().float().clone())

    @property
    def num_classes(self) -> int:
        return self.class_means.shape[0]

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type=features.device.type, enabled=False):
            features = features.float()
            if self.metric == "cosine":
                return F.normalize(features, dim=1) @ F.normalize(self.class_means, dim=1).t()
            return -torch.cdist(features, self.class_means)


def class_mean_features(features: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Per-class mean of ``features`` (N, D) -> (K, D), with one ``index_add_`` (no loop over classes).

    Raises ValueError when a class has no sample (its mean is undefined).
    """
    features = features.detach().float()
    sums = torch.zeros(num_classes, features.shape[1], dtype=features.dtype, device=features.device)
    sums.index_add_(0, labels, features)
    counts = torch.bincount(labels, minlength=num_classes).to(features.dtype)
    if bool((counts == 0).any()):
        missing = (counts == 0).nonzero().flatten().tolist()
        raise ValueError(f"class_mean_features: classes {missing[:10]} have no samples")
    return sums / counts[:, None]


def tau_normalize(weight: torch.Tensor, tau: float, eps: float = 1e-12) -> torch.Tensor:
    """Kang et al. 2020 tau-normalisation: row j becomes w_j / ||w_j||_2 ** tau.

    tau = 0 leaves the weights unchanged, tau = 1 gives unit-norm rows. Returns a new tensor.
    """
    row_norms = weight.norm(p=2, dim=1, keepdim=True).clamp_min(eps)
    return weight / row_norms.pow(tau)


def tau_normalized_head(head: nn.Module, tau: float) -> LinearHead:
    """A new bias-free :class:`LinearHead` with tau-normalised weights of ``head``.

    The bias is dropped, as in classifier-balancing's tau-norm evaluation (logits = x W_tau^T): a
    bias learnt on the imbalanced data would carry back exactly the prior that tau-norm removes.
    """
    weight = getattr(head, "weight", None)
    if not isinstance(weight, torch.Tensor) or weight.dim() != 2:
        raise TypeError(f"tau-norm needs a head with a 2-D .weight (LinearHead), got {type(head).__name__}")
    normalized = LinearHead(weight.shape[1], weight.shape[0], bias=False).to(weight.device, weight.dtype)
    with torch.no_grad():
        normalized.weight.copy_(tau_normalize(weight.detach(), tau))
    return normalized


def reinitialize_head(head: nn.Module) -> nn.Module:
    """Re-initialise a head in place for classifier re-training (cRT) and return it.

    Uses each head's own ``reset_parameters`` (nn.Linear's default for :class:`LinearHead`, the
    LDAM unit-norm init for :class:`CosineHead`); LWS scales go back to 1.
    """
    if isinstance(head, LWSHead):
        with torch.no_grad():
            head.scales.fill_(1.0)
        return head
    reset = getattr(head, "reset_parameters", None)
    if reset is None:
        raise TypeError(f"{type(head).__name__} has no reset_parameters(); cannot re-initialise it for cRT")
    reset()
    return head


def _head_num_classes(head: nn.Module) -> int:
    count = getattr(head, "num_classes", None) or getattr(head, "out_features", None)
    if count is None:
        raise TypeError(f"cannot tell the number of classes of {type(head).__name__}; pass num_classes")
    return int(count)


_HEADS = {
    "linear": lambda in_features, num_classes, scale: LinearHead(in_features, num_classes),
    "cosine": lambda in_features, num_classes, scale: CosineHead(in_features, num_classes, scale=scale),
}


def available_heads() -> list[str]:
    return sorted(_HEADS)


def build_head(kind: str, in_features: int, num_classes: int, scale: float = 30.0) -> nn.Module:
    """Build a fresh head by name (``"linear"`` or ``"cosine"``)."""
    if kind not in _HEADS:
        raise ValueError(f"unknown head {kind!r}; valid heads: {', '.join(available_heads())}")
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    return _HEADS[kind](int(in_features), int(num_classes), float(scale))

