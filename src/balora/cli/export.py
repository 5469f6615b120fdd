"""`balora export RUN_DIR --out DIR [--merge]`: a plain LoRA adapter for the original base (+ merged model)."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="export a run's adapter for the ORIGINAL base model (PiSSA converted), "
                                      "optionally merged, with a model card")
    p.add_argument("run_dir", help="a finished run directory (holds adapter/ and balora_run.json)")
    p.add_argument("--out", required=True, help="output folder outside the run (written atomically; must be "
                                                  "empty or absent unless --force)")
    p.add_argument("--merge", action="store_true", help="also write the full merged model to OUT/merged")
    p.add_argument("--base-model", help="base model name or folder (default: the one recorded in the run)")
    p.add_argument("--force", action="store_true", help="replace a non-empty --out folder (never the run itself "
                                                         "or a folder inside or above it)")
    p.add_argument("--push-ready", action="store_true",
                   help="ready to upload to the Hugging Face Hub: the model card (YAML metadata with library_name, "
                        "base_model, tags, datasets, model-index metrics) must name a Hub base model (--base-model "
                        "ORG/NAME when the run used a local folder) and is validated; balora_run.json is included")
    p.add_argument("--dataset", action="append", default=None, metavar="HUB_ID",
                   help="a Hub dataset id for the card's datasets field (repeatable)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..export import export_adapter

    out = export_adapter(args.run_dir, args.out, merge=args.merge, base_model=args.base_model,
                         force=args.force, push_ready=args.push_ready, datasets=args.dataset)
    print(f"wrote {out} (load with PeftModel.from_pretrained(original_model, '{out}'))")
    return 0
