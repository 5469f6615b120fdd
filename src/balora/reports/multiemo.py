"""Scores and report of the MultiEmo method comparison (``balora demo``, :mod:`balora.bench.multiemo`): each run's
in-domain and out-of-domain scores, the summary over seeds, the paired comparisons, and report.md with the
per-run, summary and paired-comparison tables and the plots (all scoring through :mod:`.scoring`).

Every table and plot flags collapsed runs (one class predicted for every test example)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..atomic import write_text_atomic
from . import plots
from .scoring import (accuracy, collapsed, format_pm as _pm, macro_f1, markdown_table, mean_std, paired_bootstrap,
                      score_predictions, verdict)

PROBE = "linear probe"  # the warmed head alone on the frozen base (a row of the demo's tables)


def score_run(pred: np.ndarray, refs: np.ndarray, domains: np.ndarray, train_domain: str, k: int,
              minority: int) -> dict:
    """In-domain accuracy / macro-F1 / per-class recall / confusion, OOD accuracy and macro-F1, collapse flags."""
    ind = domains == train_domain
    scores = score_predictions(pred[ind], refs[ind], k)
    ood = {}
    for d in dict.fromkeys(domains[~ind].tolist()):
        m = domains == d
        ood[d] = {"accuracy": accuracy(pred[m], refs[m]), "macro_f1": macro_f1(pred[m], refs[m], k),
                  "collapsed": collapsed(pred[m])}
    o = ~ind
    return {"accuracy": scores["accuracy"], "macro_f1": scores["macro_f1"],
            "per_class_recall": scores["per_class_recall"], "minority_recall": scores["per_class_recall"][minority],
            "collapsed": scores["collapsed"],
            "ood_accuracy": accuracy(pred[o], refs[o]) if o.any() else float("nan"),
            "ood_macro_f1": macro_f1(pred[o], refs[o], k) if o.any() else float("nan"),
            "ood": ood, "confusion_matrix": scores["confusion_matrix"]}


SUMMARY_KEYS = ("accuracy", "macro_f1", "minority_recall", "ood_accuracy", "ood_macro_f1", "train_seconds")


def summarize(runs: list[dict], label_names: list[str]) -> dict[str, dict]:
    """Per method: mean and std over seeds of each metric, recall per class, and the collapsed-run count."""
    summary: dict[str, dict] = {}
    for method in dict.fromkeys(r["method"] for r in runs):
        rows = [r for r in runs if r["method"] == method]
        entry: dict[str, Any] = {"seeds": [r["seed"] for r in rows], "collapsed": sum(r["collapsed"] for r in rows)}
        for key in SUMMARY_KEYS:
            entry[key] = mean_std([r[key] for r in rows])
        recalls = np.array([r["per_class_recall"] for r in rows], dtype=float)
        entry["per_class_recall"] = {n: mean_std(recalls[:, i]) for i, n in enumerate(label_names)}
        summary[method] = entry
    return summary


COMPARED = (("ba-lora", "lora"), ("ba-lora", "pissa"), ("pissa", "lora"))


def compare(results: dict, n_boot: int = 1000) -> list[dict]:
    """Paired bootstrap (test examples and seeds) of each metric difference between method pairs."""
    refs = np.asarray(results["data"]["test_labels"])
    domains = np.asarray(results["data"]["test_domains"])
    ind = domains == results["data"]["train_domain"]
    k = len(results["data"]["labels"])
    by_method: dict[str, dict[int, np.ndarray]] = {}
    for r in results["runs"]:
        by_method.setdefault(r["method"], {})[r["seed"]] = np.asarray(r["predictions"])
    if results.get("probe"):  # deterministic: the same predictions for every seed
        by_method[PROBE] = {s: np.asarray(results["probe"]["predictions"]) for r in results["runs"] for s in [r["seed"]]}
    methods = list(by_method)
    pairs = [p for p in COMPARED if p[0] in by_method and p[1] in by_method]
    pairs += [(m, PROBE) for m in methods if m != PROBE and PROBE in by_method]
    pairs += [(a, b) for i, a in enumerate(methods) for b in methods[i + 1:] if (a, b) not in pairs and (b, a) not in pairs]
    out = []
    for a, b in pairs:
        seeds = sorted(set(by_method[a]) & set(by_method[b]))
        if not seeds:
            continue
        pa = np.stack([by_method[a][s] for s in seeds])
        pb = np.stack([by_method[b][s] for s in seeds])
        for scope, mask in (("in-domain", ind), ("out-of-domain", ~ind)):
            if not mask.any():
                continue
            for metric in ("accuracy", "macro_f1"):
                d = paired_bootstrap(pa[:, mask], pb[:, mask], refs[mask], metric, n_boot=n_boot, num_classes=k)
                out.append({"a": a, "b": b, "scope": scope, "metric": metric, "seeds": seeds, **d.to_dict()})
    return out


def collapse_label(method: str, summary: dict) -> str:
    """``method`` with its collapsed-run count when there is any (used in every table and plot)."""
    n = summary[method]["collapsed"]
    return f"{method} ({n}/{len(summary[method]['seeds'])} collapsed)" if n else method



def format_table(results: dict) -> str:
    """The summary: one row per method, mean ± std over seeds, majority baseline next to each score."""
    maj = results["majority"]
    minority = results["data"]["minority_class"]
    header = ["method", "collapsed", "accuracy", f"macro-F1 (majority {maj['in_domain']['macro_f1']:.3f})",
              f"recall[{minority}]", f"OOD accuracy (majority {maj['ood']['accuracy']:.3f})",
              f"OOD macro-F1 (majority {maj['ood']['macro_f1']:.3f})", "train s/run"]
    rows = []
    for method, s in results["summary"].items():
        rows.append([method, f"{s['collapsed']}/{len(s['seeds'])}", _pm(s["accuracy"]), _pm(s["macro_f1"]),
                     _pm(s["minority_recall"]), _pm(s["ood_accuracy"]), _pm(s["ood_macro_f1"]),
                     f"{s['train_seconds']['mean']:.0f}"])
    p = results.get("probe")
    if p:
        rows.append([f"({PROBE}: head only)", "1/1" if p["collapsed"] else "0/1", f"{p['accuracy']:.3f}",
                     f"{p['macro_f1']:.3f}", f"{p['minority_recall']:.3f}", f"{p['ood_accuracy']:.3f}",
                     f"{p['ood_macro_f1']:.3f}", "0"])
    return markdown_table(header, rows, align=True)


def format_runs(results: dict) -> str:
    """One row per run: every seed's scores next to the majority baseline, collapsed runs marked."""
    maj = results["majority"]
    header = ["method", "seed", "accuracy", "macro-F1", "majority macro-F1", f"recall[{results['data']['minority_class']}]",
              "OOD accuracy", "majority OOD acc", "probe train acc", "flag"]
    rows = []
    for r in results["runs"]:
        flag = "COLLAPSED" if r["collapsed"] else ("below majority" if r["macro_f1"] <= maj["in_domain"]["macro_f1"] else "")
        probe = r.get("head", {}).get("train_accuracy")
        rows.append([r["method"], r["seed"], f"{r['accuracy']:.3f}", f"{r['macro_f1']:.3f}",
                     f"{maj['in_domain']['macro_f1']:.3f}", f"{r['minority_recall']:.3f}", f"{r['ood_accuracy']:.3f}",
                     f"{maj['ood']['accuracy']:.3f}", "-" if probe is None else f"{probe:.3f}", flag])
    return markdown_table(header, rows, align=True)


