"""The rival initialisations of the LoRA adapter: OLoRA, CorDA, EVA, LoRA-GA (through peft) and MiLoRA.

Every one is a plain LoRA adapter (``peft.LoraConfig``) whose ``A``, ``B`` (and for most, the frozen base) are
set from the pretrained weights or from the training data before the first step:

======== ===================================== ================= ==================================================
method   init (peft ``init_lora_weights``)      base weight       needs
======== ===================================== ================= ==================================================
olora    QR of W: B = Q_r, A = R_r (``olora``)  W - s B A         the weights only
milora   r SMALLEST singular triplets of W      W - s B A         the weights only (exact SVD)
corda    SVD of W C (C: input covariance),      W - s B A         activations of training batches
         ``corda`` with peft's preprocess_corda
eva      A = top right-singular vectors of the  unchanged (B = 0) activations of training batches
         layer inputs (incremental PCA), ranks
         redistributed (``eva``)
lora-ga  SVD of the full-weight gradient        W - s B A         loss gradients on training batches
         (``lora_ga`` with preprocess_loraga)
======== ===================================== ================= ==================================================

At step 0 each prepared model computes the pretrained function exactly: the residual inits through
``W_res + s B0 A0 = W`` (their reference is the frozen adapter copy and their export the rank-2r conversion,
see :mod:`balora.reference`), EVA through ``B = 0``.

:func:`init_adapter` replaces ``peft.get_peft_model`` for these methods (and calls it for every other).
The data-driven ones take ``batches``: a list of model-input dicts; :func:`sample_batches` draws them, seeded,
from a training set (``balora train``: ``method.init_batches`` batches of ``train.batch_size``).

MiLoRA is hand-written on top of peft's PiSSA path because peft 0.21 has no minor-component init (its
``mica`` keeps the minor LEFT vectors in a frozen ``B`` with ``A = 0``: a different method).
"""

from __future__ import annotations

import contextlib
import itertools
from typing import Any, Iterable, Iterator, Optional, Sequence

import torch
from torch import nn

# balora method name -> peft init_lora_weights
PEFT_INITS = {"olora": "olora", "milora": "pissa", "corda": "corda", "eva": "eva", "lora-ga": "lora_ga"}
INIT_METHODS = tuple(PEFT_INITS)
DATA_DRIVEN = ("corda", "eva", "lora-ga")
# EVA cycles over its batches until the incremental PCA converges; a hard stop (in passes over the batches).
EVA_MAX_PASSES = 50
NON_MODEL_KEYS = ("balora_index",)


def needs_data(method: str) -> bool:
    """True for an init computed from training batches (CorDA, EVA, LoRA-GA)."""
    return method in DATA_DRIVEN


def peft_init_kwargs(method: str) -> dict[str, Any]:
    """The ``peft.LoraConfig`` keywords of ``method``'s initialisation (peft's own sub-configs, defaults)."""
    if method not in PEFT_INITS:
        raise ValueError(f"no adapter initialisation named {method!r}; expected one of {', '.join(INIT_METHODS)}")
    kwargs: dict[str, Any] = {"init_lora_weights": PEFT_INITS[method]}
    if method == "corda":
        from peft.tuners.lora.config import CordaConfig

        kwargs["corda_config"] = CordaConfig(corda_method="ipm")  # IPM: adapt along the task's principal directions
    elif method == "eva":
        from peft import EvaConfig

        kwargs["eva_config"] = EvaConfig()
    elif method == "lora-ga":
        from peft import LoraGAConfig

        kwargs["lora_ga_config"] = LoraGAConfig()
    return kwargs


def sample_batches(dataset: Any, collator: Any, n_batches: int, batch_size: int, seed: int) -> list[dict]:
    """``n_batches`` shuffled batches of ``dataset`` (seeded by ``seed``, independent of the global RNG), collated."""
    from torch.utils.data import DataLoader

    if n_batches < 1:
        raise ValueError(f"the number of initialisation batches must be >= 1, got {n_batches}")
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, collate_fn=collator,
                        generator=torch.Generator().manual_seed(seed))
    return [_model_inputs(b) for b in itertools.islice(loader, n_batches)]


def init_adapter(model: nn.Module, config: Any, method: str, batches: Optional[Sequence[dict]] = None) -> nn.Module:
    """``peft.get_peft_model(model, config)`` with ``method``'s initialisation; returns the peft model.

    ``batches`` (list of model-input dicts; moved to the model's device) are required by CorDA, EVA and LoRA-GA and
    ignored otherwise. Refused with a clear error: a data-driven init without batches.
    """
    from peft import get_peft_model

    if not needs_data(method):
        peft_model = get_peft_model(model, config)
        if method == "milora":
            milora_init(peft_model)
        return peft_model
    if not batches:
        raise ValueError(f"method {method!r} initialises its adapter from the training data "
                         f"({'loss gradients' if method == 'lora-ga' else 'layer activations'}) but got no batches: "
                         "pass init_batches=[model-input dicts] to prepare_model (balora train draws "
                         "method.init_batches of them from the training set)")
    device = next(model.parameters()).device
    batches = [{k: v.to(device) if torch.is_tensor(v) else v for k, v in _model_inputs(b).items()} for b in batches]
    if method == "corda":
        _preprocess_corda(model, config, batches)
        return get_peft_model(model, config)
    if method == "lora-ga":
        _preprocess_loraga(model, config, batches)
        return get_peft_model(model, config)
    peft_model = get_peft_model(model, config, low_cpu_mem_usage=True)  # peft's advice: EVA fills the adapter
    _eva_init(peft_model, batches)
    return peft_model


