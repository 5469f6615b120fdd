"""The NLG claims study's report: accuracy, output diversity, retention and noise robustness per method, each with
paired 95 % intervals against PiSSA and against LoRA (and, under noise, against the same method trained clean).

Reads the final (tested) records of ``balora bench nlg`` (configs/nlg/smollm2_arithmetic_claims.yaml and
configs/nlg/smollm2_arithmetic_noise.yaml write one results file) and every run's kept per-example files (the
record's ``generations`` folder): ``<task>_generations.jsonl`` (0/1 exact match per problem),
``arithmetic_samples.jsonl`` (distinct-1/2 and self-BLEU per problem) and ``retention_examples.jsonl`` (KL and NLL
sums and token counts per general prompt). The paired bootstrap (:mod:`balora.reports.stats`) resamples problems
(prompts) and seeds together; two runs are paired by seed, so only the seeds both methods have are compared::

    python benchmarks/nlg_claims.py --results results/nlg_arithmetic_claims.jsonl --out docs/results/nlg_claims

Under noise, each method's drop (noisy - clean) is also paired against PiSSA's and LoRA's drop: the robustness
claim is about a smaller drop, not a higher noisy score. ``--ref VARIANT`` adds another reference every method is
paired against (the lambda rows' lr-matched control, "ba-lora v5 lambdas 0").

Prints the Markdown tables and writes ``claims.json`` and ``claims.md`` into ``--out``.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from balora.atomic import write_json_atomic, write_text_atomic
from balora.bench.runner import read_results
from balora.evaluation.records import read_jsonl
from balora.reports.stats import paired_loss_bootstrap, paired_rows_bootstrap

# measure -> (file in the kept folder, per-example value columns, row metric over (S, N) arrays, scale, label)
MEASURES: dict[str, tuple[str, tuple[str, ...], Callable[..., np.ndarray], float, str]] = {
    "em_test": ("arithmetic_generations.jsonl", ("correct",), lambda c: c.mean(1), 100.0, "in-domain EM %"),
    "em_ood": ("arithmetic-ood_generations.jsonl", ("correct",), lambda c: c.mean(1), 100.0, "out-of-domain EM %"),
    "distinct_1": ("arithmetic_samples.jsonl", ("distinct_1",), lambda v: v.mean(1), 1.0, "distinct-1"),
    "distinct_2": ("arithmetic_samples.jsonl", ("distinct_2",), lambda v: v.mean(1), 1.0, "distinct-2"),
    "self_bleu": ("arithmetic_samples.jsonl", ("self_bleu",), lambda v: v.mean(1), 1.0, "self-BLEU (lower = diverse)"),
    "kl": ("retention_examples.jsonl", ("kl", "tokens"), lambda k, t: k.sum(1) / np.maximum(t.sum(1), 1), 1.0,
           "retention KL(base ‖ tuned) per token"),
    "tuned_nll": ("retention_examples.jsonl", ("tuned_nll", "tokens"),
                  lambda k, t: k.sum(1) / np.maximum(t.sum(1), 1), 1.0, "general-prompt loss (tuned)"),
}


def noise_of(record: dict) -> float:
    return float((record.get("answer_noise") or {}).get("answer_noise", 0.0))


def runs_by_group(records: list[dict], root: Path) -> dict[tuple[str, float], dict[int, dict]]:
    """(variant, answer noise) -> seed -> final record (selection runs left out), with its kept folder resolved."""
    out: dict[tuple[str, float], dict[int, dict]] = {}
    for r in records:
        if r.get("phase") == "select" or r.get("method") == "base":
            continue
        folder = Path(r["generations"]) if r.get("generations") else None
        if folder is not None and not folder.is_absolute():
            folder = root / folder
        out.setdefault((r.get("variant") or r["method"], noise_of(r)), {})[int(r["seed"])] = {**r, "folder": folder}
    return out


def per_example(run: dict, measure: str) -> Optional[tuple[list, list[np.ndarray]]]:
    """(example ids, one array per value column) of ``measure`` for one run; None when its file is missing."""
    file, columns, _, _, _ = MEASURES[measure]
    path = run.get("files", {}).get(file) or (run["folder"] / file if run["folder"] is not None else None)
    if path is None or not path.is_file():
        return None
    rows = read_jsonl(path)
    return [r["id"] for r in rows], [np.array([float(r[c]) for r in rows]) for c in columns]


def stack(runs: dict[int, dict], seeds: list[int], measure: str,
          ids: Optional[list] = None) -> Optional[tuple[list, list[np.ndarray]]]:
    """(S, N) arrays of ``measure`` over ``seeds``, columns in the order of ``ids`` (default: the first run's
    example ids); None if any run lacks it. Runs scored on other examples than ``ids`` are an error."""
    got = [per_example(runs[s], measure) for s in seeds]
    if not got or any(g is None for g in got):
        return None
    ids = got[0][0] if ids is None else ids
    arrays = []
    for ex_ids, values in got:
        if sorted(map(str, ex_ids)) != sorted(map(str, ids)):
            raise ValueError(f"{measure}: the runs were scored on different examples; compare like with like")
        order = {str(i): k for k, i in enumerate(ex_ids)}
        arrays.append([v[[order[str(i)] for i in ids]] for v in values])
    return ids, [np.stack([a[c] for a in arrays]) for c in range(len(arrays[0]))]


def _scaled(d, measure: str, seeds: list[int]) -> dict:
    """A bootstrap result in the measure's reporting scale."""
    scale = MEASURES[measure][3]
    return {"diff": d.diff * scale, "low": d.low * scale, "high": d.high * scale, "seeds": seeds,
            "excludes_0": not d.within_noise}


