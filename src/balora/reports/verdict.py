"""The verdict page: every method at its own selected setting, on several tasks, paired against PiSSA and LoRA.

Input: the records of tuned sweeps (``balora analyze ... `` or ``balora bench nlu`` with a ``sweep.tune`` section),
one records list per task. Only ``final`` runs (trained on the whole training split with the setting chosen on the
carved validation split, tested once) enter the tables; the selection runs' scores come from each final record's
``tuning`` entry. Per task:

- a main table: the chosen learning rate and its validation score, the task's primary score (macro-F1 for more
  than two classes, accuracy for two, Pearson r for a regression), minority-class recall, ECE, the pooled
  out-of-domain score, collapsed runs, seconds per step and peak memory;
- paired comparisons of every variant against ``pissa`` and ``lora``: the seed-averaged difference with a 95 %
  bootstrap interval that resamples test examples and seeds (:func:`balora.reports.stats.paired_bootstrap`);
- one panel of the learning-rate plot: validation score against rate per variant.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np

from .scoring import format_pm, is_collapsed, markdown_table, mean_std
from .stats import ece, macro_f1, paired_bootstrap, paired_ece_bootstrap

__all__ = ["Run", "TaskVerdict", "normalise", "task_verdict", "summary_table", "lr_plot", "verdict_page"]

REFERENCES = ("pissa", "lora")


@dataclass
class Run:
    """One final (tested) run, read from a sweep record of either kind."""

    variant: str
    seed: int
    formula: Optional[str]
    lr: Optional[float]
    sets: dict[str, tuple[np.ndarray, np.ndarray, Optional[np.ndarray]]]  # "in-domain" / "ood": pred, ref, conf
    regression: bool
    num_labels: int
    minority: Optional[int]
    step_seconds: Optional[float]
    peak_mb: Optional[float]
    tuning: Optional[dict]


def _formula(r: dict) -> Optional[str]:
    """The record's formula version; for a regularised record made before sweeps recorded it, its config's, else
    'unrecorded' (never a guess)."""
    if "formula" in r:
        return r["formula"]
    method = str(r.get("method", ""))
    if not (method == "ba-lora" or method.endswith("+reg")):
        return None
    return ((r.get("config") or {}).get("regularizers") or {}).get("formula") or "unrecorded"


def normalise(r: dict) -> Optional[Run]:
    """The :class:`Run` of a final record (``None`` for a selection run or a record without test predictions).
    Analysis records hold ``test_predictions`` / ``test_references`` / ``test_confidences``; bench nlu records hold
    ``predictions`` / ``references`` / ``confidences`` per evaluated set (the first is the dev set, ``ood`` names
    the out-of-domain sets, pooled here into one set)."""
    if r.get("phase", "final") != "final":
        return None
    sets: dict[str, tuple] = {}
    if "test_predictions" in r:
        conf = r.get("test_confidences")
        sets["in-domain"] = (np.asarray(r["test_predictions"]), np.asarray(r["test_references"]),
                             None if conf is None else np.asarray(conf, float))
    elif r.get("predictions"):
        preds, refs, confs = r["predictions"], r["references"], r.get("confidences") or {}
        main = next(iter(r.get("metrics") or preds))
        sets["in-domain"] = (np.asarray(preds[main]), np.asarray(refs[main]),
                             np.asarray(confs[main], float) if main in confs else None)
        ood = sorted(k for k in preds if k.startswith("ood/") or k in (r.get("ood") or {}))
        if ood:
            has_conf = all(k in confs for k in ood)
            sets["ood"] = (np.concatenate([np.asarray(preds[k]) for k in ood]),
                           np.concatenate([np.asarray(refs[k]) for k in ood]),
                           np.concatenate([np.asarray(confs[k], float) for k in ood]) if has_conf else None)
    else:
        return None
    pred, ref, _ = sets["in-domain"]
    regression = bool(np.issubdtype(np.asarray(pred).dtype, np.floating))
    steps = r.get("steps")
    if not steps and r.get("train_examples"):
        train = (r.get("config") or {}).get("train") or {}
        steps = math.ceil(r["train_examples"] / train.get("batch_size", 16)) * train.get("epochs", 1)
    step_seconds = r.get("step_seconds") or (r["train_seconds"] / steps if steps and r.get("train_seconds") else None)
    lr = (r.get("tuning") or {}).get("choice", {}).get("train.lr")
    if lr is None:
        lr = ((r.get("config") or {}).get("train") or {}).get("lr")
    return Run(variant=str(r.get("variant") or r.get("label") or r["method"]), seed=int(r["seed"]),
               formula=_formula(r), lr=lr, sets=sets, regression=regression,
               num_labels=int(r.get("num_labels") or (1 if regression else int(max(pred.max(), ref.max())) + 1)),
               minority=r.get("minority_class"), step_seconds=step_seconds, peak_mb=r.get("peak_memory_mb"),
               tuning=r.get("tuning"))


# ------------------------------------------------------------------------------------------------ metrics
def _pearson(pred: np.ndarray, ref: np.ndarray) -> float:
    with np.errstate(invalid="ignore", divide="ignore"):  # a constant resample: nan, as scipy's pearsonr
        return float(np.corrcoef(pred.astype(float), ref.astype(float))[0, 1])


def _recall_of(cls: int) -> Callable[[np.ndarray, np.ndarray], float]:
    def recall(pred: np.ndarray, ref: np.ndarray) -> float:
        mask = ref == cls
        return float((pred[mask] == cls).mean()) if mask.any() else float("nan")
    return recall


def primary_metric(run: Run) -> str:
    """macro_f1 (more than two classes), accuracy (two) or pearson (regression)."""
    return "pearson" if run.regression else "macro_f1" if run.num_labels > 2 else "accuracy"


def _metric_fn(name: str, run: Run) -> Any:
    if name == "pearson":
        return _pearson
    if name == "minority_recall":
        return _recall_of(int(run.minority))
    return name  # accuracy / macro_f1: paired_bootstrap's vectorised forms


def _value(name: str, run: Run, which: str = "in-domain") -> Optional[float]:
    if which not in run.sets:
        return None
    pred, ref, conf = run.sets[which]
    if name == "ece":
        return None if conf is None else ece(conf, pred == ref)
    if name == "minority_recall" and run.minority is None:
        return None
    fn = _metric_fn(name, run)
    if fn == "accuracy":
        return float((pred == ref).mean())
    if fn == "macro_f1":
        return macro_f1(pred, ref, run.num_labels)
    return fn(pred, ref)


# --------------------------------------------------------------------------------------------- one task
@dataclass
class TaskVerdict:
    """One task's runs (variant -> seed -> Run) and its tables."""

    name: str
    runs: dict[str, dict[int, Run]]
    metric: str
    comparisons: list[dict] = field(default_factory=list)


