"""CAR: the confusion-aware spectral regularizer (methods.md section 2).

The worst-class error is bounded by the spectral norm of the class-weighted confusion matrix, so
CAR adds ``alpha * R`` to the training loss, with

    C_t        differentiable confusion surrogate of the current (global) batch       (eq. C_t)
    C_hat_t    = beta * sg(C_hat_{t-1}) + (1 - beta) * C_t                             (EMA)
    A_t        = C_hat_t * w[None, :]                                                  (class weights)
    R          = sigma_max(A_t) = u^T A_t v,  u, v the top singular pair, detached     (dR/dA = u v^T)

Orientation (pinned by a test): rows i = predicted / competing class, columns j = true class,
zero diagonal; column j sums to the (soft) error of class j; weights multiply columns.

How the cost stays O(B K + K^2) with a small constant at K = 8142 (see benchmarks/car.md):

- The surrogate only has columns for classes present in the batch. It is built as an (m, K)
  block, m <= B (row c = column ``columns[c]`` of C_t), with ``index_add`` (hard labels) or one
  matmul ``T[:, columns]^T P`` (soft labels); the dense K x K C_t is never materialised.
- The EMA is stored transposed (``ema_confusion_by_true_class[j]`` = column j of C_hat) so that a
  class's column is one contiguous row, and with a lazy global factor: C_hat = scale * stored.
  The "full" update's decay of every column by beta is then ``scale *= beta`` (O(1)) plus an
  O(m K) write of the present columns, instead of a 265 MB read-modify-write at K = 8142.
  The factor is folded back into the matrix when it gets small, and always before saving.
- One power-iteration step (u <- A A^T u) reads the matrix once, in cache-sized blocks of rows,
  instead of twice for two separate matrix-vector products.
- R's gradient reaches only the current batch, through (1 - beta) * C_t, and R is linear in it,
  so the backward pass is ``(1 - beta) * sum_c (numerator_c . u) w_j v_j / n_j``: O(m K).
"""

from __future__ import annotations

import math
from typing import Optional, Tuple

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from longtail._checks import ClassCounts, as_class_counts, check_logits_and_targets
from longtail.regularizers.bounds import WEIGHTINGS, class_weights

SURROGATES = ("gated", "competitor")
EMA_INITS = ("first_batch", "zeros")
EMA_UPDATES = ("full", "masked")

# The spec gives each surrogate its own default margin: 0 for "gated", 0.1 for "competitor".
DEFAULT_GAMMA = {"gated": 0.0, "competitor": 0.1}

# Fold the lazy EMA factor back into the matrix below this value. 2^-40 keeps the stored
# entries (<= 1 / scale ~ 1e12) far from float32 overflow even inside A A^T u.
_FOLD_SCALE_BELOW = 2.0 ** -40
# Columns of classes not seen for a long time decay geometrically under the "full" update; flush
# them to exact zeros when folding, because float32 subnormals make matrix-vector products on
# x86 CPUs many times slower. The change to R is below 1e-30 in absolute value.
_FLUSH_BELOW = 1e-30
# Rows of the K x K matrix per block in the one-pass power step: about 2 MB of float32 per block,
# so the second product of a block is served from cache.
_BLOCK_BYTES = 1 << 21


# --------------------------------------------------------------------------------------------
# Surrogate C_t
# --------------------------------------------------------------------------------------------


def _per_sample_confusion(
    logits: torch.Tensor, labels: torch.Tensor, surrogate: str, gamma: float, tau: float
) -> torch.Tensor:
    """(B, K): row b is sample b's contribution to column y_b of C_t's numerator (hard labels).

    gated:      sg(sigmoid(z_i - z_y + gamma)) * softmax(z / tau)_i
    competitor: sigmoid(z_i - z_y + gamma) * softmax over k != y of (z / tau)_i
    Entry y_b (the diagonal of C_t) is 0.
    """
    true_logit = logits.gather(1, labels[:, None])
    gate = torch.sigmoid(logits - true_logit + gamma)
    is_true_class = torch.zeros_like(logits, dtype=torch.bool).scatter_(1, labels[:, None], True)
    if surrogate == "gated":
        # The gate only selects which competitors count; the paper stops its gradient.
        gate = gate.detach()
        probabilities = F.softmax(logits / tau, dim=1)
    else:
        # -inf before the softmax renormalises over the competitors; its gradient is exactly 0.
        probabilities = F.softmax((logits / tau).masked_fill(is_true_class, float("-inf")), dim=1)
    return (gate * probabilities).masked_fill(is_true_class, 0.0)


