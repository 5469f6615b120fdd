"""Paper-style tables (Table 2 layout) and a bar plot from a bench results file.

Per model: rows = methods with a ``#Params`` column, columns = tasks with the task's headline metric
(:func:`balora.evaluation.nlu_metrics.main_metric`: MCC for CoLA, Pearson for STS-B, accuracy otherwise;
MNLI: matched accuracy) times 100, cells ``mean ± std`` over seeds (sample std, ddof=1; a single seed shows
the value alone), and ``Avg.``: the mean over the task columns of the per-task means (shown only for a
method that has every task of the table). OOD results (``ood`` in the records) get a second table with
one column per (task, OOD set).
"""

from __future__ import annotations

import json

import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Optional

import numpy as np
import pandas as pd

from ..atomic import atomic_write, write_text_atomic
from ..data.glue import GLUE_TASKS, TABLE_ORDER as TASK_ORDER
from ..methods import table_order_key

__all__ = ["TASK_ORDER", "main_value", "summarize", "Summary", "markdown_tables", "wide_table", "write_report",
           "plot_summary"]

_METRIC_LABEL = {"accuracy": "Acc", "matthews_correlation": "MCC", "pearson": "Pearson"}


def model_label(model: str) -> str:
    """How a model is named in titles: a Hub name as is, a local folder by its last two path parts."""
    path = Path(model.rstrip("/"))
    return "/".join(path.parts[-2:]) if path.is_absolute() or path.exists() else model


def _where(record: dict) -> str:
    return f"run {record.get('method')}/{record.get('task')}/seed {record.get('seed')}"


def main_value(record: dict) -> tuple[str, float]:
    """(metric name, value x 100) of the record's headline dev-set metric."""
    from ..data.glue import get_task
    from ..evaluation.nlu_metrics import main_metric

    task = get_task(record["task"])
    metric = main_metric(task.name)
    split = task.validation_splits[0]
    try:
        return metric, 100.0 * float(record["metrics"][split][metric])
    except (KeyError, TypeError) as err:
        raise ValueError(f"{_where(record)}: no metrics.{split}.{metric} in the record") from err


def _ood_values(record: dict) -> Iterable[tuple[str, str, float]]:
    from ..evaluation.nlu_metrics import main_metric

    metric = main_metric(record["task"])
    for name, values in (record.get("ood") or {}).items():
        yield f"{record['task']}→{name}", metric, 100.0 * float(values[metric])


@dataclass
class Summary:
    """Aggregated results: one row per (table, model, method, column) with mean, std, n and params."""

    cells: pd.DataFrame
    source: str = ""
    notes: list[str] = field(default_factory=list)


def summarize(records: list[dict], source: str = "") -> Summary:
    """Aggregate seeds per (model, method, task). Duplicate keys keep the last record (with a warning); a
    cell whose runs used different settings is an error (mixing them would average different experiments)."""
    latest: dict[str, dict] = {}
    for rec in records:
        if rec["key"] in latest:
            warnings.warn(f"{source or 'results'}: {_where(rec)} is recorded more than once; using the last record",
                          stacklevel=2)
        latest[rec["key"]] = rec
    rows = []
    settings: dict[tuple, set] = {}
    for rec in latest.values():
        hp = {k: v for k, v in (rec.get("hparams") or {}).items()}
        if "config" in hp and isinstance(rec.get("config"), dict):  # a sweep record: its digest covers the seed
            train = {k: v for k, v in rec["config"].get("train", {}).items() if k != "seed"}
            hp["config"] = json.dumps({**rec["config"], "train": train}, sort_keys=True, default=str)
        settings.setdefault((rec["model"], rec["method"], rec["task"]), set()).add(repr(sorted(hp.items())))
        metric, value = main_value(rec)
        base = dict(model=rec["model"], method=rec["method"], seed=rec["seed"], params=rec.get("trainable_params"))
        rows.append({**base, "table": "glue", "task": rec["task"], "column": rec["task"], "metric": metric,
                     "value": value})
        for column, ood_metric, ood_value in _ood_values(rec):
            rows.append({**base, "table": "ood", "task": rec["task"], "column": column, "metric": ood_metric,
                         "value": ood_value})
    for cell, variants in settings.items():
        if len(variants) > 1:
            raise ValueError(f"{source or 'results'}: model {cell[0]} method {cell[1]} task {cell[2]} has runs with "
                             f"{len(variants)} different settings; write different sweeps to different files")
    if not rows:
        raise ValueError(f"{source or 'results'}: no records to report")
    frame = pd.DataFrame(rows)
    cells = (frame.groupby(["table", "model", "method", "task", "column", "metric"], sort=False)
             .agg(mean=("value", "mean"), std=("value", lambda v: float(np.std(v, ddof=1)) if len(v) > 1 else np.nan),
                  n=("value", "size"), params_min=("params", "min"), params_max=("params", "max"))
             .reset_index())
    return Summary(cells, source)


