"""`balora train --config FILE.yaml [--section.key value ...]`: one NLU or NLG training run."""

from __future__ import annotations

import argparse
import json


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train one model from a YAML config (+ --section.key value overrides)",
                       description="Train NLU (sequence classification/regression) or NLG (causal-LM instruction "
                                   "tuning) from a YAML config. Any field can be overridden: --train.epochs 3, "
                                   "--method.name lora, --balora.lambda_svd 0.01. See configs/ for examples.")
    p.add_argument("--config", help="YAML file with sections kind, model, data, method, balora, train")
    p.add_argument("--resume", action="store_true", help="resume from the last complete checkpoint in train.output_dir")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the completed run in train.output_dir (train.overwrite: its record, adapters and "
                        "checkpoints are removed first); without it such a folder is refused")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    p.set_defaults(func=run, accepts_overrides=True)


def run(args: argparse.Namespace) -> int:
    from ..training.run_config import load_config

    cfg = load_config(args.config, args.overrides)
    if args.resume:
        cfg.train.resume = True
    if args.overwrite:
        cfg.train.overwrite = True
    if args.print_config:
        print(json.dumps(cfg.to_dict(), indent=2))
        return 0
    if cfg.kind == "nlu":
        from ..training.nlu import run_nlu

        result = run_nlu(cfg)
        metrics = result.metrics
    else:
        from ..training.nlg import run_nlg

        metrics = run_nlg(cfg).metrics
    for split, values in metrics.items():
        shown = {k: round(v, 4) for k, v in values.items() if isinstance(v, float) and "confusion" not in k}
        print(f"{split}: {shown}")
    print(f"run directory: {cfg.train.output_dir} (export with: balora export {cfg.train.output_dir} --out DIR)")
    return 0