def _paired(a: dict[int, Run], b: dict[int, Run], name: str, which: str, n_boot: int) -> Optional[dict]:
    seeds = sorted(set(a) & set(b))
    if not seeds or any(which not in g[s].sets for g in (a, b) for s in seeds):
        return None
    run0 = a[seeds[0]]
    ref = run0.sets[which][1]
    if any(not np.array_equal(g[s].sets[which][1], ref) for g in (a, b) for s in seeds):
        raise ValueError(f"paired comparison on {which}: the variants were scored on different examples")
    pa = np.stack([a[s].sets[which][0] for s in seeds])
    pb = np.stack([b[s].sets[which][0] for s in seeds])
    if name == "ece":
        if any(g[s].sets[which][2] is None for g in (a, b) for s in seeds):
            return None

        def arrays(g: dict[int, Run]) -> tuple:
            return (np.stack([g[s].sets[which][2] for s in seeds]),
                    np.stack([g[s].sets[which][0] == g[s].sets[which][1] for s in seeds]).astype(float))

        d = paired_ece_bootstrap(*arrays(a), *arrays(b), n_boot=n_boot)
    else:
        if name == "minority_recall" and run0.minority is None:
            return None
        d = paired_bootstrap(pa, pb, ref, _metric_fn(name, run0), n_boot=n_boot, num_classes=run0.num_labels)
    return {"diff": d.diff, "low": d.low, "high": d.high, "within_noise": d.within_noise, "seeds": len(seeds)}


