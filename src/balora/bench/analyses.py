"""The paper's analyses as sweeps: ablation, adapters, rank, lambda, geometry, noise, cost, adaptive.

Each analysis is a default ``sweep:`` section (grid axes and named variants, :mod:`balora.bench.sweep`) around the
user's run config, a per-run function that records what the report needs (test predictions for the paired
bootstrap, per-class recall, ECE, the injected noise, captured features), and a report
(:mod:`balora.reports.analysis_report`). Anything in the config's own ``sweep:`` section replaces the default.

The data are the run config's ``data`` section, or, with ``analysis: {dataset: multiemo}``, the packaged MultiEmo
(English sentences, 4 classes; the demo's loader) with ``train_domain``, ``train_size``, ``test_size``.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

from .sweep import Cell, SweepConfig, expand, load_sweep, result_keys, run_sweep
from .tuning import selection_data
from ..config import TASK_DEFAULTS

logger = logging.getLogger(__name__)

__all__ = ["ANALYSES", "AnalysisOptions", "default_sweep", "run_analysis"]

TERMS = ("consistency", "diversity", "svd")
LAMBDA_MULTIPLIERS = (0.0, 0.3, 1.0, 3.0, 10.0)
RANKS = (1, 2, 4, 8, 16, 32, 64, 128)
NOISE_RATES = (0.1, 0.2, 0.4)
IMBALANCE_FRACTIONS = (0.5, 0.2, 0.05)

ANALYSES: dict[str, str] = {
    "ablation": "BA-LoRA with each term removed and with only one term (and the adaptive schedule), next to "
                "PiSSA and LoRA (paper 4.3.4).",
    "adapters": "The regularisers on other adapters: lora, dora, loha, adalora, pissa with and without +reg "
                "(paper C.2, Table 9).",
    "rank": "Rank sweep r in 1..128 for lora, pissa, ba-lora; metric vs r and vs trainable parameters (paper C.3).",
    "lambda": "Lambda sensitivity: each lambda at 0, 0.3x, 1x, 3x, 10x its default, plus the adaptive schedule; "
              "metric vs lambda with the seed spread (paper C.4).",
    "geometry": "Feature geometry over training: t-SNE of the penultimate features of a fixed evaluation subset at "
                "chosen steps, silhouette, k-NN accuracy and per-class recall per step (paper 4.3.3, C.5).",
    "noise": "Injected symmetric and class-dependent label noise (10/20/40%) and class imbalance (minority kept at "
             "50/20/5%), evaluated on the clean test set: accuracy, macro-F1, minority recall, ECE.",
    "cost": "Trainable parameters, step time, peak memory and wall time of full, lora, pissa, ba-lora (paper D.1).",
    "adaptive": "Beyond the paper: schedule 'adaptive' (loss-share balancing) next to 'constant' and 'authors' "
                "and lora / pissa.",
}


@dataclass
class AnalysisOptions:
    """The ``analysis:`` section of an analysis config (besides the run config and ``sweep:``)."""

    seeds: list[int] = field(default_factory=lambda: [0, 1, 2], metadata={"help": "Seeds (train.seed axis)."})
    dataset: str = field(default="", metadata={"help": "'' = the run config's data; 'multiemo' = the packaged "
                                                       "MultiEmo via balora.data.assets."})
    model: str = field(default="", metadata={"help": "'' = the run config's model; 'minilm' / 'smollm2' = the "
                                                     "packaged CPU-scale models (balora.data.assets)."})
    train_domain: str = field(default="hotels", metadata={"help": "MultiEmo training/test domain."})
    train_size: int = field(default=512, metadata={"help": "MultiEmo training sentences (stratified)."})
    test_size: int = field(default=400, metadata={"help": "MultiEmo test sentences (stratified)."})
    steps: list[int] = field(default_factory=list, metadata={"help": "geometry: steps at which features are captured "
                                                                "(besides 0 and the last); empty = 4 evenly spaced."})
    subset: int = field(default=200, metadata={"help": "geometry: size of the fixed evaluation subset."})
    reference: str = field(default="", metadata={"help": "Variant every other is compared with (paired); default "
                                                         "per analysis."})
    n_boot: int = field(default=1000, metadata={"help": "Bootstrap replicates of the paired intervals."})

    def __post_init__(self) -> None:
        if not isinstance(self.seeds, list) or not self.seeds or not all(isinstance(s, int) for s in self.seeds):
            raise ValueError(f"analysis.seeds must be a non-empty list of integers, got {self.seeds!r}")
        if self.model not in ("", "minilm", "smollm2"):
            raise ValueError(f"analysis.model must be '', 'minilm' or 'smollm2', got {self.model!r}")
        if self.dataset not in ("", "multiemo"):
            raise ValueError(f"analysis.dataset must be '' (the run config's data) or 'multiemo', got {self.dataset!r}")
        for name in ("train_size", "test_size", "subset", "n_boot"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"analysis.{name} must be an integer >= 1, got {getattr(self, name)!r}")


# ----------------------------------------------------------------------------------------- default sweeps
def _m(name: str, **balora: Any) -> dict:
    return {"method.name": name, **{f"balora.{k}": v for k, v in balora.items()}}


def default_sweep(kind: str, run_kind: str = "nlu") -> tuple[dict, str]:
    """(sweep section, reference variant) of analysis ``kind`` for runs of ``run_kind`` (nlu | nlg)."""
    l1, l2, l3, _ = TASK_DEFAULTS[run_kind]
    if kind == "ablation":
        variants = {"lora": _m("lora"), "pissa": _m("pissa"), "ba-lora": _m("ba-lora"),
                    "w/o consistency": _m("ba-lora", lambda_consistency=0.0),
                    "w/o diversity": _m("ba-lora", lambda_diversity=0.0),
                    "w/o svd": _m("ba-lora", lambda_svd=0.0),
                    "only consistency": _m("ba-lora", lambda_diversity=0.0, lambda_svd=0.0),
                    "only diversity": _m("ba-lora", lambda_consistency=0.0, lambda_svd=0.0),
                    "only svd": _m("ba-lora", lambda_consistency=0.0, lambda_diversity=0.0),
                    "ba-lora adaptive": _m("ba-lora", schedule="adaptive")}
        return {"variants": variants}, "ba-lora"
    if kind == "adapters":
        variants = {}
        for base in ("lora", "dora", "loha", "adalora", "pissa"):
            variants[base] = _m(base)
            variants[f"{base}+reg"] = _m(f"{base}+reg")
        return {"variants": variants}, "lora"
    if kind == "rank":
        return {"grid": {"method.name": ["lora", "pissa", "ba-lora"], "method.r": list(RANKS)}}, ""
    if kind == "lambda":
        defaults = {"consistency": l1, "diversity": l2, "svd": l3}
        variants = {"defaults": _m("ba-lora"), "adaptive": _m("ba-lora", schedule="adaptive")}
        for term in TERMS:
            for mult in LAMBDA_MULTIPLIERS:
                if mult != 1.0:
                    variants[f"{term} x{mult:g}"] = _m("ba-lora", **{f"lambda_{term}": defaults[term] * mult})
        return {"variants": variants}, "defaults"
    if kind == "geometry":
        return {"variants": {"lora": _m("lora"), "pissa": _m("pissa"), "ba-lora": _m("ba-lora")}}, "pissa"
    if kind == "noise":
        settings = {"clean": {}}
        for rate in NOISE_RATES:
            settings[f"symmetric {rate:.0%}"] = {"data.label_noise": rate, "data.label_noise_kind": "symmetric"}
            settings[f"class-dependent {rate:.0%}"] = {"data.label_noise": rate,
                                                       "data.label_noise_kind": "class_dependent"}
        for frac in IMBALANCE_FRACTIONS:
            settings[f"minority {frac:.0%}"] = {"data.imbalance_fraction": frac}
        return {"variants": settings, "grid": {"method.name": ["lora", "pissa", "ba-lora"]}}, ""
    if kind == "cost":
        return {"variants": {m: _m(m) for m in ("full", "lora", "pissa", "ba-lora")}}, "lora"
    if kind == "adaptive":
        variants = {"lora": _m("lora"), "pissa": _m("pissa"), "ba-lora constant": _m("ba-lora", schedule="constant"),
                    "ba-lora authors": _m("ba-lora", schedule="authors"),
                    "ba-lora adaptive": _m("ba-lora", schedule="adaptive")}
        return {"variants": variants}, "ba-lora constant"
    raise ValueError(f"unknown analysis {kind!r}; expected one of {', '.join(ANALYSES)}")


# ---------------------------------------------------------------------------------------------- data
def _load_data(opts: AnalysisOptions, cfg: Any) -> Any:
    """NLUData for a run: the packaged MultiEmo (in-domain train/test subsample) or the run config's files."""
    from ..training.nlu import describe_labels, load_nlu_data

    if opts.dataset != "multiemo":
        return load_nlu_data(cfg)
    import datasets

    from ..data.assets import load_multiemo, subsample

    splits = load_multiemo(seed=0, progress=False)

    def domain(ds: Any) -> Any:
        return ds.filter(lambda b: [d == opts.train_domain for d in b["domain"]], batched=True)

    train, test = domain(splits["train"]), domain(splits["test"])
    train = subsample(train, min(opts.train_size, len(train)), seed=0)
    test = subsample(test, min(opts.test_size, len(test)), seed=0)
    return describe_labels(datasets.DatasetDict({"train": train, "test": test}), ["text"], "label",
                           description=f"multiemo:{opts.train_domain}")


