"""MultiEmo (BIG-bench multiemo, English sentences): parsing, the verified cache and the split, on a fake sdist."""

from __future__ import annotations

import hashlib
import json
from collections import Counter

import pytest

from balora.data import assets

from tests.data.test_assets import _tar_gz, server, user_cache  # noqa: F401  (fixtures)


def _ex(text, label):
    return {"input": text, "target_scores": {n: int(n == label) for n in ("ambivalent", "positive", "negative", "neutral")}}


def test_parse_drops_empty_inputs_and_names_bad_examples():
    cols, empty = assets.parse_multiemo_examples([_ex("Nice room.", "positive"), _ex("  ", "neutral"),
                                                  _ex("Dirty.", "negative")], "hotels")
    assert cols == {"idx": [0, 2], "domain": ["hotels", "hotels"], "text": ["Nice room.", "Dirty."], "label": [2, 0]}
    assert empty == 1
    with pytest.raises(ValueError, match="multiemo medicine example 1: 'target_scores' must mark exactly one"):
        assets.parse_multiemo_examples([_ex("a", "positive"), {"input": "b", "target_scores": {
            "ambivalent": 1, "positive": 1, "negative": 0, "neutral": 0}}], "medicine")
    with pytest.raises(ValueError, match="example 0: 'target_scores' must have keys"):
        assets.parse_multiemo_examples([{"input": "b", "target_scores": {"good": 1}}], "reviews")
    with pytest.raises(ValueError, match="example 0: expected a string 'input'"):
        assets.parse_multiemo_examples([{"target_scores": {}}], "reviews")


def test_prepare_and_load_multiemo_on_fake_sdist(server, user_cache, monkeypatch):  # noqa: F811
    base, root, log = server
    names = ["negative", "neutral", "positive", "ambivalent"]
    members = {}
    for d, domain in enumerate(assets.MULTIEMO_DOMAINS):
        examples = [_ex(f"{domain} sentence {i}", names[(i + d) % 4]) for i in range(20)] + [_ex("", "neutral")]
        members[assets.multiemo_member(domain)] = json.dumps({"examples": examples}).encode()
    sdist = root / "files" / assets.BIGBENCH_SDIST
    sdist.parent.mkdir()
    _tar_gz(sdist, {"bigbench-1.0.0/README": b"x", **members})
    digest = hashlib.sha256(sdist.read_bytes()).hexdigest()
    (root / "simple" / "bigbench").mkdir(parents=True)
    (root / "simple" / "bigbench" / "index.html").write_text(f'<a href="/files/{sdist.name}#sha256={digest}">s</a>')
    monkeypatch.setenv("PIP_INDEX_URL", f"{base}/simple")
    monkeypatch.setattr(assets, "BIGBENCH_SDIST_SHA256", digest)

    parquet = assets.prepare_multiemo(progress=False)
    manifest = json.loads((user_cache / "multiemo" / "manifest.json").read_text())
    assert manifest["rows"] == 80 and manifest["dropped_empty_inputs"] == {d: 1 for d in assets.MULTIEMO_DOMAINS}
    assert manifest["sha256"] == hashlib.sha256(parquet.read_bytes()).hexdigest()
    assert not (user_cache / "downloads" / assets.BIGBENCH_SDIST).exists()  # sdist deleted
    assert assets.prepare_multiemo(progress=False) == parquet and len(log) == 2  # cache hit: no requests
    parquet.write_bytes(b"corrupt")  # verified before use -> rebuilt from a fresh download
    assets.prepare_multiemo(progress=False)
    assert len(log) == 4

    ds = assets.load_multiemo(seed=0, progress=False)
    assert {k: len(v) for k, v in ds.items()} == {"train": 64, "test": 16}
    assert ds["test"].features["label"].names == names
    assert Counter(ds["test"]["domain"]) == {d: 4 for d in assets.MULTIEMO_DOMAINS}  # stratified by domain
    row = ds["test"][0]
    assert row["text"] == f"{row['domain']} sentence {row['idx']}"
    d = assets.MULTIEMO_DOMAINS.index(row["domain"])
    assert row["label"] == (row["idx"] + d) % 4