def compare(runs_a: dict[int, dict], runs_b: dict[int, dict], measure: str, n_boot: int) -> Optional[dict]:
    """Paired bootstrap of A - B over the seeds both have (the point value and the 95 % interval, scaled)."""
    seeds = sorted(set(runs_a) & set(runs_b))
    a = stack(runs_a, seeds, measure)
    b = stack(runs_b, seeds, measure, ids=a[0]) if a is not None else None  # B's examples in A's order
    if a is None or b is None:
        return None
    if measure in ("kl", "tuned_nll"):
        d = paired_loss_bootstrap(a[1][0], a[1][1], b[1][0], b[1][1], n_boot=n_boot)
    else:
        d = paired_rows_bootstrap(MEASURES[measure][2], tuple(a[1]), tuple(b[1]), n_boot=n_boot)
    return _scaled(d, measure, seeds)


def compare_drops(noisy_a: dict[int, dict], clean_a: dict[int, dict], noisy_b: dict[int, dict],
                  clean_b: dict[int, dict], measure: str, n_boot: int) -> Optional[dict]:
    """Paired bootstrap of A's noise drop minus B's, (noisy A - clean A) - (noisy B - clean B), over the seeds all four
    groups have. Negative: A loses more to the noise than B. Exact match only (a mean over problems, so the drop of
    the mean is the mean of the per-problem drops and the four runs pair by seed and problem)."""
    seeds = sorted(set(noisy_a) & set(clean_a) & set(noisy_b) & set(clean_b))
    first = stack(noisy_a, seeds, measure)
    if first is None:
        return None
    got = [first] + [stack(g, seeds, measure, ids=first[0]) for g in (clean_a, noisy_b, clean_b)]
    if any(g is None for g in got):
        return None
    (na,), (ca,), (nb,), (cb,) = (g[1] for g in got)
    return _scaled(paired_rows_bootstrap(MEASURES[measure][2], (na - ca,), (nb - cb,), n_boot=n_boot), measure, seeds)


def value(runs: dict[int, dict], measure: str) -> Optional[dict]:
    """Mean and standard deviation over seeds of ``measure`` (from the per-example files)."""
    got = stack(runs, sorted(runs), measure)
    if got is None:
        return None
    _, _, metric, scale, _ = MEASURES[measure]
    per_seed = metric(*got[1]) * scale
    return {"mean": float(per_seed.mean()), "sd": float(per_seed.std(ddof=1)) if len(per_seed) > 1 else 0.0,
            "seeds": len(per_seed), "n": int(got[1][0].shape[1])}


