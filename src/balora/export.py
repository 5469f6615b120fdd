"""Export a trained run: a plain LoRA adapter for the ORIGINAL base, an optional merged model, a model card.

A PiSSA adapter ``(A, B)`` only makes sense on the residual base ``W - s B0 A0``. On the original base the
same function is ``W + s (B A - B0 A0) = W + s [B, -B0] [A; A0]``: a plain LoRA adapter of rank ``2r`` with
``alpha`` doubled (same scaling). This is the conversion of peft's
``save_pretrained(..., path_initial_model_for_weight_conversion=...)`` (``subtract_mutated_init``).
It is done here on the saved state dicts because peft's route needs the PiSSA model in memory with its
residual base, whereas ``balora export`` works from a finished run directory, after the process ended,
without re-running the (possibly randomised) SVD. The result loads with stock
``PeftModel.from_pretrained(original_model, DIR)``.

The run folder's layout (adapter/, initial_adapter/, balora_run.json) is defined in :mod:`balora.run_layout`,
which the training code writes through.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Optional

import torch
from safetensors.torch import load_file, save_file

from .atomic import write_json_atomic, write_text_atomic
from .reference import is_residual_init
from .run_layout import (ADAPTER_CONFIG, ADAPTER_WEIGHTS, HEAD_SPEC, MODEL_CARD, RUN_RECORD, adapter_dir,
                         read_record_strict, replace_dir)


def convert_pissa_state(trained: dict[str, torch.Tensor], initial: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``[B, -B0] [A; A0]``: the rank-2r plain-LoRA state dict equal to ``B A - B0 A0`` on the original base."""
    out: dict[str, torch.Tensor] = {}
    for key, value in trained.items():
        if ".lora_A." in key:
            if key not in initial:
                raise KeyError(f"initial adapter has no {key!r}: was it saved from the same model?")
            out[key] = torch.cat([value, initial[key]], dim=0)
        elif ".lora_B." in key:
            if key not in initial:
                raise KeyError(f"initial adapter has no {key!r}: was it saved from the same model?")
            out[key] = torch.cat([value, -initial[key]], dim=1)
        else:  # classification head and other fully trained modules: as trained
            out[key] = value
    return out


def check_output_dir(run: Path, out: Path, force: bool = False) -> None:
    """Refuse an output folder that would destroy or mix with the run, or overwrite other files without ``force``.

    The output is written to a temporary folder and then renamed onto ``out``, replacing what was there: so
    ``out`` must not be the run, inside it (``RUN/adapter`` would be the trained adapter) or a folder that
    contains the run; an existing non-empty ``out`` is replaced only with ``force``.
    """
    run_r, out_r = run.resolve(), out.resolve()
    if out_r == run_r:
        raise ValueError(f"--out {out} is the run folder itself: exporting there would replace the run; "
                         "choose a folder outside the run")
    if run_r in out_r.parents:
        raise ValueError(f"--out {out} is inside the run folder {run}: exporting there would overwrite or mix "
                         "with the run's files; choose a folder outside the run")
    if out_r in run_r.parents:
        raise ValueError(f"--out {out} contains the run folder {run}: exporting there would replace the run; "
                         "choose a folder outside the run")
    if out_r.exists() and not out_r.is_dir():
        raise ValueError(f"--out {out} exists and is not a folder")
    if out_r.is_dir() and any(out_r.iterdir()) and not force:
        raise ValueError(f"--out {out} exists and is not empty: pass --force (force=True) to replace it")


def check_run_completed(run: Path, record: dict) -> None:
    """A run whose record says it is still running or failed is refused (its adapter may be half trained)."""
    status = record.get("status")
    if status is None:
        return  # a run recorded before run status existed: it has its adapter, checked by the caller
    if status != "completed":
        error = f" ({record['error']})" if record.get("error") else ""
        raise ValueError(f"{run} is not a completed run: its record says status {status!r}{error}; finish it with "
                         "`balora train --config ... --resume` (it continues from the last checkpoint) before exporting")


