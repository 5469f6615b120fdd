"""Memory-lean NLG path: task loss, KL and entropy from final hidden states, chunked over positions.

The reference formulas in :mod:`balora.regularizers` take ``(B, T, V)`` logits. For a causal LM whose
output layer is a frozen linear map ``z = W h (+ b)``, this module computes the same quantities from the
hidden states ``H`` of the trained positions without ever holding more than ``chunk x V`` logits:

* one pass per chunk computes the student log-softmax once and derives from it the cross-entropy, the
  entropy and (with the teacher's chunk) the forward KL;
* the gradient with respect to the chunk's logits is known in closed form
  (CE: ``p - onehot``; KL(q || p_T) * T^2: ``T (p_T - q)``; minus entropy: ``p (log p + H)``), so it is
  formed right there and multiplied back through ``W``: the backward pass only scales a stored
  ``M x d`` gradient. No logits are kept for backward, no recomputation (the idea of fused linear
  cross-entropy kernels such as Liger's, written here in plain PyTorch because the regularisers must
  share the log-softmax with the task loss, which those kernels do not offer).

The SVD term uses ``Z = H W^T = (H R^T) Q^T`` with ``W = Q R`` (thin QR of the frozen output layer,
computed once): the singular values of ``Z`` are those of the small ``M x d`` matrix ``H R^T`` and
``||Z||_F = ||H R^T||_F``; a bias is handled by appending it as an extra column (``[H, 1] [W, b]^T``).
A randomised estimate on the small factor has the same distribution as one on ``Z``, because
``Q^T Omega`` is again Gaussian for a Gaussian sketch ``Omega``.

Also here: :func:`svd_term` (the SVD term on that small factor) and the checks that the fused path applies to a
model (:func:`static_head_check` before a forward pass, :func:`measured_head_check` on the first one).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Optional

import torch
import torch.nn.functional as F

from . import regularizers as R
from .peft_compat import tensor_version

if TYPE_CHECKING:
    from .config import BALoRAConfig


@dataclass
class FusedTerms:
    """Values of one fused pass (detached except ``loss``)."""

    loss: torch.Tensor  # differentiable: w_task * CE + l1 * KL * T^2 + l2 * (-entropy)
    task: torch.Tensor
    consistency: torch.Tensor
    diversity: torch.Tensor


def _rowdot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``(a * b).sum(-1)`` for (n, V) matrices as a batched dot product: no (n, V) temporary."""
    return torch.bmm(a.unsqueeze(1), b.unsqueeze(2)).view(-1)


def compute_dtype(hidden: torch.Tensor, weight: torch.Tensor) -> torch.dtype:
    """dtype of the fused path's vocabulary matmuls: the wider of the hidden states' and the output layer's.

    A bf16/fp16 model runs them in its own dtype (tensor cores; on CUDA the products accumulate in fp32),
    an fp32 model in fp32; only when the states are wider than a low-precision output layer is the layer
    cast (a mixed setup; a copy per call, which the usual cases never make).
    """
    return torch.promote_types(hidden.dtype, weight.dtype)


def _autocast_dtype(device_type: str) -> Optional[torch.dtype]:
    """The autocast dtype active for ``device_type`` (mixed-precision training of an fp32 model), else None."""
    try:
        if torch.is_autocast_enabled(device_type):
            return torch.get_autocast_dtype(device_type)
    except (RuntimeError, TypeError, AttributeError, ValueError):  # device types without autocast (meta)
        pass
    return None


def use_fused_nlg(setting: "bool | str", device: "torch.device | str | None" = None) -> bool:
    """Resolve ``BALoRAConfig.fused_nlg`` (``True``/``False``/``"auto"``) for a model on ``device``.

    ``"auto"`` picks the fused path on every device: on CPU it is measured faster and leaner than full
    logits (docs/overhead.md); on CUDA, with its matmuls in the compute dtype and no per-step fp32 copy
    of the output layer, it avoids the unfused path's full-logit memory (measured on a GPU at 1.4x PiSSA's peak)
    at about the cost of the HF full-logits CE. ``scripts/gpu_check.sh`` measures both on a GPU
    (``ba-lora`` vs ``ba-lora-unfused``) so this choice can be revisited per device from numbers.
    """
    if isinstance(setting, bool):
        return setting
    if setting == "auto":
        return True
    raise ValueError(f"fused_nlg must be True, False or 'auto', got {setting!r}")


