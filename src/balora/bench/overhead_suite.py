"""The one-command GPU check of issue 15 (``balora bench overhead --device cuda --suite``, which is what
``scripts/gpu_check.sh`` runs): the overhead table at the shapes users train plus CUDA correctness checks,
targets marked met or missed, everything in one JSON.

Settings (each a separate interleaved run, the models built from configs with random weights directly on
the device; step cost does not depend on the weights' values):

* NLG, Llama-3.2-1B and Llama-3.1-8B shapes, bf16, 4 x 512 tokens, r = 16 on all linear layers, PiSSA
  initialised with ``pissa_niter=4``: lora / pissa / pissa-fused-ce / ba-lora / ba-lora-unfused (1B) and
  pissa / ba-lora / ba-lora-unfused (8B); targets BA-LoRA <= 1.50x (1B) and <= 1.56x (8B) PiSSA's time,
  <= 1.02x its peak memory;
* NLU, DeBERTa-v3-base and BERT-base shapes, fp32, 32 x 128, r = 16: pissa / ba-lora (live reference) /
  ba-lora-cached; target cached <= 1.05x PiSSA's time.

Checks (pass/fail, on a 2-layer model of the first NLG shape): the reference pass reproduces the original
model's logits (fp32 and bf16), the fused terms match the reference formulas (fp32 and bf16), a BA-LoRA
training step gives finite gradients, creates no tensor on another device and no fp32 copy of the output
layer; the number of host synchronisations of a step is reported (CUDA's sync debug mode), not judged.

``--model-config tiny`` swaps every model for a tiny one (and small batches): a smoke run on CPU that the
tests use; its numbers mean nothing.
"""

from __future__ import annotations

import argparse
import gc
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import torch

from .. import regularizers as R
from ..config import BALoRAConfig
from ..fused import fused_lm_terms
from ..methods import prepare_model
from ..profiling import record_tensors
from ..reference import reference_mode
from .overhead import (format_ratio_table, format_targets, make_trainer, mark_targets, model_device, ratio_table,
                       ratios, run_interleaved, write_json)
from .overhead_settings import (DTYPES, MODEL_CONFIGS, config_loader, nlg_batch, nlg_variants, nlu_batch,
                                nlu_variants, pissa_init_times)

Log = Callable[[str], None]


@dataclass
class SuiteSetting:
    """One interleaved run of the suite."""

    name: str
    kind: str  # "nlg" | "nlu"
    model: str  # MODEL_CONFIGS key
    dtype: str
    batch: int
    seq_len: int
    variants: tuple[str, ...]
    targets: dict[str, dict[str, float]] = field(default_factory=dict)
    r: int = 16


GPU_SUITE: tuple[SuiteSetting, ...] = (
    SuiteSetting("nlg-llama-1b", "nlg", "llama-1b", "bf16", 4, 512,
                 ("lora", "pissa", "pissa-fused-ce", "ba-lora", "ba-lora-unfused"),
                 {"ba-lora/pissa": {"time": 1.50, "peak_mem": 1.02}}),
    SuiteSetting("nlg-llama-8b", "nlg", "llama-8b", "bf16", 4, 512, ("pissa", "ba-lora", "ba-lora-unfused"),
                 {"ba-lora/pissa": {"time": 1.56, "peak_mem": 1.02}}),
    SuiteSetting("nlu-deberta-v3-base", "nlu", "deberta-v3-base", "fp32", 32, 128,
                 ("pissa", "ba-lora", "ba-lora-cached"), {"ba-lora-cached/pissa": {"time": 1.05}}),
    SuiteSetting("nlu-bert-base", "nlu", "bert-base", "fp32", 32, 128, ("pissa", "ba-lora-cached"),
                 {"ba-lora-cached/pissa": {"time": 1.05}}),
)


def suite_settings(model_config: Optional[list[str]] = None, dtype: Optional[str] = None) -> list[SuiteSetting]:
    """The suite's settings; ``model_config=["tiny"]`` swaps in tiny models and batches (a smoke run),
    ``dtype`` overrides every setting's dtype."""
    tiny = "tiny" in (model_config or ())
    out = []
    for st in GPU_SUITE:
        st = SuiteSetting(**{**st.__dict__})
        if tiny:
            st.model, st.r = f"tiny-{st.kind}", 4
            st.batch, st.seq_len = (2, 16) if st.kind == "nlg" else (4, 8)
        if dtype:
            st.dtype = dtype
        out.append(st)
    return out


