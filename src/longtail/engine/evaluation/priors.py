"""Test priors on a trained run: the prior its logits encode, prior files, and
``longtail eval --test-priors`` (SADE's forward / uniform / backward test sets, with no adaptation,
the oracle prior and the EM-estimated prior). The formulas are :mod:`longtail.metrics.priors`.

The logits are computed once on the evaluation split (the balanced test split); every shifted test
set is a subset of its images, so its predictions are those logits' rows: a draw costs no forward
pass, and the exact expectation ``sum_c pi_c acc_c`` uses the per-class accuracies of the same logits.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

from longtail.metrics.priors import (
    ENCODED_PRIOR_BY_LOSS,
    TEST_PRIOR_RHOS,
    adapt_logits,
    drawn_metrics,
    em_prior,
    encoded_prior,
    expected_metrics,
    prior_from_counts,
    shifted_test_sets,
)

SAMPLING_POWER = {"instance": 1.0, "sqrt": 0.5, "class_balanced": 0.0}  # class c drawn ~ n_c ** q
LOGIT_ADJUSTING_LOSSES = ("logit_adjusted", "la", "focal_la", "ccar_la")  # their loss.tau is the adjustment
DEFAULT_DRAWS = 5
METRIC_KEYS = ("accuracy", "many_accuracy", "medium_accuracy", "few_accuracy", "worst_class_accuracy")
COLUMNS = ("none", "oracle", "em")


class PriorError(ValueError):
    """A prior that cannot be used: unknown for the run's loss, or a bad prior file (a usage error)."""


# --------------------------------------------------------------------------- the prior a run's logits encode


def run_encoded_prior(config, class_counts, override: Optional[str] = None,
                      classes: Optional[Sequence[str]] = None) -> tuple[np.ndarray, str]:
    """(prior, description) of the class prior the run's logits encode (docs/priors.md, section 3).

    From the loss (``ENCODED_PRIOR_BY_LOSS``; logit adjustment's ``tau`` option) and the sampler
    (class c drawn ~ n_c ** q). ``override``: ``train`` / ``uniform`` (the training counts' prior
    or 1/K, whatever the loss), or a prior file (:func:`read_prior_file`); needed for losses whose
    encoded prior is not known (class-reweighting losses, contrastive methods) and the
    ``progressive`` sampler, which are refused without it.
    """
    counts = np.asarray(class_counts, dtype=np.float64)
    if override is not None:
        if override in ("train", "uniform"):
            return encoded_prior(counts, override), f"{override} (given)"
        prior = read_prior_file(override, classes, len(counts))
        if (prior <= 0).any():
            raise PriorError(f"{override}: an encoded prior needs a positive frequency for every class")
        return prior, f"from {override} (given)"
    loss = str(config.loss.name)
    hint = ("pass --encoded-prior train|uniform|FILE to say which prior the model's logits encode "
            "(docs/priors.md, section 3)")
    kind = ENCODED_PRIOR_BY_LOSS.get(loss)
    if kind is None:
        raise PriorError(f"the encoded prior of loss {loss!r} is not known (it reweights classes or is not a "
                         f"softmax cross-entropy): {hint}")
    sampler = str(config.data.sampler)
    if sampler == "power":
        q = float(config.data.sampler_q)
    elif sampler in SAMPLING_POWER:
        q = SAMPLING_POWER[sampler]
    else:
        raise PriorError(f"the {sampler!r} sampler changes the training prior during training: {hint}")
    tau = None
    if loss in LOGIT_ADJUSTING_LOSSES:
        tau = float(config.loss.options.get("tau", 1.0))
    prior = encoded_prior(counts, kind, tau=tau, sampling_power=q)
    adjustment = f"logit adjustment tau = {tau:g}" if tau is not None else (
        "adds log pi_train to the logits" if kind == "uniform" else "no logit adjustment")
    exponent = q - (tau if tau is not None else (1.0 if kind == "uniform" else 0.0))
    formula = "uniform" if exponent == 0 else "pi_train" if exponent == 1 else f"pi_train ** {exponent:g}"
    return prior, f"{formula} (loss {loss}: {adjustment}; sampler {sampler}, q = {q:g})"