class _FusedLMLoss(torch.autograd.Function):
    # Speed notes (measured on SmolLM2, 1020 positions x 49k vocabulary; see docs/overhead.md): the
    # student and teacher logits of a chunk come from ONE matmul of the stacked hidden states; the
    # entropy and the KL use batched dot products instead of (n, V) products; the logit gradient
    # p * (1/N + l2/M (log p + H) + l1/M) - l1/M q - onehot/N is assembled in place in the buffer of the
    # fp32 logits (no longer needed), so a chunk makes ~10 passes over (n, V) memory instead of ~25.
    # Precision: the two vocabulary matmuls (logits = H W^T, grad_H = G W) run in the compute
    # dtype (bf16 on a bf16 model: tensor cores, fp32 accumulation on CUDA), everything vocabulary-wise
    # after them (log-softmax, log-sum-exp, KL, entropy, the logit gradient) on the fp32 upcast of the
    # chunk's logits; sums are fp32 device tensors (no host synchronisation: no .item(), no tensor truth
    # tests). The output layer is used as it is: no per-step fp32 copy of a V x d matrix.
    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, ref_hidden, task_norm, l1, l2, temperature, chunk,  # type: ignore[override]
                topk_idx=None, topk_logq=None, topk_log_tail=None):
        m = hidden.shape[0]
        # Under autocast (fp32 weights, bf16/fp16 compute) the matmuls follow autocast's dtype; the layer is
        # cast once per call (as autocast does for the standard lm_head) and autocast is switched off
        # inside, so that every op runs in the dtype chosen here (no per-chunk recasts, fp32 softmax).
        amp = _autocast_dtype(hidden.device.type)
        dtype = amp or compute_dtype(hidden, weight)
        w = weight if weight.dtype == dtype else weight.to(dtype)
        b = None if bias is None else (bias if bias.dtype == dtype else bias.to(dtype))
        wide = dtype == torch.float32  # fp32 model: the logits are already fp32 (no upcast copy)
        grad_h = torch.empty_like(hidden, dtype=dtype) if hidden.requires_grad else None
        sums = hidden.new_zeros(3, dtype=torch.float32)  # CE, KL, entropy (device tensors, fp32)
        a, c1, c2 = 1.0 / task_norm, l1 * temperature / m, l2 / m
        no_amp = torch.autocast(hidden.device.type, enabled=False) if amp else contextlib.nullcontext()
        with torch.no_grad(), no_amp:
            for start in range(0, m, chunk):
                sl = slice(start, min(start + chunk, m))
                n = sl.stop - sl.start
                hs = hidden[sl].to(dtype)
                zq = None
                if ref_hidden is not None:
                    both = F.linear(torch.cat([hs, ref_hidden[sl].to(dtype)]), w, b)
                    both = both if wide else both.float()
                    z, zq = both[:n], both[n:]
                else:
                    z = F.linear(hs, w, b)
                    z = z if wide else z.float()
                logp = torch.log_softmax(z, dim=-1)
                p = logp.exp()
                tgt = targets[sl]
                sums[0] -= logp.gather(1, tgt[:, None]).sum()
                ent = -_rowdot(p, logp)
                sums[2] += ent.sum()
                pt = p
                if zq is not None:
                    logq = torch.log_softmax(zq if temperature == 1.0 else zq / temperature, dim=-1)
                    q = logq.exp()
                    if temperature == 1.0:
                        logq.sub_(logp)
                    else:
                        logpt = torch.log_softmax(z / temperature, dim=-1)
                        logq.sub_(logpt)
                        pt = logpt.exp_()
                    sums[1] += _rowdot(q, logq).sum()  # sum q (log q - log p_T)
                    del logq
                elif topk_idx is not None:
                    # Cached teacher (opt-in, approximate): KL between the (k + 1)-outcome coarsenings (top-k
                    # tokens + the rest) of teacher and student; its logit gradient is p_T - q~ with q~ = the
                    # cached q on the top-k and the teacher's tail mass spread over the rest like p_T.
                    if temperature != 1.0:
                        pt = torch.log_softmax(z / temperature, dim=-1).exp_()
                    idx, lq, q_tail = topk_idx[sl], topk_logq[sl].float(), topk_log_tail[sl].float().exp()
                    qk = lq.exp()
                    tiny = torch.finfo(torch.float32).tiny
                    q = pt.scatter(1, idx, 0.0)  # p_T off the top-k: its tail mass summed without cancellation
                    p_tail = q.sum(1).clamp_min(tiny)
                    sums[1] += (qk * (lq - pt.gather(1, idx).clamp_min(tiny).log())).sum()
                    sums[1] += (torch.xlogy(q_tail, q_tail) - torch.xlogy(q_tail, p_tail)).sum()
                    q.mul_((q_tail / p_tail)[:, None])
                    q.scatter_(1, idx, qk)
                    zq = q  # a teacher is present: the gradient below subtracts q
                if grad_h is not None:
                    same = pt is p and zq is not None and l1
                    if l2:
                        g = torch.add(logp, ent[:, None], out=z)  # z's buffer (fp32) is free now
                        g.mul_(c2).add_(a + (c1 if same else 0.0)).mul_(p)
                    else:
                        g = torch.mul(p, a + (c1 if same else 0.0), out=z)
                    if zq is not None and l1:
                        if not same:
                            g.add_(pt, alpha=c1)
                        g.sub_(q, alpha=c1)
                    g.scatter_add_(1, tgt[:, None], torch.full_like(tgt[:, None], -a, dtype=g.dtype))
                    torch.mm(g if wide else g.to(dtype), w, out=grad_h[sl])
                del z, zq, logp, p, pt
        ctx.save_for_backward(grad_h)
        ctx.hidden_dtype = hidden.dtype
        task = sums[0] / task_norm
        kl = sums[1] / m * temperature**2
        neg_ent = -sums[2] / m
        loss = task + l1 * kl + l2 * neg_ent
        return loss, task, kl, neg_ent

    @staticmethod
    def backward(ctx, grad_loss, *_):  # type: ignore[override]
        (grad_h,) = ctx.saved_tensors
        gh = None if grad_h is None else (grad_h * grad_loss.to(grad_h.dtype)).to(ctx.hidden_dtype)
        return gh, None, None, None, None, None, None, None, None, None, None, None, None


