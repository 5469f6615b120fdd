"""`balora bench overhead` (and benchmarks/overhead.py): LoRA vs PiSSA vs BA-LoRA step cost side by side.

Usage::

    balora bench overhead --settings nlu nlg init --steps 5 --threads 1 --baseline-unfused --out overhead.json
    python benchmarks/overhead.py --settings nlg --nlg-seq-len 128
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import sys
from typing import Any, Optional

import torch

from .overhead import format_table, ratios, run_interleaved, write_json
from .overhead_settings import (hf_loader, nlg_batch, nlg_breakdown, nlg_variants, nlu_batch, nlu_breakdown,
                                nlu_variants, pissa_init_times)

DESCRIPTION = ("Measure LoRA, PiSSA and BA-LoRA training steps side by side in one process on the same "
               "batches (interleaved rounds, medians), plus a per-term breakdown and PiSSA init times.")


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The benchmark's options (shared by the `balora bench overhead` sub-command and the script)."""
    p.add_argument("--settings", nargs="+", default=["nlu", "nlg", "init"], choices=["nlu", "nlg", "init"],
                   help="what to run: nlu (MiniLM classifier), nlg (SmolLM2 causal LM), init (PiSSA init times)")
    p.add_argument("--nlu-model", default=None, help="NLU model folder (default: the packaged MiniLM)")
    p.add_argument("--nlg-model", default=None, help="NLG model folder (default: the cached SmolLM2-135M)")
    p.add_argument("--nlu-batch", type=int, default=32, help="NLU batch size")
    p.add_argument("--nlu-seq-len", type=int, default=128, help="NLU tokens per example")
    p.add_argument("--nlg-batch", type=int, default=4, help="NLG batch size")
    p.add_argument("--nlg-seq-len", type=int, default=256, help="NLG tokens per row")
    p.add_argument("--prompt-len", type=int, default=1,
                   help="NLG: untrained prefix per row (labels -100); trained positions = batch * (seq_len - prompt_len)")
    p.add_argument("--r", type=int, default=8, help="adapter rank (all linear layers)")
    p.add_argument("--steps", type=int, default=5, help="measured rounds (one step per variant each)")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps per variant first")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    p.add_argument("--chunk-size", type=int, default=256, help="NLG fused path: positions per chunk")
    p.add_argument("--pissa-niter", type=int, default=4,
                   help="PiSSA init of the NLG step variants (pissa_niter_K; 0 = exact SVD; step cost does not depend on it)")
    p.add_argument("--baseline-unfused", action="store_true",
                   help="also run BA-LoRA's straightforward implementation (fused_nlg=False: full logits, randomized SVD)")
    p.add_argument("--fused-ce", action="store_true", help="also run PiSSA with the fused chunked CE (no full logits)")
    p.add_argument("--no-nlu-otf", action="store_true", help="NLU: skip BA-LoRA with the on-the-fly reference")
    p.add_argument("--no-breakdown", action="store_true", help="skip the per-term breakdown")
    p.add_argument("--init-niters", type=int, nargs="+", default=[0, 2, 4, 16],
                   help="PiSSA init timing: 0 = exact SVD, K = pissa_niter_K")
    p.add_argument("--out", default="overhead.json", help="JSON results file (written atomically)")


def _say(msg: str) -> None:
    print(msg, flush=True)


def _report(name: str, rows: list[dict[str, Any]], pairs: list[tuple[str, str]]) -> dict[str, Any]:
    _say(f"\n== {name}: per-step medians ==")
    _say(format_table(rows))
    rat = ratios(rows, pairs)
    for key, val in rat.items():
        _say(f"  {key:<30} wall {val['time']:.3f}x  cpu {val['cpu_time']:.3f}x  peak memory {val['peak_mem']:.3f}x")
    return {"rows": rows, "ratios": rat}


def _breakdown_lines(bd: dict[str, float], step_s: float) -> None:
    for key, val in bd.items():
        _say(f"  {key:<26} {val:8.4f} cpu s  {100 * val / step_s:5.1f}% of a BA-LoRA step (cpu)")


