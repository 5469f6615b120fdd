"""The NLG table (records of `balora bench nlg`): the layout of the paper's Table 1, rows = methods (base first),
columns = GSM8K / MATH / HumanEval / MBPP / MT-Bench (those present)."""

from __future__ import annotations

import math
from pathlib import Path

from ..methods import table_order_key

# The paper's Table 1 columns (task name in balora.evaluation.tasks -> header), in order.
TABLE1_COLUMNS = {"gsm8k": "GSM8K", "math": "MATH", "math500": "MATH-500", "humaneval": "HumanEval",
                  "mbpp": "MBPP", "mt-bench": "MT-Bench"}


def _fmt(values: list[float], n: int, scale: float, binomial: bool, digits: int = 1) -> str:
    """mean ± sample std over seeds; one seed: value ± binomial standard error (accuracy-type metrics)."""
    mean = sum(values) / len(values)
    if len(values) > 1:
        std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))
        return f"{mean * scale:.{digits}f} ± {std * scale:.{digits}f}"
    if binomial and n:
        return f"{mean * scale:.1f} ± {math.sqrt(mean * (1 - mean) / n) * scale:.1f}"
    return f"{mean * scale:.{max(digits, 2)}f}" if scale == 1 else f"{mean * scale:.1f}"


def nlg_table(records: list[dict]) -> str:
    """Markdown tables in the layout of the paper's Table 1, one per (base model, training set).

    Rows = methods (base first; one row per variant / setting label where a sweep has them), columns = the
    benchmarks present (accuracy / pass@1 x 100; MT-Bench mean judge score 1-10; retention KL per token), then n,
    wall minutes and trainable parameters. A cell is ``mean ± std`` over seeds;
    with one seed it is ``value ± binomial standard error`` sqrt(p(1-p)/n) (x 100).
    """
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in records:
        groups.setdefault((r["model"], r["task"]), []).append(r)
    out = []
    for (model, train), recs in groups.items():
        tasks = [t for t in TABLE1_COLUMNS if any(t in r.get("scores", {}) for r in recs)]
        tasks += sorted({t for r in recs for t in r.get("scores", {})} - set(tasks))
        # one row per method, or per variant / setting (label) where a sweep has them
        labels = {r.get("label") or r["method"]: r["method"] for r in recs}
        methods = sorted(labels, key=lambda label: (table_order_key(labels[label]), label))
        header = ["Method", *[TABLE1_COLUMNS.get(t, t) for t in tasks], "n", "seeds", "wall (min)", "#Params"]
        lines = [f"**{Path(model).name or model}**, trained on `{train}`", "",
                 "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for method in methods:
            rows = [r for r in recs if (r.get("label") or r["method"]) == method]
            cells = [method]
            ns = set()
            for t in tasks:
                vals = [r["scores"][t] for r in rows if r.get("scores", {}).get(t) is not None]
                n = min((r["n"][t] for r in rows if t in r.get("n", {})), default=0)
                ns.add(n)
                metric = next((r["metric"][t] for r in rows if t in r.get("metric", {})), "accuracy")
                share = metric in ("accuracy", "pass@1")  # x 100 with a binomial error; else as is (KL: 3 digits)
                digits = 3 if metric == "kl" else 1
                cells.append(_fmt(vals, n, 100.0 if share else 1.0, share, digits) if vals else "–")
            wall = sum(r.get("wall_seconds", 0) for r in rows) / len(rows) / 60
            params = rows[0].get("trainable_params")
            cells += ["/".join(str(n) for n in sorted(ns)), str(len(rows)), f"{wall:.1f}",
                      f"{params:,}" if params else "0"]
            lines.append("| " + " | ".join(cells) + " |")
        out.append("\n".join(lines))
    return "\n\n".join(out)