@dataclass
class TeacherTopK:
    """A teacher's distributions kept as their top-k tokens (opt-in teacher reuse).

    ``indices`` (M, k) are token ids, ``logprobs`` (M, k) the teacher's log-probabilities of them at the
    KL temperature (fp32), ``log_tail`` (M,) the log of the mass of every other token (computed from the
    full distribution, not as ``1 - sum``, which cancels). About ``8 k + 4`` bytes per position, so it can
    be stored for a whole training set and reused across epochs instead of running the reference forward
    pass every step.
    """

    indices: torch.Tensor
    logprobs: torch.Tensor
    log_tail: torch.Tensor

    def __getitem__(self, rows: Any) -> "TeacherTopK":
        return TeacherTopK(self.indices[rows], self.logprobs[rows], self.log_tail[rows])

    def to(self, device: Any) -> "TeacherTopK":
        return TeacherTopK(self.indices.to(device), self.logprobs.to(device), self.log_tail.to(device))


@torch.no_grad()
def teacher_topk(ref_hidden: torch.Tensor, weight: torch.Tensor, k: int, bias: Optional[torch.Tensor] = None,
                 temperature: float = 1.0, chunk_size: int = 256) -> TeacherTopK:
    """Top-``k`` teacher log-probabilities (at ``temperature``) from the teacher's final hidden states,
    chunked like the fused terms (no full logits); matmuls in the compute dtype, softmax in fp32."""
    if not 1 <= k <= weight.shape[0]:
        raise ValueError(f"k must be in [1, vocabulary size {weight.shape[0]}], got {k}")
    dtype = compute_dtype(ref_hidden, weight)
    w = weight.detach().to(dtype)
    b = None if bias is None else bias.detach().to(dtype)
    idx, vals, tails = [], [], []
    for start in range(0, ref_hidden.shape[0], chunk_size):
        z = F.linear(ref_hidden[start:start + chunk_size].to(dtype), w, b).float()
        logq = torch.log_softmax(z if temperature == 1.0 else z / temperature, dim=-1)
        top = logq.topk(k, dim=-1)
        idx.append(top.indices.to(torch.int32 if weight.shape[0] < 2**31 else torch.int64))
        vals.append(top.values)
        tails.append(torch.logsumexp(logq.scatter_(1, top.indices, float("-inf")), dim=-1))
    return TeacherTopK(torch.cat(idx), torch.cat(vals), torch.cat(tails))


