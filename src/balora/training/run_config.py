"""RunConfig: everything one training run needs, as dataclasses with one help text per field.

Loadable from YAML (sections ``model``, ``data``, ``method``, ``regularizers``, ``train``, ``eval``) and overridable
on the command line with ``--section.key value`` (values parsed as YAML scalars: ``--train.epochs 3``,
``--method.target_modules '[query, value]'``). The regulariser section is a :class:`~balora.config.BALoRAConfig`,
built and checked once here; its former name ``balora`` is still read (:data:`SECTION_ALIASES`).
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field
from typing import Any, Optional, Union

from .._fields import help_field
from ..config import BALoRAConfig
from ..config_io import load_yaml, parse_yaml
from .eval_options import EvalOptions, parse_eval_section  # noqa: F401  (part of this module's API)
from .field_types import check_field_types, check_types


@dataclass
class ModelConfig:
    name_or_path: str = help_field("Hugging Face model name or local model folder.", default="")
    gguf_file: Optional[str] = help_field("GGUF file name inside name_or_path (dequantised to fp32 on load).", default=None)
    dtype: str = help_field("Compute dtype of base and adapter: float32 (paper), bfloat16 or float16.", default="float32")
    max_length: int = help_field("Maximum tokens per example (longer inputs are truncated and counted).", default=256)
    pooling: str = help_field("NLU classifier pooling: auto (sentence-transformers folders -> their pooling, else cls), "
                         "cls (the checkpoint's own *ForSequenceClassification head), mean (masked mean of the last "
                         "hidden states + linear head) or last (last non-pad token + linear head); see balora.heads.",
                         default="auto")
    pair_encoding: str = help_field("NLU sentence pairs: cross (both sentences in one input, the usual way) or siamese "
                               "(each sentence encoded alone, head on (u, v, |u - v|, u * v), as Sentence-BERT; for "
                               "bi-encoder checkpoints such as all-MiniLM-L6-v2); see balora.heads.", default="cross")

    def __post_init__(self) -> None:
        from ..heads import POOLINGS, check_pair_encoding

        check_types(self, "model")
        if self.pooling not in POOLINGS:
            raise ValueError(f"model.pooling must be one of {', '.join(POOLINGS)}, got {self.pooling!r}")
        check_pair_encoding(self.pair_encoding, "model.pair_encoding")
        if self.dtype not in ("float32", "bfloat16", "float16"):
            raise ValueError(f"model.dtype must be float32, bfloat16 or float16, got {self.dtype!r}")
        if self.max_length < 8:
            raise ValueError(f"model.max_length must be >= 8, got {self.max_length}")


@dataclass
class DataConfig:
    train: str = help_field("Training data: a local CSV/TSV/JSON/JSONL/parquet file or a Hub dataset 'name[:config]'.", default="")
    validation: Optional[str] = help_field("Validation data (same forms); for a Hub dataset a split name.", default=None)
    test: Optional[str] = help_field("Test data evaluated once after training (same forms).", default=None)
    text_columns: list[str] = help_field("NLU: one or two text columns (sentence pairs).", default_factory=list)
    label_column: str = help_field("NLU: label column (int classes, strings mapped in sorted order, or floats for regression).", default="label")
    task_type: str = help_field("NLU: 'classification' or 'regression' (auto: float labels -> regression).", default="auto")
    format: Optional[str] = help_field("NLG: instruction format (alpaca, metamath, codefeedback, gsm8k, sharegpt, messages, prompt_completion); auto-detected when empty.", default=None)
    train_limit: Optional[int] = help_field("Use at most this many training examples (seeded stratified subsample for NLU).", default=None)
    eval_limit: Optional[int] = help_field("Use at most this many validation/test examples.", default=None)
    label_noise: float = help_field("NLU: fraction of training labels flipped, exactly round(rate * n) (balora.data.noise; "
                               "validation/test stay clean). 0 = none.", default=0.0)
    label_noise_kind: str = help_field("NLU: 'symmetric' (to a uniformly drawn other class) or 'class_dependent' "
                                  "(class c -> c + 1 mod C, the rate applied within every class).", default="symmetric")
    imbalance_fraction: float = help_field("NLU: keep this fraction of the minority class's training rows (exactly "
                                      "round(f * n_min), at least 1); 1 = no subsampling.", default=1.0)
    imbalance_class: Optional[int] = help_field("NLU: the class subsampled by imbalance_fraction; empty = the least "
                                           "frequent training class.", default=None)
    injection_seed: Optional[int] = help_field("Seed of the noise / imbalance draw; empty = train.seed. Recorded with "
                                          "the run.", default=None)
    answer_noise: float = help_field("NLG: fraction of training answers made wrong, exactly round(rate * n): the final "
                                     "number becomes another (balora.data.noise.corrupt_answers). 0 = none.", default=0.0)

    def __post_init__(self) -> None:
        check_types(self, "data")
        if self.task_type not in ("auto", "classification", "regression"):
            raise ValueError(f"data.task_type must be auto, classification or regression, got {self.task_type!r}")
        for name in ("train_limit", "eval_limit"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"data.{name} must be >= 1 or empty (no limit), got {getattr(self, name)}")
        for name in ("label_noise", "answer_noise"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"data.{name} must be in [0, 1], got {getattr(self, name)}")
        if self.label_noise_kind not in ("symmetric", "class_dependent"):
            raise ValueError(f"data.label_noise_kind must be symmetric or class_dependent, got {self.label_noise_kind!r}")
        if not 0 < self.imbalance_fraction <= 1:
            raise ValueError(f"data.imbalance_fraction must be in (0, 1], got {self.imbalance_fraction}")
        if len(self.text_columns) > 2:
            raise ValueError(f"data.text_columns takes one or two columns, got {self.text_columns}")


@dataclass
class MethodConfig:
    name: str = help_field("Method: lora, pissa, ba-lora, dora, loha, adalora, the rival inits olora, milora, corda, eva, "
                           "lora-ga (docs/method.md), <peft method>+reg, full, bitfit, houlsby, pfeiffer.", default="ba-lora")
    r: int = help_field("Adapter rank.", default=8)
    alpha: Optional[float] = help_field("LoRA alpha (scaling alpha / r); default r.", default=None)
    target_modules: Union[str, list[str]] = help_field("Adapted modules: 'all-linear' (paper) or a list of names.", default="all-linear")
    dropout: float = help_field("Adapter dropout (paper: 0).", default=0.0)
    pissa_niter: Optional[int] = help_field("PiSSA: fast randomised SVD with this many subspace iterations (peft pissa_niter_K); exact SVD when empty.", default=None)
    init_batches: int = help_field("corda, eva, lora-ga: initialise the adapter from this many training batches "
                                   "(train.batch_size each, drawn with train.seed).", default=8)
    head_warmup: str = help_field("NLU: fit the classifier head alone on frozen pooled features of the training set before "
                             "the adapters train (LP-FT): 'logreg' (scikit-learn logistic regression; ridge for "
                             "regression) or 'none' (random head). The consistency term's reference then uses the "
                             "warmed head. Its cost is recorded as head_warmup_seconds.", default="logreg")
    quantize: Optional[str] = help_field("Quantise the frozen base of the adapted layers after the adapter init (torchao, "
                                         "balora.quant): int8 or int4; with a PiSSA init this is QPiSSA (only the residual "
                                         "is quantised). lora and pissa methods (and their +reg, ba-lora) only; empty = "
                                         "no quantisation.", default=None)
    quantize_group_size: int = help_field("Group size of int4 quantisation.", default=128)

    def __post_init__(self) -> None:
        from ..heads import HEAD_WARMUPS

        check_types(self, "method")
        from ..methods import parse_method

        base_method, _ = parse_method(self.name)
        if self.quantize is not None and self.quantize not in ("int8", "int4"):
            raise ValueError(f"method.quantize must be int8, int4 or empty, got {self.quantize!r}")
        if self.quantize is not None and base_method not in ("lora", "pissa"):
            raise ValueError(f"method.quantize is offered for the lora and pissa methods (and their +reg, ba-lora), "
                             f"not for method.name {self.name!r}")
        if self.quantize_group_size < 1:
            raise ValueError(f"method.quantize_group_size must be >= 1, got {self.quantize_group_size}")
        if self.head_warmup not in HEAD_WARMUPS:
            raise ValueError(f"method.head_warmup must be one of {', '.join(HEAD_WARMUPS)}, got {self.head_warmup!r}")
        if self.r < 1:
            raise ValueError(f"method.r must be >= 1, got {self.r}")
        if self.init_batches < 1:
            raise ValueError(f"method.init_batches must be >= 1, got {self.init_batches}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"method.dropout must be in [0, 1), got {self.dropout}")


@dataclass
class TrainConfig:
    output_dir: str = help_field("Run directory (checkpoints, logs, adapters, balora_run.json).", default="runs/balora")
    epochs: float = help_field("Training epochs.", default=1.0)
    max_steps: int = help_field("Stop after this many optimizer steps (overrides epochs when > 0).", default=-1)
    batch_size: int = help_field("Per-device training batch size.", default=16)
    eval_batch_size: int = help_field("Per-device evaluation batch size.", default=64)
    grad_accum: int = help_field("Gradient accumulation steps.", default=1)
    lr: float = help_field("Peak learning rate (AdamW).", default=2e-4)
    weight_decay: float = help_field("AdamW weight decay.", default=0.0)
    warmup_ratio: float = help_field("Linear warm-up fraction of the steps.", default=0.0)
    scheduler: str = help_field("transformers learning-rate scheduler name (linear, cosine, constant, ...).", default="linear")
    seed: int = help_field("Seed of data order, adapter init and dropout.", default=0)
    group_by_length: bool = help_field("Batch examples of similar length together (less padding, faster on CPU).", default=False)
    logging_steps: int = help_field("Log every N steps (each BA-LoRA term is logged separately).", default=10)
    save_steps: int = help_field("Checkpoint every N steps (0 = only at the end).", default=0)
    save_total_limit: int = help_field("Keep at most this many checkpoints.", default=2)
    tensorboard: bool = help_field("Also log to TensorBoard under output_dir/tb.", default=False)
    progress: bool = help_field("Show progress bars.", default=True)
    resume: bool = help_field("Resume from the last checkpoint in output_dir when there is one.", default=False)
    overwrite: bool = help_field("Train afresh into an output_dir that holds a completed run, removing its record, adapters and checkpoints first (without it such a folder is refused).", default=False)
    cached_reference_epochs: float = help_field("NLU: use cached per-example teacher logits (regularizers.reference='cached') when training for at least this many epochs and the model has no active dropout (a cache cannot replay the student's dropout masks, docs/method.md); 0 = never switch automatically.", default=2.0)

    def __post_init__(self) -> None:
        check_types(self, "train")
        for name in ("batch_size", "eval_batch_size", "grad_accum", "logging_steps", "save_total_limit"):
            if getattr(self, name) < 1:
                raise ValueError(f"train.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("lr", "epochs"):  # epochs 0 would "finish" with the untrained adapter
            if not (math.isfinite(getattr(self, name)) and getattr(self, name) > 0):
                raise ValueError(f"train.{name} must be a finite number > 0, got {getattr(self, name)}")
        if self.max_steps == 0 or self.max_steps < -1:
            raise ValueError(f"train.max_steps must be >= 1, or -1 to train for train.epochs, got {self.max_steps}")
        for name in ("weight_decay", "save_steps", "cached_reference_epochs"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"train.{name} must be >= 0, got {getattr(self, name)}")
        if not 0 <= self.warmup_ratio < 1:
            raise ValueError(f"train.warmup_ratio must be in [0, 1), got {self.warmup_ratio}")

    def total_steps(self, n_train: int, world_size: Optional[int] = None) -> int:
        """Optimizer steps of the run: ``max_steps`` when set, else epochs x ceil(examples / global batch)
        (``world_size``: processes in the run, default ``$WORLD_SIZE`` or 1). AdaLoRA's budget needs it."""
        if self.max_steps > 0:
            return self.max_steps
        world = world_size if world_size is not None else int(os.environ.get("WORLD_SIZE", "1"))
        per_epoch = math.ceil(n_train / (self.batch_size * world * self.grad_accum))
        return max(1, int(math.ceil(per_epoch * self.epochs)))

    def warmup_steps(self, total_steps: int) -> int:
        """Learning-rate warm-up steps: ceil(warmup_ratio x total_steps), as transformers computes them."""
        return math.ceil(total_steps * self.warmup_ratio)


