"""The two settings of the overhead benchmark (NLU: a classifier, by default the packaged MiniLM; NLG: a
causal LM, by default SmolLM2), models loaded from a folder or built from a named config with random
weights (``MODEL_CONFIGS``: the Llama-3.2-1B / Llama-3.1-8B / DeBERTa-v3-base / BERT-base / SmolLM2-135M
shapes, and tiny ones for tests) directly on the target device and dtype, the per-term breakdown and the
PiSSA initialisation timings. Machinery: :mod:`balora.bench.overhead`."""

from __future__ import annotations

import time
from typing import Any, Callable, Optional

import torch
import torch.nn.functional as F

from .. import regularizers as R
from ..config import BALoRAConfig
from ..fused import OutputFactor, fused_lm_terms
from ..methods import prepare_model
from ..reference import reference_mode
from .overhead import Batch, Variant, build_variant, model_device, time_op, use_cached_reference

Loader = Callable[[], torch.nn.Module]


DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


# ------------------------------------------------------------------------------------------ batches
def nlu_batch(vocab: int, batch: int, seq_len: int, num_labels: int = 2, seed: int = 0,
              device: Any = "cpu") -> Batch:
    """Random token ids (full-length rows), random labels and the example index a TeacherCache needs,
    on ``device`` (the model's: the same generator draws on every device, so batches are identical)."""
    g = torch.Generator().manual_seed(seed)
    out = {"input_ids": torch.randint(1000 if vocab > 2000 else 1, vocab, (batch, seq_len), generator=g),
           "attention_mask": torch.ones(batch, seq_len, dtype=torch.long),
           "labels": torch.randint(0, num_labels, (batch,), generator=g),
           "balora_index": torch.arange(batch)}
    return {k: v.to(device) for k, v in out.items()}


def nlg_batch(vocab: int, batch: int, seq_len: int, prompt_len: int = 1, seed: int = 0,
              device: Any = "cpu") -> Batch:
    """Random token ids; labels -100 on the first ``prompt_len`` tokens of each row (the "prompt").

    Trained positions (logits that predict a trained token): ``batch * (seq_len - max(prompt_len, 1))``.
    """
    if not 0 <= prompt_len < seq_len:
        raise ValueError(f"prompt_len must be in [0, seq_len={seq_len}), got {prompt_len}")
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, vocab, (batch, seq_len), generator=g)
    labels = ids.clone()
    labels[:, :prompt_len] = -100
    out = {"input_ids": ids, "attention_mask": torch.ones(batch, seq_len, dtype=torch.long), "labels": labels}
    return {k: v.to(device) for k, v in out.items()}


# ------------------------------------------------------------------------------------------ loaders
def _llama(vocab: int, hidden: int, inter: int, layers: int, heads: int, kv: int, tied: bool, **kw: Any) -> Any:
    from transformers import LlamaConfig

    return LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers,
                       num_attention_heads=heads, num_key_value_heads=kv, tie_word_embeddings=tied,
                       max_position_embeddings=8192, **kw)


def _bert(vocab: int, hidden: int, layers: int, heads: int, inter: int) -> Any:
    from transformers import BertConfig

    return BertConfig(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                      intermediate_size=inter)


def _deberta_v3_base() -> Any:
    from transformers import DebertaV2Config

    return DebertaV2Config(vocab_size=128100, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                           intermediate_size=3072, relative_attention=True, max_relative_positions=-1,
                           position_buckets=256, pos_att_type=["p2c", "c2p"], norm_rel_ebd="layer_norm",
                           share_att_key=True, position_biased_input=False, type_vocab_size=0,
                           max_position_embeddings=512, layer_norm_eps=1e-7)


