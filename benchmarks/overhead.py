"""What a BA-LoRA training step costs next to LoRA and PiSSA: time per step and peak memory, side by side.

    python benchmarks/overhead.py cpu                       # the CPU settings (SmolLM2 / MiniLM shapes)
    python benchmarks/overhead.py gpu --out gpu.json        # the GPU settings (scripts/gpu_check.sh runs this)
    python benchmarks/overhead.py smoke --device cpu        # tiny models: a smoke run, its numbers mean nothing
    python benchmarks/overhead.py --model PATH --kind nlu   # a model folder instead of a named shape

Settings, model shapes and targets live in ``overhead_targets.yaml`` next to this file. Each setting builds
one model per method (same seed: the same random weights) on the setting's device in its dtype; the
batches are created on the model's device. One step is ``BALoRATrainer.compute_loss`` (the real code path:
plain LoRA / PiSSA go through transformers' ``model(**inputs).loss``) + ``backward`` + AdamW's ``step``.

* Time: ``torch.utils.benchmark.Timer`` runs ``--steps`` steps back to back per block (on CUDA it
  synchronises at the block's ends only, never per step); the variants take turns block by block, the order
  rotating each round, so that load from other processes hits them alike; the median block is reported.
* Memory (``balora.profiling``): a variant's own tensors (parameters, buffers, reference adapter, optimizer
  state) plus how far one step's peak rose above what was in use before it (CUDA: torch's allocator; CPU: the
  process's RSS high-water mark, so approximate), because all variants live in one process.

The ratios A/B of every pair are printed and written to the JSON; a target from the YAML is marked met or
MISSED (missed targets are results: the exit status is 0).
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Optional

import torch
from torch.utils.benchmark import Timer
from transformers import TrainingArguments

from balora import BALoRAConfig, BALoRATrainer, PreparedModel, prepare_model
from balora.atomic import write_json_atomic
from balora.config_io import load_yaml
from balora.models import DTYPES, load_base_model
from balora.profiling import measure, tensors_mb

SETTINGS_FILE = Path(__file__).resolve().parent / "overhead_targets.yaml"
METHODS = ("lora", "pissa", "ba-lora")  # the default; a setting's ``methods`` may add ba-lora-unfused
BASE = "pissa"  # BA-LoRA is PiSSA plus the regularisers: the ratio that says what they cost
Batch = dict[str, torch.Tensor]
Log = Callable[[str], None]


def model_from_shape(fields: dict[str, Any], kind: str, device: str, dtype: torch.dtype) -> torch.nn.Module:
    """A model of a named shape (``shapes`` in the YAML) with random weights, built directly on ``device``."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification

    fields = dict(fields)
    cfg = AutoConfig.for_model(fields.pop("model_type"), **fields)
    auto = AutoModelForCausalLM if kind == "nlg" else AutoModelForSequenceClassification
    if kind == "nlu":
        cfg.num_labels = 2
    with torch.device(device):  # no CPU fp32 detour: an 8B model is built on the GPU
        return auto.from_config(cfg, dtype=dtype).eval()


def make_batch(model: torch.nn.Module, kind: str, batch: int, seq_len: int, seed: int = 0) -> Batch:
    """Random token ids on the model's device (NLG: every token after the first trained; NLU: 2 labels)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, model.config.vocab_size, (batch, seq_len), generator=g)
    out = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    if kind == "nlg":
        out["labels"] = ids.clone()
        out["labels"][:, 0] = -100
    else:
        out["labels"] = torch.randint(0, 2, (batch,), generator=g)
    device = next(model.parameters()).device
    return {k: v.to(device) for k, v in out.items()}


class Variant:
    """One method on its own copy of the model: AdamW on its trainable parameters, the trainer's loss."""

    def __init__(self, method: str, prepared: PreparedModel, batch: Batch, folder: str) -> None:
        model = prepared.model
        self.method, self.model, self.batch = method, model.train(), batch
        self.optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
        on_cuda = next(model.parameters()).device.type == "cuda"
        # use_cpu follows the model: Trainer would otherwise move a CPU model to a visible GPU
        args = TrainingArguments(
            output_dir=folder, report_to=[], use_cpu=not on_cuda,
            save_strategy="no", disable_tqdm=True, per_device_train_batch_size=batch["input_ids"].shape[0])
        self.trainer = BALoRATrainer(model=model, args=args, objective=prepared.objective())
        self.trainer.state.max_steps = 1000  # the lambda schedules read it; no training loop runs
        self.blocks: list[float] = []  # seconds per step, one entry per timed block

    def step(self) -> None:
        """One optimizer step; nothing is read back to the host."""
        self.optimizer.zero_grad(set_to_none=True)
        self.trainer.compute_loss(self.model, self.batch).backward()
        self.optimizer.step()