def base_runs(files: dict[str, Path], seeds: set[int]) -> dict[int, dict]:
    """The pretrained model as a run for every seed (greedy decoding: one set of generations serves every seed's
    pairing); ``files`` maps a measure's file name (e.g. arithmetic_generations.jsonl) to the base model's file."""
    return {s: {"folder": None, "files": dict(files), "seed": s} for s in seeds}


TERMS = ("loss_consistency", "loss_diversity", "loss_svd")


def terms(variant: str, noise: float, runs: dict[int, dict]) -> list[dict]:
    """How much the regularisers weigh in training: at the first and last logged step, the task loss, the weighted
    sum of the terms (total loss - task loss) and each raw term, averaged over seeds; [] for a method without them."""
    curves = [r.get("loss_curve") or [] for r in runs.values()]
    curves = [c for c in curves if c and all(t in c[0] for t in TERMS)]
    if not curves:
        return []
    out = []
    for label, idx in (("first", 0), ("last", -1)):
        points = [c[idx] for c in curves]
        out.append({"variant": variant, "noise": noise, "at": label, "step": int(points[0]["step"]),
                    "seeds": len(points),
                    "task": float(np.mean([p["loss_task"] for p in points])),
                    "weighted_terms": float(np.mean([p["loss"] - p["loss_task"] for p in points])),
                    **{t: float(np.mean([p[t] for p in points])) for t in TERMS}})
    return out


REFS = ("pissa", "lora")


