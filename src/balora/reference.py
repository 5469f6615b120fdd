"""The pretrained reference: the ORIGINAL model's outputs, exact and cheap (docs/method.md section 5).

With PiSSA the frozen base weights are the residual ``W_res = W - s B0 A0``; disabling the adapter gives
``W_res``, not ``W``. The default reference therefore keeps a frozen copy ``(A0, B0)`` of the initial
adapter as a second adapter and switches to it for a no-grad pass: ``W_res + s B0 A0 = W``, no second
model in memory. For zero-initialised adapters (plain LoRA, DoRA, LoHa, AdaLoRA) disabling the adapter
is exact. The classification head (a peft ``modules_to_save`` wrapper) falls back to its frozen
original, i.e. the head as it was at step 0.

:class:`ReferenceSpec` is the reference as an object with a lifecycle: :func:`choose_reference` decides the mode
once, :func:`reference_spec_for` sets it up (``prepare_model`` calls both): ``adapter`` (switch to the frozen copy),
``disable`` (adapter disabled), ``model`` (a separately held original) or ``cached`` (per-example NLU
outputs, filled once with :meth:`ReferenceSpec.fill` through the live reference it wraps).

The switch goes through :mod:`balora.peft_compat` (two private peft attributes, restored on exit).

Dropout (docs/method.md, "the dropout rule"): when the model has active dropout, a live
reference pass runs in TRAIN mode replaying the random state the student's forward started from
(:class:`RngState`), so both passes draw identical dropout masks: the consistency term is exactly 0 at
step 0 and afterwards measures the adapter's change under identical noise. This needs the reference to
consume the same random numbers as the student: true for the adapter copy (same adapter dropout) and,
when the adapter itself has no dropout, for the disabled adapter and the held model. Otherwise (and for
the cache, filled once in eval mode) the reference runs in eval mode and a warning says so.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, replace
from typing import Any, Iterator, Optional

import torch
from torch import nn

from . import peft_compat

logger = logging.getLogger(__name__)

REFERENCE_ADAPTER = "balora_reference"
# Initialisations that move part of the pretrained weight into the adapter (the base becomes a residual).
# Not EVA: it sets A from activations and B = 0, the base stays W (the disabled adapter is the reference).
_RESIDUAL_INITS = ("pissa", "olora", "corda", "lora_ga", "loftq")
MODES = ("adapter", "disable", "model", "cached")


def _tuner_layers(model: nn.Module) -> Iterator[nn.Module]:
    return peft_compat.adapter_layers(model)

def is_residual_init(init_lora_weights: Any) -> bool:
    """True for an ``init_lora_weights`` value that rewrites the base weights (PiSSA, OLoRA, ...): such a run
    keeps its step-0 adapter, and exporting it for the original base needs that adapter (balora.export)."""
    return isinstance(init_lora_weights, str) and init_lora_weights.lower().startswith(_RESIDUAL_INITS)


def init_modifies_base(peft_config: Any) -> bool:
    """True when the adapter's initialisation rewrote the base weights (PiSSA, OLoRA, ...)."""
    return is_residual_init(getattr(peft_config, "init_lora_weights", True))


def add_reference_adapter(model: nn.Module, adapter_name: str = "default") -> ReferenceSpec:
    """Add a frozen copy of ``adapter_name``'s current (initial) weights as :data:`REFERENCE_ADAPTER`.

    The copy is added with a *plain* init (re-running the PiSSA init on the already residual base would
    silently change the model), then the initial A0, B0 are copied in and frozen. ``requires_grad`` of the
    trained adapter is left exactly as it was.
    """
    import copy

    config = copy.deepcopy(model.peft_config[adapter_name])
    config.init_lora_weights = True
    config.modules_to_save = None
    if getattr(config, "use_dora", False):
        raise ValueError("a reference adapter copy is not supported for DoRA with a residual init")
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    model.add_adapter(REFERENCE_ADAPTER, config)
    copied = peft_compat.copy_lora_adapter(model, adapter_name, REFERENCE_ADAPTER)
    if copied == 0:
        raise RuntimeError(f"no LoRA layer of adapter {adapter_name!r} found to copy into the reference")
    for name, param in model.named_parameters():
        param.requires_grad_(name in trainable and REFERENCE_ADAPTER not in name)
    # Keep the trained adapter the active one, without set_adapter() (which would flip requires_grad).
    for module in _tuner_layers(model):
        peft_compat.activate_adapter(module, adapter_name)
    return ReferenceSpec(mode="adapter", adapter_name=adapter_name)