def _geometry_subset(data: Any, opts: AnalysisOptions) -> tuple[list, np.ndarray]:
    """The fixed evaluation subset: the first ``subset`` rows of test (else validation), same for every run."""
    split = "test" if "test" in data.splits else "validation"
    ds = data.splits[split]
    ds = ds.select(range(min(opts.subset, len(ds))))
    cols = data.text_columns
    texts = ds[cols[0]] if len(cols) == 1 else list(zip(ds[cols[0]], ds[cols[1]]))
    return list(texts), np.asarray(ds[data.label_column])


# --------------------------------------------------------------------------------------------- one run
def make_cell_fn(kind: str, opts: AnalysisOptions, out: Path,
                 data_fn: Optional[Callable[[Any], Any]] = None) -> Callable[[Cell, Path], dict]:
    """The per-run function of analysis ``kind``: train, evaluate on the clean test set, return the payload."""

    def nlu_cell(cell: Cell, run_dir: Path) -> dict:
        import dataclasses

        from ..data.noise import minority_class
        from ..training.nlu import run_nlu
        from ..training.capture import FeatureCapture
        from ..reports.measures import classification_scores

        cfg = copy.deepcopy(cell.config)
        cfg.train = dataclasses.replace(cfg.train, output_dir=str(run_dir), progress=False)
        data = selection_data(cell, (data_fn or (lambda c: _load_data(opts, c)))(cfg))  # tuning: the carved split
        if data.regression:
            raise ValueError(f"analysis {kind}: needs a classification task, got a regression target")
        num = data.num_labels
        train_labels = np.asarray(data.splits["train"][data.label_column]).astype(np.int64)
        minority = (cfg.data.imbalance_class if cfg.data.imbalance_class is not None
                    else minority_class(train_labels, num))
        def metrics(pred: Any) -> dict:
            logits = pred.predictions[0] if isinstance(pred.predictions, tuple) else pred.predictions
            return classification_scores(logits, pred.label_ids, num)

        callbacks = []
        capture = None
        if kind == "geometry":
            texts, labels = _geometry_subset(data, opts)
            capture = FeatureCapture(texts, labels, num, steps=_capture_steps(cfg, len(train_labels), opts),
                                     max_length=cfg.model.max_length, batch_size=cfg.train.eval_batch_size)
            callbacks.append(capture)
        result = run_nlu(cfg, data, compute_metrics=metrics, extra_callbacks=callbacks, save_adapter=False)
        test_split = "test" if "test" in result.metrics else "validation"
        test = result.metrics.get(test_split, {})
        steps = max(1, _logged_steps(result.log_history))
        payload = {
            "kind": "analysis", "analysis": kind, "eval_split": test_split,
            "metrics": result.metrics, "num_labels": num, "label_names": data.label_names,
            "minority_class": int(minority), "minority_recall": test.get(f"recall_{minority}"),
            "collapsed": bool(test.get("collapsed", 0.0)),
            "test_predictions": result.predictions[test_split].tolist(),
            "test_references": result.references[test_split].tolist(),
            "test_confidences": np.round(result.confidences[test_split], 6).tolist(),  # ECE intervals
            "trainable_params": result.trainable_params, "total_params": result.total_params,
            "train_seconds": round(result.train_seconds, 3), "steps": steps,
            "step_seconds": round(result.train_seconds / steps, 5), "injection": result.injection,
            "adapter_change": result.adapter_change, "head": result.head,
            "train_loss": [{k: v for k, v in e.items() if k.startswith("loss") or k == "step"}
                           for e in result.log_history if "loss" in e],
        }
        if capture is not None:
            from ..reports.measures import geometry_scores

            feats_dir = out / "features"
            feats_dir.mkdir(parents=True, exist_ok=True)
            name = f"{cell.spec.hparams['config']}_s{cell.config.train.seed}.npz"
            arrays = {f"{k}_{step}": v for step, d in capture.captured.items() for k, v in d.items()}
            from ..atomic import atomic_write

            import io

            buf = io.BytesIO()
            np.savez_compressed(buf, **arrays)
            atomic_write(feats_dir / name, lambda tmp: tmp.write_bytes(buf.getvalue()))
            payload["geometry"] = {str(step): geometry_scores(d["features"], d["labels"], d["pred"], num)
                                   for step, d in sorted(capture.captured.items())}
            payload["features_file"] = f"features/{name}"
        return payload

    def nlg_cell(cell: Cell, run_dir: Path) -> dict:
        import dataclasses

        from ..training.nlg import run_nlg

        cfg = copy.deepcopy(cell.config)
        cfg.train = dataclasses.replace(cfg.train, output_dir=str(run_dir), progress=False)
        if kind in ("geometry", "noise"):
            raise ValueError(f"analysis {kind} is defined for classification (NLU) runs only")
        result = run_nlg(cfg, None, save_adapter=False)  # evals: cfg.eval, else the data.test shorthand
        steps = max(1, _logged_steps(result.log_history))
        # The metric the report reads: the first generation benchmark, else the held-out loss (data.validation, or
        # data.test when it is instruction data); the training loss only when there is nothing held out.
        split = next((s for s in [*result.evals, "test", "validation", "train"] if s in result.metrics), "")
        per_example = result.heldout_examples.get(split, {})  # held-out loss: paired over examples too
        return {"kind": "analysis", "analysis": kind, "metrics": result.metrics, "eval_split": split,
                **({"test_nll": [round(v, 5) for v in per_example["nll"]], "test_tokens": per_example["tokens"]}
                   if per_example else {}),
                "trainable_params": result.trainable_params, "total_params": result.total_params,
                "train_seconds": round(result.train_seconds, 3), "steps": steps,
                "step_seconds": round(result.train_seconds / steps, 5), "collapsed": False,
                "train_loss": [{k: v for k, v in e.items() if k.startswith("loss") or k == "step"}
                               for e in result.log_history if "loss" in e]}

    def cell_fn(cell: Cell, run_dir: Path) -> dict:
        return nlu_cell(cell, run_dir) if cell.config.kind == "nlu" else nlg_cell(cell, run_dir)

    return cell_fn


