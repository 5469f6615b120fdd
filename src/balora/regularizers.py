"""The BA-LoRA regularisers as pure tensor functions (docs/method.md sections 2 and 3).

Every function returns the scalar that is ADDED to the loss, already signed: the NLG diversity term
(minus the entropy) and both SVD terms (minus the top-k share) are negative quantities; the NLU
consistency and diversity terms are non-negative penalties. Weights (lambdas) are applied by the caller.

Shapes and conventions
----------------------
* NLU: ``logits`` is ``(N, C)``, one row per example.
* NLG: ``logits`` is ``(B, T, V)`` and ``mask`` is ``(B, T)`` bool, **already aligned to the positions whose
  logits predict a trained token**: logit ``t`` predicts token ``t + 1``, so the mask is
  ``labels[:, 1:] != -100`` shifted left by one (see :func:`shifted_label_mask`). These are exactly the
  positions of the causal-LM loss.

Degenerate inputs (fewer than two rows for a batch statistic, no trained position) raise
:class:`DegenerateBatchError`, a ``ValueError``; the trainer turns that into a documented, logged
fallback (the term is 0 for that step). Nothing here divides by zero silently.
"""

from __future__ import annotations

from typing import Literal, Optional

import torch
import torch.nn.functional as F

__all__ = [
    "DegenerateBatchError",
    "shifted_label_mask",
    "select_positions",
    "nlu_consistency",
    "nlu_consistency_kl",
    "nlu_diversity",
    "nlu_svd",
    "nlg_consistency",
    "nlg_diversity",
    "nlg_svd",
    "svd_share",
    "svd_term_is_constant",
    "singular_values",
    "effective_k",
]

_EPS = 1e-12


class DegenerateBatchError(ValueError):
    """The batch cannot define this term (e.g. one example for a covariance)."""


def shifted_label_mask(labels: torch.Tensor, ignore_index: int = -100) -> torch.Tensor:
    """``(B, T)`` bool mask of the logit positions that predict a trained token.

    ``mask[b, t]`` is True when ``labels[b, t + 1] != ignore_index``; the last position never predicts
    anything. This is the same alignment as the shifted causal-LM cross-entropy.
    """
    if labels.dim() != 2:
        raise ValueError(f"labels must be (batch, seq_len), got shape {tuple(labels.shape)}")
    mask = torch.zeros_like(labels, dtype=torch.bool)
    mask[:, :-1] = labels[:, 1:] != ignore_index
    return mask