def task_verdict(name: str, records: Sequence[dict], n_boot: int = 1000) -> TaskVerdict:
    """The final runs of one task's records and their paired comparisons against pissa and lora."""
    runs: dict[str, dict[int, Run]] = {}
    for r in records:
        run = normalise(r)
        if run is not None:
            runs.setdefault(run.variant, {})[run.seed] = run  # a rerun's record replaces the earlier one
    if not runs:
        raise ValueError(f"verdict task {name!r}: no final (tested) runs among {len(records)} records")
    metric = primary_metric(next(iter(next(iter(runs.values())).values())))
    out = TaskVerdict(name, runs, metric)
    for base in REFERENCES:
        if base not in runs:
            continue
        for variant in runs:
            if variant == base:
                continue
            for measure, which in ((metric, "in-domain"), ("minority_recall", "in-domain"), ("ece", "in-domain"),
                                   (metric, "ood")):
                c = _paired(runs[variant], runs[base], measure, which, n_boot)
                if c is not None:
                    out.comparisons.append({"variant": variant, "vs": base, "measure": measure, "set": which, **c})
    return out


def _pm(values: list[Optional[float]]) -> str:
    vals = [v for v in values if v is not None and not math.isnan(v)]
    return format_pm(mean_std(vals)) if vals else "–"


def _ci(c: Optional[dict]) -> str:
    if c is None:
        return "–"
    if math.isnan(c["low"]) or math.isnan(c["high"]):
        return f"{c['diff']:+.3f} (no interval: a resample lacked the class)"
    mark = "" if c["within_noise"] else " *"
    return f"{c['diff']:+.3f} [{c['low']:+.3f}, {c['high']:+.3f}]{mark}"


def _rate(v: float) -> str:
    """1e-4, 3e-4, 1e-3 ... as written in the configs."""
    mant, exp = f"{v:.0e}".split("e")
    return f"{mant}e{int(exp)}"


def _chosen(runs: dict[int, Run]) -> tuple[str, str]:
    tuning = next((r.tuning for r in runs.values() if r.tuning), None)
    lr = next(iter(runs.values())).lr
    if not tuning:
        return (_rate(lr) if lr is not None else "–"), "–"
    choice = tuning["choice"]
    score = next((v["score"] for v in tuning["validation"] if v["values"] == choice), None)
    return ", ".join(_rate(v) if k == "train.lr" else f"{v:g}" for k, v in choice.items()), (f"{score:.3f}" if score is not None else "–")


def main_table(tv: TaskVerdict) -> str:
    has_ood = any("ood" in r.sets for g in tv.runs.values() for r in g.values())
    head = ["variant", "formula", "selected lr", "validation", f"{tv.metric} (held-out)", "minority recall", "ECE"]
    head += (["OOD " + tv.metric] if has_ood else []) + ["collapsed", "s / step", "peak MB"]
    rows = []
    for variant, g in tv.runs.items():
        runs = [g[s] for s in sorted(g)]
        lr, val = _chosen(g)
        collapsed = sum(is_collapsed(r.sets["in-domain"][0], r.sets["in-domain"][1], r.regression) for r in runs)
        step = [r.step_seconds for r in runs if r.step_seconds]
        peak = [r.peak_mb for r in runs if r.peak_mb]
        row = [variant, runs[0].formula or "–", lr, val, _pm([_value(tv.metric, r) for r in runs]),
               _pm([_value("minority_recall", r) for r in runs]), _pm([_value("ece", r) for r in runs])]
        row += [_pm([_value(tv.metric, r, "ood") for r in runs])] if has_ood else []
        row += [f"{collapsed} / {len(runs)}", f"{np.mean(step):.2f}" if step else "–",
                f"{np.mean(peak):.0f}" if peak else "–"]
        rows.append(row)
    return markdown_table(head, rows)


def comparisons_table(tv: TaskVerdict) -> str:
    rows = []
    measures = [(tv.metric, "in-domain"), ("minority_recall", "in-domain"), ("ece", "in-domain"), (tv.metric, "ood")]
    present = [m for m in measures if any((c["measure"], c["set"]) == m for c in tv.comparisons)]
    for base in REFERENCES:
        for variant in tv.runs:
            cells = [next((c for c in tv.comparisons if c["variant"] == variant and c["vs"] == base
                           and (c["measure"], c["set"]) == m), None) for m in present]
            if any(cells):
                rows.append([f"{variant} - {base}", *(_ci(c) for c in cells)])
    head = ["comparison", *(f"{m} ({s})" if s == "ood" else m for m, s in present)]
    return markdown_table(head, rows)