class RngState:
    """The CPU (and current accelerator) random state at one moment, to replay dropout masks later."""

    def __init__(self, device: torch.device) -> None:
        self.device = torch.device(device)
        self.cpu = torch.get_rng_state()
        self.accel = torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None

    @contextlib.contextmanager
    def replay(self) -> Iterator[None]:
        """Inside the block the generators start from the captured state; on exit they are as before."""
        cuda = self.accel is not None
        with torch.random.fork_rng(devices=[self.device] if cuda else [], device_type="cuda" if cuda else "cpu"):
            torch.set_rng_state(self.cpu)
            if cuda:
                torch.cuda.set_rng_state(self.accel, self.device)
            yield


DROPOUTS = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.FeatureAlphaDropout)


def has_dropout(model: nn.Module) -> bool:
    """True when a forward pass in train mode draws random numbers (dropout modules or attention dropout)."""
    for module in model.modules():
        if isinstance(module, DROPOUTS) and module.p > 0:
            return True
        config = getattr(module, "config", None)
        if config is not None and hasattr(config, "to_dict"):
            for key, value in config.to_dict().items():
                if ("dropout" in key or "pdrop" in key) and isinstance(value, (int, float)) and value > 0:
                    return True
    return False


def _adapter_has_dropout(model: nn.Module, adapter_name: str) -> bool:
    # Dropout modules only: a rate stored as a number (LoHa's rank_dropout) is not counted, as before.
    return any(isinstance(drop, DROPOUTS) and drop.p > 0 for drop in peft_compat.adapter_dropouts(model, adapter_name))