def topk_kl_reference(student_logits: torch.Tensor, teacher: TeacherTopK, temperature: float = 1.0) -> torch.Tensor:
    """The top-k KL of the fused path written plainly on ``(M, V)`` logits (mean over rows, times T^2):
    ``sum_topk q (log q - log p) + q_tail (log q_tail - log p_tail)``, for tests and error reports."""
    logp = torch.log_softmax(student_logits.float() / temperature, dim=-1)
    idx = teacher.indices.long()
    lq = teacher.logprobs.float()
    q_tail = teacher.log_tail.float().exp()
    lpk = logp.gather(1, idx)
    p_tail = torch.logsumexp(logp.scatter(1, idx, float("-inf")), dim=-1).exp()
    kl = (lq.exp() * (lq - lpk)).sum(1) + torch.xlogy(q_tail, q_tail) - torch.xlogy(q_tail, p_tail)
    return kl.mean() * temperature**2


def fused_lm_terms(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    ref_hidden: Optional[torch.Tensor] = None,
    bias: Optional[torch.Tensor] = None,
    lambda_consistency: float = 0.0,
    lambda_diversity: float = 0.0,
    temperature: float = 1.0,
    task_normalizer: Optional[float] = None,
    chunk_size: int = 256,
    ref_topk: Optional[TeacherTopK] = None,
) -> FusedTerms:
    """Cross-entropy + l1 * KL(P_ref || P) * T^2 + l2 * (-H(P)) on ``(M, d)`` trained-position states.

    ``weight`` (V x d) and ``bias`` are the frozen output layer; no gradient flows into them.
    ``targets`` are the M next tokens. ``task_normalizer`` divides the summed cross-entropy (default M;
    pass Trainer's ``num_items_in_batch`` under gradient accumulation). KL and entropy are means over M.

    ``ref_topk`` (instead of ``ref_hidden``; opt-in, approximate): the teacher as cached top-k
    log-probabilities (:func:`teacher_topk`), so no teacher pass is needed; the consistency term is then
    the KL between the top-k-plus-tail coarsenings of the two distributions (a lower bound of the exact
    KL, equal to it when k = V), see :func:`topk_kl_reference`.
    """
    if hidden.dim() != 2 or hidden.shape[0] == 0:
        raise ValueError(f"hidden must be (M, d) with M >= 1, got {tuple(hidden.shape)}")
    if weight.requires_grad or (bias is not None and bias.requires_grad):
        raise ValueError("the fused path needs a frozen output layer (adapters on lm_head are not supported)")
    if ref_topk is not None and ref_hidden is not None:
        raise ValueError("give the teacher either as ref_hidden or as ref_topk, not both")
    if ref_topk is not None and ref_topk.indices.shape[0] != hidden.shape[0]:
        raise ValueError(f"ref_topk has {ref_topk.indices.shape[0]} rows for {hidden.shape[0]} positions")
    norm = float(task_normalizer) if task_normalizer is not None else float(hidden.shape[0])
    ref = None if ref_hidden is None else ref_hidden.detach()
    loss, task, kl, neg_ent = _FusedLMLoss.apply(
        hidden, weight.detach(), None if bias is None else bias.detach(), targets, ref,
        norm, float(lambda_consistency), float(lambda_diversity), float(temperature), int(chunk_size),
        None if ref_topk is None else ref_topk.indices.long(), None if ref_topk is None else ref_topk.logprobs,
        None if ref_topk is None else ref_topk.log_tail,
    )
    return FusedTerms(loss=loss, task=task.detach(), consistency=kl.detach(), diversity=neg_ent.detach())