def check_adapters_match(trained_config: dict, initial_config: dict, trained: dict[str, torch.Tensor],
                         initial: dict[str, torch.Tensor], record: dict, where: Path) -> None:
    """The step-0 adapter must come from the same set-up as the trained one, else the conversion is silently wrong.

    Compared: rank, alpha, target modules, base model (adapter configs), the init the run record names, and the
    tensor names and shapes.
    """
    diffs = []
    for key in ("r", "lora_alpha", "base_model_name_or_path", "rank_pattern", "alpha_pattern"):
        a, b = trained_config.get(key), initial_config.get(key)
        if a != b and not (not a and not b):
            diffs.append(f"{key}: trained {a!r}, initial {b!r}")
    targets = [c.get("target_modules") for c in (trained_config, initial_config)]
    targets = [sorted(t) if isinstance(t, list) else t for t in targets]
    if targets[0] != targets[1]:
        diffs.append(f"target_modules: trained {targets[0]!r}, initial {targets[1]!r}")
    adapter = record.get("adapter") or {}
    if adapter.get("r") is not None and adapter["r"] != trained_config.get("r"):
        diffs.append(f"r: run record {adapter['r']!r}, trained adapter {trained_config.get('r')!r}")
    lora = {k for k in trained if ".lora_" in k}
    missing, extra = sorted(lora - set(initial)), sorted({k for k in initial if ".lora_" in k} - lora)
    if missing or extra:
        diffs.append(f"tensors: {len(missing)} trained without an initial one (e.g. {missing[:1]}), "
                     f"{len(extra)} initial without a trained one (e.g. {extra[:1]})")
    shapes = [f"{k}: trained {tuple(trained[k].shape)}, initial {tuple(initial[k].shape)}"
              for k in sorted(lora & set(initial)) if trained[k].shape != initial[k].shape]
    if shapes:
        diffs.append(f"{len(shapes)} tensor shape(s) differ, e.g. {shapes[0]}")
    if diffs:
        raise ValueError(f"{where}: the initial adapter does not match the trained adapter, so the PiSSA "
                         "conversion would be wrong: " + "; ".join(diffs))


def export_adapter(run_dir: str | os.PathLike, out_dir: str | os.PathLike, merge: bool = False,
                   base_model: Optional[str] = None, force: bool = False, push_ready: bool = False,
                   datasets: Optional[list[str]] = None) -> Path:
    """Write a plain LoRA adapter for the original base (and with ``merge`` a full merged model) + model card.

    Refused before anything is written: a run that is not completed, an output folder that is the run, inside
    it or above it, a non-empty output folder without ``force``, an initial adapter that does not match the
    trained one; with ``push_ready``, a base model that is not a Hub id. The result is built in a temporary folder
    next to ``out`` and renamed onto it at the end.

    ``push_ready`` (``balora export --push-ready``): the model card's metadata must name a Hub base model (also
    written into the adapter config), ``datasets`` (Hub ids) go into the card, the card is parsed back with
    huggingface_hub before anything is written, and ``balora_run.json`` (the run's settings) is copied along.
    """
    run = Path(run_dir)
    out = Path(out_dir)
    record = read_record_strict(run)
    check_run_completed(run, record)
    adapter = adapter_dir(run)
    if not (adapter / ADAPTER_WEIGHTS).is_file():
        raise FileNotFoundError(f"{adapter / ADAPTER_WEIGHTS} not found: is {run} a finished balora run directory?")
    check_output_dir(run, out, force)
    config = json.loads((adapter / ADAPTER_CONFIG).read_text())
    state = load_file(str(adapter / ADAPTER_WEIGHTS))
    initial_state = None
    if is_residual_init(config.get("init_lora_weights", True)):
        initial_dir = adapter_dir(run, initial=True)
        initial_file = initial_dir / ADAPTER_WEIGHTS
        if not initial_file.is_file():
            raise FileNotFoundError(f"{initial_file} not found: a PiSSA adapter cannot be converted without A0, B0")
        initial_state = load_file(str(initial_file))
        initial_config = json.loads((initial_dir / ADAPTER_CONFIG).read_text()) \
            if (initial_dir / ADAPTER_CONFIG).is_file() else {}
        check_adapters_match(config, initial_config, state, initial_state, record, initial_dir)
    if push_ready:
        base_model = check_push_ready(record, config, base_model)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".tmp-{out.name}-"))
    try:
        if initial_state is not None:
            state = convert_pissa_state(state, initial_state)
            config["r"] = 2 * config["r"]
            config["lora_alpha"] = 2 * config["lora_alpha"]
            config["init_lora_weights"] = True
            for key in ("rank_pattern", "alpha_pattern"):
                if config.get(key):
                    config[key] = {k: 2 * v for k, v in config[key].items()}
        config["inference_mode"] = True
        if base_model:
            config["base_model_name_or_path"] = base_model
        save_file({k: v.contiguous() for k, v in state.items()}, str(tmp / ADAPTER_WEIGHTS), metadata={"format": "pt"})
        write_text_atomic(tmp / ADAPTER_CONFIG, json.dumps(config, indent=2, sort_keys=True))
        from .heads import read_head_spec

        head = read_head_spec(adapter)
        if head is not None:  # the pooled head's description travels with the adapter
            shutil.copyfile(adapter / HEAD_SPEC, tmp / HEAD_SPEC)
        card = model_card(record, config, merged=merge, datasets=datasets, pooling=head["pooling"] if head else None,
                          pair_encoding=head["pair_encoding"] if head else "cross")
        if push_ready:
            validate_card(card)
            write_json_atomic(tmp / RUN_RECORD, record)
        write_text_atomic(tmp / MODEL_CARD, card)
        if merge:
            source = base_model or config.get("base_model_name_or_path")
            if push_ready and record.get("base_model") and Path(str(record["base_model"])).expanduser().is_dir():
                source = record["base_model"]  # the card names the Hub id; the weights are the run's local copy
            _merge_into(tmp, tmp / "merged", record, source)
        replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _merge_into(adapter_dir: Path, target: Path, record: dict, base: Optional[str]) -> None:
    from peft import PeftModel

    from .models import load_base_model, load_tokenizer

    if not base:
        raise ValueError("the base model path is unknown: pass base_model= (--base-model)")
    from .heads import read_head_spec

    kind = record.get("task_kind", "nlu")
    spec = read_head_spec(adapter_dir) if kind == "nlu" else None
    extra = {"pooling": spec["pooling"], "pair_encoding": spec["pair_encoding"]} if spec else {}
    if spec and record.get("num_labels") is None:
        record = {**record, "num_labels": spec["num_labels"]}
    model = load_base_model(base, kind, num_labels=record.get("num_labels"), **extra)
    merged = PeftModel.from_pretrained(model, str(adapter_dir)).merge_and_unload()
    # A PooledClassifier saves the merged body plus balora_head.safetensors / balora_head.json (balora.heads).
    merged.save_pretrained(str(target), safe_serialization=True)
    try:
        load_tokenizer(base).save_pretrained(str(target))
    except (OSError, ValueError):
        pass  # a model folder without a tokenizer: the merged weights are still complete