def read_prior_file(path, classes: Optional[Sequence[str]], num_classes: int) -> np.ndarray:
    """A class-frequency file, normalised to sum 1 (float64).

    Two formats: JSON ``{"class name": frequency, ...}`` naming every class of the run exactly
    once (any order), or plain text with one number per line in the run's class order (blank
    lines and ``#`` comments ignored). Frequencies are counts or fractions: finite, >= 0, sum > 0.
    Raises :class:`PriorError` naming what is wrong.
    """
    path = Path(path)
    if not path.is_file():
        raise PriorError(f"prior file {path} not found (give em, uniform, or a class-frequency file: JSON "
                         f"{{class name: frequency}} or one number per line in class order)")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise PriorError(f"cannot read prior file {path}: {error}") from None
    stripped = text.lstrip()
    if stripped.startswith(("{", "[")):
        try:
            data = json.loads(text)
        except ValueError as error:
            raise PriorError(f"{path} is not valid JSON: {error}") from None
        if not isinstance(data, dict):
            raise PriorError(f"{path}: a JSON prior file must be an object {{class name: frequency}}, "
                             f"got {type(data).__name__}")
        if classes is None:
            raise PriorError(f"{path}: class names are not known here; give one number per line in class order")
        names = [str(name) for name in classes]
        unknown = [key for key in data if key not in names]
        missing = [name for name in names if name not in data]
        if unknown or missing:
            parts = []
            if unknown:
                parts.append(f"names the run does not have: {unknown[:10]}")
            if missing:
                parts.append(f"misses the run's classes: {missing[:10]}")
            raise PriorError(f"{path} {'; '.join(parts)}. The run's classes: {', '.join(names[:30])}"
                             f"{' ...' if len(names) > 30 else ''}")
        values = []
        for name in names:
            value = data[name]
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise PriorError(f"{path}: the frequency of {name!r} must be a number, got {value!r}")
            values.append(float(value))
    else:
        values = []
        for number, line in enumerate(text.splitlines(), 1):
            content = line.split("#", 1)[0].strip()
            if not content:
                continue
            try:
                values.append(float(content))
            except ValueError:
                raise PriorError(f"{path}, line {number}: {content!r} is not a number (one frequency per line, "
                                 f"in class order; or a JSON object {{class name: frequency}})") from None
        if len(values) != num_classes:
            raise PriorError(f"{path} has {len(values)} frequencies, the run has {num_classes} classes "
                             f"(one number per line, in class order)")
    array = np.array(values, dtype=np.float64)
    bad = [i for i, v in enumerate(values) if not math.isfinite(v) or v < 0]
    if bad:
        label = (lambda i: repr(str(classes[i]))) if classes is not None else (lambda i: f"class {i}")
        raise PriorError(f"{path}: frequencies must be finite and >= 0; {label(bad[0])} has {values[bad[0]]}")
    if array.sum() <= 0:
        raise PriorError(f"{path}: the frequencies sum to 0; at least one class needs a positive frequency")
    return prior_from_counts(array, str(path))


# --------------------------------------------------------------------------- eval --test-priors


