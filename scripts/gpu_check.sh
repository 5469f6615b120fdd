#!/usr/bin/env bash
# The one command a GPU user runs: the overhead benchmark at the GPU settings of
# benchmarks/overhead_targets.yaml (LoRA / PiSSA / BA-LoRA step time and peak memory, targets marked
# met/MISSED) and the CUDA-marked tests (`pytest -m cuda`), both in one JSON (default gpu_check.json).
#
#   scripts/gpu_check.sh                               # on a CUDA machine, from anywhere
#   scripts/gpu_check.sh --out my.json --steps 5 --rounds 5
#   scripts/gpu_check.sh --out s.json --device cpu --steps 1 --rounds 1 smoke   # smoke run on CPU (a test does this)
#
# Every argument but --out goes to benchmarks/overhead.py (setting names replace the default "gpu").
# PYTHON selects the interpreter (default python3); GPU_CHECK_TESTS the pytest paths (default tests/).
# The repository's src/ is put first on PYTHONPATH so that the checked-out balora is the one measured.
# Exit status: 1 if a CUDA test failed or the benchmark crashed; missed targets are results, not errors.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export PYTHONPATH="$here/src${PYTHONPATH:+:$PYTHONPATH}"
py="${PYTHON:-python3}"

out="gpu_check.json"
bench_args=()
named=0
while (($#)); do
  case "$1" in
    --out) out="$2"; shift 2 ;;
    --out=*) out="${1#--out=}"; shift ;;
    --*=*) bench_args+=("$1"); shift ;;
    --*) bench_args+=("$1" "${2:?$1 needs a value}"); shift 2 ;;  # every option of the benchmark takes one
    *) bench_args+=("$1"); named=1; shift ;;
  esac
done
((named)) || bench_args=(gpu "${bench_args[@]}")

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
bench_rc=0
"$py" "$here/benchmarks/overhead.py" "${bench_args[@]}" --out "$work/bench.json" || bench_rc=$?
tests_rc=0
# shellcheck disable=SC2086  # GPU_CHECK_TESTS is a list of paths
(cd "$here" && "$py" -m pytest -q -p no:cacheprovider -m cuda --junitxml="$work/tests.xml" ${GPU_CHECK_TESTS:-tests}) \
  || tests_rc=$?

"$py" - "$work" "$out" "$bench_rc" "$tests_rc" <<'EOF'
import json, sys, xml.etree.ElementTree as ET
from pathlib import Path

from balora.atomic import write_json_atomic

work, out, bench_rc, tests_rc = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
bench = json.loads((work / "bench.json").read_text()) if (work / "bench.json").is_file() else None
tests = {}
if (work / "tests.xml").is_file():
    for case in ET.parse(work / "tests.xml").iter("testcase"):
        kids = {child.tag for child in case}
        status = "failed" if kids & {"failure", "error"} else "skipped" if "skipped" in kids else "passed"
        tests[f"{case.get('classname')}::{case.get('name')}"] = status
counts = {s: sum(v == s for v in tests.values()) for s in ("passed", "failed", "skipped")}
write_json_atomic(out, {"benchmark": bench, "benchmark_exit": bench_rc, "cuda_tests": tests,
                        "cuda_test_counts": counts, "pytest_exit": tests_rc})
print(f"cuda tests: {counts['passed']} passed, {counts['failed']} failed, {counts['skipped']} skipped; results: {out}")
EOF
# pytest exits 5 when no test was selected (e.g. no CUDA-marked test collected): not a failure
((bench_rc == 0)) && ((tests_rc == 0 || tests_rc == 5))
