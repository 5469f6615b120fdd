"""The demo's one-page report: report.md with the per-run, summary and paired-comparison tables and the plots.

Every table and plot flags collapsed runs (one class predicted for every test example)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..atomic import write_text_atomic
from . import plots


def write_report(results: dict, out: Path) -> Path:
    from ..demo import collapse_label, elapsed, format_comparisons, format_runs, format_table

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
Same subset, seeds {cfg['seeds']}, {cfg['epochs']} epoch(s), batch {cfg['batch_size']}, lr {cfg['lr']}, max length
{cfg['max_length']} tokens for every method.
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