def _model_inputs(batch: dict) -> dict:
    return {k: v for k, v in dict(batch).items() if k not in NON_MODEL_KEYS}


def _resolved(config: Any, model: nn.Module) -> Any:
    """A copy of ``config`` with ``all-linear`` resolved to module names, as ``get_peft_model`` will resolve it.

    peft's CorDA and LoRA-GA preprocessors run on the bare model before ``get_peft_model`` and match
    ``target_modules`` by name only, so the shorthand would match nothing there.
    """
    import copy

    from .peft_compat import resolve_all_linear

    return resolve_all_linear(copy.deepcopy(config), model)


def _without_class_labels(batch: dict) -> dict:
    """Activation-only passes: token labels (NLG, ``-100`` on prompts) mark the positions peft's EVA keeps;
    per-example class labels (NLU) are not token masks and are dropped."""
    labels = batch.get("labels")
    if labels is not None and getattr(labels, "dim", lambda: 0)() < 2:
        return {k: v for k, v in batch.items() if k != "labels"}
    return batch


def _single_sequences(batch: dict) -> Iterable[dict]:
    """The rows of ``batch`` one at a time with their padding removed.

    peft's CorDA hook takes ONE sequence per call (``input[0].squeeze(0)`` then a 2-D covariance), so batches are
    fed row by row; padding positions (``attention_mask`` / ``attention_mask_b`` = 0) are dropped so they do not
    enter the covariance.
    """
    from .heads import SECOND_SUFFIX

    batch = {k: v for k, v in batch.items() if k != "labels"}
    n = next(v.shape[0] for v in batch.values() if torch.is_tensor(v))
    for i in range(n):
        row = {k: v[i:i + 1] if torch.is_tensor(v) else v for k, v in batch.items()}
        for suffix in ("", SECOND_SUFFIX):
            mask = row.get("attention_mask" + suffix)
            if mask is None:
                continue
            keep = mask[0].bool()
            for key in [k for k in row if k.endswith(suffix) and torch.is_tensor(row[k]) and row[k].dim() == 2]:
                if key.removesuffix(suffix) in ("input_ids", "attention_mask", "token_type_ids", "position_ids") \
                        and row[key].shape[1] == keep.shape[0]:
                    row[key] = row[key][:, keep]
        yield row


def _preprocess_corda(model: nn.Module, config: Any, batches: list[dict]) -> None:
    try:
        from peft.tuners.lora.corda import preprocess_corda
    except ModuleNotFoundError as err:  # peft 0.21's corda.py does `from attr import dataclass`, undeclared
        raise ImportError(f"method 'corda' needs the attrs package: peft's CorDA module imports it without declaring "
                          f"it as a dependency ({err}); pip install attrs (balora's pyproject lists it)") from err

    from peft.tuners.lora.corda import target_modules

    @torch.no_grad()
    def run_model() -> None:
        for batch in batches:
            for row in _single_sequences(batch):
                model(**row)

    was_training = model.training
    resolved = _resolved(config, model)
    with _token_axis([module for _, module in target_modules(model, resolved)]):
        preprocess_corda(model, resolved, run_model=run_model)
    model.train(was_training)


@contextlib.contextmanager
def _token_axis(modules: Sequence[nn.Module]) -> Iterator[None]:
    """Give a per-sequence layer's input a token axis while peft's CorDA hooks run (function unchanged).

    peft's CorDA hook squeezes the batch axis of a one-sequence call and needs (tokens, features) left; a layer
    that sees one vector per sequence (BERT's pooler: (1, features)) would be squeezed to 1-D and its covariance
    would be a scalar. Its input is unsqueezed to (1, 1, features) before the call and its output squeezed back
    after (these hooks are registered before peft's, so peft's hook sees the 3-D input).
    """
    def before(module: nn.Module, args: tuple) -> Optional[tuple]:
        if args and torch.is_tensor(args[0]) and args[0].dim() == 2:
            module._balora_token_axis = True
            return (args[0].unsqueeze(1),) + tuple(args[1:])
        return None

    def after(module: nn.Module, args: tuple, output: Any) -> Any:
        if module.__dict__.pop("_balora_token_axis", False):
            return output.squeeze(1)
        return None

    handles = [h for m in modules for h in (m.register_forward_pre_hook(before), m.register_forward_hook(after))]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def _preprocess_loraga(model: nn.Module, config: Any, batches: list[dict]) -> None:
    from peft import preprocess_loraga

    def train_step() -> None:
        for batch in batches:
            if "labels" not in batch:
                raise ValueError("LoRA-GA initialises from loss gradients: its batches need 'labels'")
            loss = model(**batch).loss
            if loss is None:
                raise ValueError(f"LoRA-GA initialises from loss gradients but {type(model).__name__} returned no "
                                 "loss for a batch with labels")
            loss.backward()

    preprocess_loraga(model, _resolved(config, model), train_step)