# name -> (kind, config factory). Shapes of the public configs (config.json of each model); weights random.
MODEL_CONFIGS: dict[str, tuple[str, Callable[[], Any]]] = {
    "llama-1b": ("nlg", lambda: _llama(128256, 2048, 8192, 16, 32, 8, True, head_dim=64, rope_theta=500000.0)),
    "llama-8b": ("nlg", lambda: _llama(128256, 4096, 14336, 32, 32, 8, False, head_dim=128, rope_theta=500000.0)),
    "smollm2": ("nlg", lambda: _llama(49152, 576, 1536, 30, 9, 3, True, head_dim=64, rope_theta=100000.0)),
    "deberta-v3-base": ("nlu", _deberta_v3_base),
    "bert-base": ("nlu", lambda: _bert(30522, 768, 12, 12, 3072)),
    # "tiny" names both kinds: a 2-layer Llama (NLG) and a 2-layer BERT (NLU), for tests and smoke runs
    "tiny-nlg": ("nlg", lambda: _llama(512, 32, 64, 2, 4, 2, False)),
    "tiny-nlu": ("nlu", lambda: _bert(512, 32, 2, 2, 64)),
}
MODEL_CONFIG_CHOICES = ("llama-1b", "llama-8b", "smollm2", "deberta-v3-base", "bert-base", "tiny")


def config_name(name: str, kind: str) -> Optional[str]:
    """The ``MODEL_CONFIGS`` key that ``name`` (a ``--model-config`` choice) gives for ``kind``, if any."""
    key = f"tiny-{kind}" if name == "tiny" else name
    return key if key in MODEL_CONFIGS and MODEL_CONFIGS[key][0] == kind else None


def config_loader(name: str, device: Any = "cpu", dtype: torch.dtype = torch.float32, num_labels: int = 2,
                  seed: int = 0, layers: Optional[int] = None) -> Loader:
    """A function building a fresh copy of the ``MODEL_CONFIGS[name]`` model with random weights (same
    seed: identical copies), directly on ``device`` in ``dtype`` (no CPU fp32 detour: an 8B model is
    built on the GPU). ``layers`` overrides the depth (the correctness checks use 2 layers)."""
    kind, factory = MODEL_CONFIGS[name]

    def load() -> torch.nn.Module:
        from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        cfg = factory()
        if layers is not None:
            cfg.num_hidden_layers = layers
        torch.manual_seed(seed)
        with torch.device(device):
            if kind == "nlg":
                model = AutoModelForCausalLM.from_config(cfg, dtype=dtype)
            else:
                cfg.num_labels = num_labels
                model = AutoModelForSequenceClassification.from_config(cfg, dtype=dtype)
        return model.eval()
    return load


def hf_loader(path: str, kind: str, num_labels: int = 2, seed: int = 0, device: Any = "cpu",
              dtype: torch.dtype = torch.float32) -> Loader:
    """A function loading a fresh copy of the model from a folder (same seed, so heads are identical), in
    ``dtype`` on ``device``: the benchmark keeps models and batches on the device it times."""
    def load() -> torch.nn.Module:
        from transformers.utils import logging as hf_logging

        from ..models import load_base_model

        hf_logging.set_verbosity_error()
        torch.manual_seed(seed)
        # the checkpoint's own head (pooling "cls"): the benchmark times the methods, not the pooling
        model = load_base_model(path, kind, num_labels=num_labels if kind == "nlu" else None, dtype=dtype,
                                pooling="cls")
        return model.to(device)
    return load


def _prepared(load: Loader, method: str, r: int, seed: int = 0, **kw: Any) -> Any:
    model = load()
    torch.manual_seed(seed)
    return prepare_model(model, method, r=r, **kw)


# ------------------------------------------------------------------------------------------ settings
def nlu_variants(load: Loader, batch: Batch, r: int = 8, which: tuple[str, ...] = ("lora", "pissa", "ba-lora",
                 "ba-lora-cached")) -> list[Variant]:
    """LoRA, PiSSA, BA-LoRA (on-the-fly reference) and BA-LoRA with a TeacherCache filled beforehand."""
    out = []
    for name in which:
        if name in ("lora", "pissa"):
            out.append(build_variant(name, _prepared(load, name, r), batch))
        elif name == "ba-lora":
            out.append(build_variant(name, _prepared(load, "ba-lora", r), batch, notes="reference: adapter switch"))
        elif name == "ba-lora-cached":
            prepared = _prepared(load, "ba-lora", r)
            start = time.perf_counter()
            cached = use_cached_reference(prepared, [batch])
            fill = time.perf_counter() - start
            out.append(build_variant(name, prepared, batch, reference=cached,
                                     notes=f"TeacherCache filled once: {fill:.3f} s for {len(cached.cache)} examples"))
        else:
            raise ValueError(f"unknown NLU variant {name!r}")
    return out