def _free(device: str) -> None:
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()


def run_setting(st: SuiteSetting, device: str, steps: int, warmup: int, log: Log) -> dict[str, Any]:
    """One interleaved run: medians, ratios, the ratio table and the targets marked."""
    dtype = DTYPES[st.dtype]
    load = config_loader(st.model, device, dtype)
    vocab = MODEL_CONFIGS[st.model][1]().vocab_size
    log(f"\n== {st.name}: {st.model} {st.dtype} {st.batch} x {st.seq_len} r={st.r} on {device}: "
        f"{', '.join(st.variants)} ==")
    if st.kind == "nlg":
        batch = nlg_batch(vocab, st.batch, st.seq_len, device=device)
        variants = nlg_variants(load, batch, st.r, 4, st.variants)
    else:
        batch = nlu_batch(vocab, st.batch, st.seq_len, device=device)
        variants = nlu_variants(load, batch, st.r, st.variants)
    placement = {v.name: {"model": str(model_device(v.model)), "batch": sorted({str(t.device) for t in v.batch.values()}),
                          "dtype": str(next(v.model.parameters()).dtype)} for v in variants}
    rows = run_interleaved(variants, steps, warmup, log=log)
    pairs = [(a, b) for a in st.variants for b in ("pissa", "lora") if a != b] + [("ba-lora", "ba-lora-unfused")]
    rat = ratios(rows, pairs)
    table = ratio_table(rows, "pissa")
    marks = mark_targets(rat, st.targets, "time")
    log(format_ratio_table(table, "pissa", f"-- {st.name} --"))
    if marks:
        log(format_targets(marks))
    del variants, batch
    _free(device)
    return {"setting": st.__dict__, "placement": placement, "rows": rows, "ratios": rat, "ratio_table": table,
            "targets": marks}


# ------------------------------------------------------------------------------------------ checks
def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| / max |b| (both upcast to fp32)."""
    a, b = a.detach().float(), b.detach().float()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-12))


def check_reference(model_name: str, device: str, dtype: str, layers: int = 2) -> dict[str, Any]:
    """PiSSA preserves the function at init and the reference pass reproduces the original model's logits."""
    tol = {"fp32": 1e-3, "bf16": 5e-2, "fp16": 2e-2}[dtype]
    model = config_loader(model_name, device, DTYPES[dtype], layers=layers)()
    vocab = model.config.vocab_size
    batch = nlg_batch(vocab, 2, 64 if "tiny" not in model_name else 12, device=device)
    fwd = {k: v for k, v in batch.items() if k != "labels"}
    with torch.no_grad():
        original = model(**fwd).logits.float()
    prepared = prepare_model(model, "ba-lora", r=16, pissa_niter=4, config=BALoRAConfig(task="nlg"))
    model = prepared.model
    with torch.no_grad():
        student = model(**fwd).logits.float()
        with reference_mode(model, prepared.reference) as ref:
            reference = ref(**fwd).logits.float()
    out = {"reference_vs_original": _rel(reference, original), "student_at_init_vs_original": _rel(student, original),
           "tolerance": tol}
    out["passed"] = bool(out["reference_vs_original"] <= tol and out["student_at_init_vs_original"] <= tol
                         and torch.isfinite(reference).all())
    del model
    return out


