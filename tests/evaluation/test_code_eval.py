"""HumanEval / MBPP loading, program building, post-processing, parallel evaluation and pass@k."""

from __future__ import annotations

import gzip
import json
import time
from math import comb

import pytest

from balora.evaluation.code_eval import (
    CodeProblem,
    build_program,
    estimate_pass_at_k,
    evaluate_samples,
    load_humaneval,
    load_mbpp,
    mbpp_prompt,
    pass_at_k,
    postprocess_completion,
)

HE = CodeProblem("T/0", "humaneval", 'def add(a, b):\n    """Add."""\n', "    return a + b\n",
                 "def check(candidate):\n    assert candidate(2, 3) == 5\n", "add")
MB = CodeProblem("7", "mbpp", "Write a function to add.", "def add(a, b):\n    return a + b",
                 "assert add(1, 2) == 3\nassert add(0, 0) == 0", setup="")


def test_pass_at_k_matches_combinatorics():
    for n, c, k in [(10, 3, 1), (10, 3, 5), (5, 0, 2), (5, 5, 3), (20, 7, 10)]:
        assert pass_at_k(n, c, k) == pytest.approx(1 - comb(n - c, k) / comb(n, k))
    with pytest.raises(ValueError):
        pass_at_k(3, 4, 1)
    results = [{"task_id": "a", "passed": p} for p in (True, False, False, False)] + \
              [{"task_id": "b", "passed": p} for p in (True, True, False, False)]
    est = estimate_pass_at_k(results, ks=(1, 2))
    assert est["pass@1"] == pytest.approx((0.25 + 0.5) / 2)
    assert est["pass@2"] == pytest.approx((0.5 + 5 / 6) / 2)


def test_postprocess_fences_prompt_and_stops():
    raw = "Sure!\n```python\n    return a + b\n\nprint(add(1, 2))\n```\nexplanation"
    assert postprocess_completion(raw, HE) == "    return a + b\n"
    assert postprocess_completion(HE.prompt + "    return a + b\ndef other():\n    pass", HE) == "    return a + b"
    full = "def helper(x):\n    return x\n\ndef add(a, b):\n    return helper(a) + b\n\nif __name__ == '__main__':\n    pass"
    assert postprocess_completion(full, HE) == full.split("\n\nif __name__")[0] + "\n"
    assert postprocess_completion("def add(a,b):\n    return a+b\nassert add(1,2)==3\n[DONE]", MB) == \
        "def add(a,b):\n    return a+b"


def test_build_program_and_evaluate_mixed_samples():
    assert build_program(HE, "    return a + b\n").endswith("check(add)\n")
    assert "assert add(1, 2) == 3" in build_program(MB, MB.reference)
    assert "Your code should pass these tests" in mbpp_prompt(MB)
    samples = [("T/0", "    return a + b\n"), ("T/0", ""), ("T/0", "    while True: pass\n"),
               ("T/0", "    return a - b\n"), {"task_id": "7", "completion": MB.reference},
               {"task_id": "7", "completion": "import os\nos._exit(0)"}]
    res = evaluate_samples([HE, MB], samples, timeout_s=2, memory_mb=512, workers=2)
    assert [r["status"] for r in res] == ["passed", "failed", "timeout", "failed", "passed", "failed"]
    assert [r["task_id"] for r in res] == ["T/0"] * 4 + ["7"] * 2
    with pytest.raises(ValueError, match="unknown task_id"):
        evaluate_samples([HE], [("nope", "")])


def test_loaders_validate_rows(tmp_path):
    bad = tmp_path / "he.jsonl.gz"
    with gzip.open(bad, "wt") as f:
        f.write(json.dumps({"task_id": "x", "prompt": "p"}) + "\n")
    with pytest.raises(ValueError, match=r"row 1: missing field\(s\)"):
        load_humaneval(bad)
    mb = tmp_path / "mbpp.jsonl"
    mb.write_text(json.dumps({"task_id": 11, "text": "t", "code": "c", "test_list": ["assert 1"]}) + "\n{oops\n")
    with pytest.raises(ValueError, match="line 2 is not valid JSON"):
        load_mbpp(mb)
    with pytest.raises(ValueError, match="split"):
        load_mbpp(mb, split="dev")


@pytest.mark.shared_data
def test_humaneval_canonical_solutions_all_pass(shared_data):
    problems = load_humaneval(shared_data / "humaneval" / "HumanEval.jsonl.gz")
    assert len(problems) == 164
    samples = [(p.task_id, postprocess_completion(p.reference, p)) for p in problems]
    samples += [(p.task_id, "") for p in problems[:5]]  # empty completions
    res = evaluate_samples(problems, samples, timeout_s=10, memory_mb=1024, workers=2)
    assert [r["task_id"] for r in res[:164] if not r["passed"]] == []
    assert [r["status"] for r in res[164:]] == ["failed"] * 5


# MBPP task 123 (sum of amicable numbers below 9999) has an O(n^2) reference that needs ~5-15 s of
# CPU on a loaded machine, so under the 5 s limit used here it may time out; every other test-split
# reference must pass.
MBPP_SLOW = {"123"}


@pytest.mark.shared_data
def test_mbpp_reference_code_test_split(shared_data):
    problems = load_mbpp(shared_data / "mbpp" / "mbpp.jsonl", split="test")
    assert len(problems) == 500 and problems[0].task_id == "11" and problems[-1].task_id == "510"
    start = time.monotonic()
    res = evaluate_samples(problems, [(p.task_id, p.reference) for p in problems], timeout_s=5, workers=2)
    elapsed = time.monotonic() - start
    failed = {r["task_id"]: r["status"] for r in res if not r["passed"]}
    assert set(failed) <= MBPP_SLOW, failed
    assert all(status == "timeout" for status in failed.values())
    print(f"MBPP test split: {500 - len(failed)}/500 passed in {elapsed:.1f} s on 2 workers")
