"""Reports of the analyses (:mod:`balora.bench.analyses`): a Markdown file with the command, the main table, paired
comparisons with bootstrap intervals, collapse flags, and matplotlib plots.

Every comparison is paired: two variants are compared on the seeds both have (same seed = same data order and
subset) and on the same test examples, with :func:`balora.reports.scoring.paired_bootstrap` (examples and seeds
resampled). A difference whose interval contains 0 is reported as "within noise". Records without per-example
predictions (NLG) are compared by a paired bootstrap over seeds only.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any, Optional

import numpy as np

from .scoring import (format_mean_std as _mean_std, markdown_table as _table, paired_bootstrap,
                      paired_ece_bootstrap, paired_loss_bootstrap, seed_bootstrap, verdict)

__all__ = ["write_report", "group_records", "paired_rows"]

#: Metrics where a smaller value is the better one (the verdict of a paired difference flips for them).
LOWER_IS_BETTER = frozenset({"loss", "perplexity", "ece"})


def _test_metrics(r: dict) -> dict:
    metrics = r.get("metrics", {})
    split = r.get("eval_split") or ("test" if "test" in metrics else next(iter(metrics), ""))
    return metrics.get(split, {})


def main_metric(records: list[dict]) -> str:
    for r in records:
        m = _test_metrics(r)
        if "accuracy" in m:
            return "accuracy"
        for k, v in m.items():
            if isinstance(v, (int, float)):
                return k
    return "accuracy"


def group_records(records: list[dict]) -> dict[str, dict[int, dict]]:
    """label -> seed -> record (the last record wins when a run was recorded twice)."""
    groups: dict[str, dict[int, dict]] = defaultdict(dict)
    for r in records:
        groups[r.get("label") or r["method"]][int(r["seed"])] = r
    return dict(groups)


def _row(d: Any) -> dict:
    """A comparison row from a :class:`balora.reports.scoring.PairedDiff` resampled over test examples."""
    return {"diff": d.diff, "low": d.low, "high": d.high, "within_noise": d.within_noise, "seeds": d.n_seeds,
            "resampled": "examples and seeds" if d.resample_seeds else "examples"}


def compare(a: dict[int, dict], b: dict[int, dict], metric: str, n_boot: int) -> Optional[dict]:
    """Paired difference metric(a) - metric(b) on the shared seeds, or None when they share none."""
    seeds = sorted(set(a) & set(b))
    if not seeds:
        return None
    if all("test_predictions" in a[s] and "test_predictions" in b[s] for s in seeds) and metric in ("accuracy", "macro_f1"):
        refs = np.asarray(a[seeds[0]]["test_references"])
        if any(not np.array_equal(np.asarray(g[s]["test_references"]), refs) for g in (a, b) for s in seeds):
            raise ValueError("paired comparison: the two variants were evaluated on different test examples")
        pa = np.stack([np.asarray(a[s]["test_predictions"]) for s in seeds])
        pb = np.stack([np.asarray(b[s]["test_predictions"]) for s in seeds])
        num = max(int(a[seeds[0]].get("num_labels") or 0), int(max(pa.max(), pb.max(), refs.max())) + 1)
        return _row(paired_bootstrap(pa, pb, refs, metric, n_boot=n_boot, num_classes=num))
    if metric == "ece" and all("test_confidences" in g[s] for g in (a, b) for s in seeds):
        def arrays(g: dict[int, dict]) -> tuple[np.ndarray, np.ndarray]:
            conf = np.stack([np.asarray(g[s]["test_confidences"], float) for s in seeds])
            correct = np.stack([np.asarray(g[s]["test_predictions"]) == np.asarray(g[s]["test_references"])
                                for s in seeds])
            return conf, correct

        return _row(paired_ece_bootstrap(*arrays(a), *arrays(b), n_boot=n_boot))
    if metric == "loss" and all("test_nll" in g[s] for g in (a, b) for s in seeds):
        def loss_arrays(g: dict[int, dict]) -> tuple[np.ndarray, np.ndarray]:
            if any(g[s]["test_tokens"] != a[seeds[0]]["test_tokens"] for s in seeds):
                raise ValueError("paired comparison: the two variants were scored on different held-out tokens")
            return (np.stack([np.asarray(g[s]["test_nll"], float) for s in seeds]),
                    np.stack([np.asarray(g[s]["test_tokens"], float) for s in seeds]))

        return _row(paired_loss_bootstrap(*loss_arrays(a), *loss_arrays(b), n_boot=n_boot))
    va = np.array([_test_metrics(a[s]).get(metric, np.nan) for s in seeds], dtype=float)
    vb = np.array([_test_metrics(b[s]).get(metric, np.nan) for s in seeds], dtype=float)
    if np.isnan(va).any() or np.isnan(vb).any():
        return None
    diff, low, high = seed_bootstrap(va, vb, n_boot)
    return {"diff": diff, "low": low, "high": high, "within_noise": bool(low <= 0 <= high), "seeds": len(seeds),
            "resampled": "seeds"}


def _method_of(group: dict[int, dict]) -> str:
    return next(iter(group.values()))["method"]


def _setting_of(label: str, method: str) -> str:
    return " ".join(p for p in label.split() if p != method).strip()


def paired_rows(groups: dict[str, dict[int, dict]], reference: str, metric: str, n_boot: int) -> list[dict]:
    """The comparisons of a report: every label vs ``reference``; without one, ba-lora vs lora and vs pissa
    within each setting (labels equal but for the method)."""
    rows = []
    if reference and reference in groups:
        pairs = [(label, reference) for label in groups if label != reference]
    else:
        by_setting: dict[str, dict[str, str]] = defaultdict(dict)
        for label, g in groups.items():
            by_setting[_setting_of(label, _method_of(g))][_method_of(g)] = label
        pairs = [(m["ba-lora"], m[base]) for m in by_setting.values() for base in ("lora", "pissa")
                 if "ba-lora" in m and base in m]
    for a, b in pairs:
        for name in dict.fromkeys([metric, "macro_f1", "ece"] if metric == "accuracy" else [metric]):
            c = compare(groups[a], groups[b], name, n_boot)
            if c is not None:
                rows.append({"a": a, "b": b, "metric": name, **c})
    return rows


def main_table(kind: str, groups: dict[str, dict[int, dict]], metric: str) -> str:
    if kind == "cost":
        rows = []
        for label, g in groups.items():
            rs = list(g.values())
            rows.append([label, rs[0].get("trainable_params"), _mean_std([r.get("step_seconds") for r in rs]),
                         _mean_std([r.get("peak_memory_mb") for r in rs]), _mean_std([r.get("wall_seconds") for r in rs]),
                         rs[0].get("memory_kind", ""), _mean_std([_test_metrics(r).get(metric) for r in rs])])
        return _table(["variant", "trainable params", "step time (s)", "peak memory (MB)", "wall time (s)",
                       "memory measured as", metric], rows)
    rows = []
    extra = kind == "noise"
    for label, g in groups.items():
        rs = [g[s] for s in sorted(g)]
        m = [_test_metrics(r) for r in rs]
        row = [label, len(rs), rs[0].get("trainable_params", "-"), _mean_std([x.get(metric) for x in m])]
        if metric == "accuracy":
            row += [_mean_std([x.get("macro_f1") for x in m]), _mean_std([x.get("ece") for x in m])]
        if extra:
            row += [_mean_std([r.get("minority_recall") for r in rs]),
                    _mean_std([(r.get("injection") or {}).get("noise_rate", 0.0) for r in rs])]
        n_col = sum(bool(r.get("collapsed")) for r in rs)
        row.append(f"**{n_col}/{len(rs)} COLLAPSED**" if n_col else "0")
        rows.append(row)
    header = ["variant", "seeds", "trainable params", metric]
    if metric == "accuracy":
        header += ["macro-F1", "ECE"]
    if extra:
        header += ["minority recall", "injected noise rate"]
    header.append("collapsed runs")
    return _table(header, rows)


def comparisons_table(rows: list[dict]) -> str:
    if not rows:
        return "(no paired comparisons: no two variants share seeds)"
    out = []
    for c in rows:
        reading = verdict(c["diff"], c["within_noise"], higher_is_better=c["metric"] not in LOWER_IS_BETTER)
        out.append([c["a"], c["b"], c["metric"], f"{c['diff']:+.3f}", f"[{c['low']:+.3f}, {c['high']:+.3f}]",
                    c["seeds"], c["resampled"], reading])
    return _table(["A", "B", "metric", "A - B", "95% CI", "paired seeds", "bootstrap over", "reading"], out)


def geometry_table(groups: dict[str, dict[int, dict]]) -> str:
    rows = []
    for label, g in groups.items():
        steps = sorted({int(s) for r in g.values() for s in (r.get("geometry") or {})})
        for step in steps:
            per = [r["geometry"][str(step)] for r in g.values() if str(step) in (r.get("geometry") or {})]
            recalls = np.array([[np.nan if v is None else v for v in p.get("recall", [])] for p in per], dtype=float)
            recall = " / ".join(f"{v:.2f}" for v in np.nanmean(recalls, 0)) if recalls.size else "-"
            rows.append([label, step, _mean_std([p.get("silhouette") for p in per]),
                         _mean_std([p.get("knn_accuracy") for p in per]), _mean_std([p.get("accuracy") for p in per]),
                         recall])
    names = next((r.get("label_names") for g in groups.values() for r in g.values() if r.get("label_names")), None)
    recall_head = "per-class recall (mean over seeds" + (f"; {' / '.join(map(str, names))})" if names else ")")
    return _table(["variant", "step", "silhouette", "k-NN accuracy (k=5, leave-one-out)", "head accuracy",
                   recall_head], rows)


# ------------------------------------------------------------------------------------------------ plots
def _plots(kind: str, groups: dict[str, dict[int, dict]], metric: str, out: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []

    def save(fig: Any, name: str) -> None:
        from ..atomic import atomic_write
        import io

        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
        plt.close(fig)
        atomic_write(out / name, lambda tmp: tmp.write_bytes(buf.getvalue()))
        written.append(name)

    def stats(g: dict[int, dict], key: Any) -> tuple[float, float]:
        vals = [key(r) for r in g.values()]
        vals = [float(v) for v in vals if v is not None]
        return (float(np.mean(vals)), float(np.std(vals))) if vals else (np.nan, np.nan)

    value = lambda r: _test_metrics(r).get(metric)  # noqa: E731
    if kind == "rank":
        fig, axes = plt.subplots(1, 2, figsize=(11, 4))
        by_method: dict[str, list] = defaultdict(list)
        for label, g in groups.items():
            r0 = next(iter(g.values()))
            by_method[r0["method"]].append((r0["axes"].get("method.r", 0), r0.get("trainable_params") or 0, *stats(g, value)))
        for method, pts in by_method.items():
            pts.sort()
            r, p, m, s = (np.array(x, dtype=float) for x in zip(*pts))
            axes[0].errorbar(r, m, yerr=s, marker="o", capsize=3, label=method)
            axes[1].errorbar(p, m, yerr=s, marker="o", capsize=3, label=method)
        axes[0].set_xscale("log", base=2), axes[0].set_xlabel("rank r")
        axes[1].set_xscale("log"), axes[1].set_xlabel("trainable parameters")
        for ax in axes:
            ax.set_ylabel(metric), ax.legend(), ax.grid(alpha=0.3)
        save(fig, "rank.png")
    elif kind == "lambda":
        fig, ax = plt.subplots(figsize=(6.5, 4))
        base = groups.get("defaults")
        for term in ("consistency", "diversity", "svd"):
            pts = [(float(label.split("x")[-1]), *stats(g, value)) for label, g in groups.items()
                   if label.startswith(f"{term} x")]
            if base:
                pts.append((1.0, *stats(base, value)))
            if pts:
                pts.sort()
                x, m, s = (np.array(v) for v in zip(*pts))
                ax.errorbar(x, m, yerr=s, marker="o", capsize=3, label=f"lambda_{term}")
        if "adaptive" in groups:
            m, s = stats(groups["adaptive"], value)
            ax.axhline(m, ls="--", color="k", label=f"adaptive ({m:.3f} ± {s:.3f})")
        ax.set_xscale("symlog", linthresh=0.3), ax.set_xlabel("multiple of the default lambda (others at default)")
        ax.set_ylabel(metric), ax.legend(), ax.grid(alpha=0.3)
        save(fig, "lambda.png")
    elif kind == "noise":
        fams = {"symmetric": "symmetric", "class-dependent": "class-dependent", "minority": "minority"}
        fig, axes = plt.subplots(2, 3, figsize=(13, 7))
        for col, (fam, prefix) in enumerate(fams.items()):
            for row, (key, name) in enumerate(((lambda r: _test_metrics(r).get("macro_f1"), "macro-F1"),
                                               (lambda r: r.get("minority_recall"), "minority recall"))):
                ax = axes[row, col]
                by_method: dict[str, list] = defaultdict(list)
                for label, g in groups.items():
                    method = _method_of(g)
                    setting = _setting_of(label, method)
                    if setting.startswith(prefix):
                        x = float(setting.split()[-1].rstrip("%")) / 100
                    elif setting == "clean":
                        x = 0.0 if fam != "minority" else 1.0
                    else:
                        continue
                    by_method[method].append((x, *stats(g, key)))
                for method, pts in by_method.items():
                    pts.sort()
                    x, m, s = (np.array(v) for v in zip(*pts))
                    ax.errorbar(x, m, yerr=s, marker="o", capsize=3, label=method)
                ax.set_title(f"{fam}: {name}"), ax.grid(alpha=0.3)
                ax.set_xlabel("minority fraction kept" if fam == "minority" else "flip rate")
                if fam == "minority":
                    ax.set_xscale("log")
        axes[0, 0].legend()
        save(fig, "noise.png")
    elif kind == "geometry":
        written += _tsne_panels(groups, out, save, plt)
    else:
        labels = list(groups)
        fig, ax = plt.subplots(figsize=(max(6, 0.8 * len(labels)), 4))
        key = (lambda r: r.get("step_seconds")) if kind == "cost" else value
        ms = [stats(groups[l], key) for l in labels]
        ax.bar(range(len(labels)), [m for m, _ in ms], yerr=[s for _, s in ms], capsize=3, color="tab:blue")
        ax.set_xticks(range(len(labels)), labels, rotation=35, ha="right")
        ax.set_ylabel("step time (s)" if kind == "cost" else metric), ax.grid(alpha=0.3, axis="y")
        finite = [m for m, _ in ms if np.isfinite(m)]
        if finite and kind != "cost":
            ax.set_ylim(max(0.0, min(finite) - 0.1), min(1.0, max(finite) + 0.05))
        save(fig, f"{kind}.png")
    return written


def _tsne_panels(groups: dict[str, dict[int, dict]], out: Path, save: Any, plt: Any) -> list[str]:
    """One t-SNE panel per (method, captured step) of the first seed, and silhouette / k-NN vs step."""
    from sklearn.manifold import TSNE

    labels = list(groups)
    firsts = {l: groups[l][min(groups[l])] for l in labels}
    steps = sorted({int(s) for r in firsts.values() for s in (r.get("geometry") or {})})
    if not steps:
        return []
    fig, axes = plt.subplots(len(labels), len(steps), figsize=(3 * len(steps), 3 * len(labels)), squeeze=False)
    for i, label in enumerate(labels):
        r = firsts[label]
        path = out / r.get("features_file", "")
        data = np.load(path) if path.is_file() else None
        for j, step in enumerate(steps):
            ax = axes[i, j]
            ax.set_xticks([]), ax.set_yticks([])
            if data is None or f"features_{step}" not in data:
                ax.set_title(f"{label} step {step}: missing", fontsize=8)
                continue
            x, y = data[f"features_{step}"], data[f"labels_{step}"]
            emb = TSNE(n_components=2, perplexity=min(30.0, max(2.0, (len(x) - 1) / 3)), init="pca",
                       random_state=0).fit_transform(x)
            ax.scatter(emb[:, 0], emb[:, 1], c=y, s=6, cmap="tab10")
            sil = r["geometry"][str(step)].get("silhouette")
            ax.set_title(f"{label} step {step}\nsilhouette {sil:.3f}" if sil is not None else f"{label} step {step}",
                         fontsize=8)
    save(fig, "geometry_tsne.png")
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for label, g in groups.items():
        for ax, key in zip(axes, ("silhouette", "knn_accuracy")):
            pts = []
            for step in steps:
                vals = [r["geometry"][str(step)].get(key) for r in g.values() if str(step) in (r.get("geometry") or {})]
                vals = [v for v in vals if v is not None]
                if vals:
                    pts.append((step, np.mean(vals), np.std(vals)))
            if pts:
                x, m, s = (np.array(v) for v in zip(*pts))
                ax.errorbar(x, m, yerr=s, marker="o", capsize=3, label=label)
            ax.set_xlabel("step"), ax.set_ylabel(key), ax.grid(alpha=0.3)
    axes[0].legend()
    save(fig, "geometry_scores.png")
    return []


# ----------------------------------------------------------------------------------------------- report
def write_report(kind: str, records: list[dict], out: Path, *, description: str = "", reference: str = "",
                 command: str = "", n_boot: int = 1000, failed: Optional[list[str]] = None) -> Path:
    """Write ``out/report.md`` (+ plots) for the records of analysis ``kind``; returns the report's path."""
    from ..atomic import write_text_atomic

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    groups = group_records(records)
    metric = main_metric(records)
    lines = [f"# Analysis: {kind}", "", description, "", "Command:", "", "```", command or "(not recorded)", "```", ""]
    if not records:
        lines += ["No finished runs yet."]
    else:
        r0 = records[0]
        lines += [f"Model `{r0['model']}`, task `{r0['task']}`, {len(records)} runs, seeds "
                  f"{sorted({int(r['seed']) for r in records})}; metric on the clean `{r0.get('eval_split', 'test')}` "
                  "split.", "", "## Main table", "", main_table(kind, groups, metric), ""]
        if kind == "geometry":
            lines += ["## Geometry per captured step", "", geometry_table(groups), ""]
        if kind == "cost":
            lines += ["Step time = training seconds / optimizer steps. Peak memory: "
                      f"`{r0.get('memory_kind', '')}` over the run (CPU: the process's peak RSS, reset per run "
                      "where Linux allows; CUDA: torch's peak allocated).", ""]
        comps = paired_rows(groups, reference, metric, n_boot)
        ref_text = f"each variant vs `{reference}`" if reference and reference in groups else \
            "ba-lora vs lora and vs pissa within each setting"
        lines += ["## Paired comparisons", "",
                  f"{ref_text}; same seeds (same data order and subset) and the same test examples; 95% percentile "
                  f"bootstrap ({n_boot} replicates). 'within noise' = the interval contains 0.", "",
                  comparisons_table(comps), ""]
        collapsed = sorted({f"{r.get('label')} (seed {r['seed']})" for r in records if r.get("collapsed")})
        lines += ["## Collapsed runs (one class predicted for every test example)", "",
                  ", ".join(collapsed) if collapsed else "none", ""]
        plots = _plots(kind, groups, metric, out)
        if plots:
            lines += ["## Plots", ""] + [f"![{p}]({p})" for p in plots] + [""]
    if failed:
        lines += ["## Failed runs (not recorded; a rerun retries them)", ""] + [f"- {f}" for f in failed] + [""]
    path = out / "report.md"
    write_text_atomic(path, "\n".join(lines))
    return path