@dataclass
class ReferenceSpec:
    """The pretrained reference of a prepared model (:attr:`balora.methods.PreparedModel.reference`).

    ``mode``: ``adapter`` | ``disable`` | ``model`` | ``cached``. ``cached`` wraps the ``live`` reference
    that :meth:`fill` runs once over the training set; ``cache`` holds the rows.
    """

    mode: str
    adapter_name: str = "default"
    reference_adapter: str = REFERENCE_ADAPTER
    model: Optional[nn.Module] = None  # only for mode="model"
    cache: Optional["TeacherCache"] = None  # only for mode="cached"
    live: Optional["ReferenceSpec"] = None  # mode="cached": how the cache is (was) filled

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"unknown reference mode {self.mode!r}; expected one of {', '.join(MODES)}")

    # -------------------------------------------------------------------------------- live passes
    @contextlib.contextmanager
    def activate(self, model: nn.Module, train: bool = False) -> Iterator[nn.Module]:
        """Inside the block the yielded module computes the ORIGINAL pretrained function.

        ``train=False``: eval mode (no dropout). ``train=True``: the module stays in train mode, for a pass
        replaying the student's dropout masks (see :class:`RngState`).
        """
        if self.mode == "cached":
            if self.live is None:
                raise ValueError("a cached reference has no live reference to switch to; use its cache (lookup)")
            with self.live.activate(model, train) as ref:
                yield ref
            return
        if self.mode == "model":
            if self.model is None:
                raise ValueError("ReferenceSpec(mode='model') needs the original model")
            was_training = self.model.training
            self.model.train(train)
            try:
                yield self.model
            finally:
                self.model.train(was_training)
            return
        saved = peft_compat.save_switch(list(_tuner_layers(model)))
        was_training = model.training
        try:
            for layer, _, _ in saved:
                if self.mode == "adapter":
                    peft_compat.activate_adapter(layer, self.reference_adapter)
                else:
                    peft_compat.disable_adapters(layer)
            model.train(train)
            yield model
        finally:
            peft_compat.restore_switch(saved)
            model.train(was_training)

    def to(self, device: Any) -> "ReferenceSpec":
        """Move a separately held original model (``mode="model"``) to ``device``; the other modes hold none."""
        if self.model is not None:
            self.model.to(device)
        return self

    def shares_dropout_masks(self, model: nn.Module) -> bool:
        """Can a live pass draw exactly the random numbers the student's forward drew?"""
        if self.mode == "cached":
            return False
        if self.mode == "adapter":
            return True  # the frozen copy has the trained adapter's dropout
        return not _adapter_has_dropout(model, self.adapter_name)

    @torch.no_grad()
    def forward(self, model: nn.Module, inputs: dict, rng: Optional[RngState] = None, **kwargs: Any) -> Any:
        """One no-grad pass of the original function; with ``rng``, in train mode under the replayed state."""
        if rng is None:
            with self.activate(model) as ref:
                return ref(**inputs, **kwargs)
        with rng.replay(), self.activate(model, train=True) as ref:
            return ref(**inputs, **kwargs)

    # ------------------------------------------------------------------------------------- cache
    @property
    def ready(self) -> bool:
        return self.mode != "cached" or (self.cache is not None and len(self.cache) > 0)

    def lookup(self, name: str, index: Optional[torch.Tensor], device: torch.device) -> torch.Tensor:
        if self.cache is None:
            raise ValueError("reference='cached' needs its cache filled before training (ReferenceSpec.fill)")
        if index is None:
            raise ValueError("reference='cached' needs a 'balora_index' column in every batch")
        return self.cache.lookup(name, index, device)

    def fill(self, model: nn.Module, dataset: Any, collator: Any, batch_size: int, device: Any,
             features: Optional[Any] = None) -> "ReferenceSpec":
        """Run the live reference once over ``dataset`` (rows carry ``balora_index``); returns the cached reference.

        ``features``: optional ``fn(ref_model, inputs) -> (logits, pooled_features)`` for regression heads
        (the trainer's NLU objective provides it); without it only the logits are stored. The cache is
        computed in eval mode: it cannot share the student's dropout masks (logged when the model has dropout).
        """
        from torch.utils.data import DataLoader
        from tqdm.auto import tqdm

        live = self.live if self.mode == "cached" else self
        if live is None or live.mode == "cached":
            raise ValueError("this cached reference has no live reference to fill it from")
        if has_dropout(model):
            logger.warning("reference='cached': the cache is computed once in eval mode, so with dropout in the "
                           "model the consistency term also measures the student's dropout noise (docs/method.md)")
        cache = TeacherCache()
        size = len(dataset)
        loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collator)
        with torch.no_grad(), live.activate(model) as ref:
            for batch in tqdm(loader, desc="teacher logits", leave=False):
                index = batch.pop("balora_index")
                batch.pop("labels", None)
                batch = {k: v.to(device) if hasattr(v, "to") else v for k, v in batch.items()}
                if features is None:
                    cache.put("logits", index, ref(**batch)["logits"], size)
                else:
                    logits, pooled = features(ref, batch)
                    cache.put("logits", index, logits, size)
                    cache.put("features", index, pooled, size)
        return replace(self, mode="cached", cache=cache, live=live)

    def with_cache(self, cache: "TeacherCache") -> "ReferenceSpec":
        return replace(self, cache=cache) if self.mode == "cached" else self


@contextlib.contextmanager
def reference_mode(model: nn.Module, spec: ReferenceSpec, train: bool = False) -> Iterator[nn.Module]:
    """Inside the block, ``model`` computes the ORIGINAL pretrained function (in eval mode, no dropout).

    Yields the module to call: ``model`` itself, or the held original model for ``mode="model"``.
    """
    if spec.mode == "cached" and spec.live is None:
        raise ValueError(f"reference_mode cannot switch a model to reference mode {spec.mode!r}")
    with spec.activate(model, train) as ref:
        yield ref


