"""Opt-in teacher reuse for NLG: error of the top-k cached teacher against the exact KL term.

The exact consistency term needs the teacher's full distribution at every trained position, i.e. a
reference forward pass per step. Cached top-k teacher log-probabilities (+ the tail mass,
:func:`balora.fused.teacher_topk`) can be computed once and reused across epochs; the KL is then taken
between the top-k-plus-tail coarsenings (:func:`balora.fused.topk_kl_reference`). This script measures
what that costs in accuracy on real text and a real model (the packaged SmolLM2-135M; text: this
repository's docs), for students at several distances from the teacher (the teacher's final hidden
states plus Gaussian noise of relative size ``--noise``; step 0 of fine-tuning is noise 0, where both
terms are 0), and what the term costs with and without the teacher pass.

    python benchmarks/topk_teacher.py --ks 8 32 128 512 --noise 0.05 0.1 0.2 --out benchmarks/results/topk_teacher.json
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Optional

import torch

from balora import regularizers as R
from balora.atomic import write_json_atomic
from balora.fused import fused_lm_terms, teacher_topk

REPO = Path(__file__).resolve().parents[1]


def text_batch(tokenizer: Any, rows: int, seq_len: int) -> torch.Tensor:
    text = "\n\n".join(p.read_text(encoding="utf-8") for p in sorted((REPO / "docs").glob("*.md")))
    ids = tokenizer(text, return_tensors="pt").input_ids[0]
    need = rows * seq_len
    if ids.numel() < need:
        raise SystemExit(f"only {ids.numel()} tokens of text for {rows} x {seq_len}")
    return ids[:need].view(rows, seq_len)


def cpu_seconds(fn: Any, repeats: int = 2) -> float:
    fn()
    out = []
    for _ in range(repeats):
        t = time.process_time()
        fn()
        out.append(time.process_time() - t)
    return statistics.median(out)


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=None, help="causal LM folder (default: the packaged SmolLM2-135M)")
    p.add_argument("--rows", type=int, default=4)
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--ks", type=int, nargs="+", default=[8, 32, 128, 512])
    p.add_argument("--noise", type=float, nargs="+", default=[0.05, 0.1, 0.2])
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default="topk_teacher.json")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from balora.data.assets import smollm2_path

    path = args.model or str(smollm2_path())
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    ids = text_batch(tok, args.rows, args.seq_len)
    with torch.no_grad():
        teacher_h = model(input_ids=ids, output_hidden_states=True, logits_to_keep=1).hidden_states[-1][:, :-1]
    teacher_h = teacher_h.reshape(-1, teacher_h.shape[-1])
    targets = ids[:, 1:].reshape(-1)
    head = model.get_output_embeddings()
    w, b = head.weight.detach(), None if head.bias is None else head.bias.detach()
    m = teacher_h.shape[0]
    mask = torch.ones(1, m, dtype=torch.bool)
    T = args.temperature
    g = torch.Generator().manual_seed(0)
    scale = teacher_h.norm(dim=-1, keepdim=True) / teacher_h.shape[-1] ** 0.5
    noise = torch.randn(teacher_h.shape, generator=g) * scale
    tops = {k: teacher_topk(teacher_h, w, k, b, T) for k in args.ks}
    rows = []
    for s in args.noise:
        h = (teacher_h + s * noise).requires_grad_(True)
        exact = fused_lm_terms(h, w, targets, teacher_h, b, lambda_consistency=1.0, temperature=T)
        exact.loss.backward()
        g_exact = h.grad.clone()
        h.grad = None
        with torch.no_grad():  # the reference formula on full logits as a check of the fused exact value
            ref_kl = R.nlg_consistency((h @ w.T)[None], (teacher_h @ w.T)[None], mask, T).item()
        base = fused_lm_terms(h, w, targets, temperature=T)  # CE alone: its gradient is subtracted below
        base.loss.backward()
        g_ce = h.grad.clone()
        h.grad = None
        g_kl_exact = g_exact - g_ce
        for k, top in tops.items():
            approx = fused_lm_terms(h, w, targets, None, b, 1.0, 0.0, T, ref_topk=top)
            approx.loss.backward()
            g_kl = h.grad - g_ce
            h.grad = None
            row = {"noise": s, "k": k, "kl_exact": exact.consistency.item(), "kl_exact_reference_formula": ref_kl,
                   "kl_topk": approx.consistency.item(),
                   "kl_rel_error": (approx.consistency.item() - exact.consistency.item()) / exact.consistency.item(),
                   "grad_rel_error": float((g_kl - g_kl_exact).norm() / g_kl_exact.norm()),
                   "grad_cosine": float(torch.nn.functional.cosine_similarity(g_kl.flatten(), g_kl_exact.flatten(), 0)),
                   "teacher_tail_mass_mean": float(top.log_tail.exp().mean()),
                   "cache_bytes_per_position": 8 * k + 4}
            rows.append(row)
            print(f"noise {s:4.2f} k {k:4d}: KL exact {row['kl_exact']:.4f} top-k {row['kl_topk']:.4f} "
                  f"({100 * row['kl_rel_error']:+.2f} %), KL gradient rel. error {row['grad_rel_error']:.4f} "
                  f"(cosine {row['grad_cosine']:.4f}), teacher tail mass {row['teacher_tail_mass_mean']:.4f}", flush=True)
    # cost of the consistency term's work per step: exact (needs the teacher pass) vs cached top-k
    h = (teacher_h + 0.1 * noise).requires_grad_(True)
    fwd = {"input_ids": ids}

    def teacher_pass() -> None:
        with torch.no_grad():
            model(**fwd, output_hidden_states=True, logits_to_keep=1)
    costs = {"teacher_pass_cpu_s": cpu_seconds(teacher_pass),
             "fused_ce_kl_exact_cpu_s": cpu_seconds(lambda: fused_lm_terms(h, w, targets, teacher_h, b, 1.0).loss.backward())}
    for k in args.ks:
        costs[f"fused_ce_kl_top{k}_cpu_s"] = cpu_seconds(
            lambda: fused_lm_terms(h, w, targets, None, b, 1.0, ref_topk=tops[k]).loss.backward())
    costs["fused_ce_only_cpu_s"] = cpu_seconds(lambda: fused_lm_terms(h, w, targets).loss.backward())
    for key, val in costs.items():
        print(f"  {key:<28} {val:7.3f}")
    write_json_atomic(args.out, {"model": path, "positions": m, "temperature": T, "rows": rows, "costs": costs,
                                 "threads": args.threads, "torch": torch.__version__})
    print(f"results: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
