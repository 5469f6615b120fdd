"""`balora bench overhead` (and benchmarks/overhead.py): LoRA vs PiSSA vs BA-LoRA step cost side by side.

Usage::

    balora bench overhead --settings nlu nlg init --steps 5 --threads 1 --baseline-unfused --out overhead.json
    python benchmarks/overhead.py --settings nlg --nlg-seq-len 128
    balora bench overhead --device cuda --dtype bf16 --model-config llama-1b --settings nlg --nlg-seq-len 512 --r 16
    balora bench overhead --device cuda --suite --out gpu_check.json     # = scripts/gpu_check.sh
"""

from __future__ import annotations

import argparse
import gc
import os
from typing import Any, Optional

import torch

from .overhead import (format_ratio_table, format_table, format_targets, mark_targets, ratio_table, ratios,
                       run_interleaved, run_meta, write_json)
from .overhead_settings import (DTYPES, MODEL_CONFIG_CHOICES, MODEL_CONFIGS, config_loader, config_name, hf_loader,
                                nlg_batch, nlg_breakdown, nlg_variants, nlu_batch, nlu_breakdown, nlu_variants,
                                pissa_init_times)

# Issue 15's CPU targets (ratios to PiSSA measured side by side; on CPU the time ratio is process CPU time)
CPU_TARGETS = {"nlg": {"ba-lora/pissa": {"time": 1.40}}, "nlu": {"ba-lora-cached/pissa": {"time": 1.05}}}

DESCRIPTION = ("Measure LoRA, PiSSA and BA-LoRA training steps side by side in one process on the same "
               "batches (interleaved rounds, medians), plus a per-term breakdown and PiSSA init times.")


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The benchmark's options (shared by the `balora bench overhead` sub-command and the script)."""
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"],
                   help="where models, batches and timing live (cuda: CUDA-event time, torch's peak memory)")
    p.add_argument("--dtype", default=None, choices=sorted(DTYPES),
                   help="model dtype (default fp32; the --suite uses bf16 for NLG and fp32 for NLU unless given)")
    p.add_argument("--model-config", nargs="+", default=None, choices=MODEL_CONFIG_CHOICES,
                   help="build the NLG and/or NLU model from a named config with random weights on the device "
                        "(llama-1b, llama-8b, smollm2: NLG; deberta-v3-base, bert-base: NLU; tiny: both) "
                        "instead of loading --nlg-model/--nlu-model")
    p.add_argument("--suite", action="store_true",
                   help="run the GPU check (issue 15): the overhead table at the Llama-1B/8B (bf16, 4 x 512, r=16) "
                        "and DeBERTa/BERT (fp32, 32 x 128, cached reference) shapes, plus correctness checks, "
                        "targets marked met/missed, one JSON; with --model-config tiny every model is tiny")
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
    p.add_argument("--steps", type=int, default=None,
                   help="measured rounds (one step per variant each; default 5, the --suite 10)")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps per variant first (default 1, the --suite 3)")
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


def _report(name: str, rows: list[dict[str, Any]], pairs: list[tuple[str, str]], device: str = "cpu",
            targets: Optional[dict[str, dict[str, float]]] = None) -> dict[str, Any]:
    """Print the medians, the ratios and the ratio table (same layout on every device); mark targets."""
    _say(f"\n== {name}: per-step medians ==")
    _say(format_table(rows))
    rat = ratios(rows, pairs)
    for key, val in rat.items():
        _say(f"  {key:<30} time {val['time']:.3f}x  cpu {val['cpu_time']:.3f}x  peak memory {val['peak_mem']:.3f}x")
    cpu = device == "cpu"
    table = ratio_table(rows, "pissa", cpu_time=cpu)
    _say(format_ratio_table(table, "pissa", f"-- {name} ratio table ({'process CPU' if cpu else 'CUDA-event'} time) --"))
    result: dict[str, Any] = {"rows": rows, "ratios": rat, "ratio_table": table}
    if targets:
        result["targets"] = mark_targets(rat, targets, "cpu_time" if cpu else "time")
        if result["targets"]:
            _say(format_targets(result["targets"]))
    return result


def _step_key(args: argparse.Namespace) -> str:
    """The median the breakdown is compared with: CPU time on CPU (time_op's clock), event time on CUDA."""
    return "median_cpu_s" if args.device == "cpu" else "median_s"


def _breakdown_lines(bd: dict[str, float], step_s: float, device: str = "cpu") -> None:
    unit = "cpu s" if device == "cpu" else "gpu s"
    for key, val in bd.items():
        _say(f"  {key:<26} {val:8.4f} {unit}  {100 * val / step_s:5.1f}% of a BA-LoRA step")


def _dtype(args: argparse.Namespace, default: str = "fp32") -> torch.dtype:
    return DTYPES[args.dtype or default]


def model_source(args: argparse.Namespace, kind: str, dtype: Optional[torch.dtype] = None) -> tuple[Any, int, str]:
    """(loader, vocabulary size, description) of the ``kind`` model: a named config (random weights, built
    on --device in --dtype) or a folder (default: the packaged MiniLM / the cached SmolLM2), moved there.
    The vocabulary is read from the config, without building a model."""
    dtype = dtype or _dtype(args)
    for name in args.model_config or ():
        key = config_name(name, kind)
        if key is not None:
            return config_loader(key, args.device, dtype), MODEL_CONFIGS[key][1]().vocab_size, f"config {key} (random weights)"
    from transformers import AutoConfig

    from ..data.assets import minilm_path, smollm2_path

    path = str((args.nlg_model or smollm2_path()) if kind == "nlg" else (args.nlu_model or minilm_path()))
    return hf_loader(path, kind, device=args.device, dtype=dtype), AutoConfig.from_pretrained(path).vocab_size, path