SPLITS = ("train", "validation", "eval", "test", "dev")


def _metric_results(record: dict) -> list[tuple[str, str, float]]:
    """``(split, metric, value)`` from the run's flat metrics (``test_accuracy`` -> ``("test", "accuracy", v)``)."""
    out = []
    for key, value in sorted((record.get("metrics") or {}).items()):
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            continue
        split, _, name = key.partition("_")
        if split not in SPLITS or not name:
            split, name = "", key
        out.append((split, name, float(value)))
    return out


def _slug(text: str) -> str:
    import re

    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-")[:96] or "data"


def card_metadata(record: dict, adapter_config: dict, datasets: Optional[list[str]] = None) -> Any:
    """The Hugging Face card metadata (``huggingface_hub.ModelCardData``): ``library_name: peft``, ``base_model``,
    tags, datasets, and the run's metrics in ``model-index`` form (one entry per metric)."""
    from huggingface_hub import EvalResult, ModelCardData

    base = adapter_config.get("base_model_name_or_path") or record.get("base_model") or "unknown"
    kind = record.get("task_kind", "nlg")
    task = "text-generation" if kind == "nlg" else "text-classification"
    method = record.get("method", "adapter")
    data = str(record.get("data") or "unknown")
    dataset_id = (datasets or [None])[0] or _slug(data)
    results = [EvalResult(task_type=task, dataset_type=dataset_id, dataset_name=data, dataset_split=split or None,
                          metric_type=name, metric_name=f"{split} {name}".strip(), metric_value=value)
               for split, name, value in _metric_results(record)]
    tags = ["balora", "peft", "lora", method] + (["qpissa", (record.get("adapter") or {}).get("quantize")]
                                                  if (record.get("adapter") or {}).get("quantize") else [])
    return ModelCardData(library_name="peft", base_model=base, pipeline_tag=task, tags=[t for t in tags if t],
                         datasets=datasets or None, model_name=f"{method}-{_slug(Path(str(base)).name)}",
                         eval_results=results or None)