def fused_ce_loss(model: torch.nn.Module, batch: Batch, chunk_size: int = 256) -> torch.Tensor:
    """Plain causal-LM loss through the fused chunked CE (no full logits): the fair twin of PiSSA."""
    mask = R.shifted_label_mask(batch["labels"])
    fwd = {k: v for k, v in batch.items() if k != "labels"}
    hidden = model(**fwd, output_hidden_states=True, logits_to_keep=1).hidden_states[-1]
    head = model.get_output_embeddings()
    targets = batch["labels"][:, 1:][mask[:, :-1]]
    return fused_lm_terms(hidden[mask], head.weight, targets, bias=head.bias, chunk_size=chunk_size).loss


def nlg_variants(load: Loader, batch: Batch, r: int = 8, pissa_niter: Optional[int] = 4,
                 which: tuple[str, ...] = ("lora", "pissa", "ba-lora"), chunk_size: int = 256) -> list[Variant]:
    """Variants: lora, pissa (HF loss on full logits), ba-lora (fused default), ba-lora-unfused (the
    straightforward implementation on full logits), pissa-fused-ce (PiSSA with the fused CE)."""
    out = []
    for name in which:
        if name == "lora":
            out.append(build_variant(name, _prepared(load, "lora", r), batch))
        elif name == "pissa":
            out.append(build_variant(name, _prepared(load, "pissa", r, pissa_niter=pissa_niter), batch,
                                     notes="standard HF loss on full logits"))
        elif name == "pissa-fused-ce":
            out.append(build_variant(name, _prepared(load, "pissa", r, pissa_niter=pissa_niter), batch,
                                     loss_fn=lambda m, b: fused_ce_loss(m, b, chunk_size),
                                     notes="PiSSA with the chunked fused CE (no full logits)"))
        elif name in ("ba-lora", "ba-lora-unfused"):
            fused = name == "ba-lora"
            cfg = BALoRAConfig(task="nlg", fused_nlg="auto" if fused else False, svd_estimator="randomized",
                               chunk_size=chunk_size)
            prepared = _prepared(load, "ba-lora", r, pissa_niter=pissa_niter, config=cfg)
            out.append(build_variant(name, prepared, batch, notes="fused (default)" if fused else
                                     "unfused: full logits, reference formulas, randomized SVD"))
        else:
            raise ValueError(f"unknown NLG variant {name!r}")
    return out


# ------------------------------------------------------------------------------------------ breakdown
def _fwd_bwd(fn: Callable[[], torch.Tensor]) -> Callable[[], None]:
    def run() -> None:
        fn().backward()
    return run


def nlu_breakdown(variant: Variant, repeats: int = 3) -> dict[str, float]:
    """Seconds of the reference pass and of each NLU regulariser's forward + backward on the logits."""
    model, batch = variant.model, variant.batch
    dev = model_device(model)
    inputs = {k: v for k, v in batch.items() if k not in ("labels", "balora_index")}
    spec = variant.objective.reference
    out: dict[str, float] = {}
    if spec.mode != "cached":
        def teacher() -> None:
            with torch.no_grad(), reference_mode(model, spec) as ref:
                ref(**inputs)
        out["reference_pass"] = time_op(teacher, repeats, dev)
    with torch.no_grad():
        logits = model(**inputs)["logits"].detach()
        ref_logits = logits + 0.01 * torch.randn_like(logits)
    z = logits.clone().requires_grad_(True)
    k = variant.objective.cfg.svd_top_k
    out["consistency"] = time_op(_fwd_bwd(lambda: R.nlu_consistency(z, ref_logits)), repeats, dev)
    out["diversity"] = time_op(_fwd_bwd(lambda: R.nlu_diversity(z)), repeats, dev)
    out["svd"] = time_op(_fwd_bwd(lambda: R.nlu_svd(z, k)), repeats, dev)
    return out