def _column_order(columns: Iterable[str]) -> list[str]:
    def key(col: str) -> tuple:
        task = col.split("→")[0]
        return (TASK_ORDER.index(task) if task in TASK_ORDER else len(TASK_ORDER), col)

    return sorted(set(columns), key=key)


def _method_order(methods: Iterable[str]) -> list[str]:
    return sorted(set(methods), key=table_order_key)


def _params(lo: Any, hi: Any) -> str:
    def fmt(n: float) -> str:
        return f"{n / 1e6:.2f}M" if n >= 1e5 else f"{n / 1e3:.1f}K"

    if pd.isna(lo):
        return "–"
    return fmt(lo) if fmt(lo) == fmt(hi) else f"{fmt(lo)}–{fmt(hi)}"  # heads differ slightly per task


def wide_table(summary: Summary, model: str, table: str = "glue") -> pd.DataFrame:
    """One model's table: index = methods; columns #Params, then per column ``<col>_mean``/``<col>_std``/``<col>_n``,
    and ``avg`` (NaN unless the method has every column)."""
    cells = summary.cells[(summary.cells["model"] == model) & (summary.cells["table"] == table)]
    columns = _column_order(cells["column"])
    out = pd.DataFrame(index=_method_order(cells["method"]))
    out.index.name = "method"
    grouped = cells.groupby("method")
    out["params_min"] = grouped["params_min"].min()
    out["params_max"] = grouped["params_max"].max()
    for col in columns:
        sub = cells[cells["column"] == col].set_index("method")
        out[f"{col}_mean"], out[f"{col}_std"], out[f"{col}_n"] = sub["mean"], sub["std"], sub["n"]
    means = out[[f"{c}_mean" for c in columns]]
    out["avg"] = means.mean(axis=1).where(means.notna().all(axis=1))
    return out


def _header(col: str, cells: pd.DataFrame) -> str:
    task, _, ood = col.partition("→")
    metric = cells.loc[cells["column"] == col, "metric"].iloc[0]
    name = (GLUE_TASKS[task].label if task in GLUE_TASKS else task) + (f"→{ood}" if ood else "")
    return f"{name} ({_METRIC_LABEL.get(metric, metric)})"


def _cell(mean: float, std: float, bold: bool) -> str:
    if pd.isna(mean):
        return "–"
    text = f"{mean:.2f}" if pd.isna(std) else f"{mean:.2f} ± {std:.2f}"
    return f"**{text}**" if bold else text