def model_card(record: dict, adapter_config: dict, merged: bool = False, datasets: Optional[list[str]] = None,
               pooling: Optional[str] = None, pair_encoding: str = "cross") -> str:
    """README.md in the Hugging Face model card format: YAML metadata (library_name, base_model, tags, datasets,
    model-index metrics), then method, data, settings and metrics of the run."""
    meta = card_metadata(record, adapter_config, datasets)
    base = meta.base_model
    method = record.get("method", "unknown")
    adapter = record.get("adapter") or {}
    quant = adapter.get("quantize")
    lines = [
        "---", meta.to_yaml().rstrip(), "---", "",
        f"# {method} adapter for {base}", "",
        "Trained with balora (BA-LoRA: PiSSA adapters with consistency, diversity and SVD regularisers). This is a "
        "plain LoRA adapter for the **original** base model"
        + (" (a PiSSA adapter converted to rank 2r)" if str(adapter_config.get("r")) != str(adapter.get("r")) else "")
        + ", loadable with `PeftModel.from_pretrained(base_model, this_dir)`"
        + (" or served by vLLM with `--enable-lora --max-lora-rank "
           f"{vllm_rank_flag(int(adapter_config['r']))}`" if adapter_config.get("r") and record.get("task_kind") != "nlu"
           else "") + "." + (" `merged/` holds the full merged model." if merged else ""), "",
    ]
    if pooling:
        siamese = pair_encoding == "siamese"
        lines += [f"The classifier pools the last hidden states with **{pooling}** pooling (`balora_head.json`), not "
                  "the checkpoint's own head"
                  + (", and encodes the two sentences of a pair separately (**siamese**: the head sees "
                     "(u, v, |u - v|, u * v); inputs `input_ids`/`attention_mask` and `input_ids_b`/`attention_mask_b`)"
                     if siamese else "")
                  + ": load the base with `balora.classifier_loading.load_classifier(base, num_labels, "
                  f"pooling='{pooling}'" + (", pair_encoding='siamese'" if siamese else "")
                  + ")` before `PeftModel.from_pretrained`"
                  + (" (`merged/` loads with `load_classifier(merged_dir, num_labels)`)." if merged else "."), ""]
    if quant:
        lines += [f"Trained on a {quant}-quantised residual base (QPiSSA): on the full-precision original the adapter "
                  "computes the fine-tuned function up to that residual's quantisation error.", ""]
    targets = adapter_config.get("target_modules")
    if isinstance(targets, list):  # peft resolves all-linear to every module's full name: list the kinds
        targets = sorted({str(t).split(".")[-1] for t in targets})
    lines += ["## Method", f"- method: `{method}`",
              f"- adapter: r = {adapter_config.get('r')}, alpha = {adapter_config.get('lora_alpha')}, "
              f"targets = {targets}"]
    regularizers = record.get("regularizers") or record.get("balora")  # "balora": the key of earlier run records
    if regularizers:
        lines.append("- regularisers: " + ", ".join(f"{k} = {v}" for k, v in regularizers.items()
                                                    if k.startswith(("lambda_", "svd_", "temperature", "schedule", "reference"))))
    lines += ["", "## Data", f"- {record.get('data', 'unknown')}"]
    if datasets:
        lines += [f"- dataset: `{d}`" for d in datasets]
    lines += ["", "## Training settings"]
    lines += [f"- {k}: {v}" for k, v in sorted((record.get("training") or {}).items())] or ["- unknown"]
    if record.get("versions"):
        lines += ["", "## Versions"] + [f"- {k}: {v}" for k, v in sorted(record["versions"].items())]
    lines += ["", "## Metrics"]
    lines += [f"- {k}: {v}" for k, v in sorted((record.get("metrics") or {}).items())] or ["- none recorded"]
    return "\n".join(lines) + "\n"


VLLM_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)  # vLLM's accepted --max-lora-rank values


def vllm_rank_flag(r: int) -> int:
    """The smallest ``--max-lora-rank`` vLLM accepts that serves rank ``r``."""
    return next((v for v in VLLM_RANKS if v >= r), r)


def is_hub_id(name: str) -> bool:
    """``org/name`` or ``name`` as on the Hugging Face Hub, and not an existing local path."""
    import re

    return bool(re.fullmatch(r"[A-Za-z0-9][\w.-]*(/[\w.-]+)?", name or "")) and not Path(name).expanduser().exists() \
        and ".." not in name


def check_push_ready(record: dict, adapter_config: dict, base_model: Optional[str]) -> str:
    """For ``--push-ready``: the card and adapter must name a Hub base model (not a local folder). Returns it."""
    base = base_model or adapter_config.get("base_model_name_or_path") or record.get("base_model")
    if not base or not is_hub_id(str(base)):
        raise ValueError(f"--push-ready: the base model {base!r} is not a Hugging Face Hub id (a local folder cannot be "
                         "the card's base_model nor the adapter's base_model_name_or_path on the Hub): pass "
                         "--base-model ORG/NAME, the Hub model the run's weights came from")
    return str(base)


def validate_card(text: str) -> None:
    """Parse the card back with huggingface_hub (metadata and model-index); raise naming what is wrong."""
    from huggingface_hub import ModelCard

    card = ModelCard(text, ignore_metadata_errors=False)
    data = card.data
    if data.library_name != "peft" or not data.base_model:
        raise ValueError("model card: library_name must be 'peft' and base_model set")

