"""Each regulariser against a value computed by hand (plain arithmetic, no torch helper of the same kind)."""

from __future__ import annotations

import math

import pytest
import torch

from balora import regularizers as R


def _norm(row):
    n = math.sqrt(sum(v * v for v in row))
    return [v / n for v in row]


def test_nlu_consistency_hand_value():
    zf = [[1.0, 2.0, 2.0], [0.0, 3.0, 4.0]]
    zp = [[2.0, 0.0, 0.0], [0.0, 4.0, 3.0]]
    expected = sum((a - b) ** 2 for rf, rp in zip(zf, zp) for a, b in zip(_norm(rf), _norm(rp))) / 6
    got = R.nlu_consistency(torch.tensor(zf), torch.tensor(zp))
    assert got.item() == pytest.approx(expected, rel=1e-6)
    assert R.nlu_consistency(torch.tensor(zp), torch.tensor(zp)).item() == pytest.approx(0.0, abs=1e-12)


def test_nlu_diversity_hand_value():
    z = [[1.0, 2.0], [3.0, 0.0], [2.0, 4.0]]  # N = 3, C = 2
    mean = [sum(r[j] for r in z) / 3 for j in range(2)]
    cov01 = sum((r[0] - mean[0]) * (r[1] - mean[1]) for r in z) / 2
    expected = (2 * cov01**2) / 2  # sum over i != j (two entries), divided by C
    assert R.nlu_diversity(torch.tensor(z)).item() == pytest.approx(expected, rel=1e-6)


def test_nlu_svd_hand_value():
    # Orthogonal rows: singular values are the row norms 5 and 2 (and 0 for the third row of zeros).
    z = torch.tensor([[3.0, 4.0, 0.0], [0.0, 0.0, 2.0], [0.0, 0.0, 0.0]])
    assert R.nlu_svd(z, k=1).item() == pytest.approx(-5.0 / 7.0, rel=1e-6)
    # k is clipped to min(N, C) - 1 = 2: the share would otherwise be constantly 1.
    assert R.nlu_svd(z, k=5).item() == pytest.approx(-1.0, rel=1e-6)
    assert R.effective_k(5, 32, 3) == 2 and R.effective_k(5, 32, 2) == 1 and R.effective_k(5, 32, 10) == 5


def test_shifted_label_mask_aligns_with_causal_loss():
    labels = torch.tensor([[-100, -100, 7, 8, -100], [-100, 5, 6, 7, 8]])
    mask = R.shifted_label_mask(labels)
    assert mask.tolist() == [[False, True, True, False, False], [True, True, True, True, False]]
    # The masked logits are exactly those the shifted cross-entropy uses.
    logits = torch.randn(2, 5, 11)
    ce_ref = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, 11), labels[:, 1:].reshape(-1), ignore_index=-100)
    ce_mask = torch.nn.functional.cross_entropy(logits[mask], labels[:, 1:][mask[:, :-1]])
    assert ce_mask.item() == pytest.approx(ce_ref.item(), rel=1e-6)


def test_nlg_consistency_hand_value():
    fine = torch.tensor([[[math.log(0.5), math.log(0.5)], [0.0, 0.0]]])
    ref = torch.tensor([[[math.log(0.9), math.log(0.1)], [5.0, 5.0]]])
    mask = torch.tensor([[True, False]])
    expected = 0.9 * math.log(0.9 / 0.5) + 0.1 * math.log(0.1 / 0.5)
    assert R.nlg_consistency(fine, ref, mask).item() == pytest.approx(expected, rel=1e-5)
    # Temperature 2: softened distributions, KL scaled by T^2 = 4.
    p = [0.9**0.5, 0.1**0.5]
    p = [v / sum(p) for v in p]
    expected_t = 4 * sum(pi * math.log(pi / 0.5) for pi in p)
    assert R.nlg_consistency(fine, ref, mask, temperature=2.0).item() == pytest.approx(expected_t, rel=1e-5)


