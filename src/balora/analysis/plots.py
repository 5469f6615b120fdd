"""Plots used by the reports (matplotlib, Agg backend: no display needed). Each writes one PNG atomically."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from ..atomic import atomic_write


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    return atomic_write(path, lambda tmp: fig.savefig(tmp, format=path.suffix[1:], dpi=120, bbox_inches="tight"))


TERMS = ("loss_task", "loss_consistency", "loss_diversity", "loss_svd")


def term_curves(histories: dict[str, list[list[dict]]], path: Path) -> Path:
    """One panel per loss term: value against step, one line per method (mean over seeds)."""
    plt = _plt()
    fig, axes = plt.subplots(1, len(TERMS), figsize=(4.2 * len(TERMS), 3.4))
    colors = {m: f"C{i}" for i, m in enumerate(histories)}  # one colour per method in every panel
    for ax, term in zip(axes, TERMS):
        for method, runs in histories.items():
            series = [[(h["step"], h[term]) for h in run if term in h] for run in runs]
            series = [s for s in series if s]
            if not series:
                continue
            n = min(len(s) for s in series)
            steps = [p[0] for p in series[0][:n]]
            values = np.mean([[p[1] for p in s[:n]] for s in series], axis=0)
            ax.plot(steps, values, marker=".", label=method, color=colors[method])
        ax.set_title(term.replace("loss_", ""))
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle("Training terms (unweighted; mean over seeds)")
    return _save(fig, path)


def grouped_bars(groups: Sequence[str], series: dict[str, tuple[Sequence[float], Sequence[float]]], path: Path,
                 ylabel: str, title: str, ylim: tuple[float, float] | None = None) -> Path:
    """Bars per group (x) and series (colour) with std error bars."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(1.6 + 1.3 * len(groups) * max(1, len(series)) / 3, 3.6))
    width = 0.8 / max(1, len(series))
    x = np.arange(len(groups))
    for i, (name, (means, stds)) in enumerate(series.items()):
        ax.bar(x + (i - (len(series) - 1) / 2) * width, means, width, yerr=stds, capsize=3, label=name)
    ax.set_xticks(x, groups)
    if ylim is not None:
        ax.set_ylim(*ylim)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, path)


def confusion_grid(matrices: dict[str, np.ndarray], labels: Sequence[str], path: Path) -> Path:
    """Row-normalised confusion matrices (rows = true class), one panel per method."""
    plt = _plt()
    fig, axes = plt.subplots(1, len(matrices), figsize=(3.6 * len(matrices), 3.4), squeeze=False)
    for ax, (method, m) in zip(axes[0], matrices.items()):
        m = np.asarray(m, dtype=float)
        norm = m / np.maximum(m.sum(axis=1, keepdims=True), 1)
        ax.imshow(norm, vmin=0, vmax=1, cmap="Blues")
        for i in range(norm.shape[0]):
            for j in range(norm.shape[1]):
                ax.text(j, i, f"{norm[i, j]:.2f}", ha="center", va="center",
                        color="white" if norm[i, j] > 0.5 else "black", fontsize=9)
        ax.set_xticks(range(len(labels)), labels, fontsize=8)
        ax.set_yticks(range(len(labels)), labels, fontsize=8)
        ax.set_xlabel("predicted")
        ax.set_title(method)
    axes[0][0].set_ylabel("true")
    return _save(fig, path)