def prepared(load: Callable[[], torch.nn.Module], kind: str, method: str, r: int, seed: int = 0) -> PreparedModel:
    """A fresh copy from ``load`` with ``method``'s adapters; ``ba-lora-unfused`` is BA-LoRA on full logits
    (``fused_nlg=False``), the straightforward implementation the fused NLG path replaces."""
    model = load()
    torch.manual_seed(seed)
    extra = {}
    if method.startswith("ba-lora"):
        extra["config"] = BALoRAConfig(task=kind, **({"fused_nlg": False} if method == "ba-lora-unfused" else {}))
    return prepare_model(model, method.removesuffix("-unfused"), r=r, pissa_niter=4 if kind == "nlg" else None,
                         **extra)


def measure_setting(load: Callable[[], torch.nn.Module], kind: str, batch: int, seq_len: int, r: int,
                    steps: int = 3, rounds: int = 3, warmup: int = 1,
                    targets: Optional[dict[str, dict[str, float]]] = None, methods: tuple[str, ...] = METHODS,
                    log: Log = print) -> dict[str, Any]:
    """Time and memory of every method on models from ``load`` (fresh copy each): rows, ratios, targets."""
    models = [prepared(load, kind, m, r) for m in methods]
    data = make_batch(models[0].model, kind, batch, seq_len)
    with tempfile.TemporaryDirectory(prefix="balora-overhead-") as folder:  # the trainers' (unused) output_dir
        variants = [Variant(m, model, data, folder) for m, model in zip(methods, models)]
        del models
        result = _measure(variants, steps, rounds, warmup, targets, log)
        del variants  # free the copies before the next setting builds its own
    gc.collect()
    return result


def _measure(variants: list[Variant], steps: int, rounds: int, warmup: int,
             targets: Optional[dict[str, dict[str, float]]], log: Log) -> dict[str, Any]:
    rows: dict[str, dict[str, Any]] = {}
    for v in variants:
        for _ in range(warmup):  # also creates AdamW's state, so that it counts as the variant's own
            v.step()
        device = next(v.model.parameters()).device
        with measure(device) as m:
            v.step()
        rows[v.method] = {"variant": v.method, "own_mb": tensors_mb(v.model, v.optimizer),
                          "step_mb": m.transient_mb, "device": str(device),
                          "dtype": str(next(v.model.parameters()).dtype)}
    threads = torch.get_num_threads()
    for i in range(rounds):
        for v in variants[i % len(variants):] + variants[: i % len(variants)]:
            timer = Timer("step()", globals={"step": v.step}, num_threads=threads)
            v.blocks.append(timer.timeit(steps).median)
        log(f"  round {i + 1}/{rounds}: " + "  ".join(f"{v.method} {1000 * v.blocks[-1]:.1f} ms" for v in variants))
    for v in variants:
        row = rows[v.method]
        row.update(step_ms=1000 * statistics.median(v.blocks), blocks_ms=[1000 * b for b in v.blocks],
                   peak_mb=row["own_mb"] + row["step_mb"])
    ratios = {f"{a}/{b}": {"time": rows[a]["step_ms"] / rows[b]["step_ms"],
                           "peak_mem": rows[a]["peak_mb"] / rows[b]["peak_mb"]}
              for a in rows for b in rows if a != b}
    marks = [{"pair": pair, "metric": metric, "value": ratios[pair][metric], "target": limit,
              "met": ratios[pair][metric] <= limit}
             for pair, limits in (targets or {}).items() if pair in ratios for metric, limit in limits.items()]
    return {"rows": list(rows.values()), "ratios": ratios, "targets": marks}


def format_result(name: str, result: dict[str, Any]) -> str:
    """The side-by-side table: step time and peak memory of each method, and both as ratios to PiSSA."""
    by = {r["variant"]: r for r in result["rows"]}
    base = by.get(BASE)
    head = f"{'method':<16}{'step ms':>10}{'peak MiB':>11}{'time / ' + BASE:>15}{'memory / ' + BASE:>17}"
    lines = [f"-- {name} --", head, "-" * len(head)]
    for r in result["rows"]:
        t = r["step_ms"] / base["step_ms"] if base else float("nan")
        mem = r["peak_mb"] / base["peak_mb"] if base else float("nan")
        lines.append(f"{r['variant']:<16}{r['step_ms']:>10.1f}{r['peak_mb']:>11.1f}{t:>15.3f}{mem:>17.3f}")
    lines += [f"  target {m['pair']:<16} {m['metric']:<9} {m['value']:.3f}x <= {m['target']:.2f}x  "
              f"{'met' if m['met'] else 'MISSED'}" for m in result["targets"]]
    return "\n".join(lines)