class OutputFactor:
    """Thin QR of a frozen output layer, cached: ``Z = [H, 1] [W, b]^T`` -> small factor ``[H, 1] R^T``."""

    def __init__(self) -> None:
        self._key: Optional[tuple] = None
        self._r: Optional[torch.Tensor] = None

    def r_factor(self, weight: torch.Tensor, bias: Optional[torch.Tensor] = None) -> torch.Tensor:
        key = (weight.data_ptr(), tensor_version(weight), tuple(weight.shape),
               None if bias is None else tensor_version(bias))
        if self._key != key or self._r is None:
            w = weight.detach().float()
            if bias is not None:
                w = torch.cat([w, bias.detach().float()[:, None]], dim=1)
            self._r = torch.linalg.qr(w, mode="r").R  # (d[+1]) x (d[+1])
            self._key = key
        return self._r

    def small_logits(self, hidden: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``M x d`` matrix with the same singular values (and Frobenius norm) as the logits ``H W^T + b``."""
        h = hidden.float()
        if bias is not None:
            h = torch.cat([h, h.new_ones(h.shape[0], 1)], dim=1)
        return h @ self.r_factor(weight, bias).T


def svd_term(small: torch.Tensor, cfg: BALoRAConfig) -> torch.Tensor:
    """NLG SVD term on the small factor ``H R^T`` of the logits (same singular values and Frobenius norm)."""
    s = R.singular_values(small, cfg.svd_top_k, cfg.svd_estimator, cfg.svd_oversampling, cfg.svd_niter)
    norm = torch.linalg.matrix_norm(small) if cfg.svd_normalizer == "fro" else None
    # k is clipped against the logit matrix (M x V); V > d here, so min(M, d) bounds the rank.
    return -R.svd_share(s, R.effective_k(cfg.svd_top_k, *small.shape), denominator=norm)


# ------------------------------------------------------------------ is the fused path applicable?
@dataclass
class HeadCheck:
    """Whether the model's logits are ``scale * (W h + b)`` of its last hidden state (decided once per model)."""

    ok: bool
    scale: float = 1.0
    reason: str = ""


def static_head_check(model) -> HeadCheck:
    """What can be decided without a forward pass: a plain frozen linear output layer, no soft-capping."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if type(head) is not torch.nn.Linear:
        return HeadCheck(False, reason=f"the output layer is {type(head).__name__}, not a plain nn.Linear")
    if head.weight.requires_grad or (head.bias is not None and head.bias.requires_grad):
        return HeadCheck(False, reason="the output layer is trained (the fused path needs it frozen)")
    if "adalora" in type(model).__module__:
        return HeadCheck(False, reason="AdaLoRA model")
    softcap = getattr(getattr(model, "config", None), "final_logit_softcapping", None)
    if softcap is not None:
        return HeadCheck(False, reason=f"logit soft-capping (final_logit_softcapping={softcap}) is not linear")
    return HeadCheck(True)


@torch.no_grad()
def measured_head_check(logits_last: torch.Tensor, hidden_last: torch.Tensor, weight: torch.Tensor,
                        bias: Optional[torch.Tensor]) -> HeadCheck:
    """Compare the model's own last-position logits with ``W h + b``: equal, a scalar multiple (Granite's
    ``logits_scaling``, Cohere's ``logit_scale``: applied to ``h`` and ``b``), or anything else (unfusable)."""
    lin = F.linear(hidden_last.float(), weight.float(), None if bias is None else bias.float())
    own = logits_last.float()
    if own.shape != lin.shape:
        return HeadCheck(False, reason=f"the model's logits {tuple(own.shape)} are not the output layer's {tuple(lin.shape)}")
    scale = (own * lin).sum() / (lin * lin).sum().clamp_min(1e-30)
    err = (own - scale * lin).abs().max() / own.abs().max().clamp_min(1e-30)
    scale_f, err_f = float(scale), float(err)  # once per model
    tol = 1e-4 if hidden_last.dtype == torch.float32 and weight.dtype == torch.float32 else 3e-2
    if not err_f <= tol:
        return HeadCheck(False, reason=f"the model's logits are not a linear map of its last hidden state "
                                       f"(relative difference {err_f:.3g} after the best scale {scale_f:.4g})")
    if abs(scale_f - 1.0) <= tol:
        return HeadCheck(True)
    return HeadCheck(True, scale=scale_f, reason=f"logits scaled by {scale_f:.6g} after the output layer")