def nlg_breakdown(variant: Variant, repeats: int = 2, unfused: bool = True) -> dict[str, float]:
    """Seconds of the teacher pass and of each NLG term (forward + backward to the hidden states),
    fused (from hidden states) and, with ``unfused``, the reference formulas on full logits."""
    model, batch = variant.model, variant.batch
    dev = model_device(model)
    cfg: BALoRAConfig = variant.objective.cfg
    spec = variant.objective.reference
    mask = R.shifted_label_mask(batch["labels"])
    fwd = {k: v for k, v in batch.items() if k != "labels"}
    head = model.get_output_embeddings()
    w, b = head.weight, head.bias
    out: dict[str, float] = {}

    def teacher() -> torch.Tensor:
        with torch.no_grad(), reference_mode(model, spec) as ref:
            return ref(**fwd, output_hidden_states=True, logits_to_keep=1).hidden_states[-1]
    out["reference_pass"] = time_op(teacher, repeats, dev)
    ref_h = teacher()[mask]
    with torch.no_grad():
        h0 = model(**fwd, output_hidden_states=True, logits_to_keep=1).hidden_states[-1][mask]
    targets = batch["labels"][:, 1:][mask[:, :-1]]
    h = (h0 + 0.01 * torch.randn_like(h0)).requires_grad_(True)  # a student a little away from the teacher
    l1, l2 = cfg.lambda_consistency, cfg.lambda_diversity
    cs = cfg.chunk_size

    def fused(ref: Optional[torch.Tensor], a: float, c: float) -> Callable[[], None]:
        return _fwd_bwd(lambda: fused_lm_terms(h, w, targets, ref, b, a, c, cfg.temperature, None, cs).loss)
    ce = time_op(fused(None, 0.0, 0.0), repeats, dev)
    out["fused_ce"] = ce
    out["fused_consistency"] = max(time_op(fused(ref_h, l1, 0.0), repeats, dev) - ce, 0.0)
    out["fused_diversity"] = max(time_op(fused(None, 0.0, l2), repeats, dev) - ce, 0.0)
    factor = OutputFactor()
    factor.r_factor(w, b)  # computed once per training run (cached): not part of a step

    def svd_small() -> torch.Tensor:
        # the trainer's SVD term on the small factor, through the public formula (same singular values)
        small = factor.small_logits(h, w, b)
        ones = torch.ones(1, small.shape[0], dtype=torch.bool, device=small.device)
        return R.nlg_svd(small[None], ones, cfg.svd_top_k, cfg.svd_estimator, cfg.svd_oversampling, cfg.svd_niter,
                         cfg.svd_normalizer)
    out["svd_small_factor"] = time_op(_fwd_bwd(svd_small), repeats, dev)
    if unfused:
        def logits_fn(x: torch.Tensor) -> torch.Tensor:
            full = torch.zeros(*mask.shape, x.shape[-1], dtype=x.dtype, device=x.device)
            return full.index_put((mask,), x)  # (B, T, d) with the trained rows, others zero
        hb = logits_fn(h.detach()).requires_grad_(True)
        rb = logits_fn(ref_h)
        labels = batch["labels"]

        def hf_ce() -> torch.Tensor:  # what the standard HF path does after the last norm
            z = F.linear(hb, w, b)
            return F.cross_entropy(z[:, :-1].reshape(-1, z.shape[-1]).float(), labels[:, 1:].reshape(-1),
                                   ignore_index=-100)
        out["hf_full_logits_ce"] = time_op(_fwd_bwd(hf_ce), repeats, dev)
        with torch.no_grad():
            zref = F.linear(rb, w, b)
        zs = F.linear(hb.detach(), w, b).requires_grad_(True)
        out["unfused_consistency"] = time_op(_fwd_bwd(lambda: R.nlg_consistency(zs, zref, mask, cfg.temperature)),
                                             repeats, dev)
        out["unfused_diversity"] = time_op(_fwd_bwd(lambda: R.nlg_diversity(zs, mask)), repeats, dev)
        out["unfused_svd_randomized"] = time_op(_fwd_bwd(lambda: R.nlg_svd(zs, mask, cfg.svd_top_k, "randomized",
                                                                        cfg.svd_oversampling, cfg.svd_niter)), repeats, dev)
    return out


def pissa_init_times(load: Loader, r: int = 8, niters: tuple[Optional[int], ...] = (None, 2, 4, 16)) -> dict[str, float]:
    """Seconds of prepare_model(..., 'pissa') on a fresh copy: exact SVD (None) and pissa_niter_K."""
    out = {}
    for k in niters:
        model = load()
        dev = model_device(model)
        torch.manual_seed(0)
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        start = time.perf_counter()
        prepare_model(model, "pissa", r=r, pissa_niter=k)
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        out["exact" if k is None else f"niter_{k}"] = time.perf_counter() - start
        del model
    return out