def _default_models(args: argparse.Namespace, kind: str) -> bool:
    """Whether the run uses the packaged CPU models (the ones the CPU targets are about)."""
    named = any(config_name(n, kind) for n in args.model_config or ())
    return not named and (args.nlg_model if kind == "nlg" else args.nlu_model) is None and args.device == "cpu"


def run_nlu(args: argparse.Namespace) -> dict[str, Any]:
    load, vocab, source = model_source(args, "nlu")
    batch = nlu_batch(vocab, args.nlu_batch, args.nlu_seq_len, device=args.device)
    which = ("lora", "pissa") + (() if args.no_nlu_otf else ("ba-lora",)) + ("ba-lora-cached",)
    _say(f"NLU: {source}, {args.nlu_batch} x {args.nlu_seq_len} tokens, r={args.r}, {args.device} "
         f"{args.dtype or 'fp32'}, variants {', '.join(which)}")
    variants = nlu_variants(load, batch, args.r, which)
    rows = run_interleaved(variants, args.steps, args.warmup, log=_say)
    result = _report("NLU", rows, [("ba-lora-cached", "pissa"), ("ba-lora", "pissa"), ("pissa", "lora")],
                     args.device, CPU_TARGETS["nlu"] if _default_models(args, "nlu") else None)
    result["model"] = source
    if not args.no_breakdown:
        step = {r["variant"]: r[_step_key(args)] for r in rows}
        target = next(v for v in variants if v.name == ("ba-lora" if "ba-lora" in which else "ba-lora-cached"))
        bd = nlu_breakdown(target)
        _say(f"\n== NLU breakdown ({target.name}) ==")
        _breakdown_lines(bd, step[target.name], args.device)
        result["breakdown"] = bd
    result["notes"] = {v.name: v.notes for v in variants if v.notes}
    return result


def run_nlg(args: argparse.Namespace) -> dict[str, Any]:
    load, vocab, source = model_source(args, "nlg")
    batch = nlg_batch(vocab, args.nlg_batch, args.nlg_seq_len, args.prompt_len, device=args.device)
    trained = int((batch["labels"][:, 1:] != -100).sum())
    which = ("lora", "pissa") + (("pissa-fused-ce",) if args.fused_ce else ()) + ("ba-lora",)
    which += ("ba-lora-unfused",) if args.baseline_unfused else ()
    _say(f"NLG: {source}, {args.nlg_batch} x {args.nlg_seq_len} tokens, {trained} trained positions, vocab {vocab}, "
         f"r={args.r}, {args.device} {args.dtype or 'fp32'}, variants {', '.join(which)}")
    variants = nlg_variants(load, batch, args.r, args.pissa_niter or None, which, args.chunk_size)
    rows = run_interleaved(variants, args.steps, args.warmup, log=_say)
    pairs = [("ba-lora", "pissa"), ("ba-lora-unfused", "pissa"), ("ba-lora", "pissa-fused-ce"), ("pissa", "lora"),
             ("ba-lora", "ba-lora-unfused")]
    result = _report("NLG", rows, pairs, args.device, CPU_TARGETS["nlg"] if _default_models(args, "nlg") else None)
    result["trained_positions"] = trained
    result["model"] = source
    if not args.no_breakdown:
        target = next(v for v in variants if v.name == "ba-lora")
        step_s = next(r[_step_key(args)] for r in rows if r["variant"] == "ba-lora")
        for v in variants:
            if v is not target:
                v.model.to("meta")  # free the other copies before the breakdown's full-logit tensors
        gc.collect()
        if args.device == "cuda":
            torch.cuda.empty_cache()
        bd = nlg_breakdown(target, unfused=True)
        _say("\n== NLG breakdown (ba-lora; unfused_* = reference formulas on full logits) ==")
        _breakdown_lines(bd, step_s, args.device)
        result["breakdown"] = bd
        result["svd_share_of_step"] = bd["svd_small_factor"] / step_s
    result["notes"] = {v.name: v.notes for v in variants if v.notes}
    return result


def _check_device(args: argparse.Namespace) -> None:
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is visible to torch (torch.cuda.is_available() is False)")


def run(args: argparse.Namespace) -> int:
    """Run the selected settings (or the --suite), print the tables and write the JSON file."""
    _check_device(args)
    torch.set_num_threads(args.threads)
    if args.suite:
        from .overhead_suite import run_suite

        return run_suite(args, log=_say)
    args.steps = 5 if args.steps is None else args.steps
    args.warmup = 1 if args.warmup is None else args.warmup
    meta = run_meta(args)
    results: dict[str, Any] = {"meta": meta}
    if "nlu" in args.settings:
        results["nlu"] = run_nlu(args)
        gc.collect()
    if "nlg" in args.settings:
        results["nlg"] = run_nlg(args)
        gc.collect()
    if "init" in args.settings:
        load, _, source = model_source(args, "nlg")
        init = pissa_init_times(load, args.r, tuple(k or None for k in args.init_niters))
        _say(f"\n== PiSSA init time ({source}, all linear layers) ==")
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