def test_nlg_diversity_hand_value_and_topk():
    probs = [0.5, 0.25, 0.125, 0.125]
    logits = torch.tensor([[[math.log(p) for p in probs]]])
    mask = torch.ones(1, 1, dtype=torch.bool)
    entropy = -sum(p * math.log(p) for p in probs)
    assert R.nlg_diversity(logits, mask).item() == pytest.approx(-entropy, rel=1e-6)
    top2 = [0.5 / 0.75, 0.25 / 0.75]
    assert R.nlg_diversity(logits, mask, top_k=2).item() == pytest.approx(sum(p * math.log(p) for p in top2), rel=1e-6)


def test_nlg_svd_exact_and_normalisers():
    z = torch.tensor([[3.0, 4.0, 0.0], [0.0, 0.0, 2.0], [0.0, 0.0, 1.0]])  # singular values 5, sqrt(5), 0
    logits = z[None]
    mask = torch.ones(1, 3, dtype=torch.bool)
    s = [5.0, math.sqrt(5.0), 0.0]
    assert R.nlg_svd(logits, mask, k=1, estimator="exact").item() == pytest.approx(-5.0 / sum(s), rel=1e-5)
    fro = math.sqrt(9 + 16 + 4 + 1)
    assert R.nlg_svd(logits, mask, k=1, estimator="exact", normalizer="fro").item() == pytest.approx(-5.0 / fro, rel=1e-5)


@pytest.mark.parametrize("shape", [(40, 30), (64, 200)])
def test_svd_estimators_agree_with_svdvals(shape):
    torch.manual_seed(0)
    # A matrix with a decaying spectrum, as logits have.
    u, _ = torch.linalg.qr(torch.randn(shape[0], shape[0]))
    v, _ = torch.linalg.qr(torch.randn(shape[1], shape[1]))
    r = min(shape)
    s = torch.tensor([2.0 ** (-i / 2) for i in range(r)])
    z = u[:, :r] @ torch.diag(s) @ v[:, :r].T
    exact = torch.linalg.svdvals(z)
    est = R.singular_values(z, k=5, estimator="randomized", oversampling=10, niter=4)
    assert torch.allclose(est[:5], exact[:5], rtol=1e-3)
    assert torch.allclose(R.singular_values(z, k=5, estimator="exact"), exact)


def test_degenerate_batches_raise_clear_errors():
    with pytest.raises(R.DegenerateBatchError, match="at least 2 rows"):
        R.nlu_diversity(torch.randn(1, 3))
    with pytest.raises(R.DegenerateBatchError, match="at least 2 rows"):
        R.nlu_svd(torch.randn(1, 3), k=2)
    with pytest.raises(R.DegenerateBatchError, match="no trained positions"):
        R.nlg_diversity(torch.randn(2, 4, 5), torch.zeros(2, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="mask shape"):
        R.nlg_diversity(torch.randn(2, 4, 5), torch.ones(2, 3, dtype=torch.bool))


def test_gradients_finite_for_degenerate_values():
    # All-equal rows (zero covariance, rank 1), all-zero logits (zero singular values), one-hot peaks.
    for z in (torch.ones(4, 3), torch.zeros(4, 3), torch.tensor([[50.0, 0, 0], [50.0, 0, 0]])):
        z = z.clone().requires_grad_(True)
        total = R.nlu_diversity(z) + R.nlu_svd(z, 5) + R.nlu_consistency(z, torch.randn_like(z))
        total.backward()
        assert torch.isfinite(z.grad).all(), z
    logits = torch.zeros(2, 4, 6, requires_grad=True)
    mask = torch.ones(2, 4, dtype=torch.bool)
    total = (R.nlg_consistency(logits, torch.randn(2, 4, 6), mask) + R.nlg_diversity(logits, mask)
             + R.nlg_svd(logits, mask, 2, estimator="exact") + R.nlg_svd(logits, mask, 2))
    total.backward()
    assert torch.isfinite(logits.grad).all()