def format_comparisons(results: dict) -> str:
    """Paired differences A - B with their 95% bootstrap interval (test examples and seeds resampled)."""
    header = ["A - B", "scope", "metric", "difference [95% CI]", "reading"]
    rows = []
    for c in results["comparisons"]:
        reading = verdict(c["diff"], c["within_noise"], c["a"], c["b"])
        rows.append([f"{c['a']} - {c['b']}", c["scope"], c["metric"],
                     f"{c['diff']:+.3f} [{c['low']:+.3f}, {c['high']:+.3f}]", reading])
    return markdown_table(header, rows, align=True)



def elapsed(seconds: float) -> str:
    return f"{int(seconds // 60)} min {seconds % 60:.0f} s"


def _rate_source(cfg: dict) -> str:
    """Where per-method learning rates came from (the demo's defaults: each selected on validation data)."""
    if isinstance(cfg.get("lr"), str):
        return " (each method's own rate, selected on a validation split carved from the training data: docs/results/verdict)"
    return ""


def write_report(results: dict, out: Path) -> Path:
    labels = results["data"]["labels"]
    runs = results["runs"]
    summary = results["summary"]
    methods = list(summary)
    name = {m: collapse_label(m, summary) for m in methods}
    maj = results["majority"]
    histories = {name[m]: [r["log_history"] for r in runs if r["method"] == m] for m in methods}
    plots.term_curves(histories, out / "loss_terms.png")
    recall = {name[m]: ([summary[m]["per_class_recall"][n]["mean"] for n in labels],
                        [summary[m]["per_class_recall"][n]["std"] for n in labels]) for m in methods}
    counts = results["data"]["test_label_counts"]
    groups = [f"{n}\n(n={c})" for n, c in zip(labels, counts)]
    plots.grouped_bars(groups, recall, out / "per_class_recall.png", "recall (in-domain test)",
                       "Per-class recall by method (mean ± std over seeds)", ylim=(0.0, 1.05))
    matrices = {name[m]: np.sum([r["confusion_matrix"] for r in runs if r["method"] == m], axis=0) for m in methods}
    plots.confusion_grid(matrices, labels, out / "confusion_matrices.png")
    panels = {
        "in-domain macro-F1": {m: [(r["macro_f1"], r["collapsed"]) for r in runs if r["method"] == m] for m in methods},
        "OOD accuracy": {m: [(r["ood_accuracy"], r["collapsed"] or all(v["collapsed"] for v in r["ood"].values()))
                             for r in runs if r["method"] == m] for m in methods},
        f"recall[{results['data']['minority_class']}]": {m: [(r["minority_recall"], r["collapsed"]) for r in runs
                                                             if r["method"] == m] for m in methods},
    }
    plots.run_scores(panels, {"in-domain macro-F1": maj["in_domain"]["macro_f1"], "OOD accuracy": maj["ood"]["accuracy"]},
                     out / "run_scores.png", "Every run (dot = one seed; red cross = collapsed run)")
    rows = [(f"{c['a']} - {c['b']}: {c['scope']} {c['metric']}", c["diff"], c["low"], c["high"], c["within_noise"])
            for c in results["comparisons"]]
    if rows:
        plots.interval_plot(rows, out / "paired_differences.png", "Paired differences (test examples and seeds resampled)")
    cfg = results["config"]
    data = results["data"]
    head = runs[0].get("head", {}) if runs else {}
    warm = [r["head"].get("head_warmup_seconds", 0.0) for r in runs if r.get("head")]
    text = f"""# balora demo: {', '.join(methods)} on MultiEmo sentiment, trained on {data['train_domain']}

Model: {results['model']['name']}, {head.get('pooling', '?')} pooling, head warm start `{cfg['head_warmup']}`
{f"(logistic regression on frozen features, {np.mean(warm):.1f} s per run)" if cfg['head_warmup'] != 'none' and warm else ''};
adapters r = {cfg['r']}, alpha = {cfg['alpha']} on all linear layers.
Data: {data['name']}. Train: {data['train_size']} {data['train_domain']} sentences (label counts
{data['train_label_counts']} for {labels}). In-domain test: {data['test_size']} held-out {data['train_domain']}
sentences ({data['test_label_counts']}). Out-of-domain test (no training on them): {data['ood_sizes']}.
Same subset, seeds {cfg['seeds']}, {cfg['epochs']} epoch(s), batch {cfg['batch_size']}, max length
{cfg['max_length']} tokens for every method; learning rate {cfg['lr']}{_rate_source(cfg)}.
Wall time: {elapsed(results['wall_seconds'])} on {results['machine']['cpus']} CPUs ({cfg['threads']} torch threads;
1-minute load average {results['machine'].get('load_average_1min')} at the end, the machine was shared).

Majority-class baseline (always the training set's most frequent class, `{labels[maj['in_domain']['class']]}`):
in-domain accuracy {maj['in_domain']['accuracy']:.3f}, macro-F1 {maj['in_domain']['macro_f1']:.3f};
out-of-domain accuracy {maj['ood']['accuracy']:.3f}, macro-F1 {maj['ood']['macro_f1']:.3f}.

## Every run

{format_runs(results)}

![every run](run_scores.png)

## Summary (mean ± std over seeds)

{format_table(results)}

## Paired comparisons

Differences A - B on the same test examples and seeds, with 95% bootstrap intervals ({cfg['n_boot']}
replicates; test examples and seeds both resampled). "Within noise" = the interval contains 0.

{format_comparisons(results)}

{'![paired differences](paired_differences.png)' if rows else ''}

## Per-class recall
The minority class ({data['minority_class']}) is the one the paper's imbalance claim is about.

![per-class recall](per_class_recall.png)

## Training terms
Unweighted values as logged by BALoRATrainer (task loss for all methods; the three regularisers for BA-LoRA).

![loss terms](loss_terms.png)

## Confusion matrices (in-domain, summed over seeds, row-normalised)

![confusion matrices](confusion_matrices.png)

Every number is in results.json (config, seeds, per-run metrics, predictions and logs, package versions).
"""
    return write_text_atomic(out / "report.md", text)


