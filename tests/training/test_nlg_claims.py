"""The NLG claims study's pieces on a tiny model: a run with noisy answers, diversity and retention recorded, and
an NLG sweep that selects its learning rate on validation benchmarks (shared by the noise levels), then tests once."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from balora.bench.nlg import NLGBenchOptions, make_nlg_cell_fn, nlg_cells, nlg_sweep, selection_evals
from balora.bench.runner import read_results
from balora.bench.sweep import load_options, run_sweep
from balora.bench.tuning import TuneConfig
from balora.config import BALoRAConfig
from balora.training.nlg import run_nlg
from balora.training.run_config import build_config
from tests.training.test_nlg import MAX_LENGTH, PROBLEMS, assets, nlg_config  # noqa: F401  (assets: a fixture)

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "nlg"


def test_run_records_answer_noise_diversity_and_retention(assets, tmp_path) -> None:  # noqa: F811
    raw = nlg_config(assets, "lora", tmp_path / "run", steps=2).identity()
    raw["data"].update(answer_noise=0.5, test=None)
    raw["eval"] = [{"task": "gsm8k", "data": str(assets["test"]), "batch_size": 3, "max_new_tokens": 12,
                    "samples": 2, "temperature": 1.0},
                   {"task": "retention", "data": "general:2", "batch_size": 2, "max_new_tokens": 4}]
    result = run_nlg(build_config(raw))
    assert result.answer_noise["corrupted"] == round(0.5 * 13) and result.answer_noise["seed"] == 0
    record = json.loads((tmp_path / "run" / "balora_run.json").read_text())
    assert record["answer_noise"] == result.answer_noise and record["instruct"]["n_examples"] == 13
    assert record["data"] == str(assets["train"])
    div = record["evals"]["gsm8k"]["diversity"]
    assert (div["samples"], div["temperature"], div["n_prompts"]) == (2, 1.0, 3)
    assert result.metrics["gsm8k"]["diversity_self_bleu"] == div["self_bleu"]
    ret = record["evals"]["retention"]
    assert ret["n"] == 2 and ret["tokens"] > 0 and ret["kl"] >= 0
    assert (tmp_path / "run" / "eval" / "retention_examples.jsonl").is_file()


def test_nlg_sweep_selects_on_validation_benchmarks_shared_by_noise_levels(assets, tmp_path) -> None:  # noqa: F811
    validation = tmp_path / "validation.jsonl"  # 2 problems; the test file has 3
    validation.write_text("".join(json.dumps({"question": q, "answer": a}) + "\n" for q, a in PROBLEMS[:2]))
    opts = NLGBenchOptions(evals=[{"task": "gsm8k", "data": str(assets["test"]), "batch_size": 3,
                                   "max_new_tokens": 12}])
    overrides = ["--model.name_or_path", str(assets["model"]), "--data.train", str(assets["train"]), "--data.format",
                 "gsm8k", "--train.max_steps", "2", f"--model.max_length={MAX_LENGTH}"]
    tune = {"grid": {"train.lr": [1e-4, 1e-3]}, "metric": "scores.gsm8k", "select_with": {"data.answer_noise": 0.0},
            "evals": [{"task": "gsm8k", "data": str(validation), "batch_size": 2, "max_new_tokens": 12}]}
    sweep = nlg_sweep(opts, None, overrides, {
        "results": str(tmp_path / "res.jsonl"), "out_dir": str(tmp_path / "runs"), "tune": tune,
        "grid": {"train.seed": [0], "data.answer_noise": [0.0, 0.5]}, "variants": {"lora": {"method.name": "lora"}}})
    cells = nlg_cells(opts, sweep)
    summary = run_sweep(sweep, make_nlg_cell_fn(opts, sweep.results), progress=False, stop_on_error=True,
                        cells=cells, subdir=False)
    assert not summary.failed
    records = read_results(sweep.results)
    select = [r for r in records if r.get("phase") == "select"]
    final = [r for r in records if r.get("phase") != "select"]
    # one selection per rate, shared by both noise levels; scored on the 2 validation problems only
    assert len(select) == 2 and all(r["n"] == {"gsm8k": 2} for r in select)
    assert len(final) == 2 and all(r["n"] == {"gsm8k": 3} for r in final)
    assert sorted(r["answer_noise"].get("corrupted", 0) for r in final) == [0, round(0.5 * 13)]
    tuning = [r["tuning"] for r in final]
    assert tuning[0]["choice"] == tuning[1]["choice"] and tuning[0]["split"] == {"evals": tune["evals"]}
    assert tuning[0]["select_with"] == {"data.answer_noise": 0.0}
    kept = {r["generations"] for r in records}  # one folder per run: the noise levels do not overwrite each other
    assert len(kept) == 4 and all((Path(k) / "gsm8k_generations.jsonl").is_file() for k in kept)
    again = run_sweep(sweep, make_nlg_cell_fn(opts, sweep.results), progress=False, cells=cells, subdir=False)
    assert not again.ran  # resumed: nothing left to do


def test_tuning_misuse_is_a_clear_error(assets, tmp_path) -> None:  # noqa: F811
    opts = NLGBenchOptions(base=True, evals=[{"task": "gsm8k", "data": str(assets["test"])}])
    sweep = nlg_sweep(opts, None, ["--model.name_or_path", "m", "--data.train", "t"],
                      {"tune": {"grid": {"train.lr": [1e-3]}}})
    with pytest.raises(ValueError, match="nothing to tune"):
        nlg_cells(opts, sweep)
    opts.base = False
    cell = nlg_cells(opts, sweep)[0]
    cell.phase, cell.holdout = "select", {"fraction": 0.2, "seed": 0}
    with pytest.raises(ValueError, match="sweep.tune.evals"):
        selection_evals(cell)
    with pytest.raises(ValueError, match="select_with"):
        TuneConfig(grid={"train.lr": [1e-3]}, select_with={"data.no_such_field": 0})
    with pytest.raises(ValueError, match="eval.task"):
        TuneConfig(grid={"train.lr": [1e-3]}, evals=[{"task": "nope", "data": "x"}])


def test_claims_and_noise_configs_share_their_selection() -> None:
    sweeps = {}
    for name in ("claims", "noise"):
        path = str(CONFIGS / f"smollm2_arithmetic_{name}.yaml")
        opts = load_options(NLGBenchOptions, path, "bench")
        sweeps[name] = (opts, nlg_sweep(opts, path))
    opts, claims = sweeps["claims"]
    cells = nlg_cells(opts, claims)
    assert sorted({c.variant for c in cells}) == ["ba-lora iclr2026", "ba-lora v5", "lora", "pissa"]
    assert len(cells) == 12 and {c.config.regularizers.formula for c in cells if c.variant.startswith("ba")} == \
        {"v5", "iclr2026"}
    ev = {e.task: e for e in cells[0].config.eval}
    assert ev["arithmetic"].samples == 4 and ev["retention"].data == "general:16" and "arithmetic-ood" in ev
    noise_opts, noise = sweeps["noise"]
    assert noise.tune == claims.tune and noise.results == claims.results
    assert sorted({c.config.data.answer_noise for c in nlg_cells(noise_opts, noise)}) == [0.2, 0.4]


def test_lambda_config_scales_the_default_weights_at_the_selected_rate() -> None:
    path = str(CONFIGS / "smollm2_arithmetic_lambdas.yaml")
    opts = load_options(NLGBenchOptions, path, "bench")
    sweep = nlg_sweep(opts, path)
    cells = nlg_cells(opts, sweep)
    assert len(cells) == 18 and sweep.tune_config() is None  # a fixed rate: the claims study's choice for v5
    claims_path = str(CONFIGS / "smollm2_arithmetic_claims.yaml")
    assert sweep.results == nlg_sweep(load_options(NLGBenchOptions, claims_path, "bench"), claims_path).results
    default = BALoRAConfig(task="nlg")
    weights = {}
    for c in cells:
        r = c.config.regularizers
        assert (c.config.method.name, r.formula, c.config.train.lr) == ("ba-lora", "v5", 3e-4)
        weights[c.variant] = (r.lambda_consistency, r.lambda_diversity, r.lambda_svd)
    d = (default.lambda_consistency, default.lambda_diversity, default.lambda_svd)
    assert weights["ba-lora v5 lambdas 0"] == (0.0, 0.0, 0.0)
    for scale in (10, 100):
        assert weights[f"ba-lora v5 x{scale}"] == pytest.approx(tuple(scale * w for w in d))
    for i, term in enumerate(("consistency", "diversity", "svd")):
        assert weights[f"ba-lora v5 {term} x10 only"] == pytest.approx(tuple(10 * w if j == i else 0.0
                                                                               for j, w in enumerate(d)))


def test_new_options_leave_old_run_keys_unchanged() -> None:
    """Records written before these options existed keep their keys: the options appear only when used."""
    raw = {"kind": "nlg", "model": {"name_or_path": "m"}, "data": {"train": "t"},
           "eval": [{"task": "arithmetic", "data": "test:5"}]}
    plain = build_config(raw).identity()
    assert "answer_noise" not in plain["data"]
    assert set(plain["eval"][0]) == {"task", "data", "limit", "batch_size", "max_new_tokens"}
    used = build_config({**raw, "data": {"train": "t", "answer_noise": 0.2},
                         "eval": [{"task": "arithmetic", "data": "test:5", "samples": 4}]}).identity()
    assert used["data"]["answer_noise"] == 0.2
    assert (used["eval"][0]["samples"], used["eval"][0]["temperature"], used["eval"][0]["sample_seed"]) == (4, 0.7, 0)
    assert build_config(used).identity() == used  # round-trips (tuning rebuilds configs from it)