def selected(names: list[str], table: dict[str, Any]) -> list[str]:
    """Setting names, groups expanded, in order; an unknown name is an error listing the known ones."""
    out = []
    for name in names:
        if name in table.get("groups", {}):
            out += table["groups"][name]
        elif name in table["settings"]:
            out.append(name)
        else:
            known = sorted(table["settings"]) + sorted(table.get("groups", {}))
            raise SystemExit(f"unknown setting {name!r}; known: {', '.join(known)}")
    return out


def meta(args: argparse.Namespace) -> dict[str, Any]:
    out = {"torch": torch.__version__, "threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
           "machine": platform.processor() or platform.machine(), "argv": sys.argv, "loadavg": os.getloadavg(),
           "timer": "torch.utils.benchmark.Timer, median block of --steps steps"}
    if torch.cuda.is_available():
        out.update(gpu=torch.cuda.get_device_name(), tf32_matmul=torch.backends.cuda.matmul.allow_tf32)
    return out


def parse_args(argv: Optional[list[str]]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="benchmarks/overhead.py", description=__doc__.split("\n\n")[0])
    p.add_argument("settings", nargs="*", help="settings or groups of the YAML (default: cpu)")
    p.add_argument("--settings-file", default=str(SETTINGS_FILE), help="the YAML of shapes, settings and targets")
    p.add_argument("--device", choices=["cpu", "cuda"], help="build every model here instead of the setting's device")
    p.add_argument("--dtype", choices=sorted(DTYPES), help="instead of the setting's dtype")
    p.add_argument("--model", help="a model folder: one setting on it (with --kind, --batch, --seq-len, --r)")
    p.add_argument("--kind", choices=["nlu", "nlg"], default="nlu", help="with --model: classifier or causal LM")
    p.add_argument("--batch", type=int, default=8, help="with --model: rows per batch")
    p.add_argument("--seq-len", type=int, default=128, help="with --model: tokens per row")
    p.add_argument("--r", type=int, default=8, help="with --model: adapter rank (all linear layers)")
    p.add_argument("--steps", type=int, default=3, help="steps per timed block")
    p.add_argument("--rounds", type=int, default=3, help="timed blocks per method (median reported)")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps per method first")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    p.add_argument("--out", default="overhead.json", help="JSON results (written atomically)")
    return p.parse_args(argv)


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    table = load_yaml(args.settings_file)
    jobs: list[tuple[str, dict[str, Any], Callable[[], torch.nn.Module]]] = []
    if args.model:
        setting = {"kind": args.kind, "batch": args.batch, "seq_len": args.seq_len, "r": args.r, "targets": {},
                   "device": args.device or "cpu", "dtype": args.dtype or "float32", "model": args.model}

        def load(s: dict[str, Any] = setting) -> torch.nn.Module:
            torch.manual_seed(0)  # the same head weights in every copy
            model = load_base_model(s["model"], s["kind"], num_labels=2 if s["kind"] == "nlu" else None,
                                    dtype=DTYPES[s["dtype"]], pooling="cls")
            return model.to(s["device"])
        jobs.append((Path(args.model).name, setting, load))
    for name in selected(args.settings or ([] if args.model else ["cpu"]), table):
        setting = {**table["settings"][name], **{k: v for k in ("device", "dtype") if (v := getattr(args, k))}}

        def load(s: dict[str, Any] = setting) -> torch.nn.Module:
            torch.manual_seed(0)
            return model_from_shape(table["shapes"][s["shape"]], s["kind"], s["device"], DTYPES[s["dtype"]])
        jobs.append((name, setting, load))
    if any(s["device"] == "cuda" for _, s, _ in jobs) and not torch.cuda.is_available():
        raise SystemExit("a setting runs on cuda, but torch sees no CUDA device (use --device cpu to run it here)")
    results: dict[str, Any] = {"meta": meta(args), "settings": {}}
    for name, setting, load in jobs:
        print(f"\n== {name}: {setting.get('shape', setting.get('model'))} {setting['dtype']} {setting['batch']} x "
              f"{setting['seq_len']}, r={setting['r']}, {setting['device']} ==", flush=True)
        start = time.perf_counter()
        result = measure_setting(load, setting["kind"], setting["batch"], setting["seq_len"], setting["r"],
                                 args.steps, args.rounds, args.warmup, setting.get("targets"),
                                 tuple(setting.get("methods", METHODS)), log=lambda msg: print(msg, flush=True))
        results["settings"][name] = {"setting": setting, **result, "seconds": time.perf_counter() - start}
        print(format_result(name, result), flush=True)
        if setting["device"] == "cuda":
            torch.cuda.empty_cache()
    path = write_json_atomic(args.out, results, default=str)
    print(f"\nresults: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