def report(records: list[dict], root: Path, n_boot: int = 5000, base: Optional[dict[str, Path]] = None,
           extra_refs: tuple[str, ...] = ()) -> dict:
    """Every group's measures with paired differences against PiSSA, LoRA, the base model (when given) and each of
    ``extra_refs`` (variant names, e.g. the lr-matched control "ba-lora v5 lambdas 0"); noise drops, and each
    method's drop against PiSSA's and LoRA's; terms and cost."""
    groups = runs_by_group(records, root)
    if base:
        seeds = {s for runs in groups.values() for s in runs}
        groups[("base", 0.0)] = base_runs(base, seeds)
    out: dict = {"selection": [], "rows": [], "noise": [], "cost": [], "terms": []}
    for (variant, noise), runs in sorted(groups.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        tuning = next((r["tuning"] for r in runs.values() if r.get("tuning")), None)
        if tuning:  # the same selection for every seed of a group (one record carries it per final run)
            out["selection"].append({"variant": variant, "noise": noise, "metric": tuning.get("metric"),
                                     "validation": [{"values": v["values"], "score": v["score"]}
                                                    for v in tuning.get("validation", [])],
                                     "choice": tuning.get("choice"), "select_with": tuning.get("select_with")})
        for measure in MEASURES:
            v = value(runs, measure)
            if v is None:
                continue
            if variant == "base":  # one greedy run, repeated per seed only to pair with every seed
                v = {**v, "seeds": 1, "sd": 0.0}
            row = {"variant": variant, "noise": noise, "measure": measure, **v}
            for ref in (*REFS, "base", *extra_refs):
                if ref != variant and (ref, noise) in groups and variant != "base":
                    row[f"minus_{ref}"] = compare(runs, groups[(ref, noise)], measure, n_boot)
            out["rows"].append(row)
            if noise > 0 and (variant, 0.0) in groups and measure in ("em_test", "em_ood"):
                drop = compare(runs, groups[(variant, 0.0)], measure, n_boot)
                entry = {"variant": variant, "noise": noise, "measure": measure, "drop": drop}
                for ref in REFS:
                    if ref != variant and (ref, noise) in groups and (ref, 0.0) in groups:
                        entry[f"drop_minus_{ref}"] = compare_drops(runs, groups[(variant, 0.0)], groups[(ref, noise)],
                                                                   groups[(ref, 0.0)], measure, n_boot)
                out["noise"].append(entry)
        if variant == "base":
            continue
        out["cost"].append({"variant": variant, "noise": noise, "runs": len(runs),
                            "train_seconds": float(np.mean([r.get("train_seconds") or 0 for r in runs.values()])),
                            "peak_memory_mb": float(np.max([r.get("peak_memory_mb") or 0 for r in runs.values()]))})
        out["terms"] += terms(variant, noise, runs)
    lora = {c["noise"]: c["train_seconds"] for c in out["cost"] if c["variant"] == "lora"}
    for c in out["cost"]:
        c["train_time_vs_lora"] = c["train_seconds"] / lora[c["noise"]] if lora.get(c["noise"]) else None
    return out


def _interval(d: Optional[dict]) -> str:
    if not d:
        return "-"
    return f"{d['diff']:+.3f} [{d['low']:+.3f}, {d['high']:+.3f}]{' *' if d['excludes_0'] else ''}"


def _values(values: dict) -> str:
    return ", ".join(f"{k.rsplit('.', 1)[-1]} {v:g}" if isinstance(v, (int, float)) else f"{k.rsplit('.', 1)[-1]} {v}"
                     for k, v in values.items())


SUMMARY = ("em_test", "em_ood", "distinct_2", "self_bleu", "kl")


def summary(result: dict, noise: float = 0.0, extra_refs: tuple[str, ...] = ()) -> str:
    """One row per method (mean ± sd over seeds of the main measures, with the selected setting), then one row per
    method and reference (PiSSA, LoRA) of the paired differences: the short form of the tables."""
    rows = {(r["variant"], r["measure"]): r for r in result["rows"] if r["noise"] == noise}
    chosen = {s["variant"]: _values(s["choice"] or {}) for s in result.get("selection", []) if s["noise"] == noise}
    variants = sorted({v for v, _ in rows}, key=lambda v: (v != "base", v))
    measures = [m for m in SUMMARY if any((v, m) in rows for v in variants)]  # no column without a value
    head = " | ".join(MEASURES[m][4] for m in measures)
    lines = [f"| method | selected | {head} |", "| --- | --- |" + " ---: |" * len(measures)]
    for v in variants:
        cells = [f"{rows[(v, m)]['mean']:.3f} ± {rows[(v, m)]['sd']:.3f}" if (v, m) in rows else "-" for m in measures]
        lines.append(f"| {v} | {chosen.get(v, '-')} | " + " | ".join(cells) + " |")
    lines += ["", f"| difference | {head} |", "| --- |" + " --- |" * len(measures)]
    for ref in (*REFS, "base", *extra_refs):
        for v in variants:
            if v in (ref, "base") or not any(f"minus_{ref}" in rows.get((v, m), {}) for m in measures):
                continue
            cells = [_interval(rows.get((v, m), {}).get(f"minus_{ref}")) for m in measures]
            lines.append(f"| {v} - {'base model' if ref == 'base' else ref} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def markdown(result: dict) -> str:
    lines = []
    if result.get("selection"):
        lines += ["| answer noise | method | validation score per setting (selection runs) | chosen |",
                  "| ---: | --- | --- | --- |"]
        for s in result["selection"]:
            scores = "; ".join(f"{_values(v['values'])}: {v['score']:.3f}" for v in s["validation"])
            lines.append(f"| {s['noise']:.0%} | {s['variant']} | {scores} | {_values(s['choice'] or {})} |")
        lines.append("")
    with_base = any("minus_base" in r for r in result["rows"])
    lines += ["| answer noise | method | measure | mean ± sd (seeds) | n | - PiSSA [95 %] | - LoRA [95 %] |"
              + (" - base model [95 %] |" if with_base else ""),
              "| ---: | --- | --- | --- | ---: | --- | --- |" + (" --- |" if with_base else "")]
    for r in result["rows"]:
        base_cell = f" {_interval(r.get('minus_base'))} |" if with_base else ""
        lines.append(f"| {r['noise']:.0%} | {r['variant']} | {MEASURES[r['measure']][4]} | {r['mean']:.3f} ± "
                     f"{r['sd']:.3f} ({r['seeds']}) | {r['n']} | {_interval(r.get('minus_pissa'))} | "
                     f"{_interval(r.get('minus_lora'))} |{base_cell}")
    extra = sorted({k[len("minus_"):] for r in result["rows"] for k in r
                    if k.startswith("minus_") and k[len("minus_"):] not in (*REFS, "base")})
    for ref in extra:  # e.g. each lambda variant against its lr-matched control
        lines += ["", f"| answer noise | method | measure | - {ref} [95 %] |", "| ---: | --- | --- | --- |"]
        lines += [f"| {r['noise']:.0%} | {r['variant']} | {MEASURES[r['measure']][4]} | "
                  f"{_interval(r[f'minus_{ref}'])} |" for r in result["rows"] if r.get(f"minus_{ref}")]
    if result["noise"]:
        lines += ["", "| method | answer noise | measure | noisy - clean [95 %] | drop - PiSSA's drop [95 %] | "
                      "drop - LoRA's drop [95 %] |", "| --- | ---: | --- | --- | --- | --- |"]
        lines += [f"| {n['variant']} | {n['noise']:.0%} | {MEASURES[n['measure']][4]} | {_interval(n['drop'])} | "
                  f"{_interval(n.get('drop_minus_pissa'))} | {_interval(n.get('drop_minus_lora'))} |"
                  for n in result["noise"]]
    if result.get("terms"):
        lines += ["", "| method | answer noise | logged step | task loss | weighted terms (loss - task) | consistency | "
                      "diversity | SVD |", "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
        lines += [f"| {t['variant']} | {t['noise']:.0%} | {t['step']} | {t['task']:.4f} | {t['weighted_terms']:+.4f} | "
                  f"{t['loss_consistency']:.4f} | {t['loss_diversity']:.4f} | {t['loss_svd']:.4f} |"
                  for t in result["terms"]]
    lines += ["", "| method | answer noise | runs | train s (mean) | vs LoRA | peak memory MB |",
              "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for c in result["cost"]:
        ratio = f"{c['train_time_vs_lora']:.2f}" if c["train_time_vs_lora"] else "-"
        lines.append(f"| {c['variant']} | {c['noise']:.0%} | {c['runs']} | {c['train_seconds']:.1f} | {ratio} | "
                     f"{c['peak_memory_mb']:.0f} |")
    lines.append("\n`*`: the 95 % interval excludes 0. Intervals: paired bootstrap over problems (prompts) and seeds.")
    return "\n".join(lines)


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--results", required=True, help="the bench nlg results file (JSON Lines)")
    p.add_argument("--root", default=".", help="folder relative kept-generation paths are resolved from")
    p.add_argument("--out", default=None, help="folder for claims.json and claims.md")
    p.add_argument("--n-boot", type=int, default=5000)
    p.add_argument("--base", nargs="*", default=[], metavar="FILE=PATH",
                   help="the pretrained model's per-example files, e.g. arithmetic_generations.jsonl=base_test.jsonl "
                        "(greedy, so one file pairs with every seed): adds a base row and each method - base")
    p.add_argument("--ref", action="append", default=[], metavar="VARIANT",
                   help="another reference every method is paired against, besides PiSSA and LoRA (repeatable), "
                        "e.g. --ref 'ba-lora v5 lambdas 0' (the lr-matched control of the lambda rows)")
    args = p.parse_args(argv)
    base = {}
    for item in args.base:
        name, sep, path = item.partition("=")
        if not sep or name not in {m[0] for m in MEASURES.values()} or not Path(path).is_file():
            p.error(f"--base {item!r}: expected FILE=PATH with FILE one of "
                    f"{sorted({m[0] for m in MEASURES.values()})} and PATH an existing file")
        base[name] = Path(path)
    result = report(read_results(args.results), Path(args.root), args.n_boot, base=base or None,
                    extra_refs=tuple(args.ref))
    text = "## Summary\n\n" + summary(result, extra_refs=tuple(args.ref))
    noisy = sorted({r["noise"] for r in result["rows"] if r["noise"] > 0})
    for level in noisy:
        text += f"\n\n### Trained with {level:.0%} of the answers wrong\n\n" + summary(result, level)
    text += "\n\n## All measures\n\n" + markdown(result)
    print(text)
    if args.out:
        write_json_atomic(Path(args.out) / "claims.json", result)
        write_text_atomic(Path(args.out) / "claims.md", text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
