"""Measure QPiSSA on the packaged SmolLM2-135M (CPU): base memory, step time, the reference's deviation from the
full-precision original, and the PiSSA paper's quantisation-error comparison (QPiSSA vs quantise-then-LoRA).

    PYTHONPATH=src OMP_NUM_THREADS=1 python scripts/measure_qpissa.py --r 16 --out qpissa.json

Writes a JSON record and prints a markdown table (docs/ecosystem.md). ``--layers N`` keeps the first N decoder
layers (CPU time); the errors and deviations are of those layers' adapted linears (all-linear targets).
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import time

import torch


def load(layers: int):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from balora.data.assets import smollm2_path

    path = smollm2_path()
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    if layers and layers < model.config.num_hidden_layers:
        model.model.layers = model.model.layers[:layers]
        model.config.num_hidden_layers = layers
        if getattr(model.config, "layer_types", None):
            model.config.layer_types = model.config.layer_types[:layers]
    return model.eval(), AutoTokenizer.from_pretrained(path), str(path)


TEXTS = [
    "The quick brown fox jumps over the lazy dog. Then it runs into the forest and disappears.",
    "Question: What is 12 times 7? Answer: 12 times 7 is 84, because 10 times 7 is 70 and 2 times 7 is 14.",
    "def add(a, b):\n    return a + b\n\nprint(add(2, 3))  # prints 5",
    "Paris is the capital of France. Berlin is the capital of Germany. Rome is the capital of Italy.",
]


def batch_of(tok, seq: int) -> dict:
    enc = tok(TEXTS, return_tensors="pt", padding="max_length", truncation=True, max_length=seq)
    labels = enc["input_ids"].clone()
    labels[enc["attention_mask"] == 0] = -100
    return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"], "labels": labels}


def step_times(model, objective, batch: dict, steps: int) -> list[float]:
    from datasets import Dataset
    from transformers import TrainerCallback, TrainingArguments

    from balora import BALoRATrainer

    times: list[float] = []

    class Clock(TrainerCallback):
        def on_step_begin(self, *a, **k):
            self.t = time.perf_counter()

        def on_step_end(self, *a, **k):
            times.append(time.perf_counter() - self.t)

    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        args = TrainingArguments(output_dir=tmp, per_device_train_batch_size=len(batch["input_ids"]), max_steps=steps,
                                 learning_rate=1e-4, logging_steps=steps, report_to=[], save_strategy="no",
                                 use_cpu=True, remove_unused_columns=False, disable_tqdm=True)
        trainer = BALoRATrainer(model=model, objective=objective, args=args, callbacks=[Clock()],
                                train_dataset=Dataset.from_dict({"i": list(range(steps * len(batch["input_ids"])))}),
                                data_collator=lambda rows: {k: v.clone() for k, v in batch.items()})
        trainer.train()
    return times[1:]  # the first step includes one-off work (the fused-path check, allocations)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--layers", type=int, default=0, help="keep the first N decoder layers (0 = all 30)")
    p.add_argument("--r", type=int, default=16, help="adapter rank")
    p.add_argument("--seq", type=int, default=32, help="tokens per row of the 4-row batch")
    p.add_argument("--steps", type=int, default=3, help="training steps timed (the first is dropped)")
    p.add_argument("--group-size", type=int, default=64, help="int4 group size (SmolLM2: 576 = 9 x 64)")
    p.add_argument("--out", help="write the JSON record here")
    args = p.parse_args(argv)
    logging.disable(logging.WARNING)
    torch.manual_seed(0)

    from balora import BALoRAConfig, prepare_model
    from balora.quant import base_bytes, original_weights, quantization_errors, reference_deviation

    original, tok, path = load(args.layers)
    weights = original_weights(original)
    batch = batch_of(tok, args.seq)
    cfg = BALoRAConfig(task="nlg")
    rows = []
    settings = [("PiSSA (fp32 base)", "ba-lora", None), ("QPiSSA int8", "ba-lora", "int8"),
                ("QLoRA int8 (quantise, then LoRA)", "lora+reg", "int8"), ("QPiSSA int4", "ba-lora", "int4"),
                ("QLoRA int4 (quantise, then LoRA)", "lora+reg", "int4")]
    for label, method, scheme in settings:
        model, _, _ = load(args.layers)
        t0 = time.perf_counter()
        prepared = prepare_model(model, method, r=args.r, config=cfg, quantize=scheme, quantize_group_size=args.group_size)
        model = prepared.model
        prep = time.perf_counter() - t0
        row = {"setting": label, "method": method, "quantize": scheme, "prepare_s": round(prep, 2),
               "base_mib": round(base_bytes(model) / 2**20, 2)}
        model.eval()
        dev = reference_deviation(model, original, batch, prepared.reference)
        row.update({k: float(f"{v:.4g}") for k, v in dev.items()})
        if scheme:
            err = quantization_errors(model, weights, scheme, args.group_size,
                                      adapter_name=None if method == "ba-lora" else "default")
            row.update({"rel_error_model": float(f"{(err.qpissa if method == 'ba-lora' else err.qlora):.4g}"),
                        "rel_error_qpissa": float(f"{err.qpissa:.4g}"), "rel_error_qlora": float(f"{err.qlora:.4g}"),
                        "layers": err.layers})
        times = step_times(model.train(), prepared.objective(), batch, args.steps)
        row["step_s_median"] = round(statistics.median(times), 3)
        rows.append(row)
        print(json.dumps(row), flush=True)
    record = {"model": path, "decoder_layers": args.layers or 30, "r": args.r, "batch": [4, args.seq],
              "int4_group_size": args.group_size, "torch": torch.__version__, "threads": torch.get_num_threads(),
              "rows": rows}
    if args.out:
        from balora.atomic import write_json_atomic

        write_json_atomic(args.out, record)
    head = "| setting | base MiB | step s | ref. max abs logit diff | ref. mean KL | rel. weight error |"
    print(head)
    print("|---|---|---|---|---|---|")
    for r in rows:
        err = r.get("rel_error_model", 0.0)
        print(f"| {r['setting']} | {r['base_mib']} | {r['step_s_median']} | {r['max_abs_logit_diff']:.3g} | "
              f"{r['mean_kl']:.3g} | {err:.3g} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