def _eva_init(peft_model: nn.Module, batches: list[dict]) -> None:
    """peft's ``initialize_lora_eva_weights`` over ``batches`` (cycled until its incremental PCA converges).

    peft cycles over the batches without a limit; a forward function that counts stops it after
    :data:`EVA_MAX_PASSES` passes with an error instead of looping forever.
    """
    from peft import initialize_lora_eva_weights

    from .heads import SECOND_SUFFIX

    if any(k.endswith(SECOND_SUFFIX) for k in batches[0]):
        raise ValueError("method 'eva' cannot initialise a siamese pair classifier: peft 0.21's EVA hooks index "
                         "every layer input with the FIRST sentence's attention mask, which does not fit the second "
                         "sentence's inputs; use model.pair_encoding: cross, or another init")
    batches = [_without_class_labels(b) for b in batches]
    limit = EVA_MAX_PASSES * len(batches) + 1  # + peft's first pass that hashes the layer inputs
    calls = itertools.count(1)

    def forward(model: nn.Module, inputs: dict) -> Any:
        if next(calls) > limit:
            raise RuntimeError(f"EVA's incremental PCA did not converge in {EVA_MAX_PASSES} passes over its "
                               f"{len(batches)} initialisation batches; give it more batches (method.init_batches) "
                               "or a lower eva_config.tau. A layer that sees one vector per sequence (BERT's "
                               "pooler) needs batches of at least r * eva_config.rho sequences")
        return model(**inputs)

    # Every rank draws the same seeded batches, so gathering them across ranks would only repeat them.
    initialize_lora_eva_weights(peft_model, dataloader=batches, forward_fn=forward,
                                prepare_layer_inputs_fn=_eva_layer_inputs, gather_distributed_inputs=False,
                                show_progress_bar=False)


def _eva_layer_inputs(layer_input: Any, model_input: Any, layer_name: str) -> torch.Tensor:
    """peft's token selection (non-padding, trained positions) for token layers; a per-sequence layer (BERT's
    pooler: input (batch, features)) keeps its rows, where peft's default would index it down to 1-D."""
    from peft.tuners.lora.eva import prepare_layer_inputs_fn_language_modeling

    first = layer_input[0] if isinstance(layer_input, (tuple, list)) else layer_input
    if torch.is_tensor(first) and first.dim() == 2:
        return first.contiguous()  # peft hashes it with .view(-1)
    return prepare_layer_inputs_fn_language_modeling(layer_input, model_input, layer_name)


@torch.no_grad()
def milora_init(peft_model: nn.Module, adapter_name: str = "default") -> int:
    """Turn peft's PiSSA init into MiLoRA: the adapter holds the r SMALLEST singular triplets of each W.

    peft's PiSSA init left ``W_res + s B A = W`` with the largest triplets; W is rebuilt from that, and with
    ``W = U S V^T``: ``A = sqrt(S_min / s) V_min^T``, ``B = U_min sqrt(S_min / s)``, ``W_res = W - s B A`` (the
    algebra of :meth:`peft.tuners.lora.LoraLayer.pissa_init` at the other end of the spectrum). The peft config
    keeps ``init_lora_weights="pissa"``: the layout (a residual base and a step-0 adapter A0, B0) is PiSSA's, so
    the reference copy and the export conversion are exactly PiSSA's. Returns the number of layers changed.
    """
    from peft.tuners.lora import LoraLayer
    from peft.utils import transpose

    changed = 0
    for module in peft_model.modules():
        if not isinstance(module, LoraLayer) or adapter_name not in module.lora_A:
            continue
        base = module.get_base_layer()
        dtype, s, r = base.weight.dtype, module.scaling[adapter_name], module.r[adapter_name]
        A, B = module.lora_A[adapter_name].weight, module.lora_B[adapter_name].weight
        weight = transpose(base.weight.float(), module.fan_in_fan_out) + s * B.float() @ A.float()
        U, S, Vh = torch.linalg.svd(weight, full_matrices=False)
        root = torch.sqrt(S[-r:] / s)
        A.data = (root[:, None] * Vh[-r:]).to(A.dtype).contiguous()
        B.data = (U[:, -r:] * root[None, :]).to(B.dtype).contiguous()
        residual = weight - s * B.float() @ A.float()
        base.weight.data = transpose(residual, module.fan_in_fan_out).to(dtype)
        changed += 1
    return changed
