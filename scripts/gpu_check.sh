#!/usr/bin/env bash
# One-command GPU check of issue 15: the BA-LoRA overhead table at the Llama-3.2-1B / Llama-3.1-8B shapes
# (bf16, 4 x 512, r=16 all linear) and the DeBERTa-v3-base / BERT-base shapes (fp32, 32 x 128, cached
# reference), plus CUDA correctness checks; targets marked met/MISSED; one JSON (default gpu_check.json).
#
#   scripts/gpu_check.sh                        # on a CUDA machine, from the repository root or anywhere
#   scripts/gpu_check.sh --out my.json --steps 10 --warmup 3
#   scripts/gpu_check.sh --device cpu --model-config tiny --steps 1 --warmup 0   # smoke run (the tests do this)
#
# PYTHON selects the interpreter (default: python3); the repository's src/ is put first on PYTHONPATH so the
# checked-out balora is the one measured. Exit status 1 if a correctness check failed.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export PYTHONPATH="$here/src${PYTHONPATH:+:$PYTHONPATH}"
exec "${PYTHON:-python3}" -m balora.cli.main bench overhead --suite --device cuda --out gpu_check.json "$@"