@dataclass
class RunConfig:
    kind: str = help_field("'nlu' (sequence classification/regression) or 'nlg' (causal LM instruction tuning).", default="nlu")
    model: ModelConfig = field(default_factory=ModelConfig, metadata={"help": "Base model."})
    data: DataConfig = field(default_factory=DataConfig, metadata={"help": "Data."})
    method: MethodConfig = field(default_factory=MethodConfig, metadata={"help": "Adapter method."})
    regularizers: Optional[BALoRAConfig] = field(default=None, metadata={
        "help": "The BA-LoRA regularisers and the reference (BALoRAConfig, see balora.config; its task is kind). "
                "Empty = the defaults of the task."})
    train: TrainConfig = field(default_factory=TrainConfig, metadata={"help": "Optimisation and logging."})
    eval: list = field(default_factory=list, metadata={"help": "NLG: generation benchmarks run after training, "
                       "a list of {task, data, limit, batch_size, max_new_tokens} (see EvalOptions)."})

    def __post_init__(self) -> None:
        if not isinstance(self.kind, str):
            raise ValueError(f"kind must be 'nlu' or 'nlg', got {self.kind!r}")
        if self.kind not in ("nlu", "nlg"):
            raise ValueError(f"kind must be 'nlu' or 'nlg', got {self.kind!r}")
        if self.regularizers is None:
            self.regularizers = BALoRAConfig(task=self.kind)
        elif self.regularizers.task != self.kind:
            raise ValueError(f"regularizers.task is {self.regularizers.task!r} but kind is {self.kind!r}: "
                             "the regularisers' task is the run's kind")
        self.regularizers_given: Optional[tuple[str, ...]] = None  # build_config: the regulariser keys given

    def identity(self) -> dict:
        """The settings that identify a run, in the form sweep records have always been keyed by (so a sweep resumes,
        and its report regenerates, from records written before): :meth:`to_dict` with the regulariser options as
        given (not their defaults) under the section's former name ``balora``, and ``method.quantize`` /
        ``quantize_group_size`` only when quantising, ``data.answer_noise`` only when not 0, an eval entry's sampling
        options only when it samples."""
        values = self.to_dict()
        reg = values.pop(REGULARIZERS)
        given = self.regularizers_given
        if given is None:  # built in code: the options that differ from the task's defaults
            default = BALoRAConfig(task=self.kind).to_dict()
            given = tuple(k for k in reg if k != "task" and reg[k] != default[k])
        values["balora"] = {k: reg[k] for k in given}
        if values["method"]["quantize"] is None:
            del values["method"]["quantize"], values["method"]["quantize_group_size"]
        if not values["data"]["answer_noise"]:  # options added later: present only when used
            del values["data"]["answer_noise"]
        for ev in values["eval"]:
            if not ev["samples"]:
                del ev["samples"], ev["temperature"], ev["sample_seed"]
        return values

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


