"""prepare_model: turn a transformers model into one ready to fine-tune with a given method.

Methods (``METHODS``):

* peft LoRA family: ``lora``, ``pissa`` (PiSSA init through peft, exact or ``pissa_niter=K``),
  ``dora``, ``loha``, ``adalora``;
* the rival initialisations of a LoRA adapter (:mod:`balora.inits`): ``olora``, ``milora`` (weights only),
  ``corda``, ``eva``, ``lora-ga`` (from training batches: ``init_batches``);
* ``ba-lora``: PiSSA + the three BA-LoRA regularisers;
* ``<peft method>+reg``: the regularisers on any of the peft methods above (``lora+reg``, ``dora+reg``
  are the paper's Table 9);
* baselines without peft: ``full`` (full fine-tuning), ``bitfit``, ``houlsby`` and ``pfeiffer``
  (bottleneck adapters, see :mod:`balora.baselines`).

``prepare_model`` returns a :class:`PreparedModel`: the model to train, what was done to it (:class:`MethodInfo`),
the regulariser settings and the pretrained reference; nothing is attached to the module. Its
:meth:`~PreparedModel.objective` is the loss component handed to the trainer::

    prepared = prepare_model(model, "ba-lora", r=8, config=BALoRAConfig(lambda_consistency=0.1))
    trainer = BALoRATrainer(model=prepared.model, objective=prepared.objective(), args=args, ...)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional, Union

from torch import nn

from .config import BALoRAConfig
from .inits import INIT_METHODS
from .objectives import Objective, make_objective
from .reference import ReferenceSpec, choose_reference, reference_spec_for

PEFT_METHODS = ("lora", "pissa", "dora", "loha", "adalora") + INIT_METHODS
BASELINES = ("full", "bitfit", "houlsby", "pfeiffer")
METHODS = PEFT_METHODS + ("ba-lora",) + tuple(f"{m}+reg" for m in PEFT_METHODS) + BASELINES
# Row order of every results table (GLUE, OOD, NLG): the paper's, then anything else alphabetically.
TABLE_ORDER = ("base", "full", "bitfit", "houlsby", "pfeiffer", "lora", "lora+reg", "dora", "dora+reg", "loha",
               "adalora", "pissa", "pissa+reg", "ba-lora", "olora", "olora+reg", "milora", "milora+reg",
               "corda", "corda+reg", "eva", "eva+reg", "lora-ga", "lora-ga+reg")


def table_order_key(method: str) -> tuple[int, str]:
    """Sort key of a method in a results table (:data:`TABLE_ORDER`, unknown ones last, alphabetically)."""
    return (TABLE_ORDER.index(method) if method in TABLE_ORDER else len(TABLE_ORDER), method)


@dataclass
class MethodInfo:
    """What prepare_model did; written into run records and model cards."""

    method: str
    base_method: str
    regularized: bool
    task_type: Optional[str]
    adapter_kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass
class PreparedModel:
    """What :func:`prepare_model` made: the model to train and, apart from it, the settings of the run.

    ``config``: the regulariser settings (``None`` when the method has no regularisers); ``reference``: the pretrained
    reference of the consistency term (``None`` without regularisers; a ``cached`` one is filled with
    :meth:`~balora.reference.ReferenceSpec.fill` and passed to :meth:`objective`)."""

    model: nn.Module
    info: MethodInfo
    config: Optional[BALoRAConfig] = None
    reference: Optional[ReferenceSpec] = None

    def objective(self, reference: Optional[ReferenceSpec] = None) -> Objective:
        """The loss component for ``BALoRATrainer(objective=...)``: the task loss plus, for a regularised method,
        the BA-LoRA terms on ``reference`` (default: the one prepare_model set up)."""
        return make_objective(self.model, self.config, reference or self.reference)


def parse_method(method: str) -> tuple[str, bool]:
    """``"dora+reg"`` -> ``("dora", True)``; ``"ba-lora"`` -> ``("pissa", True)``."""
    name = method.strip().lower()
    if name not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}; got {method!r}")
    if name == "ba-lora":
        return "pissa", True
    if name.endswith("+reg"):
        return name[: -len("+reg")], True
    return name, False


def infer_task_type(model: nn.Module) -> Optional[str]:
    """peft task type from the model class, looking through peft wrappers: SEQ_CLS, CAUSAL_LM or None."""
    inner = model
    for attr in ("base_model", "model", None):
        cls = type(inner).__name__
        if cls.endswith("ForSequenceClassification") or cls == "PooledClassifier":
            return "SEQ_CLS"
        if cls.endswith("ForCausalLM") or cls.endswith("LMHeadModel"):
            return "CAUSAL_LM"
        inner = getattr(inner, attr, inner) if attr else inner
    return None


def prepare_model(
    model: nn.Module,
    method: str = "ba-lora",
    r: int = 8,
    alpha: Optional[float] = None,
    target_modules: Union[str, list[str], None] = "all-linear",
    dropout: float = 0.0,
    pissa_niter: Optional[int] = None,
    modules_to_save: Optional[list[str]] = None,
    task_type: Optional[str] = None,
    config: Optional[BALoRAConfig] = None,
    reference: Optional[str] = None,
    quantize: Optional[str] = None,
    quantize_group_size: int = 128,
    init_batches: Optional[list[dict]] = None,
    **peft_kwargs: Any,
) -> PreparedModel:
    """Wrap ``model`` for training with ``method``; returns a :class:`PreparedModel` (model, info, config, reference).

    Args:
        model: a transformers model (sequence classification or causal LM), in fp32 for the paper's setup.
        method: one of :data:`METHODS`.
        r, alpha: adapter rank and scaling numerator (``alpha`` defaults to ``r``: scaling 1).
        target_modules: peft's ``target_modules`` (``"all-linear"`` = all linear layers but the output
            layer, as in the paper).
        dropout: adapter dropout (the paper uses 0).
        pissa_niter: for PiSSA inits, use peft's fast randomised ``pissa_niter_K`` instead of the exact SVD.
        modules_to_save: extra fully-trained modules (peft adds the classification head for SEQ_CLS).
        task_type: peft task type; inferred from the model class when omitted.
        config: regulariser options; defaults to ``BALoRAConfig(task="nlu" | "nlg")`` from the task type. Used by
            the regularised methods only (``PreparedModel.config`` is None for the others).
        reference: the reference mode, overriding ``config.reference`` (``auto``, ``adapter``, ``disable``,
            ``cached``, ``model``); :func:`balora.reference.choose_reference` decides a run's.
        quantize: ``"int8"`` / ``"int4"``: quantise the frozen base of the adapted layers AFTER the adapter
            init (QPiSSA for PiSSA inits: the SVD sees the full-precision weight, only the residual is
            quantised; QLoRA-style for ``lora``), see :mod:`balora.quant` (torchao). LoRA/PiSSA only.
        quantize_group_size: group size of ``int4``.
        init_batches: model-input dicts (training batches, on the model's device) for the data-driven inits
            ``corda``, ``eva``, ``lora-ga`` (required there, ignored otherwise); see :mod:`balora.inits`.
        **peft_kwargs: passed to the peft config (e.g. ``total_step`` and ``target_r`` for AdaLoRA).
    """
    base_method, regularized = parse_method(method)
    if quantize is not None and quantize not in ("int8", "int4"):
        raise ValueError(f"quantize must be 'int8', 'int4' or None; got {quantize!r}")
    if quantize is not None and base_method not in ("lora", "pissa"):
        raise ValueError(f"quantize={quantize!r} is offered for the lora and pissa methods (and their +reg, ba-lora); "
                         f"got method {method!r}")
    task_type = task_type or infer_task_type(model)
    if config is None:
        config = BALoRAConfig(task="nlg" if task_type == "CAUSAL_LM" else "nlu")
    ref_mode = None
    if regularized:
        task = "nlg" if config.task == "nlg" or task_type == "CAUSAL_LM" else "nlu"
        ref_mode = choose_reference(reference or config.reference, task)

    original = None
    if ref_mode == "model":
        import copy

        original = copy.deepcopy(model).eval().requires_grad_(False)

    if base_method in BASELINES:
        if regularized:
            raise ValueError(f"+reg is offered for peft adapters {PEFT_METHODS}, not for {base_method!r}")
        model = _apply_baseline(model, base_method, task_type, **peft_kwargs)
        return PreparedModel(model, MethodInfo(method, base_method, False, task_type))

    from .heads import PooledClassifier, linear_targets
    from .inits import init_adapter

    if isinstance(model, PooledClassifier) and target_modules == "all-linear":
        target_modules = linear_targets(model)  # peft's "all-linear" keeps the head out only for PreTrainedModel
    peft_config = _peft_config(base_method, r, alpha, target_modules, dropout, pissa_niter, modules_to_save, task_type,
                               **peft_kwargs)
    model = init_adapter(model, peft_config, base_method, init_batches)
    spec = reference_spec_for(model, ref_mode, original=original) if regularized else None
    if quantize is not None:  # after the init and the reference copy: only the (residual) base is quantised
        from .quant import quantize_base

        quantize_base(model, quantize, quantize_group_size)
    info = MethodInfo(
        method=method,
        base_method=base_method,
        regularized=regularized,
        task_type=task_type,
        adapter_kwargs={"r": r, "alpha": alpha if alpha is not None else r, "target_modules": target_modules,
                        "dropout": dropout, "pissa_niter": pissa_niter, **peft_kwargs,
                        **({"quantize": quantize, "quantize_group_size": quantize_group_size} if quantize else {})},
    )
    return PreparedModel(model, info, config if regularized else None, spec)


def _peft_config(
    base_method: str,
    r: int,
    alpha: Optional[float],
    target_modules: Union[str, list[str], None],
    dropout: float,
    pissa_niter: Optional[int],
    modules_to_save: Optional[list[str]],
    task_type: Optional[str],
    **kwargs: Any,
) -> Any:
    import peft

    if r < 1:
        raise ValueError(f"r must be >= 1, got {r}")
    alpha = r if alpha is None else alpha
    common = dict(target_modules=target_modules, task_type=task_type, modules_to_save=modules_to_save)
    if base_method in ("lora", "pissa", "dora"):
        init: Union[bool, str] = True
        if base_method == "pissa":
            init = f"pissa_niter_{pissa_niter}" if pissa_niter else "pissa"
        return peft.LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, init_lora_weights=init,
                               use_dora=base_method == "dora", **common, **kwargs)
    if base_method in INIT_METHODS:
        from .inits import peft_init_kwargs

        return peft.LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, **common, **peft_init_kwargs(base_method),
                               **kwargs)
    if base_method == "loha":
        return peft.LoHaConfig(r=r, alpha=alpha, rank_dropout=dropout, module_dropout=0.0, **common, **kwargs)
    if base_method == "adalora":
        if "total_step" not in kwargs:
            raise ValueError("method 'adalora' needs total_step=<number of training steps> (peft AdaLoraConfig)")
        kwargs.setdefault("init_r", r + r // 2)
        kwargs.setdefault("target_r", r)
        return peft.AdaLoraConfig(lora_alpha=alpha, lora_dropout=dropout, **common, **kwargs)
    raise ValueError(f"no peft config for method {base_method!r}")


def _apply_baseline(model: nn.Module, method: str, task_type: Optional[str], **kwargs: Any) -> nn.Module:
    from .baselines import bitfit, bottleneck

    if method == "full":
        model.requires_grad_(True)
        return model
    if method == "bitfit":
        return bitfit.apply_bitfit(model, **kwargs)
    if method == "houlsby":
        return bottleneck.apply_houlsby(model, **kwargs)
    return bottleneck.apply_pfeiffer(model, **kwargs)
