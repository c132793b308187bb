"""Post-hoc classifiers on a trained run, no training: tau-normalisation and nearest class mean
(Kang et al. 2020) and post-hoc logit adjustment (Menon et al. 2021), spec section 4; and
temperature scaling (Guo et al. 2017), which changes no prediction, only the probabilities.

The model's features are computed once per split; every candidate classifier is then a cheap
function of them (``model(x) == model.head(model.features(x))`` for every model of this package).
tau is chosen on the validation split, never on test: the first tau with the best value of
``select_on`` wins, then the test split is evaluated once with it. A temperature T (logits / T) is
chosen the same way on the validation negative log-likelihood, the lowest winning: no accuracy can
choose it, since dividing the logits by T > 0 changes no prediction. NCM's logits are cosines in
[-1, 1]: its accuracies are Kang et al.'s, its ECE / NLL (softmax of cosines) mean little.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import torch

from longtail.engine.evaluation.evaluate import load_trained
from longtail.engine.runtime.precision import autocast_context
from longtail.engine.training.scoring import spectral_norm_weighting
from longtail.losses import post_hoc_adjust
from longtail.metrics import LongTailMetrics
from longtail.models.heads import LinearHead, NCMHead, class_mean_features, tau_normalized_head

METHODS = ("tau_norm", "logit_adjust", "ncm", "temperature")
DEFAULT_TAUS = tuple(round(0.1 * i, 1) for i in range(21))  # 0.0, 0.1, ..., 2.0
# 0.25 ... 8 in steps of 2 ** 0.1 (7 %): over- (T > 1) and under-confident (T < 1) models both.
DEFAULT_TEMPERATURES = tuple(round(2 ** (k / 10), 4) for k in range(-20, 31))
CHUNK = 1024  # images per classifier call


@torch.no_grad()
def split_features(model, loader, device: torch.device, precision: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Features (N, D) in float32 and labels (N,) of every image of ``loader``."""
    features, labels = [], []
    for images, targets in loader:
        with autocast_context(device, precision):
            features.append(model.features(images).float())
        labels.append(targets)
    return torch.cat(features), torch.cat(labels)


def _metrics(classifier, features: torch.Tensor, labels: torch.Tensor, class_counts,
             spectral_norm: bool = False, class_weights=None) -> dict:
    metrics = LongTailMetrics(len(class_counts), class_counts, class_weights=class_weights)
    for start in range(0, len(labels), CHUNK):  # bounded memory at K = 8142
        metrics.update(classifier(features[start:start + CHUNK]).float(), labels[start:start + CHUNK])
    return metrics.compute(spectral_norm=spectral_norm)


def _classifier(method: str, model, class_counts, tau: Optional[float], train_features=None):
    """logits = classifier(features) for one candidate."""
    if method == "logit_adjust":
        return lambda features: post_hoc_adjust(model.head(features), class_counts, tau)
    if method == "temperature":
        return lambda features: model.head(features) / tau
    if method == "tau_norm":
        return tau_normalized_head(model.head, tau)
    means = class_mean_features(*train_features, len(class_counts))
    return NCMHead(means.to(train_features[0].device), metric="cosine")


@torch.no_grad()
def run_posthoc(target: Path, method: str, taus: Optional[Sequence[float]] = None,
                select_on: Optional[str] = None, device: str = "auto") -> dict:
    """Sweep ``taus`` on the validation split (one tau: apply it, no sweep) and evaluate the test
    split with the chosen one. ``ncm`` has no tau: class means of the training set (eval transforms),
    returned as the tensor ``result["class_means"]`` (K, D). ``temperature``: the taus are
    temperatures (default :data:`DEFAULT_TEMPERATURES`), chosen on the validation NLL (lowest)."""
    if method not in METHODS:
        raise ValueError(f"unknown post-hoc method {method!r}; valid: {', '.join(METHODS)}")
    lowest_wins = method == "temperature"
    if lowest_wins:
        if select_on not in (None, "nll"):
            raise ValueError(f"a temperature changes no prediction, so {select_on} cannot choose it: it is chosen on "
                             f"the validation negative log-likelihood (leave --select-on out)")
        select_on = "nll"
        taus = DEFAULT_TEMPERATURES if taus is None else taus
        bad = [t for t in taus if not float(t) > 0]
        if bad:
            raise ValueError(f"a temperature divides the logits and must be positive, got {', '.join(map(str, bad))}")
    select_on = select_on or "balanced_accuracy"
    taus = [float(t) for t in (DEFAULT_TAUS if taus is None else taus)]
    model, data, config, torch_device = load_trained(target, device, with_train_split=method == "ncm")
    precision = config.train.precision
    if method == "tau_norm" and not isinstance(model.head, LinearHead):
        raise ValueError(f"tau_norm rescales the rows of a linear classifier; this run's head is "
                         f"{type(model.head).__name__} (model.head={config.model.head})")
    counts = data.class_counts
    result = {"method": method, "select_on": f"val/{select_on}", "sweep": [], "tau": None}
    train_features = None
    if method == "ncm":
        train_features = split_features(model, data.eval_loaders["train"], torch_device, precision)
    elif len(taus) > 1:
        if "val" not in data.eval_loaders:
            from longtail.data import dataset_test_splits

            test_note = (f" ('{config.data.name}' has a 'val' split, but it is its test split: a tau chosen on it "
                         f"would be tuned on the test set)" if "val" in dataset_test_splits(config.data.name) else "")
            name = "a temperature" if lowest_wins else "tau"
            raise ValueError(f"choosing {name} needs a validation split and this run has none{test_note}: train with "
                             "data.validation_per_class=N, or give one value (--taus 1.0) to apply without choosing")
        features, labels = split_features(model, data.eval_loaders["val"], torch_device, precision)
        for tau in taus:
            metrics = _metrics(_classifier(method, model, counts, tau), features, labels, counts)
            summary = {k: v for k, v in metrics.items() if not isinstance(v, (list, dict))}
            result["sweep"].append({"tau": tau, "val": summary})
        values = [entry["val"][select_on] for entry in result["sweep"]]
        result["tau"] = taus[values.index(min(values) if lowest_wins else max(values))]
    else:
        result["tau"] = taus[0]
    classifier = _classifier(method, model, counts, result["tau"], train_features)
    features, labels = split_features(model, data.eval_loaders["test"], torch_device, precision)
    weights, described = spectral_norm_weighting(config, counts)
    result["test"] = _metrics(classifier, features, labels, counts, spectral_norm=True, class_weights=weights)
    result["test"]["confusion_spectral_norm_weighting"] = described
    from longtail.engine.rundir.checkpoint import class_counts_hash

    result["class_counts_hash"] = class_counts_hash(counts)  # `longtail predict --posthoc` checks it
    if method == "ncm":
        # Not JSON: the caller stores the (K, D) means beside the result, for `longtail predict`.
        result["class_means"] = classifier.class_means.detach().cpu()
    return result