def select_positions(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Rows of ``(B, T, V)`` logits at the True positions of ``mask``: an ``(M, V)`` matrix."""
    if logits.dim() != 3:
        raise ValueError(f"NLG logits must be (batch, seq_len, vocab), got shape {tuple(logits.shape)}")
    if mask.shape != logits.shape[:2]:
        raise ValueError(
            f"mask shape {tuple(mask.shape)} does not match logits' (batch, seq_len) {tuple(logits.shape[:2])}"
        )
    rows = logits[mask.bool()]
    if rows.shape[0] == 0:
        raise DegenerateBatchError("no trained positions in the batch (the mask is all False)")
    return rows


# --------------------------------------------------------------------------------------------- NLU
def nlu_consistency(fine_logits: torch.Tensor, ref_logits: torch.Tensor) -> torch.Tensor:
    """``MSE(normalize(Z_F), normalize(Z_P))``, rows L2-normalised over the class dimension.

    The MSE averages over all N x C entries. ``ref_logits`` are the pretrained model's (no gradient).
    """
    _check_2d(fine_logits, "fine_logits")
    if ref_logits.shape != fine_logits.shape:
        raise ValueError(f"ref_logits shape {tuple(ref_logits.shape)} != fine_logits {tuple(fine_logits.shape)}")
    zf = F.normalize(fine_logits.float(), dim=-1)
    zp = F.normalize(ref_logits.detach().float(), dim=-1)
    return F.mse_loss(zf, zp)


def nlu_consistency_kl(fine_logits: torch.Tensor, ref_logits: torch.Tensor, temperature: float = 2.0) -> torch.Tensor:
    """``T^2 * KL(softmax(Z_P / T) || softmax(Z_F / T))``, averaged over the N rows (the published ICLR 2026 form).

    Forward KL with the pretrained model as the teacher, on temperature-softened class distributions; the
    ``T^2`` factor keeps the gradient's size independent of ``T`` (Hinton et al.'s distillation scaling).
    """
    _check_2d(fine_logits, "fine_logits")
    if ref_logits.shape != fine_logits.shape:
        raise ValueError(f"ref_logits shape {tuple(ref_logits.shape)} != fine_logits {tuple(fine_logits.shape)}")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature!r}")
    logq = F.log_softmax(fine_logits.float() / temperature, dim=-1)
    logp = F.log_softmax(ref_logits.detach().float() / temperature, dim=-1)
    kl = F.kl_div(logq, logp, log_target=True, reduction="none").sum(-1)
    return kl.mean() * temperature**2


def nlu_diversity(fine_logits: torch.Tensor) -> torch.Tensor:
    """VICReg covariance penalty ``(1/C) * sum_{i != j} Cov_ij^2`` over the batch (N >= 2)."""
    _check_2d(fine_logits, "fine_logits")
    n, c = fine_logits.shape
    if n < 2:
        raise DegenerateBatchError(f"the covariance term needs at least 2 rows, got {n}")
    z = fine_logits.float()
    zc = z - z.mean(dim=0, keepdim=True)
    cov = zc.T @ zc / (n - 1)
    off_diag = cov.pow(2).sum() - torch.diagonal(cov).pow(2).sum()
    return off_diag / c


def nlu_svd(fine_logits: torch.Tensor, k: int, clip_k: bool = True) -> torch.Tensor:
    """``-(sum_{i<=k} s_i) / (sum_j s_j)`` with the exact singular values of the ``(N, C)`` logits.

    ``clip_k`` (default): ``k`` is clipped to ``min(N, C) - 1`` (at least 1), since with k >= rank the share
    is constantly 1. ``clip_k=False`` is the published code's literal form: ``k`` as given, so with
    ``k >= min(N, C)`` the value is the constant -1 and the term has no gradient (:func:`svd_term_is_constant`).
    """
    _check_2d(fine_logits, "fine_logits")
    if fine_logits.shape[0] < 2:
        raise DegenerateBatchError(f"the SVD term needs at least 2 rows, got {fine_logits.shape[0]}")
    s = torch.linalg.svdvals(fine_logits.float())
    return -svd_share(s, effective_k(k, *fine_logits.shape) if clip_k else int(k))


def svd_term_is_constant(k: int, num_outputs: int, clip_k: bool = True) -> bool:
    """Whether the NLU SVD term is the constant -1 for every batch: ``k`` covers all ``num_outputs`` singular
    values (without clipping, ``k >= C``; with clipping only when ``C = 1``, where one singular value is all)."""
    return num_outputs <= 1 or (not clip_k and int(k) >= num_outputs)


# --------------------------------------------------------------------------------------------- NLG
def nlg_consistency(
    fine_logits: torch.Tensor, ref_logits: torch.Tensor, mask: torch.Tensor, temperature: float = 1.0
) -> torch.Tensor:
    """Mean over trained positions of ``KL(P_ref || P_fine)`` (forward KL, teacher = pretrained).

    With temperature ``T`` both distributions are softened by ``T`` and the KL is scaled by ``T^2``.
    """
    zf = select_positions(fine_logits, mask).float() / temperature
    zp = select_positions(ref_logits.detach(), mask).float() / temperature
    kl = F.kl_div(F.log_softmax(zf, -1), F.log_softmax(zp, -1), log_target=True, reduction="none").sum(-1)
    return kl.mean() * temperature**2


def nlg_diversity(fine_logits: torch.Tensor, mask: torch.Tensor, top_k: Optional[int] = None) -> torch.Tensor:
    """Minus the mean entropy of ``P_fine`` over trained positions (maximising entropy lowers the loss).

    With ``top_k`` the entropy is that of the softmax renormalised over each position's top-K logits;
    ``None`` or ``0``: the whole vocabulary.
    """
    z = select_positions(fine_logits, mask).float()
    if top_k and top_k < z.shape[-1]:
        z = z.topk(top_k, dim=-1).values
    logp = F.log_softmax(z, -1)
    entropy = -(logp.exp() * logp).sum(-1)
    return -entropy.mean()


def nlg_svd(
    fine_logits: torch.Tensor,
    mask: torch.Tensor,
    k: int,
    estimator: Literal["randomized", "exact"] = "randomized",
    oversampling: int = 5,
    niter: int = 2,
    normalizer: Literal["sum", "fro"] = "sum",
) -> torch.Tensor:
    """``-(sum_{i<=k} s_i) / norm`` on the ``(M, V)`` matrix of trained-position logits.

    ``estimator="randomized"`` is torch.svd_lowrank's estimate with ``q = k + oversampling`` (the paper),
    ``"exact"`` all singular values. ``normalizer="sum"`` divides by the sum of the singular values that
    were computed, ``"fro"`` by the Frobenius norm of the matrix (the authors' later code).
    """
    z = select_positions(fine_logits, mask).float()
    s = singular_values(z, k, estimator=estimator, oversampling=oversampling, niter=niter)
    norm = torch.linalg.matrix_norm(z) if normalizer == "fro" else None
    return -svd_share(s, effective_k(k, *z.shape), denominator=norm)


# ----------------------------------------------------------------------------------------- helpers
def singular_values(
    z: torch.Tensor,
    k: int,
    estimator: Literal["randomized", "exact"] = "randomized",
    oversampling: int = 5,
    niter: int = 2,
) -> torch.Tensor:
    """Singular values of ``z`` (descending): all of them, or the ``k + oversampling`` of a sketch."""
    if z.shape[0] < 2:
        raise DegenerateBatchError(f"the SVD term needs at least 2 rows, got {z.shape[0]}")
    if estimator == "exact":
        return torch.linalg.svdvals(z)
    if estimator != "randomized":
        raise ValueError(f"estimator must be 'randomized' or 'exact', got {estimator!r}")
    q = min(k + oversampling, *z.shape)
    # Randomised range finder (Halko et al., the algorithm of torch.svd_lowrank) with the basis Q taken
    # as a constant: s = svdvals(Q^T Z) is the same estimator as torch.svd_lowrank (up to the random
    # draw; it sketches Z^T when M < V), but the gradient
    # flows only through svdvals, which is stable. Differentiating through svd_lowrank's QR gives NaN
    # gradients whenever Z has rank < q (all-zero or rank-one logits), seen with torch 2.13.
    with torch.no_grad():
        zd = z.detach()
        omega = torch.randn(zd.shape[1], q, dtype=zd.dtype, device=zd.device)
        basis = torch.linalg.qr(zd @ omega).Q
        for _ in range(niter):
            basis = torch.linalg.qr(zd.T @ basis).Q
            basis = torch.linalg.qr(zd @ basis).Q
    return torch.linalg.svdvals(basis.T @ z)


def effective_k(k: int, rows: int, cols: int) -> int:
    """``k`` clipped to ``min(rows, cols) - 1`` (at least 1), so the top-k share is not constantly 1."""
    return max(1, min(int(k), min(rows, cols) - 1))


def svd_share(s: torch.Tensor, k: int, denominator: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``sum(s[:k]) / (sum(s) or denominator)``, with the denominator clamped away from zero."""
    den = s.sum() if denominator is None else denominator
    return s[:k].sum() / den.clamp_min(_EPS)


def _check_2d(t: torch.Tensor, name: str) -> None:
    if t.dim() != 2:
        raise ValueError(f"NLU {name} must be (N, C), got shape {tuple(t.shape)}")