def anchor_report(warmed: dict, random: dict, out: Path, n_boot: int = 1000) -> Path:
    """anchors.md: the same demo with the warmed head (``head_warmup: logreg``, the reference = pretrained
    body + warmed head) and with the random head (``none``, the paper's literal step-0 anchor), per method,
    with paired bootstrap differences (same seeds, same test examples)."""
    refs = np.asarray(warmed["data"]["test_labels"])
    if refs.tolist() != random["data"]["test_labels"] or warmed["data"]["test_domains"] != random["data"]["test_domains"]:
        raise ValueError("anchor_report: the two demo results were scored on different test sets")
    domains = np.asarray(warmed["data"]["test_domains"])
    ind = domains == warmed["data"]["train_domain"]
    k = len(warmed["data"]["labels"])
    maj = warmed["majority"]
    rows, diffs = [], []
    for method in [m for m in warmed["summary"] if m in random["summary"]]:
        for label, res in (("logreg (warmed head)", warmed), ("none (random head)", random)):
            s = res["summary"][method]
            rows.append([method, label, f"{s['collapsed']}/{len(s['seeds'])}", _pm(s["accuracy"]), _pm(s["macro_f1"]),
                         _pm(s["minority_recall"]), _pm(s["ood_accuracy"]), _pm(s["ood_macro_f1"])])
        seeds = sorted({r["seed"] for r in warmed["runs"] if r["method"] == method}
                       & {r["seed"] for r in random["runs"] if r["method"] == method})
        pick = lambda res: np.stack([np.asarray(next(r["predictions"] for r in res["runs"]  # noqa: E731
                                                     if r["method"] == method and r["seed"] == s)) for s in seeds])
        a, b = pick(warmed), pick(random)
        for scope, mask in (("in-domain", ind), ("out-of-domain", ~ind)):
            for metric in ("accuracy", "macro_f1"):
                d = paired_bootstrap(a[:, mask], b[:, mask], refs[mask], metric, n_boot=n_boot, num_classes=k)
                reading = verdict(d.diff, d.within_noise, "warmed", "random")
                diffs.append([method, scope, metric, f"{d.diff:+.3f} [{d.low:+.3f}, {d.high:+.3f}]", reading])
    header = ["method", "head_warmup (anchor)", "collapsed", "accuracy", f"macro-F1 (majority {maj['in_domain']['macro_f1']:.3f})",
              f"recall[{warmed['data']['minority_class']}]", f"OOD accuracy (majority {maj['ood']['accuracy']:.3f})",
              "OOD macro-F1"]
    cfg = warmed["config"]
    text = f"""# Consistency anchor: warmed head vs random head

The same `balora demo` grid (MultiEmo, trained on {warmed['data']['train_domain']}, {warmed['data']['train_size']}
examples, seeds {cfg['seeds']}, threads {cfg['threads']}) run twice: `--head-warmup logreg` (the head is a
logistic-regression probe on frozen features before training; BA-LoRA's consistency reference is the pretrained
body with that head) and `--head-warmup none` (a random head; the reference is the paper's literal step-0 model
with its random head). For LoRA and PiSSA only the head's starting point changes; for BA-LoRA the anchor too.

## Mean ± std over seeds

{markdown_table(header, rows, align=True)}

## Paired differences, warmed - random (95% bootstrap interval over test examples and seeds)

{markdown_table(["method", "scope", "metric", "difference [95% CI]", "reading"], diffs, align=True)}
"""
    return write_text_atomic(out, text)


if __name__ == "__main__":  # python -m balora.reports.multiemo WARMED/results.json RANDOM/results.json OUT.md
    import json
    import sys

    if len(sys.argv) != 4:
        sys.exit("usage: python -m balora.reports.multiemo WARMED/results.json RANDOM/results.json OUT.md")
    anchor_report(json.loads(Path(sys.argv[1]).read_text()), json.loads(Path(sys.argv[2]).read_text()), Path(sys.argv[3]))