def _logged_steps(history: list[dict]) -> int:
    steps = [e.get("step", 0) for e in history if "step" in e]
    return int(max(steps)) if steps else 0


def _capture_steps(cfg: Any, n_train: int, opts: AnalysisOptions) -> list[int]:
    if opts.steps:
        return [int(s) for s in opts.steps]
    total = cfg.train.total_steps(n_train)
    return sorted({max(1, round(total * f)) for f in (0.25, 0.5, 0.75)})


# ------------------------------------------------------------------------------------------ entry point
def build_analysis(kind: str, config: Optional[str], overrides: Optional[list[str]] = None,
                   out: Optional[str] = None, seeds: Optional[list[int]] = None,
                   options: Optional[dict] = None) -> tuple[SweepConfig, AnalysisOptions, str]:
    """(sweep, options, reference variant) of analysis ``kind`` from a config file and overrides; ``options``:
    AnalysisOptions values given on the command line (over the file's ``analysis:`` section), ``seeds`` one of
    them."""
    from ..config_io import load_yaml
    from .sweep import load_options

    if kind not in ANALYSES:
        raise ValueError(f"unknown analysis {kind!r}; expected one of {', '.join(ANALYSES)}")
    raw = load_yaml(config) if config else {}
    given = {**(options or {}), **({"seeds": list(seeds)} if seeds else {})}
    opts = load_options(AnalysisOptions, config, "analysis", given)
    run_kind = (raw.get("kind") or "nlu")
    if run_kind not in TASK_DEFAULTS:
        raise ValueError(f"{config}: kind must be 'nlu' or 'nlg', got {run_kind!r}")
    defaults, reference = default_sweep(kind, run_kind)
    defaults = copy.deepcopy(defaults)
    defaults.setdefault("grid", {})
    defaults["grid"] = {**defaults["grid"], "train.seed": list(opts.seeds)}
    out_dir = Path(out or f"results/analyses/{kind}")
    defaults["results"] = str(out_dir / "records.jsonl")
    defaults["out_dir"] = str(out_dir / "runs")
    if opts.dataset == "multiemo":
        defaults["task"] = f"multiemo-{opts.train_domain}"
        raw.setdefault("data", {})
    sweep = load_sweep(config, overrides, defaults=defaults)
    if opts.dataset == "multiemo":
        sweep.run.setdefault("data", {})
        sweep.run["data"].setdefault("text_columns", ["text"])
        sweep.run["data"].setdefault("train", "multiemo")
    sweep.key_extra = {**{k: getattr(opts, k) for k in ("model", "dataset") if getattr(opts, k)},
                       **({k: getattr(opts, k) for k in ("train_domain", "train_size", "test_size")}
                          if opts.dataset == "multiemo" else {}),
                       **({"steps": opts.steps, "subset": opts.subset} if kind == "geometry" else {}),
                       **sweep.key_extra}
    if opts.model:
        from ..data import assets

        path = assets.minilm_path() if opts.model == "minilm" else assets.smollm2_path()
        sweep.run.setdefault("model", {})["name_or_path"] = str(path)
    if out:  # the command line's --out wins over the file
        sweep.results, sweep.out_dir = defaults["results"], defaults["out_dir"]
    if "train.seed" not in sweep.grid:
        sweep.grid = {**sweep.grid, "train.seed": list(opts.seeds)}
    return sweep, opts, opts.reference or reference


