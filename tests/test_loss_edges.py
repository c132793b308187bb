"""Loss behaviour that mutmut found unobserved (docs/mutation.md, section 2, losses), each pinned
against an independent float64 computation (numpy, torch.nn.functional) or the documented warning."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from longtail import losses as L

COUNTS = [500, 120, 40, 9, 2]
K = len(COUNTS)
FREQ = np.asarray(COUNTS, dtype=np.float64) / sum(COUNTS)


def _log_softmax(z):
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def test_ccar_raw_confidence_with_soft_targets():
    """CCAR(confidence_from="raw") on mixed (soft) targets q: p_t = sum_c q_c softmax(z)_c, the class
    frequency q @ f, Omega(p_t, f) = (e - f')^(omega - p_t), times the soft Balanced Softmax
    -sum_c q_c log softmax(z + log prior)_c (numpy, float64)."""
    generator = torch.Generator().manual_seed(2)
    z = torch.randn(16, K, generator=generator, dtype=torch.float64) * 2
    a, b = torch.randint(0, K, (16,), generator=generator), torch.randint(0, K, (16,), generator=generator)
    lam = torch.rand(16, 1, generator=generator, dtype=torch.float64)
    q = lam * F.one_hot(a, K).double() + (1 - lam) * F.one_hot(b, K).double()
    got = L.CCAR(COUNTS, base="balanced_softmax", confidence_from="raw", reduction="none")(z, q).numpy()
    zn, qn = z.numpy(), q.numpy()
    p_raw = (qn * np.exp(_log_softmax(zn))).sum(1)
    f = qn @ FREQ
    gamma = np.where(p_raw < 0.75, np.e - f, np.e - 1 + f)
    base = -(qn * _log_softmax(zn + np.log(FREQ))).sum(1)
    np.testing.assert_allclose(got, gamma ** (0.75 - p_raw) * base, rtol=1e-10)


def test_label_smoothing_when_the_batch_lacks_the_last_class():
    """Smoothed CE over all K classes even when the batch holds no sample of class K - 1, against
    torch's own label_smoothing in float64."""
    generator = torch.Generator().manual_seed(0)
    z = torch.randn(12, K, generator=generator, dtype=torch.float64)
    targets = torch.randint(0, K - 1, (12,), generator=generator)
    got = L.build_loss("label_smoothing", COUNTS, label_smoothing=0.2)(z, targets)
    assert float(got) == pytest.approx(float(F.cross_entropy(z, targets, label_smoothing=0.2)), rel=1e-12)


@pytest.mark.parametrize("name", ["label_smoothing", "logit_adjusted"])
def test_logits_and_labels_beyond_the_class_counts_are_refused(name):
    """The class counts fix K: a label >= K, or logits with another number of classes (one class
    more, e.g. a head built for another data set), is refused before any loss is computed."""
    loss = L.build_loss(name, COUNTS)
    with pytest.raises(ValueError, match=rf"^target {K} at position 2 is out of range for {K} classes \(valid labels are 0..{K - 1}\)$"):
        loss(torch.zeros(3, K, dtype=torch.float64), torch.tensor([0, 1, K]))
    with pytest.raises(ValueError, match=rf"^logits have {K + 1} classes but class_counts has {K} entries; they must "
                                         rf"describe the same label space$"):
        loss(torch.zeros(3, K + 1, dtype=torch.float64), torch.tensor([0, 1, K]))


def test_ldam_without_its_head_warns_once_what_it_assumes():
    """Built without head=, LDAM cannot check the logits' scale: it says once what it assumes (s * cos
    from a CosineHead of its scale, or raw cosines when logits_prescaled=False)."""
    z, targets = torch.zeros(4, K), torch.tensor([0, 1, 2, 3])
    for prescaled, expected in ((True, "s * cos from CosineHead(scale=30)"),
                                (False, "raw cosines (s applied by the loss)")):
        loss = L.LDAMLoss(COUNTS, logits_prescaled=prescaled)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            loss(z, targets)
            loss(z, targets)
        messages = [str(w.message) for w in caught if "LDAM assumes" in str(w.message)]
        assert messages == [f"LDAM assumes its logits are {expected}, with s = 30, and cannot check a linear head "
                            f"with small logits or a cosine head of another scale: build it with head=model.head "
                            f"(e.g. build_loss('ldam_drw', counts, head=model.head)) to check the head and take its scale"]
