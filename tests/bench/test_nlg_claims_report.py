"""benchmarks/nlg_claims.py on hand-made records: values, paired differences vs PiSSA / LoRA, noise drops, cost."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def claims():
    spec = importlib.util.spec_from_file_location("benchmarks_nlg_claims", REPO / "benchmarks" / "nlg_claims.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run(tmp: Path, variant: str, seed: int, noise: float, correct: list[int], kl: list[float] | None = None,
         train_seconds: float = 10.0) -> dict:
    folder = tmp / f"{variant}-{seed}-{noise}"
    folder.mkdir()
    # stored in another order than the ids: the report aligns examples by id
    rows = [{"id": f"p{i}", "correct": bool(c)} for i, c in enumerate(correct)][::-1]
    (folder / "arithmetic_generations.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    if kl is not None:
        (folder / "retention_examples.jsonl").write_text("".join(
            json.dumps({"id": i, "kl": k, "tuned_nll": 1.0, "tokens": 2}) + "\n" for i, k in enumerate(kl)))
    return {"key": f"{variant}{seed}{noise}", "variant": variant, "method": variant.split()[0], "seed": seed,
            "answer_noise": {"answer_noise": noise} if noise else {}, "generations": folder.name,
            "train_seconds": train_seconds, "peak_memory_mb": 100.0 + seed}


def test_report_values_intervals_and_drops(claims, tmp_path):
    records = [
        _run(tmp_path, "lora", 0, 0.0, [1, 1, 0, 0], [0.2, 0.2]),
        _run(tmp_path, "lora", 1, 0.0, [1, 0, 0, 0], [0.4, 0.4]),
        _run(tmp_path, "pissa", 0, 0.0, [1, 1, 1, 0], [0.1, 0.1], train_seconds=15.0),
        _run(tmp_path, "pissa", 1, 0.0, [1, 1, 1, 1], [0.1, 0.1], train_seconds=15.0),
        _run(tmp_path, "lora", 0, 0.4, [0, 0, 0, 0]),
        _run(tmp_path, "lora", 1, 0.4, [0, 0, 0, 0]),
        {"key": "s", "variant": "lora", "method": "lora", "seed": 0, "phase": "select"},  # left out
    ]
    result = claims.report(records, tmp_path, n_boot=200)
    rows = {(r["variant"], r["noise"], r["measure"]): r for r in result["rows"]}
    lora = rows[("lora", 0.0, "em_test")]
    assert (lora["mean"], lora["seeds"], lora["n"]) == (pytest.approx(37.5), 2, 4)  # (50 + 25) / 2
    assert rows[("pissa", 0.0, "em_test")]["mean"] == pytest.approx(87.5)
    assert lora["minus_pissa"]["diff"] == pytest.approx(-50.0) and lora["minus_pissa"]["seeds"] == [0, 1]
    assert lora["minus_pissa"]["low"] <= -50.0 <= lora["minus_pissa"]["high"]
    assert rows[("pissa", 0.0, "em_test")]["minus_lora"]["diff"] == pytest.approx(50.0)
    # KL sums over 2 tokens per prompt, pooled per seed: 0.4 / 4 and 0.8 / 4; PiSSA 0.2 / 4
    assert rows[("lora", 0.0, "kl")]["mean"] == pytest.approx(0.15)
    assert rows[("lora", 0.0, "kl")]["minus_pissa"]["diff"] == pytest.approx(0.1)
    assert ("lora", 0.0, "distinct_1") not in rows  # no samples file: no row
    (drop,) = [n for n in result["noise"] if n["measure"] == "em_test"]
    assert (drop["variant"], drop["noise"], drop["drop"]["diff"]) == ("lora", 0.4, pytest.approx(-37.5))
    cost = {(c["variant"], c["noise"]): c for c in result["cost"]}
    assert cost[("pissa", 0.0)]["train_time_vs_lora"] == pytest.approx(1.5)
    assert cost[("pissa", 0.0)]["peak_memory_mb"] == 101.0
    text = claims.markdown(result)
    assert "| 0% | lora | in-domain EM % | 37.500 ± 17.678 (2) | 4 | -50.000 [" in text
    assert "| lora | 40% | in-domain EM % | -37.500 [" in text
    short = claims.summary(result)  # clean runs only: one row per method, then the paired differences
    # only the measures some run has get a column (here in-domain EM and KL)
    assert "| method | selected | in-domain EM % | retention KL(base ‖ tuned) per token |" in short
    assert "| lora | - | 37.500 ± 17.678 | 0.150 ± 0.071 |" in short
    assert "| lora - pissa | -50.000 [" in short and "| pissa - lora | +50.000 [" in short


def test_noise_drop_is_paired_against_pissas_and_loras_drop(claims, tmp_path):
    records = [
        _run(tmp_path, "lora", 0, 0.0, [1, 1, 1, 0]), _run(tmp_path, "lora", 1, 0.0, [1, 1, 0, 0]),
        _run(tmp_path, "lora", 0, 0.4, [1, 0, 0, 0]), _run(tmp_path, "lora", 1, 0.4, [0, 0, 0, 0]),  # drop -50
        _run(tmp_path, "pissa", 0, 0.0, [1, 1, 1, 1]), _run(tmp_path, "pissa", 1, 0.0, [1, 1, 1, 0]),
        _run(tmp_path, "pissa", 0, 0.4, [1, 1, 1, 0]), _run(tmp_path, "pissa", 1, 0.4, [1, 1, 0, 0]),  # drop -25
        _run(tmp_path, "ba-lora v5", 0, 0.0, [1, 1, 0, 0]), _run(tmp_path, "ba-lora v5", 1, 0.0, [1, 1, 0, 0]),
        _run(tmp_path, "ba-lora v5", 0, 0.4, [1, 1, 0, 0]),  # seed 1 noisy missing: seed 0 only, drop 0
    ]
    result = claims.report(records, tmp_path, n_boot=200)
    drops = {n["variant"]: n for n in result["noise"] if n["measure"] == "em_test"}
    assert drops["lora"]["drop"]["diff"] == pytest.approx(-50.0)  # 12.5 - 62.5
    assert drops["lora"]["drop_minus_pissa"]["diff"] == pytest.approx(-25.0)  # LoRA loses more than PiSSA
    assert "drop_minus_lora" not in drops["lora"]  # no reference against itself
    assert drops["pissa"]["drop_minus_lora"]["diff"] == pytest.approx(25.0)
    v5 = drops["ba-lora v5"]
    assert v5["drop_minus_pissa"]["seeds"] == [0]  # only the seeds all four groups have
    assert v5["drop_minus_pissa"]["diff"] == pytest.approx(0.0 - (75.0 - 100.0))
    text = claims.markdown(result)
    assert "| lora | 40% | in-domain EM % | -50.000 [" in text and "| drop - PiSSA's drop [95 %] |" in text


def test_extra_reference_gets_its_own_paired_column(claims, tmp_path):
    records = [_run(tmp_path, "ba-lora v5 lambdas 0", s, 0.0, [1, 0, 0, 0]) for s in (0, 1)]
    records += [_run(tmp_path, "ba-lora v5 x10", s, 0.0, [1, 1, 0, 0]) for s in (0, 1)]
    result = claims.report(records, tmp_path, n_boot=50, extra_refs=("ba-lora v5 lambdas 0",))
    rows = {(r["variant"], r["measure"]): r for r in result["rows"]}
    assert rows[("ba-lora v5 x10", "em_test")]["minus_ba-lora v5 lambdas 0"]["diff"] == pytest.approx(25.0)
    assert "minus_ba-lora v5 lambdas 0" not in rows[("ba-lora v5 lambdas 0", "em_test")]
    assert "| 0% | ba-lora v5 x10 | in-domain EM % | +25.000 [" in claims.markdown(result)
    short = claims.summary(result, extra_refs=("ba-lora v5 lambdas 0",))
    assert "| ba-lora v5 x10 - ba-lora v5 lambdas 0 | +25.000 [" in short


def test_selection_table_shows_each_rate_and_the_choice(claims, tmp_path):
    tuning = {"metric": "scores.arithmetic", "choice": {"train.lr": 0.001}, "select_with": {"data.answer_noise": 0.0},
              "validation": [{"values": {"train.lr": 0.0003}, "score": 0.2, "per_seed": [0.2]},
                             {"values": {"train.lr": 0.001}, "score": 0.36, "per_seed": [0.36]}]}
    records = [{**_run(tmp_path, "pissa", s, 0.0, [1, 0]), "tuning": tuning} for s in (0, 1)]
    records.append(_run(tmp_path, "lora", 0, 0.0, [1, 1]))  # untuned: no selection row
    result = claims.report(records, tmp_path, n_boot=10)
    (sel,) = result["selection"]
    assert (sel["variant"], sel["choice"], [v["score"] for v in sel["validation"]]) == \
        ("pissa", {"train.lr": 0.001}, [0.2, 0.36])
    assert "| 0% | pissa | lr 0.0003: 0.200; lr 0.001: 0.360 | lr 0.001 |" in claims.markdown(result)


def test_base_model_pairs_with_every_seed(claims, tmp_path):
    records = [_run(tmp_path, "lora", 0, 0.0, [1, 1, 0, 0]), _run(tmp_path, "lora", 1, 0.0, [1, 0, 0, 0])]
    base = tmp_path / "base_test.jsonl"
    base.write_text("".join(json.dumps({"id": f"p{i}", "correct": c}) + "\n" for i, c in enumerate([1, 0, 0, 0])))
    result = claims.report(records, tmp_path, n_boot=200, base={"arithmetic_generations.jsonl": base})
    rows = {(r["variant"], r["measure"]): r for r in result["rows"]}
    assert rows[("base", "em_test")]["mean"] == pytest.approx(25.0) and "minus_base" not in rows[("base", "em_test")]
    assert rows[("base", "em_test")]["seeds"] == 1  # one greedy run, not one per seed
    assert rows[("lora", "em_test")]["minus_base"]["diff"] == pytest.approx(12.5)  # (50 + 25) / 2 - 25
    assert [c["variant"] for c in result["cost"]] == ["lora"]  # the base model trained nothing
    assert "| - base model [95 %] |" in claims.markdown(result)
    with pytest.raises(SystemExit):  # an unknown file name or a missing file is refused before anything runs
        claims.main(["--results", str(tmp_path / "none.jsonl"), "--base", f"nope.jsonl={base}"])
    with pytest.raises(SystemExit):
        claims.main(["--results", str(tmp_path / "none.jsonl"), "--base", "arithmetic_generations.jsonl=missing"])


def test_terms_table_shows_what_the_regularisers_weigh(claims, tmp_path):
    def curve(task, total, c):
        return [{"step": 5, "loss": 1.0, "loss_task": 1.0, "loss_consistency": 0.0, "loss_diversity": -1.0,
                 "loss_svd": -0.9},
                {"step": 40, "loss": total, "loss_task": task, "loss_consistency": c, "loss_diversity": -0.2,
                 "loss_svd": -0.9}]
    records = [{**_run(tmp_path, "ba-lora v5", 0, 0.0, [1]), "loss_curve": curve(0.1, 0.15, 2.0)},
               {**_run(tmp_path, "ba-lora v5", 1, 0.0, [0]), "loss_curve": curve(0.2, 0.23, 1.0)},
               {**_run(tmp_path, "lora", 0, 0.0, [1]), "loss_curve": [{"step": 5, "loss": 1.0, "loss_task": 1.0}]}]
    result = claims.report(records, tmp_path, n_boot=10)
    first, last = result["terms"]  # LoRA has no terms: no rows
    assert (first["at"], first["step"], last["step"], last["seeds"]) == ("first", 5, 40, 2)
    assert (last["task"], last["weighted_terms"], last["loss_consistency"]) == \
        (pytest.approx(0.15), pytest.approx(0.04), pytest.approx(1.5))
    assert "| ba-lora v5 | 0% | 40 | 0.1500 | +0.0400 | 1.5000 | -0.2000 | -0.9000 |" in claims.markdown(result)


def test_runs_on_different_problems_are_refused(claims, tmp_path):
    records = [_run(tmp_path, "lora", 0, 0.0, [1, 0]), _run(tmp_path, "lora", 1, 0.0, [1, 0, 1])]
    with pytest.raises(ValueError, match="different examples"):
        claims.report(records, tmp_path, n_boot=10)


def test_nlg_table_has_a_row_per_variant_and_kl_as_is():
    from balora.reports.nlg import nlg_table

    def rec(label: str, method: str, em: float, kl: float) -> dict:
        return {"model": "m", "task": "arithmetic", "method": method, "label": label, "wall_seconds": 60,
                "scores": {"arithmetic": em, "retention": kl}, "n": {"arithmetic": 50, "retention": 16},
                "metric": {"arithmetic": "accuracy", "retention": "kl"}}

    table = nlg_table([rec("ba-lora v5", "ba-lora", 0.5, 0.012), rec("ba-lora v5", "ba-lora", 0.3, 0.010),
                       rec("ba-lora iclr2026", "ba-lora", 0.2, 0.05), rec("lora", "lora", 0.4, 0.02)])
    rows = [line for line in table.splitlines() if line.startswith("| ") and "Method" not in line]
    assert [r.split(" | ")[0] for r in rows] == ["| lora", "| ba-lora iclr2026", "| ba-lora v5"]
    assert "| ba-lora v5 | 40.0 ± 14.1 | 0.011 ± 0.001 | 16/50 | 2 |" in table
    assert "| lora | 40.0 ± 6.9 | 0.020 | 16/50 | 1 |" in table