def run_analysis(kind: str, config: Optional[str] = None, overrides: Optional[list[str]] = None, *,
                 out: Optional[str] = None, seeds: Optional[list[int]] = None, command: str = "",
                 data_fn: Optional[Callable[[Any], Any]] = None, progress: bool = True,
                 report_only: bool = False, options: Optional[dict] = None) -> dict:
    """Run (resuming) analysis ``kind`` and write its report; returns ``{"summary", "report", "records"}``.

    The report covers the records of the sweep's cells; with ``report_only`` (nothing runs) every record of the
    results file, so a report is rewritten from its records even when the run config has changed since (a new
    field with a default changes every run's key)."""
    from ..bench.runner import read_results
    from ..reports.analysis_report import write_report

    sweep, opts, reference = build_analysis(kind, config, overrides, out, seeds, options)
    out_dir = Path(sweep.results).parent
    cells = expand(sweep)
    summary = None
    if not report_only:
        summary = run_sweep(sweep, make_cell_fn(kind, opts, out_dir, data_fn), progress=progress, cells=cells)
    keys = result_keys(summary, cells) if summary is not None else {c.spec.key() for c in cells}
    records = [r for r in read_results(sweep.results)
               if (report_only and r.get("phase") != "select") or r["key"] in keys]
    report = write_report(kind, records, out_dir, description=ANALYSES[kind], reference=reference, command=command, n_boot=opts.n_boot,
                          failed=[f"{s.slug()} {s.hparams.get('variant', '')}: {e}" for s, e in
                                  (summary.failed if summary else [])])
    return {"summary": summary, "report": report, "records": records}