SECTIONS = {"model": ModelConfig, "data": DataConfig, "method": MethodConfig, "train": TrainConfig}
REGULARIZERS = "regularizers"
# Former section names, still read from YAML files, --section.key overrides and sweep paths.
SECTION_ALIASES = {"balora": REGULARIZERS}


def canonical_path(path: str) -> str:
    """``"balora.lambda_svd"`` -> ``"regularizers.lambda_svd"`` (a section's former name); others unchanged."""
    section, dot, rest = str(path).partition(".")
    return SECTION_ALIASES.get(section, section) + dot + rest


def regularizer_fields() -> set[str]:
    """The keys of the ``regularizers`` section: BALoRAConfig's fields but ``task`` (which is the run's kind)."""
    return {f.name for f in dataclasses.fields(BALoRAConfig)} - {"task"}


def build_config(raw: dict, source: str = "<config>") -> RunConfig:
    """RunConfig from a nested dict; unknown sections/keys are errors naming the source and the key."""
    raw = _canonical_sections(dict(raw or {}), source)
    kwargs: dict[str, Any] = {}
    regularizers: Optional[dict] = None
    for key, value in raw.items():
        if key == "kind":
            kwargs["kind"] = value
        elif key == REGULARIZERS:
            known = regularizer_fields()
            bad = set(value or {}) - known
            if bad:
                raise ValueError(f"{source}: unknown {REGULARIZERS} option(s) {sorted(bad)}; known: {sorted(known)}")
            regularizers = check_field_types(BALoRAConfig, dict(value or {}), REGULARIZERS)
        elif key == "eval":
            kwargs["eval"] = parse_eval_section(value, source)
        elif key in SECTIONS:
            cls = SECTIONS[key]
            known = {f.name for f in dataclasses.fields(cls)}
            bad = set(value or {}) - known
            if bad:
                raise ValueError(f"{source}: unknown {key} option(s) {sorted(bad)}; known: {sorted(known)}")
            try:
                kwargs[key] = cls(**(value or {}))
            except TypeError as err:
                raise ValueError(f"{source}: section {key}: {err}") from err
        else:
            raise ValueError(f"{source}: unknown section {key!r}; expected kind, model, data, method, "
                             f"{REGULARIZERS}, train, eval")
    kind = kwargs.get("kind", "nlu")
    if regularizers is not None and kind in ("nlu", "nlg"):  # a bad kind is named by RunConfig below
        try:
            kwargs[REGULARIZERS] = BALoRAConfig(task=kind, **regularizers)
        except ValueError as err:
            raise ValueError(f"{source}: section {REGULARIZERS}: {err}") from err
    cfg = RunConfig(**kwargs)
    cfg.regularizers_given = tuple(regularizers or ())
    return cfg


