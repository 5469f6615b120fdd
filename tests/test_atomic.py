"""balora.atomic: outputs appear whole or not at all."""

import json

import pytest

from balora.atomic import atomic_write, write_json_atomic, write_jsonl_atomic, write_text_atomic


def test_writers_create_parents_and_write_utf8(tmp_path):
    assert write_jsonl_atomic(tmp_path / "a" / "x.jsonl", [{"a": 1}, {"b": "é"}]).read_text(
        encoding="utf-8") == '{"a": 1}\n{"b": "é"}\n'
    path = write_json_atomic(tmp_path / "b" / "x.json", {"x": 1.5, "p": tmp_path}, default=str)
    assert json.loads(path.read_text(encoding="utf-8")) == {"x": 1.5, "p": str(tmp_path)}
    assert write_text_atomic(tmp_path / "c.md", "ü\n").read_text(encoding="utf-8") == "ü\n"
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == ["c.md", "x.json", "x.jsonl"]


def test_failed_write_keeps_the_old_file_and_leaves_no_temp(tmp_path):
    path = write_text_atomic(tmp_path / "out.json", "old")

    def records():
        yield {"ok": 1}
        raise RuntimeError("generator failed half-way")

    with pytest.raises(RuntimeError, match="half-way"):
        write_jsonl_atomic(path, records())
    with pytest.raises(TypeError):
        write_json_atomic(path, {"not json": object()})
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]


def test_temp_file_is_hidden_next_to_the_target_and_ends_in_tmp(tmp_path):
    seen = []
    atomic_write(tmp_path / "plot.png", lambda tmp: (seen.append(tmp), tmp.write_bytes(b"x")))
    assert seen[0].parent == tmp_path and seen[0].name.startswith(".plot.png.") and seen[0].suffix == ".tmp"
    assert (tmp_path / "plot.png").read_bytes() == b"x"