@torch.no_grad()
def split_logits(model, loader, device: torch.device, precision: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits (N, K) float32 on the CPU and labels (N,) of every image of ``loader``."""
    from longtail.engine.runtime.precision import autocast_context, resolve_precision

    chosen = resolve_precision(precision, device).chosen
    outputs, labels = [], []
    for images, targets in loader:
        with autocast_context(device, chosen):
            outputs.append(model(images).float().cpu())
        labels.append(targets.cpu())
    logits = torch.cat(outputs)
    if not torch.isfinite(logits).all():
        from longtail.engine.training.scoring import NonFiniteOutputError

        raise NonFiniteOutputError("the model gives non-finite (NaN / inf) logits: its weights have diverged")
    return logits, torch.cat(labels)


def _per_class_accuracy(preds: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    support = np.bincount(labels, minlength=num_classes)
    correct = np.bincount(labels[preds == labels], minlength=num_classes)
    return correct / support


def _spread(values: list) -> dict:
    """mean and sample std (None for one draw) of one metric over the draws; None if never defined."""
    values = [v for v in values if v is not None]
    if not values:
        return {"mean": None, "std": None}
    return {"mean": float(np.mean(values)), "std": float(np.std(values, ddof=1)) if len(values) > 1 else None}


def _drawn(preds_per_draw: list, labels: np.ndarray, draws: Sequence[np.ndarray], counts) -> dict:
    results = [drawn_metrics(preds, labels, indices, counts) for preds, indices in zip(preds_per_draw, draws)]
    return {key: _spread([r[key] for r in results]) for key in METRIC_KEYS}


def shifted_prior_report(logits, labels, class_counts, encoded, rhos: Sequence[float] = TEST_PRIOR_RHOS,
                      draws: int = DEFAULT_DRAWS, seed: int = 0) -> dict:
    """Every shifted test set of ``shifted_test_sets`` scored three ways from the same logits:

    - ``none``: the model as it is; ``expected`` = exact expectation from the per-class accuracies
      of the whole split (:func:`expected_metrics`), ``drawn`` = mean / std over the draws;
    - ``oracle``: logits shifted by log pi_test - log pi_encoded with the set's true prior;
      ``expected`` as above from the shifted predictions' per-class accuracies, ``drawn`` likewise;
    - ``em``: the prior estimated by EM (:func:`em_prior`) from each draw's own softmax outputs,
      then the same shift; only ``drawn`` (the estimate depends on the draw), with the estimated
      prior (mean over draws) and its total-variation distance to the true one.
    """
    logits = np.asarray(logits, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    counts = np.asarray(class_counts, dtype=np.float64)
    num_classes = counts.size
    probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    probs /= probs.sum(axis=1, keepdims=True)
    plain = logits.argmax(axis=1)
    plain_accuracy = _per_class_accuracy(plain, labels, num_classes)
    sets = []
    for shifted in shifted_test_sets(labels, counts, rhos, draws, seed):
        prior = shifted.prior
        oracle = adapt_logits(logits, prior, encoded).argmax(axis=1)
        oracle_accuracy = _per_class_accuracy(oracle, labels, num_classes)
        estimates, em_preds, iterations, converged = [], [], [], []
        for indices in shifted.draws:
            result = em_prior(probs[indices], encoded)
            estimates.append(result.prior)
            iterations.append(result.iterations)
            converged.append(result.converged)
            preds = plain.copy()  # only the drawn rows are read
            preds[indices] = adapt_logits(logits[indices], result.prior, encoded).argmax(axis=1)
            em_preds.append(preds)
        estimates = np.array(estimates)
        total_variation = [0.5 * float(np.abs(estimate - prior).sum()) for estimate in estimates]
        sets.append({
            "name": shifted.name, "direction": shifted.direction, "rho": shifted.rho,
            "images": int(shifted.class_counts.sum()), "class_counts": shifted.class_counts.tolist(),
            "prior": prior.tolist(),
            "none": {"expected": _expected(plain_accuracy, prior, counts),
                     "drawn": _drawn([plain] * len(shifted.draws), labels, shifted.draws, counts),
                     "per_class_accuracy": plain_accuracy.tolist()},
            "oracle": {"expected": _expected(oracle_accuracy, prior, counts),
                       "drawn": _drawn([oracle] * len(shifted.draws), labels, shifted.draws, counts),
                       "per_class_accuracy": oracle_accuracy.tolist()},
            "em": {"expected": None,
                   "drawn": _drawn(em_preds, labels, shifted.draws, counts),
                   "estimated_prior": {"mean": estimates.mean(axis=0).tolist(),
                                       "std": estimates.std(axis=0, ddof=1).tolist() if len(estimates) > 1 else None},
                   "total_variation_to_true_prior": _spread(total_variation),
                   "iterations": iterations, "converged": converged},
        })
    return {"rhos": [float(r) for r in rhos], "draws": int(draws), "seed": int(seed),
            "n_max": int(np.bincount(labels, minlength=num_classes).min()),
            "split_images": int(labels.size), "encoded_prior": np.asarray(encoded, dtype=np.float64).tolist(),
            "sets": sets}


def _expected(per_class_accuracy: np.ndarray, prior: np.ndarray, counts: np.ndarray) -> dict:
    metrics = expected_metrics(per_class_accuracy, prior, counts)
    return {key: metrics[key] for key in (*METRIC_KEYS, "worst_class")}


def evaluate_shifted_priors(target: Path, split: str = "test", device: str = "auto", rhos=TEST_PRIOR_RHOS,
                         draws: int = DEFAULT_DRAWS, seed: int = 0, encoded_override: Optional[str] = None) -> dict:
    """:func:`shifted_prior_report` of a run directory's reported weights on ``split``, with the run's
    encoded prior (:func:`run_encoded_prior`), class names and training counts."""
    from longtail.engine.evaluation.evaluate import load_trained

    model, data, config, torch_device = load_trained(target, device, with_train_split=split == "train")
    if split not in data.eval_loaders:
        raise ValueError(f"split '{split}' is not available for this run; available: {', '.join(data.eval_loaders)}")
    counts = [int(c) for c in data.class_counts]
    encoded, described = run_encoded_prior(config, counts, encoded_override, data.classes)
    logits, labels = split_logits(model, data.eval_loaders[split], torch_device, config.train.precision)
    report = shifted_prior_report(logits.numpy(), labels.numpy(), counts, encoded, rhos, draws, seed)
    return {"run": str(target), "split": split, "classes": [str(c) for c in data.classes], "train_counts": counts,
            "encoded_prior_source": described,
            "note": (f"logits computed once on the {split} split; each shifted test set is a seeded subset of "
                     f"its images (draw d uses seed {seed} + d)"),
            **report}


# --------------------------------------------------------------------------- predict --adapt-prior


class PriorAdaptation:
    """``longtail predict --adapt-prior``: shifts the logits of all predicted images by
    log pi_target - log pi_encoded. ``mode``: ``em`` (pi_target estimated from those images' own
    softmax outputs, :func:`em_prior`), ``uniform``, or a prior file (:func:`read_prior_file`).
    After the call, :meth:`summary` says which prior was used (and EM's steps)."""

    def __init__(self, mode: str, encoded: np.ndarray, encoded_source: str, classes: Sequence[str],
                 target: Optional[np.ndarray] = None):
        self.mode, self.encoded, self.encoded_source = mode, encoded, encoded_source
        self.classes = [str(c) for c in classes]
        self.target = target
        self.em = None  # EMResult after an EM call

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        if self.mode == "em":
            probs = logits.double().softmax(dim=1).numpy()
            self.em = em_prior(probs, self.encoded)
            self.target = self.em.prior
        return adapt_logits(logits, self.target, self.encoded)

    def summary(self) -> dict:
        result = {"mode": self.mode, "encoded_prior": dict(zip(self.classes, np.asarray(self.encoded).tolist())),
                  "encoded_prior_source": self.encoded_source,
                  "target_prior": None if self.target is None else dict(zip(self.classes, self.target.tolist()))}
        if self.em is not None:
            result["em"] = {"iterations": self.em.iterations, "converged": self.em.converged}
        return result


def prior_adaptation(loaded, mode: str, encoded_override: Optional[str] = None) -> PriorAdaptation:
    """The :class:`PriorAdaptation` of a loaded run (``inference.LoadedRun``), checked before any
    image is read. With ``--posthoc logit_adjust`` (tau) the logits encode pi_encoded * pi_train ** -tau;
    tau_norm and NCM change the classifier and a temperature tempers the likelihoods as well as the
    prior, in ways no prior describes, so they are refused."""
    classes = [str(c) for c in loaded.classes]
    counts = np.asarray(loaded.class_counts, dtype=np.float64)
    posthoc = loaded.posthoc
    if posthoc is not None and posthoc.method != "logit_adjust":
        raise PriorError(f"--adapt-prior cannot be combined with --posthoc {posthoc.method}: its logits encode no "
                         f"known class prior (only logit_adjust, a known shift, combines); use one or the other")
    encoded, source = run_encoded_prior(loaded.config, counts, encoded_override, classes)
    if posthoc is not None:
        encoded = prior_from_counts(encoded * (counts / counts.sum()) ** -posthoc.tau, "encoded prior")
        source += f", then post-hoc logit adjustment tau = {posthoc.tau:g} (x pi_train ** -{posthoc.tau:g})"
    if mode == "em":
        return PriorAdaptation("em", encoded, source, classes)
    if mode == "uniform":
        return PriorAdaptation("uniform", encoded, source, classes, np.full(len(classes), 1.0 / len(classes)))
    target = read_prior_file(mode, classes, len(classes))
    return PriorAdaptation(f"file {mode}", encoded, source, classes, target)