def _class_mass(targets: torch.Tensor, soft: bool, num_classes: int, dtype: torch.dtype) -> torch.Tensor:
    """(K,): the column normaliser before clamping: n_j (hard) or sum_b T[b, j] (soft)."""
    if soft:
        return targets.detach().sum(dim=0)
    return torch.bincount(targets, minlength=num_classes).to(dtype)


def _surrogate_numerators(
    logits: torch.Tensor,
    targets: torch.Tensor,
    soft: bool,
    columns: torch.Tensor,
    surrogate: str,
    gamma: float,
    tau: float,
) -> torch.Tensor:
    """(m, K), differentiable: row c = un-normalised column ``columns[c]`` of C_t for this batch.

    ``columns`` must contain every class present in ``targets`` (it may contain more, e.g. the
    classes present on other ranks; their rows are then zero here).
    """
    num_classes = logits.shape[1]
    if soft:
        # C_t numerator = softmax(z / tau)^T T, restricted to the present columns: one matmul.
        probabilities = F.softmax(logits / tau, dim=1)
        numerators = targets[:, columns].t() @ probabilities
        is_diagonal = torch.zeros_like(numerators, dtype=torch.bool)
        is_diagonal[torch.arange(columns.numel(), device=columns.device), columns] = True
        return numerators.masked_fill(is_diagonal, 0.0)
    per_sample = _per_sample_confusion(logits, targets, surrogate, gamma, tau)
    row_of_class = torch.full((num_classes,), -1, dtype=torch.long, device=logits.device)
    row_of_class[columns] = torch.arange(columns.numel(), device=logits.device)
    numerators = per_sample.new_zeros(columns.numel(), num_classes)
    # index_add sums the samples of each class into its row: no loop over classes.
    return numerators.index_add(0, row_of_class[targets], per_sample)


def _hard_labels_if_one_hot(targets: torch.Tensor) -> Optional[torch.Tensor]:
    """Class indices when every soft row is exactly one-hot (an unmixed batch), else None.

    The spec uses the normal (gated / competitor) surrogate on unmixed batches and the soft
    formula only on mixed ones; a one-hot target matrix is an unmixed batch.
    """
    if bool(((targets == 0) | (targets == 1)).all()):
        return targets.argmax(dim=1)
    return None


def confusion_surrogate(
    logits: torch.Tensor,
    targets: torch.Tensor,
    surrogate: str = "gated",
    gamma: Optional[float] = None,
    tau: float = 1.0,
    soft_eps: float = 1e-6,
) -> torch.Tensor:
    """The differentiable confusion surrogate C_t of one batch as a dense K x K matrix.

    Paper orientation: ``C_t[i, j]`` = mean over class-j samples b of
    ``sg(sigmoid(z_b[i] - z_b[j] + gamma)) * softmax(z_b / tau)[i]`` (``"gated"``; the
    ``"competitor"`` variant keeps the gate's gradient and takes the softmax over k != j only),
    i != j; zero diagonal; zero columns for classes absent from the batch. Soft targets T (B, K)
    give ``softmax(z / tau)^T T`` divided column-wise by ``max(sum_b T[b, j], soft_eps)``, zero
    diagonal. Computed in float32 (float64 for float64 logits), with autocast disabled.

    Meant for inspection and tests; :class:`CAR` never materialises this K x K matrix.
    """
    _check_surrogate_options(surrogate, tau)
    gamma = DEFAULT_GAMMA[surrogate] if gamma is None else float(gamma)
    soft = check_logits_and_targets(logits, targets)
    num_classes = logits.shape[1]
    dtype = torch.float64 if logits.dtype == torch.float64 else torch.float32
    with torch.autocast(device_type=logits.device.type, enabled=False):
        scores = logits.to(dtype)
        if soft:
            targets = targets.to(dtype)
            hard = _hard_labels_if_one_hot(targets)
            if hard is not None:
                targets, soft = hard, False
        mass = _class_mass(targets, soft, num_classes, dtype)
        columns = (mass > 0).nonzero().squeeze(1)
        numerators = _surrogate_numerators(scores, targets, soft, columns, surrogate, gamma, tau)
        normalised = numerators / mass[columns].clamp_min(soft_eps if soft else 1.0)[:, None]
        dense = scores.new_zeros(num_classes, num_classes)
        return dense.index_copy(1, columns, normalised.t())