def summary_table(tasks: Sequence[TaskVerdict], variants: Sequence[str]) -> str:
    """One row per task: each of ``variants`` minus pissa and minus lora on the task's primary score, and ECE."""
    head = ["task", "metric"]
    cols = [(v, b) for v in variants for b in REFERENCES]
    head += [f"{v} - {b}" for v, b in cols] + [f"ECE {v} - pissa" for v in variants]
    rows = []
    for tv in tasks:
        def find(v: str, b: str, measure: str) -> Optional[dict]:
            return next((c for c in tv.comparisons if c["variant"] == v and c["vs"] == b and c["measure"] == measure
                         and c["set"] == "in-domain"), None)
        rows.append([tv.name, tv.metric, *(_ci(find(v, b, tv.metric)) for v, b in cols),
                     *(_ci(find(v, "pissa", "ece")) for v in variants)])
    return markdown_table(head, rows)


def lr_plot(tasks: Sequence[TaskVerdict], path: Path) -> Optional[Path]:
    """Validation score against learning rate, one panel per task, one line per variant (chosen rate marked)."""
    from .plots import _plt, _save

    panels = []
    for tv in tasks:
        lines = {}
        for variant, g in tv.runs.items():
            tuning = next((r.tuning for r in g.values() if r.tuning), None)
            if tuning and list(tuning["grid"]) == ["train.lr"]:
                pts = [(v["values"]["train.lr"], v["score"]) for v in tuning["validation"]]
                lines[variant] = (pts, tuning["choice"]["train.lr"])
        if lines:
            panels.append((tv, lines))
    if not panels:
        return None
    plt = _plt()
    fig, axes = plt.subplots(1, len(panels), figsize=(4.4 * len(panels), 3.6), squeeze=False)
    for ax, (tv, lines) in zip(axes[0], panels):
        for i, (variant, (pts, chosen)) in enumerate(lines.items()):
            x, y = zip(*pts)
            ax.plot(x, y, marker="o", ms=3, label=variant, color=f"C{i}")
            ax.plot([chosen], [dict(pts)[chosen]], marker="*", ms=12, color=f"C{i}")
        ax.set_xscale("log")
        ax.set_title(tv.name, fontsize=10)
        ax.set_xlabel("learning rate")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6)  # each panel its own: tasks can have different variants
    axes[0][0].set_ylabel("validation score (carved from train)")
    fig.suptitle("Validation score per learning rate (star = selected)")
    return _save(fig, path)


def verdict_page(tasks: Sequence[tuple[str, Sequence[dict]]], out: Path, *, n_boot: int = 1000, command: str = "",
                 summary_variants: Sequence[str] = ("ba-lora v5", "ba-lora iclr2026")) -> Path:
    """Write ``out/verdict.md`` and ``out/verdict_lr.png`` from ``(task name, records)`` pairs; returns the page."""
    from ..atomic import write_text_atomic

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    verdicts = [task_verdict(name, records, n_boot) for name, records in tasks]
    lines = ["# Verdict tables", "", "Command:", "", "```", command or "(not recorded)", "```", "",
             "Every row is a method at its own learning rate, selected on a validation split carved from the training "
             "data (never the test set), then trained with every seed and tested once. Intervals: paired 95 % "
             f"bootstrap over test examples and seeds ({n_boot} replicates); `*` = the interval excludes 0. "
             "Lower ECE is better. A collapsed run predicts one class everywhere (regression: a prediction spread "
             "under 5 % of the labels').", "", "## Summary: differences on each task's primary score", "",
             summary_table(verdicts, [v for v in summary_variants if any(v in tv.runs for tv in verdicts)]), ""]
    for tv in verdicts:
        seeds = sorted({s for g in tv.runs.values() for s in g})
        lines += [f"## {tv.name}", "", f"Seeds {seeds}; primary score `{tv.metric}`.", "", main_table(tv), "",
                  comparisons_table(tv), ""]
    plot = lr_plot(verdicts, out / "verdict_lr.png")
    if plot is not None:
        lines += ["## Validation score per learning rate", "", f"![{plot.name}]({plot.name})", ""]
    path = out / "verdict.md"
    write_text_atomic(path, "\n".join(lines))
    return path
