"""Each `balora analyze` analysis end to end on a tiny in-code BERT and tiny in-code data: records, reports,
plots, exact injected noise / imbalance, resumption, and the default grids' contents."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from transformers import BertTokenizerFast

from balora.bench.analyses import ANALYSES, build_analysis, run_analysis
from balora.bench.runner import read_results
from balora.bench.sweep import expand
from tests.core.tiny import tiny_bert

WORDS = "the a cat dog sat ran on under mat log big small red blue it is not".split()


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("analyses")
    vocab = root / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]) + "\n")
    folder = root / "tiny-bert"
    BertTokenizerFast(vocab_file=str(vocab)).save_pretrained(folder)
    tiny_bert(num_labels=3).save_pretrained(folder)
    rng = np.random.default_rng(0)
    for split, n in (("train", 40), ("test", 30)):
        rows = []
        for i in range(n):
            label = [0, 0, 1, 1, 2][i % 5]  # class 2 is the minority (20%)
            words = list(rng.choice(WORDS, 5)) + [("cat", "dog", "mat")[label]]
            rows.append({"text": " ".join(words), "label": label})
        (root / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    base = {"kind": "nlu", "model": {"name_or_path": str(folder), "max_length": 16},
            "data": {"train": str(root / "train.jsonl"), "test": str(root / "test.jsonl"), "text_columns": ["text"]},
            "method": {"r": 2, "head_warmup": "none"},
            "train": {"max_steps": 2, "batch_size": 8, "eval_batch_size": 32, "lr": 1e-2, "logging_steps": 1},
            "analysis": {"seeds": [0, 1], "n_boot": 50}}
    return root, base


def write(root: Path, name: str, config: dict) -> str:
    path = root / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path)


# Smaller grids than the defaults (run in seconds); the defaults' contents are checked without running below.
SMALL = {
    "ablation": {"variants": {"lora": {"method.name": "lora"}, "ba-lora": {"method.name": "ba-lora"},
                              "w/o svd": {"method.name": "ba-lora", "balora.lambda_svd": 0.0},
                              "ba-lora adaptive": {"method.name": "ba-lora", "balora.schedule": "adaptive"}}},
    "adapters": {"variants": {"lora": {"method.name": "lora"}, "loha+reg": {"method.name": "loha+reg"}}},
    "rank": {"grid": {"method.name": ["lora", "ba-lora"], "method.r": [1, 2]}},
    "lambda": {"variants": {"defaults": {"method.name": "ba-lora"},
                            "svd x0": {"method.name": "ba-lora", "balora.lambda_svd": 0.0},
                            "svd x10": {"method.name": "ba-lora", "balora.lambda_svd": 0.3},
                            "adaptive": {"method.name": "ba-lora", "balora.schedule": "adaptive"}}},
    "geometry": None,
    "noise": {"variants": {"clean": {}, "symmetric 20%": {"data.label_noise": 0.2},
                           "class-dependent 40%": {"data.label_noise": 0.4, "data.label_noise_kind": "class_dependent"},
                           "minority 20%": {"data.imbalance_fraction": 0.2}},
              "grid": {"method.name": ["lora", "ba-lora"]}},
    "cost": {"variants": {"full": {"method.name": "full"}, "lora": {"method.name": "lora"}}},
    "adaptive": {"variants": {"ba-lora constant": {"method.name": "ba-lora"},
                              "ba-lora adaptive": {"method.name": "ba-lora", "balora.schedule": "adaptive"}}},
}


@pytest.mark.parametrize("kind", list(ANALYSES))
def test_analysis_end_to_end(setup, kind):
    root, base = setup
    config = dict(base)
    if kind == "geometry":
        config["analysis"] = {**base["analysis"], "steps": [1], "subset": 20}
        config["train"] = {**base["train"], "max_steps": 3}
    if SMALL[kind]:
        config["sweep"] = SMALL[kind]
    out = root / kind
    res = run_analysis(kind, write(root, kind, config), out=str(out), command=f"balora analyze {kind} ...",
                       progress=False)
    sweep, _, _ = build_analysis(kind, write(root, kind, config), out=str(out))
    cells = expand(sweep)
    records = read_results(out / "records.jsonl")
    assert len(records) == len(cells) and not res["summary"].failed
    assert {r["label"] for r in records} == {c.label for c in cells}
    for r in records:
        assert r["analysis"] == kind and len(r["test_predictions"]) == 30 and r["test_references"] == \
            [[0, 0, 1, 1, 2][i % 5] for i in range(30)]
        assert 0 <= r["metrics"]["test"]["ece"] <= 1 and r["step_seconds"] > 0 and r["trainable_params"] > 0
    report = (out / "report.md").read_text()
    assert f"balora analyze {kind} ..." in report and "## Paired comparisons" in report
    assert "| A | B |" in report  # at least one paired comparison was made
    assert " | ece | " in report  # calibration is compared with an interval too
    for r in records:  # the top-class probability of every test row, consistent with the recorded ECE
        conf, correct = np.asarray(r["test_confidences"]), np.equal(r["test_predictions"], r["test_references"])
        assert conf.shape == (30,) and (conf > 0).all() and (conf <= 1).all()
        from balora.reports.stats import _ece_rows

        assert abs(_ece_rows(conf[None], correct[None].astype(float))[0] - r["metrics"]["test"]["ece"]) < 1e-5
    assert list(out.glob("*.png"))
    # resumable: a second call runs nothing
    again = run_analysis(kind, write(root, kind, config), out=str(out), progress=False)
    assert not again["summary"].ran and len(again["summary"].skipped) == len(cells)
    if kind == "noise":
        by = {(r["label"], r["seed"]): r for r in records}
        for seed in (0, 1):
            inj = by[("symmetric 20% lora", seed)]["injection"]
            assert inj["flipped"] == round(0.2 * 40) and inj["noise_rate"] == 0.2 and inj["seed"] == seed
            inj = by[("class-dependent 40% ba-lora", seed)]["injection"]
            assert inj["flipped"] == sum(round(0.4 * n) for n in (16, 16, 8))
            inj = by[("minority 20% lora", seed)]["injection"]
            assert inj["minority_before"] == 8 and inj["minority_after"] == round(0.2 * 8) and inj["n_train"] == 34
            assert by[("minority 20% lora", seed)]["minority_class"] == 2
        assert "minority recall" in report
    if kind == "geometry":
        from sklearn.metrics import silhouette_score

        assert records[0]["hparams"]["extra"] == {"steps": [1], "subset": 20}  # part of the key: a change reruns

        r = records[0]
        data = np.load(out / r["features_file"])
        assert sorted(r["geometry"]) == ["0", "1", "3"]
        x, y = data["features_3"], data["labels_3"]
        assert x.shape == (20, 32)
        assert r["geometry"]["3"]["silhouette"] == pytest.approx(silhouette_score(x, y))
        assert "## Geometry per captured step" in report and (out / "geometry_tsne.png").is_file()
    if kind == "cost":
        full = next(r for r in records if r["method"] == "full")
        lora = next(r for r in records if r["method"] == "lora")
        assert full["trainable_params"] > lora["trainable_params"]
        assert "peak memory (MB)" in report


def test_default_grids_hold_the_papers_designs(setup):
    root, base = setup
    cfg = write(root, "defaults", base)
    labels = {c.label for c in expand(build_analysis("ablation", cfg)[0])}
    assert labels == {"lora", "pissa", "ba-lora", "w/o consistency", "w/o diversity", "w/o svd", "only consistency",
                      "only diversity", "only svd", "ba-lora adaptive"}
    methods = {c.config.method.name for c in expand(build_analysis("adapters", cfg)[0])}
    assert methods == {m + s for m in ("lora", "dora", "loha", "adalora", "pissa") for s in ("", "+reg")}
    ranks = {(c.config.method.name, c.config.method.r) for c in expand(build_analysis("rank", cfg)[0])}
    assert ranks == {(m, r) for m in ("lora", "pissa", "ba-lora") for r in (1, 2, 4, 8, 16, 32, 64, 128)}
    lam = {c.label: c.config.regularizers for c in expand(build_analysis("lambda", cfg)[0])}
    assert sorted(round(v.lambda_svd / 0.03, 3) for k, v in lam.items() if k.startswith("svd")) == [0, 0.3, 3, 10]
    assert lam["adaptive"].schedule == "adaptive"
    noise = {(c.config.data.label_noise, c.config.data.label_noise_kind, c.config.data.imbalance_fraction)
             for c in expand(build_analysis("noise", cfg)[0])}
    assert noise == {(0.0, "symmetric", 1.0), *((r, k, 1.0) for r in (0.1, 0.2, 0.4)
                                                for k in ("symmetric", "class_dependent")),
                     *((0.0, "symmetric", f) for f in (0.5, 0.2, 0.05))}
    assert {c.config.method.name for c in expand(build_analysis("cost", cfg)[0])} == {"full", "lora", "pissa", "ba-lora"}
    assert {c.config.train.seed for c in expand(build_analysis("cost", cfg, seeds=[3, 4])[0])} == {3, 4}


def test_bad_axis_is_named(setup):
    root, base = setup
    bad = {**base, "sweep": {"grid": {"method.rank": [1, 2]}}}
    with pytest.raises(ValueError, match="unknown field 'rank' of section 'method'"):
        build_analysis("rank", write(root, "bad", bad))
    bad = {**base, "sweep": {"grid": {"method.r": [0]}}}
    with pytest.raises(ValueError, match="method.r must be >= 1"):
        expand(build_analysis("rank", write(root, "bad", bad))[0])


def test_nlg_ablation_end_to_end(tmp_path):
    """The ablation on a tiny causal LM: records per variant and seed, GSM8K-style metric, seed-paired CIs."""
    from tests.evaluation.test_generation import char_tokenizer
    from tests.training.test_nlg import CHAT_TEMPLATE, MAX_LENGTH, PROBLEMS

    from tests.core.tiny import tiny_llama

    tok = char_tokenizer()
    tok.chat_template = CHAT_TEMPLATE
    model = tiny_llama(seed=0, vocab=len(tok))
    model.config.pad_token_id, model.config.eos_token_id, model.config.bos_token_id = 0, 2, 1
    model.generation_config.pad_token_id, model.generation_config.eos_token_id = 0, 2
    model.save_pretrained(tmp_path / "model")
    tok.save_pretrained(tmp_path / "model")
    (tmp_path / "train.jsonl").write_text("".join(json.dumps({"question": q, "answer": a}) + "\n" for q, a in PROBLEMS * 3))
    (tmp_path / "test.jsonl").write_text("".join(json.dumps({"question": q, "answer": a}) + "\n" for q, a in PROBLEMS))
    config = {"kind": "nlg", "model": {"name_or_path": str(tmp_path / "model"), "max_length": MAX_LENGTH},
              "data": {"train": str(tmp_path / "train.jsonl"), "format": "gsm8k",
                       "test": f"gsm8k:{tmp_path / 'test.jsonl'}"},
              "method": {"r": 2}, "train": {"max_steps": 2, "batch_size": 3, "eval_batch_size": 3, "lr": 1e-3,
                        "logging_steps": 1},
              "analysis": {"seeds": [0, 1], "n_boot": 50},
              "sweep": {"variants": {"lora": {"method.name": "lora"}, "ba-lora": {"method.name": "ba-lora"},
                                     "w/o svd": {"method.name": "ba-lora", "balora.lambda_svd": 0.0}}}}
    cfg = write(tmp_path, "nlg", config)
    res = run_analysis("ablation", cfg, out=str(tmp_path / "out"), progress=False)
    records = read_results(tmp_path / "out" / "records.jsonl")
    assert not res["summary"].failed and len(records) == 6
    assert {r["label"] for r in records} == {"lora", "ba-lora", "w/o svd"}
    assert all("accuracy" in r["metrics"]["gsm8k"] and r["eval_split"] == "gsm8k" for r in records)
    ba = next(r for r in records if r["label"] == "ba-lora")
    assert any("loss_svd" in e for e in ba["train_loss"])
    wo = next(r for r in records if r["label"] == "w/o svd")
    assert not any("loss_svd" in e for e in wo["train_loss"])
    report = (tmp_path / "out" / "report.md").read_text()
    assert "| lora | ba-lora | accuracy |" in report and "| 2 | seeds |" in report  # NLG: paired over seeds

    # Without a generation benchmark the metric is the held-out loss, paired over examples and seeds.
    config["data"] = {**config["data"], "test": None, "validation": str(tmp_path / "test.jsonl")}
    del config["sweep"]["variants"]["w/o svd"]
    res = run_analysis("ablation", write(tmp_path, "nlg_loss", config), out=str(tmp_path / "loss"), progress=False)
    records = read_results(tmp_path / "loss" / "records.jsonl")
    assert not res["summary"].failed and len(records) == 4
    for r in records:
        assert r["eval_split"] == "validation" and len(r["test_nll"]) == len(r["test_tokens"]) == len(PROBLEMS)
        loss = sum(r["test_nll"]) / sum(r["test_tokens"])
        assert abs(loss - r["metrics"]["validation"]["loss"]) < 1e-4 * max(1.0, loss)
    report = (tmp_path / "loss" / "report.md").read_text()
    assert "| lora | ba-lora | loss |" in report and "| 2 | examples and seeds |" in report


def test_shipped_analysis_configs_expand(monkeypatch):
    """Every configs/analyses/**.yaml gives valid cells for the analyses it names (packaged model paths stubbed)."""
    from balora.data import assets

    monkeypatch.setattr(assets, "minilm_path", lambda: Path("/models/minilm"))
    monkeypatch.setattr(assets, "smollm2_path", lambda: Path("/models/smollm2"))
    paths = sorted((Path(__file__).resolve().parents[2] / "configs" / "analyses").rglob("*.yaml"))
    assert len(paths) >= 6
    for path in paths:
        kinds = ["ablation", "rank", "cost"] + (["noise", "geometry"] if "kind: nlu" in path.read_text() else [])
        for kind in kinds:
            cells = expand(build_analysis(kind, str(path))[0])
            assert cells and all(c.config.model.name_or_path for c in cells), (path, kind)


def test_cli_lists_all_eight_and_runs_one(setup, capsys):
    from balora.cli.main import main

    with pytest.raises(SystemExit):
        main(["analyze", "--help"])
    text = capsys.readouterr().out
    for kind in ("ablation", "adapters", "rank", "lambda", "geometry", "noise", "cost", "adaptive"):
        assert f"    {kind}" in text
    root, base = setup
    config = {**base, "sweep": {"variants": {"lora": {"method.name": "lora"}}}, "analysis": {"seeds": [0], "n_boot": 20}}
    out = root / "cli"
    assert main(["analyze", "cost", "--config", write(root, "cli", config), "--out", str(out),
                 "--train.max_steps", "1"]) == 0
    (record,) = read_results(out / "records.jsonl")
    assert record["steps"] == 1 and record["method"] == "lora"
    assert f"balora analyze cost --config {root / 'cli.yaml'} --out {out} --train.max_steps 1" in \
        (out / "report.md").read_text()


def test_reading_of_a_paired_difference_follows_the_metric_direction():
    from balora.reports.analysis_report import comparisons_table

    row = {"a": "ba-lora", "b": "lora", "diff": 0.2, "low": 0.1, "high": 0.3, "within_noise": False, "seeds": 2,
           "resampled": "seeds"}
    table = comparisons_table([{**row, "metric": "accuracy"}, {**row, "metric": "loss"}, {**row, "metric": "ece"}])
    readings = [line.rsplit("|", 2)[-2].strip() for line in table.splitlines()[2:]]
    assert readings == ["A better", "B better", "B better"]  # a higher loss or ECE is worse


def test_tuned_analysis_selects_on_the_carved_split_and_records_the_choice(setup, tmp_path):
    """sweep.tune on a real analysis: the selection runs see only a hold-out of the training split (10 of 40
    rows, never the 30 test rows); each final run records the grid, the score per value and the choice."""
    root, base = setup
    config = {**base, "analysis": {"seeds": [0], "n_boot": 20},
              "sweep": {"variants": {"lora": {"method.name": "lora"}, "ba-lora": {"method.name": "ba-lora"}},
                        "tune": {"grid": {"train.lr": [1e-3, 1e-2]}, "metric": "metrics.test.accuracy",
                                 "fraction": 0.25, "split_seed": 1, "seeds": [0]}}}
    res = run_analysis("ablation", write(root, "tuned", config), out=str(tmp_path / "out"), progress=False)
    assert not res["summary"].failed
    records = read_results(tmp_path / "out" / "records.jsonl")
    select = [r for r in records if r.get("phase") == "select"]
    final = [r for r in records if r.get("tuning")]
    assert len(select) == 4 and len(final) == 2
    assert sorted(r["key"] for r in res["records"]) == sorted(r["key"] for r in final)  # the report: finals only
    assert all(len(r["test_references"]) == 10 for r in select)  # the hold-out, not the test set
    assert all(len(r["test_references"]) == 30 for r in final)  # tested once, on the test set
    for r in final:
        tuning = r["tuning"]
        assert [v["values"]["train.lr"] for v in tuning["validation"]] == [1e-3, 1e-2]
        best = max(tuning["validation"], key=lambda v: v["score"])  # ties: the first
        assert tuning["choice"] == best["values"] and r["hparams"]["tuned"] == best["values"]
        assert tuning["split"] == {"fraction": 0.25, "seed": 1, "stratified": True}