def choose_reference(requested: str, task: str, *, model: Optional[nn.Module] = None, epochs: float = 0.0,
                     max_steps: int = -1, cache_from_epochs: float = 0.0, regression: bool = False) -> str:
    """The one decision of which pretrained reference a run uses (``BALoRAConfig.reference``): the mode asked for,
    except that ``auto`` becomes the per-example cache ``cached`` for an NLU classification run of at least
    ``cache_from_epochs`` epochs (0 = never; by epochs, not ``max_steps``) whose ``model`` has no active dropout (a
    cache cannot replay the student's dropout masks). ``cached`` is refused for NLG."""
    if requested not in ("auto", *MODES):
        raise ValueError(f"unknown reference mode {requested!r}; expected auto, {', '.join(MODES)}")
    if requested == "cached" and task == "nlg":
        raise ValueError("reference='cached' stores per-example NLU outputs (logits of a classification head); "
                         "it is not available for NLG (causal LMs): use reference='auto'")
    if (requested == "auto" and task == "nlu" and 0 < cache_from_epochs <= epochs and max_steps <= 0
            and not regression and model is not None and not has_dropout(model)):
        return "cached"
    return requested


def reference_spec_for(model: nn.Module, mode: str = "auto", adapter_name: str = "default",
                       original: Optional[nn.Module] = None) -> ReferenceSpec:
    """Set up the reference ``mode`` (from :func:`choose_reference`) for a freshly prepared peft model (before any
    training step); ``mode="model"`` holds ``original``, a frozen copy taken before the adapter was added."""
    if mode == "model":
        if original is None:
            raise ValueError("reference='model' needs the original model (a copy taken before prepare_model)")
        return ReferenceSpec(mode="model", model=original)
    peft_config = getattr(model, "peft_config", {}).get(adapter_name)
    residual = peft_config is not None and init_modifies_base(peft_config)
    if mode == "auto":
        mode = "adapter" if residual else "disable"
    if mode == "adapter":
        if not residual:
            return ReferenceSpec(mode="disable", adapter_name=adapter_name)
        return add_reference_adapter(model, adapter_name)
    if mode == "disable":
        if residual:
            raise ValueError(
                "reference='disable' is wrong for a residual initialisation "
                f"({peft_config.init_lora_weights!r}): the base is W - BA. Use 'auto' or 'adapter'."
            )
        return ReferenceSpec(mode="disable", adapter_name=adapter_name)
    if mode == "cached":  # filled before training through the live reference it wraps
        return ReferenceSpec(mode="cached", adapter_name=adapter_name, live=reference_spec_for(model, "auto", adapter_name))
    raise ValueError(f"unknown reference mode {mode!r}; expected auto, adapter, disable, cached or model")


@torch.no_grad()
def reference_outputs(model: nn.Module, spec: ReferenceSpec, **inputs: Any) -> Any:
    """One no-grad forward pass of the original pretrained function on ``inputs``."""
    with reference_mode(model, spec) as ref:
        return ref(**inputs)


class TeacherCache:
    """Per-example teacher outputs (NLU logits, and pooled features for regression), filled once.

    Rows are addressed by an integer example index carried in the batch (``balora_index``).
    :meth:`ReferenceSpec.fill` runs the live reference over the training set before training and
    ``put`` stores the rows; ``lookup`` returns the rows of a batch.
    """

    def __init__(self) -> None:
        self.values: dict[str, torch.Tensor] = {}

    def __len__(self) -> int:
        return 0 if not self.values else next(iter(self.values.values())).shape[0]

    def put(self, name: str, index: torch.Tensor, rows: torch.Tensor, size: int) -> None:
        store = self.values.get(name)
        if store is None:
            store = torch.full((size, *rows.shape[1:]), float("nan"), dtype=torch.float32)
            self.values[name] = store
        store[index.cpu()] = rows.detach().float().cpu()

    def lookup(self, name: str, index: torch.Tensor, device: torch.device) -> torch.Tensor:
        if name not in self.values:
            raise KeyError(f"teacher cache has no {name!r} (fill it before training)")
        store = self.values[name]
        idx = index.cpu()
        outside = idx[(idx < 0) | (idx >= store.shape[0])]
        if outside.numel():
            raise KeyError(f"teacher cache has no entry for example index {outside.tolist()[:5]} "
                           f"(it holds {store.shape[0]} examples; was the cache filled from this data?)")
        rows = store[idx]
        if torch.isnan(rows).any():
            missing = index[torch.isnan(rows).flatten(1).any(1).to(index.device)].tolist()[:5]
            raise KeyError(f"teacher cache has no entry for example index {missing} (was the cache filled from this data?)")
        return rows.to(device)