def markdown_tables(summary: Summary) -> str:
    """All tables (per model; GLUE, then OOD if any) as Markdown; the best mean of each column in bold."""
    parts = []
    for table in ("glue", "ood"):
        cells = summary.cells[summary.cells["table"] == table]
        for model in dict.fromkeys(cells["model"]):
            wide = wide_table(summary, model, table)
            columns = _column_order(cells.loc[cells["model"] == model, "column"])
            seeds = sorted(set(cells.loc[cells["model"] == model, "n"]))
            title = "GLUE dev" if table == "glue" else "OOD (no further training)"
            parts.append(f"### {title}: {model_label(model)}\n\nmean ± std over seeds (n = {', '.join(map(str, seeds))}), x100\n")
            head = ["Method", "#Params", *(_header(c, cells) for c in columns), "Avg."]
            lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] + ["---:"] * (len(head) - 1)) + "|"]
            best = {c: wide[f"{c}_mean"].max() for c in [*columns]}
            best["avg"] = wide["avg"].max()
            for method, row in wide.iterrows():
                cells_md = [_cell(row[f"{c}_mean"], row[f"{c}_std"], row[f"{c}_mean"] == best[c]) for c in columns]
                avg = _cell(row["avg"], np.nan, row["avg"] == best["avg"])
                lines.append("| " + " | ".join([method, _params(row["params_min"], row["params_max"]), *cells_md, avg])
                             + " |")
            parts.append("\n".join(lines) + "\n")
    return "\n".join(parts)


def csv_table(summary: Summary) -> pd.DataFrame:
    """All wide tables stacked (columns table, model, method, params, <col>_mean/_std/_n..., avg)."""
    frames = []
    for table in ("glue", "ood"):
        cells = summary.cells[summary.cells["table"] == table]
        for model in dict.fromkeys(cells["model"]):
            wide = wide_table(summary, model, table).reset_index()
            wide.insert(0, "model", model)
            wide.insert(0, "table", table)
            frames.append(wide)
    return pd.concat(frames, ignore_index=True)


def plot_summary(summary: Summary, path: str | os.PathLike) -> Path:
    """Grouped bars of the headline metric per task and method (error bars: std over seeds), one panel per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cells = summary.cells[summary.cells["table"] == "glue"]
    models = list(dict.fromkeys(cells["model"]))
    fig, axes = plt.subplots(len(models), 1, figsize=(max(6.0, 1.6 * cells["column"].nunique() + 2), 3.6 * len(models)),
                             squeeze=False)
    for ax, model in zip(axes[:, 0], models):
        wide = wide_table(summary, model)
        columns = _column_order(cells.loc[cells["model"] == model, "column"])
        x = np.arange(len(columns))
        width = 0.8 / max(1, len(wide.index))
        for i, method in enumerate(wide.index):
            means = [wide.loc[method, f"{c}_mean"] for c in columns]
            stds = np.nan_to_num([wide.loc[method, f"{c}_std"] for c in columns])
            ax.bar(x + (i - (len(wide.index) - 1) / 2) * width, means, width, yerr=stds, capsize=3, label=method)
        ax.set_xticks(x, [_header(c, cells) for c in columns])
        ax.set_ylabel("dev score x100")
        ax.set_title(model_label(model))
        ax.legend(fontsize=8)
        ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    path = Path(path)
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=120))
    plt.close(fig)
    return path


def write_report(summary: Summary, out_dir: str | os.PathLike, stem: str, formats: Iterable[str] = ("md", "csv"),
                 plot: bool = True, preamble: Optional[str] = None) -> list[Path]:
    """Write ``<stem>.md`` / ``<stem>.csv`` / ``<stem>.png`` into ``out_dir`` (each atomically); returns the paths."""
    out, written = Path(out_dir), []
    for fmt in formats:
        path = out / f"{stem}.{fmt}"
        if fmt == "md":
            body = (preamble.rstrip() + "\n\n" if preamble else "") + markdown_tables(summary)
            if plot:
                body += f"\n![{stem}]({stem}.png)\n"
            write_text_atomic(path, body)
        elif fmt == "csv":
            atomic_write(path, lambda tmp: csv_table(summary).to_csv(tmp, index=False, float_format="%.4f"))
        else:
            raise ValueError(f"format must be md or csv, got {fmt!r}")
        written.append(path)
    if plot:
        written.append(plot_summary(summary, out / f"{stem}.png"))
    return written
