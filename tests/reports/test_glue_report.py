"""balora report: mean ± std over seeds, the Avg. column and the Table 2 layout from a hand-written results file."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from balora.reports.glue import markdown_tables, summarize, wide_table, write_report
from balora.bench.runner import RunSpec, read_results

# (method, task, seed) -> headline value. RTE acc 0.60/0.62/0.64: mean 62.00, sample std 2.00;
# CoLA MCC 0.10/0.20/0.30: mean 20.00, std 10.00 -> lora Avg. (62 + 20) / 2 = 41.00.
# pissa: RTE 0.70/0.70/0.70 (std 0), CoLA 0.40/0.44/0.42 (mean 42, std 2) -> Avg. 56.00.
# ba-lora: RTE only (one seed, 0.75): no Avg. (a task is missing), no ± (a single seed).
VALUES = {
    ("lora", "rte"): [0.60, 0.62, 0.64], ("lora", "cola"): [0.10, 0.20, 0.30],
    ("pissa", "rte"): [0.70, 0.70, 0.70], ("pissa", "cola"): [0.40, 0.44, 0.42],
    ("ba-lora", "rte"): [0.75],
}
METRIC = {"rte": "accuracy", "cola": "matthews_correlation"}


def _record(method: str, task: str, seed: int, value: float, params: int = 340_000, lr: float = 1e-3) -> dict:
    spec = RunSpec("tiny-bert", method, task, seed, {"lr": lr})
    other = {"accuracy": 0.99} if task == "cola" else {}  # a non-headline metric must not be picked
    rec = {"key": spec.key(), "model": "tiny-bert", "method": method, "task": task, "seed": seed,
           "hparams": {"lr": lr}, "metrics": {"validation": {METRIC[task]: value, **other}},
           "trainable_params": params + (1 if task == "cola" else 0)}
    if task == "rte":
        rec["ood"] = {"sick": {"accuracy": value - 0.1}}
    return rec


@pytest.fixture
def results(tmp_path: Path) -> Path:
    path = tmp_path / "glue_tiny.jsonl"
    lines = [json.dumps(_record(m, t, s, v)) for (m, t), vals in VALUES.items() for s, v in enumerate(vals)]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_mean_std_and_average(results: Path) -> None:
    summary = summarize(read_results(results))
    wide = wide_table(summary, "tiny-bert")
    assert list(wide.index) == ["lora", "pissa", "ba-lora"]
    assert wide.loc["lora", "rte_mean"] == pytest.approx(62.0) and wide.loc["lora", "rte_std"] == pytest.approx(2.0)
    assert wide.loc["lora", "cola_mean"] == pytest.approx(20.0) and wide.loc["lora", "cola_std"] == pytest.approx(10.0)
    assert wide.loc["lora", "avg"] == pytest.approx(41.0)
    assert wide.loc["pissa", "rte_std"] == pytest.approx(0.0) and wide.loc["pissa", "avg"] == pytest.approx(56.0)
    assert wide.loc["ba-lora", "rte_mean"] == pytest.approx(75.0) and pd.isna(wide.loc["ba-lora", "rte_std"])
    assert pd.isna(wide.loc["ba-lora", "avg"]) and wide.loc["ba-lora", "rte_n"] == 1
    ood = wide_table(summary, "tiny-bert", "ood")
    assert ood.loc["lora", "rte→sick_mean"] == pytest.approx(52.0)


def test_markdown_layout(results: Path) -> None:
    text = markdown_tables(summarize(read_results(results)))
    lines = [line for line in text.splitlines() if line.startswith("|")]
    assert lines[0] == "| Method | #Params | CoLA (MCC) | RTE (Acc) | Avg. |"  # paper order: CoLA before RTE
    assert lines[2] == "| lora | 0.34M | 20.00 ± 10.00 | 62.00 ± 2.00 | 41.00 |"
    assert lines[3] == "| pissa | 0.34M | **42.00 ± 2.00** | 70.00 ± 0.00 | **56.00** |"
    assert lines[4] == "| ba-lora | 0.34M | – | **75.00** | – |"
    assert "| RTE→sick (Acc) |" in text and "n = 1, 3" in text


def test_write_report_files(results: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    paths = write_report(summarize(read_results(results)), out, "glue_tiny", preamble="# Title\n\ncommand")
    assert sorted(p.name for p in paths) == ["glue_tiny.csv", "glue_tiny.md", "glue_tiny.png"]
    assert (out / "glue_tiny.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = (out / "glue_tiny.md").read_text()
    assert md.startswith("# Title\n\ncommand\n\n### GLUE dev: tiny-bert") and "![glue_tiny](glue_tiny.png)" in md
    csv = pd.read_csv(out / "glue_tiny.csv")
    row = csv[(csv["table"] == "glue") & (csv["method"] == "lora")].iloc[0]
    assert row["cola_mean"] == pytest.approx(20.0) and row["avg"] == pytest.approx(41.0)
    assert not list(out.glob(".*.tmp"))


def test_report_cli(results: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from balora.cli.main import main

    assert main(["report", str(results), "--out", str(tmp_path / "o"), "--format", "md", "--no-plot"]) == 0
    assert "| lora | 0.34M | 20.00 ± 10.00 | 62.00 ± 2.00 | 41.00 |" in capsys.readouterr().out
    assert [p.name for p in (tmp_path / "o").iterdir()] == ["glue_tiny.md"]
    assert main(["report", str(tmp_path / "missing.jsonl")]) == 2


def test_mixed_settings_and_duplicates(results: Path) -> None:
    records = read_results(results)
    with pytest.warns(UserWarning, match="recorded more than once"):
        summary = summarize(records + [_record("lora", "rte", 0, 0.90)])
    assert wide_table(summary, "tiny-bert").loc["lora", "rte_mean"] == pytest.approx((90 + 62 + 64) / 3)
    with pytest.raises(ValueError, match="method lora task rte has runs with 2 different settings"):
        summarize(records + [_record("lora", "rte", 0, 0.9, lr=5e-4)])
    bad = dict(records[0], metrics={"validation": {"f1": 0.5}})
    with pytest.raises(ValueError, match="run lora/rte/seed 0: no metrics.validation.accuracy"):
        summarize([bad])


def test_report_cli_picks_the_table_by_record_kind(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """`balora report` on `balora bench nlg` records renders the NLG table (Table 1), not the GLUE one; records
    written before the ``kind`` field existed are told apart by their task."""
    import json

    from balora.cli.main import main

    rows = [{"key": f"{m}-0", "method": m, "seed": 0, "task": "gsm8k-train", "model": "tiny", "metric": "accuracy",
             "scores": {"gsm8k": s / 100}, "n": {"gsm8k": 40}, "wall_seconds": 60.0, "trainable_params": p}
            for m, s, p in (("base", 2.5, 0), ("lora", 5.0, 1000))]
    results = tmp_path / "nlg.jsonl"
    results.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main(["report", str(results), "--out", str(tmp_path / "o")]) == 0
    out = capsys.readouterr().out
    assert "| Method | GSM8K | n | seeds | wall (min) | #Params |" in out and "GLUE" not in out
    assert "| lora | 5.0 ± 3.4 | 40 | 1 | 1.0 | 1,000 |" in (tmp_path / "o" / "nlg.md").read_text()


def test_report_cli_renders_analysis_records(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """`balora report` on `balora analyze` records (the committed noise run): its main table and paired rows."""
    from balora.cli.main import main

    records = Path(__file__).resolve().parents[2] / "docs" / "results" / "analyses" / "noise" / "records.jsonl"
    assert main(["report", str(records), "--out", str(tmp_path / "o")]) == 0
    out = capsys.readouterr().out
    assert "## Analysis: noise" in out and "| symmetric 40% ba-lora |" in out
    assert "| symmetric 40% ba-lora | symmetric 40% lora | accuracy |" in out  # paired within the setting