def check_fused_terms(device: str, dtype: str, m: int = 300, d: int = 64, v: int = 3000) -> dict[str, Any]:
    """Fused CE/KL/entropy (values and the hidden-state gradient) vs the reference formulas on full logits
    computed in fp32 from the same (possibly low-precision) inputs."""
    tol = {"fp32": 1e-3, "bf16": 3e-2, "fp16": 1e-2}[dtype]
    g = torch.Generator().manual_seed(0)
    dt = DTYPES[dtype]
    w = (torch.randn(v, d, generator=g) / d**0.5).to(device, dt)
    b = (0.1 * torch.randn(v, generator=g)).to(device, dt)
    h0 = 2 * torch.randn(m, d, generator=g)
    hr = (h0 + 0.3 * torch.randn(m, d, generator=g)).to(device, dt)
    h = h0.to(device, dt).requires_grad_(True)
    t = torch.randint(0, v, (m,), generator=g).to(device)
    l1, l2, temp = 0.7, 0.3, 2.0
    fused = fused_lm_terms(h, w, t, hr, b, l1, l2, temp, chunk_size=128)
    fused.loss.backward()
    h32 = h.detach().float().requires_grad_(True)
    z = (h32 @ w.float().T + b.float())[None]
    zr = (hr.float() @ w.float().T + b.float())[None]
    mask = torch.ones(1, m, dtype=torch.bool, device=device)
    ce = torch.nn.functional.cross_entropy(z[0], t)
    kl = R.nlg_consistency(z, zr, mask, temp)
    ne = R.nlg_diversity(z, mask)
    (ce + l1 * kl + l2 * ne).backward()
    ce, kl, ne = ce.detach(), kl.detach(), ne.detach()
    errs = {"task": abs(float(fused.task - ce)) / abs(float(ce)), "consistency": abs(float(fused.consistency - kl)) / abs(float(kl)),
            "diversity": abs(float(fused.diversity - ne)) / abs(float(ne)),
            "grad": float((h.grad.float() - h32.grad).norm() / h32.grad.norm())}
    ok = all(e <= tol for e in errs.values()) and h.grad.dtype == dt and h.grad.device == h.device
    return {"relative_errors": errs, "tolerance": tol, "grad_dtype": str(h.grad.dtype), "passed": bool(ok)}


def check_training_step(model_name: str, device: str, dtype: str, layers: int = 2) -> dict[str, Any]:
    """One BA-LoRA step through BALoRATrainer.compute_loss (fused default and unfused, same init): finite
    loss and gradients, no tensor created off the model's device, no fp32 copy of the output layer, fused
    and unfused losses agree; host synchronisations of the step counted on CUDA (reported only)."""
    load = config_loader(model_name, device, DTYPES[dtype], layers=layers)
    vocab = MODEL_CONFIGS[model_name][1]().vocab_size
    batch = nlg_batch(vocab, 2, 64 if "tiny" not in model_name else 12, device=device)
    losses = {}
    out: dict[str, Any] = {}
    for fused in ("auto", False):
        cfg = BALoRAConfig(task="nlg", fused_nlg=fused, svd_estimator="exact")
        prepared = prepare_model(load(), "ba-lora", r=16, pissa_niter=4, config=cfg)
        model = prepared.model.train()
        trainer = make_trainer(model, prepared.objective())
        with torch.no_grad():
            losses[str(fused)] = float(trainer.compute_loss(model, batch))
        if fused == "auto":
            trainer.compute_loss(model, batch).backward()  # the once-per-run QR of the output layer
            model.zero_grad(set_to_none=True)
            head = tuple(model.get_output_embeddings().weight.shape)
            dev = model_device(model)
            with record_tensors() as events:
                loss = trainer.compute_loss(model, batch)
                loss.backward()
            grads = [p.grad for p in model.parameters() if p.requires_grad and p.grad is not None]
            out["finite_loss"] = bool(torch.isfinite(loss))
            out["finite_gradients"] = bool(grads) and all(bool(torch.isfinite(g).all()) for g in grads)
            out["tensors_off_device"] = sorted({f"{e.op} on {e.device}" for e in events if e.device != str(dev)})
            out["fp32_output_layer_copies"] = sum(1 for e in events if e.dtype == torch.float32 and e.shape in (head, head[::-1]))
            out["host_syncs_per_step"] = _count_syncs(lambda: trainer.compute_loss(model, batch).backward(), device)
            model.zero_grad(set_to_none=True)
        del model, trainer
        _free(device)
    out["loss_fused"], out["loss_unfused"] = losses["auto"], losses["False"]
    out["fused_vs_unfused"] = abs(losses["auto"] - losses["False"]) / abs(losses["False"])
    out["tolerance"] = 1e-2
    out["passed"] = bool(out["finite_loss"] and out["finite_gradients"] and not out["tensors_off_device"]
                         and out["fp32_output_layer_copies"] == 0 and out["fused_vs_unfused"] <= out["tolerance"])
    return out