def run_nlu(args: argparse.Namespace) -> dict[str, Any]:
    from ..data.assets import minilm_path

    load = hf_loader(str(args.nlu_model or minilm_path()), "nlu")
    vocab = load().config.vocab_size
    batch = nlu_batch(vocab, args.nlu_batch, args.nlu_seq_len)
    which = ("lora", "pissa") + (() if args.no_nlu_otf else ("ba-lora",)) + ("ba-lora-cached",)
    _say(f"NLU: {args.nlu_batch} x {args.nlu_seq_len} tokens, r={args.r}, variants {', '.join(which)}")
    variants = nlu_variants(load, batch, args.r, which)
    rows = run_interleaved(variants, args.steps, args.warmup, log=_say)
    result = _report("NLU", rows, [("ba-lora-cached", "pissa"), ("ba-lora", "pissa"), ("pissa", "lora")])
    if not args.no_breakdown:
        step = {r["variant"]: r["median_cpu_s"] for r in rows}
        target = next(v for v in variants if v.name == ("ba-lora" if "ba-lora" in which else "ba-lora-cached"))
        bd = nlu_breakdown(target)
        _say(f"\n== NLU breakdown ({target.name}) ==")
        _breakdown_lines(bd, step[target.name])
        result["breakdown"] = bd
    result["notes"] = {v.name: v.notes for v in variants if v.notes}
    return result


def run_nlg(args: argparse.Namespace) -> dict[str, Any]:
    from ..data.assets import smollm2_path

    load = hf_loader(str(args.nlg_model or smollm2_path()), "nlg")
    vocab = load().config.vocab_size
    batch = nlg_batch(vocab, args.nlg_batch, args.nlg_seq_len, args.prompt_len)
    trained = int((batch["labels"][:, 1:] != -100).sum())
    which = ("lora", "pissa") + (("pissa-fused-ce",) if args.fused_ce else ()) + ("ba-lora",)
    which += ("ba-lora-unfused",) if args.baseline_unfused else ()
    _say(f"NLG: {args.nlg_batch} x {args.nlg_seq_len} tokens, {trained} trained positions, vocab {vocab}, "
         f"r={args.r}, variants {', '.join(which)}")
    variants = nlg_variants(load, batch, args.r, args.pissa_niter or None, which, args.chunk_size)
    rows = run_interleaved(variants, args.steps, args.warmup, log=_say)
    pairs = [("ba-lora", "pissa"), ("ba-lora-unfused", "pissa"), ("ba-lora", "pissa-fused-ce"), ("pissa", "lora"),
             ("ba-lora", "ba-lora-unfused")]
    result = _report("NLG", rows, pairs)
    result["trained_positions"] = trained
    if not args.no_breakdown:
        target = next(v for v in variants if v.name == "ba-lora")
        step_s = next(r["median_cpu_s"] for r in rows if r["variant"] == "ba-lora")
        for v in variants:
            if v is not target:
                v.model.to("meta")  # free the other copies before the breakdown's full-logit tensors
        gc.collect()
        bd = nlg_breakdown(target, unfused=True)
        _say("\n== NLG breakdown (ba-lora; unfused_* = reference formulas on full logits) ==")
        _breakdown_lines(bd, step_s)
        result["breakdown"] = bd
        result["svd_share_of_step"] = bd["svd_small_factor"] / step_s
    result["notes"] = {v.name: v.notes for v in variants if v.notes}
    return result


def run(args: argparse.Namespace) -> int:
    """Run the selected settings, print the tables and write the JSON file."""
    torch.set_num_threads(args.threads)
    meta = {"torch": torch.__version__, "threads": args.threads, "cpu_count": os.cpu_count(),
            "machine": platform.processor() or platform.machine(), "device": "cpu",
            "loadavg_start": os.getloadavg(), "argv": sys.argv}
    results: dict[str, Any] = {"meta": meta}
    if "nlu" in args.settings:
        results["nlu"] = run_nlu(args)
        gc.collect()
    if "nlg" in args.settings:
        results["nlg"] = run_nlg(args)
        gc.collect()
    if "init" in args.settings:
        from ..data.assets import smollm2_path

        load = hf_loader(str(args.nlg_model or smollm2_path()), "nlg")
        init = pissa_init_times(load, args.r, tuple(k or None for k in args.init_niters))
        _say("\n== PiSSA init time (SmolLM2, all linear layers) ==")
        for key, val in init.items():
            _say(f"  {key:<10} {val:8.2f} s")
        results["pissa_init_s"] = init
    meta["loadavg_end"] = os.getloadavg()
    path = write_json(args.out, results)
    _say(f"\nload average start {meta['loadavg_start']}, end {meta['loadavg_end']}; results: {path}")
    return 0


def register(bench_subparsers: Any) -> argparse.ArgumentParser:
    """Add ``overhead`` to the ``balora bench`` sub-commands (sets ``func=run``)."""
    p = bench_subparsers.add_parser("overhead", help="LoRA vs PiSSA vs BA-LoRA step time and memory",
                                    description=DESCRIPTION)
    add_arguments(p)
    p.set_defaults(func=run)
    return p


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="benchmarks/overhead.py", description=DESCRIPTION)
    add_arguments(parser)
    return run(parser.parse_args(argv))