def _canonical_sections(raw: dict, source: str) -> dict:
    """Rename former section names (:data:`SECTION_ALIASES`); a section given under both names is merged in the
    order given (so ``--balora.x`` overrides a file's ``regularizers:`` and the reverse)."""
    out: dict = {}
    for key, value in raw.items():
        name = SECTION_ALIASES.get(key, key)
        if name in out and isinstance(out[name], dict) and isinstance(value, dict):
            out[name] = merge(out[name], value)
        elif name in out and out[name] is not None and value is not None:
            raise ValueError(f"{source}: section {name!r} given twice (also under its former name); keep one")
        else:
            out[name] = value if name not in out or value is not None else out[name]
    return out


def parse_overrides(items: list[str]) -> dict:
    """``["--train.epochs", "3", "--method.name=lora"]`` -> ``{"train": {"epochs": 3}, "method": {"name": "lora"}}``."""
    out: dict[str, Any] = {}
    i = 0
    while i < len(items):
        item = items[i]
        head = item[2:].split("=", 1)[0] if item.startswith("--") else ""
        if not head or (head != "kind" and "." not in head):
            raise ValueError(f"override {item!r}: expected --section.key value (e.g. --train.epochs 3)")
        if "=" in item:
            key, value = item[2:].split("=", 1)
            i += 1
        else:
            if i + 1 >= len(items):
                raise ValueError(f"override {item!r} has no value")
            key, value = item[2:], items[i + 1]
            i += 2
        set_dotted(out, key, parse_yaml(value) if value != "" else "")
    return out


def set_dotted(mapping: dict, path: str, value: Any) -> None:
    """Set ``mapping["a"]["b"] = value`` for the dotted ``path`` "a.b", in place, creating missing levels."""
    node = mapping
    parts = path.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value


def merge(base: dict, extra: dict) -> dict:
    result = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(result.get(key), dict):
            result[key] = merge(result[key], value)
        else:
            result[key] = value
    return result


def load_config(path: Optional[str], overrides: Optional[list[str]] = None) -> RunConfig:
    """Read a YAML file (optional) and apply ``--section.key value`` overrides."""
    raw: dict = {}
    source = "<command line>"
    if path:
        raw = load_yaml(path)
        source = str(path)
    return build_config(merge(raw, parse_overrides(overrides or [])), source)