def _count_syncs(fn: Callable[[], Any], device: str) -> Optional[int]:
    """Host synchronisations during ``fn()`` (CUDA sync debug mode warns on each); None on CPU."""
    if device != "cuda":
        return None
    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            fn()
        finally:
            torch.cuda.set_sync_debug_mode(0)
    return sum(1 for w in caught if "synchroniz" in str(w.message).lower())


def correctness_checks(model_name: str, device: str, log: Log) -> dict[str, Any]:
    checks: dict[str, Any] = {}
    for dtype in ("fp32", "bf16"):
        for name, fn in ((f"reference_logits_{dtype}", lambda: check_reference(model_name, device, dtype)),
                         (f"fused_terms_{dtype}", lambda: check_fused_terms(device, dtype))):
            try:
                checks[name] = fn()
            except Exception as err:  # a check that crashes is a failed check, reported with its error
                checks[name] = {"passed": False, "error": f"{type(err).__name__}: {err}"}
            _free(device)
    try:
        checks["training_step_bf16"] = check_training_step(model_name, device, "bf16")
    except Exception as err:
        checks["training_step_bf16"] = {"passed": False, "error": f"{type(err).__name__}: {err}"}
    for name, c in checks.items():
        log(f"  check {name:<24} {'PASS' if c['passed'] else 'FAIL'}  "
            f"{ {k: v for k, v in c.items() if k != 'passed'} }")
    return checks


def run_suite(args: argparse.Namespace, log: Log = print) -> int:
    """Run every setting, the init timing and the checks; write one JSON; print the summary.

    Returns 1 when a correctness check failed (missed speed targets are results, not errors)."""
    from .overhead import run_meta

    steps = 10 if args.steps is None else args.steps
    warmup = 3 if args.warmup is None else args.warmup
    settings = suite_settings(args.model_config, args.dtype)
    results: dict[str, Any] = {"meta": {**run_meta(args), "steps": steps, "warmup": warmup}, "settings": {}}
    for st in settings:
        results["settings"][st.name] = run_setting(st, args.device, steps, warmup, log)
    first = next(st for st in settings if st.kind == "nlg")
    init = pissa_init_times(config_loader(first.model, args.device, DTYPES[first.dtype]), first.r, (None, 4))
    results["pissa_init_s"] = {"model": first.model, **init}
    _free(args.device)
    log(f"\n== correctness checks ({first.model}, 2 layers, {args.device}) ==")
    results["checks"] = correctness_checks(first.model, args.device, log)
    results["targets"] = [{"setting": name, **m} for name, r in results["settings"].items() for m in r["targets"]]
    path = write_json(args.out, results)
    log("\n" + format_summary(results))
    log(f"results: {path}")
    return 0 if all(c["passed"] for c in results["checks"].values()) else 1


def format_summary(results: dict[str, Any]) -> str:
    """Issue 15's table (setting, variant, step ms, peak GiB, time / PiSSA, memory / PiSSA), targets, checks."""
    lines = ["| setting | variant | step ms | peak GiB | time / PiSSA | memory / PiSSA |", "|---|---|---|---|---|---|"]
    for name, r in results["settings"].items():
        for i, t in enumerate(r["ratio_table"]):
            lines.append(f"| {name if i == 0 else ''} | {t['variant']} | {t['step_ms']:.1f} | {t['peak_mb'] / 1024:.2f} "
                         f"| {t['time_ratio']:.2f} | {t['mem_ratio']:.2f} |")
    lines.append("")
    for m in results["targets"]:
        lines.append(f"target {m['setting']:<22} {m['pair']:<22} {m['metric']:<9} {m['value']:.3f}x <= {m['target']:.2f}x  "
                     f"{'met' if m['met'] else 'MISSED'}")
    init = results.get("pissa_init_s", {})
    if init:
        lines.append(f"PiSSA init ({init['model']}): " + ", ".join(f"{k} {v:.1f} s" for k, v in init.items() if k != "model"))
    for name, c in results["checks"].items():
        lines.append(f"check {name:<24} {'PASS' if c['passed'] else 'FAIL'}")
    return "\n".join(lines)
