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


def run_scores(panels: dict[str, dict[str, list[tuple[float, bool]]]], baselines: dict[str, float], path: Path,
               title: str) -> Path:
    """One panel per score: each run as a dot per method (x), the majority baseline as a dashed line, and
    collapsed runs (one class predicted everywhere) as red crosses labelled "collapsed"."""
    plt = _plt()
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.6), squeeze=False)
    for ax, (name, by_method) in zip(axes[0], panels.items()):
        methods = list(by_method)
        for i, method in enumerate(methods):
            values = by_method[method]
            jitter = np.linspace(-0.12, 0.12, len(values)) if len(values) > 1 else [0.0]
            for dx, (v, is_collapsed) in zip(jitter, values):
                if is_collapsed:
                    ax.plot(i + dx, v, "x", color="red", markersize=9, mew=2)
                    ax.annotate("collapsed", (i + dx, v), textcoords="offset points", xytext=(4, 4), fontsize=7, color="red")
                else:
                    ax.plot(i + dx, v, "o", color=f"C{i}")
        if name in baselines:
            ax.axhline(baselines[name], ls="--", color="grey", label=f"majority class ({baselines[name]:.3f})")
            ax.legend(fontsize=7, loc="lower right")
        ax.set_xticks(range(len(methods)), methods, fontsize=8)
        ax.set_xlim(-0.5, len(methods) - 0.5)
        ax.set_title(name)
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle(title)
    return _save(fig, path)


def interval_plot(rows: Sequence[tuple[str, float, float, float, bool]], path: Path, title: str) -> Path:
    """Differences with their intervals (label, diff, low, high, within_noise), zero marked."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.5, 0.32 * len(rows) + 1.2))
    y = np.arange(len(rows))[::-1]
    for yi, (label, diff, low, high, noise) in zip(y, rows):
        color = "grey" if noise else ("C2" if diff > 0 else "C3")
        ax.errorbar(diff, yi, xerr=[[diff - low], [high - diff]], fmt="o", color=color, capsize=3)
    ax.axvline(0, color="black", lw=0.8)
    ax.set_yticks(y, [r[0] for r in rows], fontsize=8)
    ax.set_xlabel("difference A - B (95% paired bootstrap interval; grey = within noise)")
    ax.set_title(title)
    ax.grid(axis="x", alpha=0.3)
    return _save(fig, path)
