"""balora.data.files: every format, folders, and the errors naming file, row and column."""

from __future__ import annotations

import csv
import json

import pandas as pd
import pytest

from balora.data.files import load_table, require_columns


def test_csv_keeps_na_strings_and_selects_columns(tmp_path):
    path = tmp_path / "a.csv"
    path.write_text('text,label,extra\n"hello, world",1,x\nNA,0,y\n')
    ds = load_table(path, columns=["label", "text"], split_name="train")
    assert ds.column_names == ["label", "text"]
    assert ds["text"] == ["hello, world", "NA"]  # "NA" stays a string
    assert ds["label"] == [1, 0]
    assert str(ds.split) == "train"


def test_tsv_with_bare_quotes_bom_and_no_header(tmp_path):
    path = tmp_path / "a.tsv"
    path.write_bytes('\ufeffsrc\t1\t\t" quoted start\nsrc\t0\t*\tplain\n'.encode("utf-8"))
    ds = load_table(path, quoting=csv.QUOTE_NONE, has_header=False, encoding="utf-8-sig",
                    column_names=["source", "label", "orig", "sentence"], dtype=str)
    assert ds["source"] == ["src", "src"]  # BOM stripped
    assert ds["sentence"] == ['" quoted start', "plain"]  # bare quote kept as text
    assert ds["label"] == ["1", "0"]


def test_json_array_data_object_jsonl_and_parquet(tmp_path):
    rows = [{"a": 1, "b": "x"}, {"a": 2, "b": "y"}]
    (tmp_path / "arr.json").write_text(json.dumps(rows))
    (tmp_path / "obj.json").write_text(json.dumps({"data": rows}))
    (tmp_path / "l.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    pd.DataFrame(rows).to_parquet(tmp_path / "p.parquet")
    for name in ("arr.json", "obj.json", "l.jsonl", "p.parquet"):
        ds = load_table(tmp_path / name, columns=["a", "b"])
        assert ds["a"] == [1, 2] and ds["b"] == ["x", "y"], name


def test_folder_is_concatenated_in_name_order(tmp_path):
    (tmp_path / "2.jsonl").write_text('{"t": "c"}\n')
    (tmp_path / "1.jsonl").write_text('{"t": "a"}\n{"t": "b"}\n')
    (tmp_path / "README").write_text("not data")
    assert load_table(tmp_path, columns=["t"])["t"] == ["a", "b", "c"]


def test_missing_file_and_unknown_extension(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.csv"):
        load_table(tmp_path / "nope.csv")
    (tmp_path / "x.xlsx").write_text("")
    with pytest.raises(ValueError, match=r"x\.xlsx.*unknown file extension '\.xlsx'"):
        load_table(tmp_path / "x.xlsx")


def test_bad_jsonl_line_names_file_and_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"a": 1}\n\n{"a": 2,}\n')
    with pytest.raises(ValueError, match=r"bad\.jsonl: line 3: not valid JSON"):
        load_table(path)


def test_missing_value_names_file_row_line_and_column(tmp_path):
    path = tmp_path / "gap.jsonl"
    path.write_text('{"text": "a", "label": 1}\n\n{"text": "b"}\n')
    with pytest.raises(ValueError, match=r"gap\.jsonl: row 2 \(line 3\): column 'label' is missing a value"):
        load_table(path, columns=["text", "label"])
    short = tmp_path / "short.csv"
    short.write_text("text,label\na,1\nb\n")
    with pytest.raises(ValueError, match=r"short\.csv: row 2: column 'label'"):
        load_table(short, columns=["text", "label"])


def test_missing_column_lists_available(tmp_path):
    path = tmp_path / "a.csv"
    path.write_text("text,lbl\na,1\n")
    with pytest.raises(ValueError, match=r"a\.csv: missing required column\(s\) \['label'\]; available columns: \['text', 'lbl'\]"):
        load_table(path, columns=["text", "label"])
    ds = load_table(path)
    with pytest.raises(ValueError, match="src: missing required column"):
        require_columns(ds, ["label"], "src")