def _check_surrogate_options(surrogate: str, tau: float) -> None:
    if surrogate not in SURROGATES:
        raise ValueError(f"unknown surrogate {surrogate!r}; choose one of {SURROGATES}")
    if not (math.isfinite(tau) and tau > 0):
        raise ValueError(f"tau must be a finite temperature > 0, got {tau}")


# --------------------------------------------------------------------------------------------
# Top singular pair
# --------------------------------------------------------------------------------------------


def _gram_step(
    matrix_by_true_class: torch.Tensor, column_weights: torch.Tensor, scale: float, left: torch.Tensor
) -> Tuple[torch.Tensor, torch.Tensor]:
    """One power step for A = scale * M^T * w[None, :], M = ``matrix_by_true_class`` (A's columns as rows).

    Returns (A^T u, A A^T u). Both products are formed block by block over M's rows, so each
    block is read from memory once and reused from cache for the second product: one pass over
    the K x K matrix instead of two.
    """
    num_classes = matrix_by_true_class.shape[0]
    block_rows = max(1, _BLOCK_BYTES // (matrix_by_true_class.element_size() * num_classes))
    transposed_product = torch.empty_like(left)
    gram_product = torch.zeros_like(left)
    for start in range(0, num_classes, block_rows):
        stop = min(start + block_rows, num_classes)
        block = matrix_by_true_class[start:stop]
        weights = column_weights[start:stop]
        block_transposed_product = torch.mv(block, left).mul_(weights).mul_(scale)
        transposed_product[start:stop] = block_transposed_product
        gram_product.addmv_(block.t(), block_transposed_product * weights, alpha=scale)
    return transposed_product, gram_product


def _power_iteration(
    matrix_by_true_class: torch.Tensor,
    column_weights: torch.Tensor,
    scale: float,
    left: torch.Tensor,
    iterations: int,
    tol: Optional[float],
) -> Tuple[float, torch.Tensor, torch.Tensor]:
    """Top singular triple of A = scale * M^T * w[None, :] by warm-started power iteration.

    Each iteration: v = A^T u / ||A^T u||, u = A v / ||A v||, sigma = ||A A^T u|| / ||A^T u||
    (= u^T A v for the returned pair, the Rayleigh quotient). With ``tol`` set it stops early once
    sigma changes by at most tol relative (cold start); ``iterations`` is then the cap.

    A zero A^T u means u is orthogonal to A's column space; the iteration restarts from the
    all-ones vector (overlaps the Perron vector of any non-zero non-negative matrix) and then from
    a fixed random vector. If A^T u is still zero, A = 0: sigma = 0 and the vectors are kept.
    """
    num_classes = left.numel()
    restarts = [
        torch.full_like(left, num_classes ** -0.5),
        torch.randn(num_classes, generator=torch.Generator().manual_seed(0), dtype=left.dtype).to(left.device),
    ]
    right = None
    sigma = 0.0
    for _ in range(iterations):
        transposed_product, gram_product = _gram_step(matrix_by_true_class, column_weights, scale, left)
        transposed_norm = float(transposed_product.norm())
        while transposed_norm == 0.0 and restarts:
            left = restarts.pop(0)
            left = left / left.norm()
            transposed_product, gram_product = _gram_step(matrix_by_true_class, column_weights, scale, left)
            transposed_norm = float(transposed_product.norm())
        if transposed_norm == 0.0:
            return 0.0, left, right if right is not None else torch.full_like(left, num_classes ** -0.5)
        gram_norm = float(gram_product.norm())
        new_sigma = gram_norm / transposed_norm
        right = transposed_product / transposed_norm
        left = gram_product / gram_norm
        converged = tol is not None and abs(new_sigma - sigma) <= tol * new_sigma
        sigma = new_sigma
        if converged:
            break
    return sigma, left, right


def top_singular_pair(
    matrix: torch.Tensor,
    left: Optional[torch.Tensor] = None,
    iterations: Optional[int] = None,
    tol: float = 1e-6,
    max_iterations: int = 1000,
) -> Tuple[float, torch.Tensor, torch.Tensor]:
    """(sigma_max, u, v) of ``matrix`` by power iteration, warm-started from ``left`` (u).

    ``left=None`` is a cold start: from the all-ones direction, iterate until sigma changes by at
    most ``tol`` relative (at most ``max_iterations``). Given ``left``, run exactly
    ``iterations`` steps (default 1): the warm start CAR uses between training steps.
    """
    if matrix.dim() != 2 or matrix.shape[0] != matrix.shape[1]:
        raise ValueError(f"matrix must be square, got shape {tuple(matrix.shape)}")
    num_classes = matrix.shape[0]
    by_true_class = matrix.detach().t().contiguous()
    weights = torch.ones(num_classes, dtype=by_true_class.dtype, device=by_true_class.device)
    if left is None:
        start = torch.full_like(weights, num_classes ** -0.5)
        return _power_iteration(by_true_class, weights, 1.0, start, max_iterations, tol)
    return _power_iteration(by_true_class, weights, 1.0, left.detach().to(weights), iterations or 1, None)


# --------------------------------------------------------------------------------------------
# Distributed helpers
# --------------------------------------------------------------------------------------------


def _world_size(process_group) -> int:
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size(process_group)
    return 1


# --------------------------------------------------------------------------------------------
# The module
# --------------------------------------------------------------------------------------------


class CAR(nn.Module):
    """Confusion-aware spectral regularizer: ``car(logits, targets) -> alpha * R`` (methods.md section 2).

    Args:
        class_counts: training images per class N_j (all > 0); fixes K and the class weights.
        alpha: weight of R in the loss (default 0.3, the authors' published command).
        beta: EMA factor of the confusion estimator, C_hat_t = beta sg(C_hat_{t-1}) + (1 - beta) C_t.
        weighting, r0, l0: column weights, see :func:`longtail.regularizers.bounds.class_weights`.
        surrogate: ``"gated"`` (default: detached gate, softmax over all classes) or
            ``"competitor"`` (gate with gradient, softmax over the competitors k != j).
        gamma: margin inside the gate; ``None`` = the surrogate's spec default (0.0 gated, 0.1 competitor).
        tau: softmax temperature of the surrogate.
        ema_init: ``"first_batch"`` (C_hat_1 = sg(C_1): no gradient on the first step) or ``"zeros"``
            (C_hat_0 = 0, so C_hat_1 = (1 - beta) C_1).
        ema_update: ``"full"`` (every column decays by beta each step; columns of absent classes
            drift to 0) or ``"masked"`` (only columns of classes in the batch are updated).
        power_iters: power-iteration steps per training step (warm-started from the last step).
        exact_below: use an exact SVD (``torch.linalg.svd``, no backprop through it) while K is
            below this; above, power iteration. 0 forces power iteration; a huge value forces SVD.
        power_tol: relative tolerance on sigma for the cold start (the first step).
        cold_start_iters: cap on cold-start iterations.
        soft_eps: floor on the soft-target column mass sum_b T[b, j].
        scale_grad_by_world_size: under an initialised process group of W ranks, multiply the
            gradient (not the value) of R by W, because DistributedDataParallel averages gradients
            over ranks while R's gradient on each rank covers only that rank's share of the
            global batch. The update then equals one process on the concatenated batch; set
            False if your loop sums gradients instead of averaging them.
        process_group: the group to synchronise over (default: the world).

    State (``state_dict``): ``ema_confusion_by_true_class`` (C_hat transposed: row j = column j),
    ``left_singular_vector`` u, ``right_singular_vector`` v, ``initialized``, ``last_spectral_norm``
    and ``class_weights``. Every call updates the state (like a training-mode BatchNorm), so do
    not call it on validation batches of a run you want to resume bit-exactly.
    """

    def __init__(
        self,
        class_counts: ClassCounts,
        alpha: float = 0.3,
        beta: float = 0.5,
        weighting: str = "frequency",
        r0: float = 0.2,
        l0: float = 10.0,
        surrogate: str = "gated",
        gamma: Optional[float] = None,
        tau: float = 1.0,
        ema_init: str = "first_batch",
        ema_update: str = "full",
        power_iters: int = 1,
        exact_below: int = 256,
        power_tol: float = 1e-6,
        cold_start_iters: int = 1000,
        soft_eps: float = 1e-6,
        scale_grad_by_world_size: bool = True,
        process_group=None,
    ) -> None:
        super().__init__()
        counts = as_class_counts(class_counts)
        num_classes = counts.numel()
        if num_classes < 2:
            raise ValueError("CAR needs at least 2 classes: with one class there is no confusion")
        if weighting not in WEIGHTINGS:
            raise ValueError(f"unknown weighting {weighting!r}; choose one of {WEIGHTINGS}")
        _check_surrogate_options(surrogate, tau)
        if ema_init not in EMA_INITS:
            raise ValueError(f"unknown ema_init {ema_init!r}; choose one of {EMA_INITS}")
        if ema_update not in EMA_UPDATES:
            raise ValueError(f"unknown ema_update {ema_update!r}; choose one of {EMA_UPDATES}")
        if not (math.isfinite(alpha) and alpha >= 0):
            raise ValueError(f"alpha must be finite and >= 0, got {alpha}")
        if not 0 <= beta < 1:
            raise ValueError(f"beta must be in [0, 1) (beta = 1 would never see a batch), got {beta}")
        if gamma is not None and not math.isfinite(gamma):
            raise ValueError(f"gamma must be finite, got {gamma}")
        if int(power_iters) < 1 or int(cold_start_iters) < 1:
            raise ValueError("power_iters and cold_start_iters must be >= 1")
        if not power_tol > 0 or not soft_eps > 0:
            raise ValueError("power_tol and soft_eps must be > 0")

        self.num_classes = num_classes
        self.alpha = float(alpha)
        self.beta = float(beta)
        self.weighting = weighting
        self.surrogate = surrogate
        self.gamma = DEFAULT_GAMMA[surrogate] if gamma is None else float(gamma)
        self.tau = float(tau)
        self.ema_init = ema_init
        self.ema_update = ema_update
        self.power_iters = int(power_iters)
        self.exact_below = int(exact_below)
        self.power_tol = float(power_tol)
        self.cold_start_iters = int(cold_start_iters)
        self.soft_eps = float(soft_eps)
        self.scale_grad_by_world_size = bool(scale_grad_by_world_size)
        self.process_group = process_group

        start_vector = torch.full((num_classes,), num_classes ** -0.5)
        self.register_buffer("class_weights", class_weights(counts, weighting, r0, l0).float())
        self.register_buffer("ema_confusion_by_true_class", torch.zeros(num_classes, num_classes))
        self.register_buffer("left_singular_vector", start_vector.clone())
        self.register_buffer("right_singular_vector", start_vector.clone())
        self.register_buffer("last_spectral_norm", torch.zeros(()))
        self.register_buffer("initialized", torch.zeros((), dtype=torch.bool))
        # C_hat = _ema_scale * ema_confusion_by_true_class^T. A Python float (no device sync);
        # always 1 in a saved state because saving folds it in.
        self._ema_scale = 1.0
        self._is_initialized = False
        self.register_load_state_dict_post_hook(CAR._after_load)

    # ---- public read-only views ------------------------------------------------------------

    @property
    def spectral_norm(self) -> torch.Tensor:
        """R of the last call (sigma_max of the weighted EMA confusion), detached."""
        return self.last_spectral_norm.detach().clone()

    @property
    def confusion(self) -> torch.Tensor:
        """C_hat (K x K, paper orientation [pred, true]), detached. Materialises a copy."""
        return (self.ema_confusion_by_true_class.t() * self._ema_scale).detach().clone()

    def extra_repr(self) -> str:
        return (
            f"num_classes={self.num_classes}, alpha={self.alpha}, beta={self.beta}, weighting={self.weighting!r}, "
            f"surrogate={self.surrogate!r}, gamma={self.gamma}, tau={self.tau}, ema_init={self.ema_init!r}, "
            f"ema_update={self.ema_update!r}, power_iters={self.power_iters}, exact_below={self.exact_below}"
        )

    # ---- checkpointing -------------------------------------------------------------------

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        # Fold the lazy factor in place so the saved buffer *is* C_hat^T; the running module then
        # continues from exactly the state a resumed one loads.
        self._fold_ema_scale()
        super()._save_to_state_dict(destination, prefix, keep_vars)

    @staticmethod
    def _after_load(module: "CAR", incompatible_keys) -> None:
        module._ema_scale = 1.0
        module._is_initialized = bool(module.initialized)

    @torch.no_grad()
    def _fold_ema_scale(self) -> None:
        if self._ema_scale == 0.0:  # beta = 0: nothing of the past survives
            self.ema_confusion_by_true_class.zero_()
        elif self._ema_scale != 1.0:
            F.threshold_(self.ema_confusion_by_true_class.mul_(self._ema_scale), _FLUSH_BELOW, 0.0)
        self._ema_scale = 1.0

    # ---- forward -------------------------------------------------------------------------

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Return ``alpha * R`` for this batch and advance the EMA / singular-vector state.

        ``targets``: class indices (B,) or soft targets (B, K) whose rows sum to 1 (mixup /
        CutMix). Returns a float32 scalar whose gradient is alpha (1 - beta) (u v^T * w) through
        this batch's C_t only.
        """
        soft = check_logits_and_targets(logits, targets, self.num_classes)
        dtype = self.ema_confusion_by_true_class.dtype
        if dtype not in (torch.float32, torch.float64):
            raise TypeError(
                f"CAR's state is {dtype}; it must stay float32 (or float64). Do not call .half() / "
                f".bfloat16() on it: autocast and low-precision logits are handled inside."
            )
        if logits.device != self.ema_confusion_by_true_class.device:
            raise ValueError(
                f"logits are on {logits.device} but CAR's state is on {self.ema_confusion_by_true_class.device}; "
                f"call car.to(device)"
            )
        # The surrogate saturates (sigmoid, softmax) and the EMA accumulates: both need float32
        # even when the model runs in bf16 / fp16.
        with torch.autocast(device_type=logits.device.type, enabled=False):
            return self._regularizer(logits.to(dtype), targets, soft) * self.alpha

    def _regularizer(self, logits: torch.Tensor, targets: torch.Tensor, soft: bool) -> torch.Tensor:
        if soft:
            targets = targets.to(logits.dtype)
            hard = _hard_labels_if_one_hot(targets)
            if hard is not None:
                targets, soft = hard, False
        world_size = _world_size(self.process_group)

        # 1. Which columns C_t has: classes present anywhere in the global batch.
        mass = _class_mass(targets, soft, self.num_classes, logits.dtype)
        if world_size > 1:
            dist.all_reduce(mass, group=self.process_group)
        columns = (mass > 0).nonzero().squeeze(1)
        column_mass = mass[columns].clamp_min(self.soft_eps if soft else 1.0)

        # 2. This rank's numerators (differentiable), summed over ranks for the state (detached).
        local_numerators = _surrogate_numerators(
            logits, targets, soft, columns, self.surrogate, self.gamma, self.tau
        )
        with torch.no_grad():
            global_numerators = local_numerators.detach().clone()
            if world_size > 1:
                dist.all_reduce(global_numerators, group=self.process_group)
            batch_columns = global_numerators.div_(column_mass[:, None])
            # The first step also cold-starts the power iteration; a loaded state is warm.
            cold_start = not self._is_initialized
            batch_coefficient = self._update_ema(columns, batch_columns)
            sigma, left, right = self._update_singular_pair(cold_start)

        # 3. R = u^T A v with u, v detached. A depends on this batch only through
        # batch_coefficient * C_t[:, columns] * w[columns], and linearly, so the differentiable
        # part is that inner product; remote ranks' numerators carry no gradient here.
        gradient_scale = batch_coefficient * (world_size if self.scale_grad_by_world_size else 1)
        right_weighted = (self.class_weights * right)[columns] / column_mass
        linear_part = ((local_numerators @ left) * right_weighted).sum() * gradient_scale
        # sigma = 0 means A = 0: every unit pair (u, v) gives a subgradient u v^T, and so does 0,
        # the minimum-norm choice; take it so a degenerate state pushes nothing.
        if sigma == 0.0:
            linear_part = linear_part * 0.0
        return logits.new_tensor(sigma) + (linear_part - linear_part.detach())

    @torch.no_grad()
    def _update_ema(self, columns: torch.Tensor, batch_columns: torch.Tensor) -> float:
        """C_hat_t = beta C_hat_{t-1} + (1 - beta) C_t on the stored transpose; returns dC_hat / dC_t."""
        stored = self.ema_confusion_by_true_class
        if not self._is_initialized and self.ema_init == "first_batch":
            # C_hat_1 = sg(C_1): the state starts at the first batch, which carries no gradient.
            stored.zero_()
            stored.index_copy_(0, columns, batch_columns)
            self._ema_scale = 1.0
            coefficient = 0.0
        else:
            if self.ema_update == "full":
                # Every column decays by beta: one multiplication of the lazy factor.
                self._ema_scale *= self.beta
                if self._ema_scale < _FOLD_SCALE_BELOW:
                    self._fold_ema_scale()
                stored.index_add_(0, columns, batch_columns, alpha=(1.0 - self.beta) / self._ema_scale)
            else:
                # Only present columns move; absent classes keep their last estimate.
                rows = stored.index_select(0, columns)
                rows.mul_(self.beta).add_(batch_columns, alpha=(1.0 - self.beta) / self._ema_scale)
                stored.index_copy_(0, columns, rows)
            coefficient = 1.0 - self.beta
        self._is_initialized = True
        self.initialized.fill_(True)
        return coefficient

    @torch.no_grad()
    def _update_singular_pair(self, cold_start: bool) -> Tuple[float, torch.Tensor, torch.Tensor]:
        stored = self.ema_confusion_by_true_class
        if self.num_classes < self.exact_below:
            weighted = stored.t() * (self.class_weights * self._ema_scale)[None, :]
            left_vectors, singular_values, right_vectors_h = torch.linalg.svd(weighted)
            left, right = left_vectors[:, 0], right_vectors_h[0]
            # The pair is defined up to a joint sign; keep the non-negative (Perron) orientation
            # so the state is reproducible and continuous when switching to power iteration.
            if float(left.sum()) < 0:
                left, right = -left, -right
            sigma = float(singular_values[0])
        else:
            iterations, tol = (self.cold_start_iters, self.power_tol) if cold_start else (self.power_iters, None)
            sigma, left, right = _power_iteration(
                stored, self.class_weights, self._ema_scale, self.left_singular_vector, iterations, tol
            )
        self.left_singular_vector.copy_(left)
        self.right_singular_vector.copy_(right)
        self.last_spectral_norm.fill_(sigma)
        return sigma, self.left_singular_vector.clone(), self.right_singular_vector.clone()
