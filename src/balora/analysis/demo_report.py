"""The demo's one-page report: report.md with the summary table and the three plots embedded."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..atomic import write_text_atomic
from . import plots


def write_report(results: dict, out: Path) -> Path:
    from ..demo import elapsed, format_table

    labels = results["data"]["labels"]
    runs = results["runs"]
    methods = list(results["summary"])
    histories = {m: [r["log_history"] for r in runs if r["method"] == m] for m in methods}
    plots.term_curves(histories, out / "loss_terms.png")
    recall = {m: ([results["summary"][m]["per_class_recall"][n]["mean"] for n in labels],
                  [results["summary"][m]["per_class_recall"][n]["std"] for n in labels]) for m in methods}
    counts = results["data"]["test_label_counts"]
    groups = [f"{n}\n(n={c})" for n, c in zip(labels, counts)]
    plots.grouped_bars(groups, recall, out / "per_class_recall.png", "recall (test)",
                       "Per-class recall by method (mean ± std over seeds)", ylim=(0.0, 1.05))
    matrices = {m: np.sum([r["confusion_matrix"] for r in runs if r["method"] == m], axis=0) for m in methods}
    plots.confusion_grid(matrices, labels, out / "confusion_matrices.png")
    cfg = results["config"]
    data = results["data"]
    text = f"""# balora demo: {', '.join(methods)} on VitaminC fact verification

Model: {results['model']['name']}, adapters r = {cfg['r']}, alpha = {cfg['alpha']} on all linear layers.
Data: {data['name']}; train {data['train_size']} examples (label counts {data['train_label_counts']}),
test {data['test_size']} held-out examples (label counts {data['test_label_counts']}), labels {labels}.
Same subset, seeds {cfg['seeds']}, {cfg['epochs']} epochs, batch {cfg['batch_size']}, lr {cfg['lr']} for every method.
Wall time: {elapsed(results['wall_seconds'])} on {results['machine']['cpus']} CPUs ({cfg['threads']} torch threads).

## Test results (mean ± std over seeds)

{format_table(results)}

## Per-class recall
The minority class is the one the paper's imbalance claim is about.

![per-class recall](per_class_recall.png)

## Training terms
Unweighted values as logged by BALoRATrainer (task loss for all methods; the three regularisers for BA-LoRA).

![loss terms](loss_terms.png)

## Confusion matrices (summed over seeds, row-normalised)

![confusion matrices](confusion_matrices.png)

Every number is in results.json (config, seeds, per-run metrics and logs, package versions).
"""
    return write_text_atomic(out / "report.md", text)
