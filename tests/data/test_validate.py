"""balora.data.validate through load_nlu_data: bad labels and texts in any split are errors naming file, row,
column and value, found before any model exists (issue 10.4)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from balora.training.nlu import load_nlu_data
from balora.training.run_config import build_config


def _csv(path, labels, texts=None):
    texts = texts or [f"sentence {i}" for i in range(len(labels))]
    path.write_text("text,label\n" + "".join(f"{t},{lab}\n" for t, lab in zip(texts, labels)))
    return path


def _load(tmp_path, train, validation=None, task_type="auto"):
    data = {"train": str(train), "text_columns": ["text"], "task_type": task_type}
    if validation is not None:
        data["validation"] = str(validation)
    return load_nlu_data(build_config({"kind": "nlu", "data": data}))


def test_good_labels_are_converted(tmp_path):
    ids = _load(tmp_path, _csv(tmp_path / "ids.csv", [0, 1, 2, 1]), _csv(tmp_path / "dev.csv", [2, 0]))
    assert (ids.num_labels, ids.regression) == (3, False)
    assert list(ids.splits["validation"]["label"]) == [2, 0]
    names = _load(tmp_path, _csv(tmp_path / "names.csv", ["pos", "neg", "pos"]), _csv(tmp_path / "nd.csv", ["neg"]))
    assert names.label_names == ["neg", "pos"] and list(names.splits["train"]["label"]) == [1, 0, 1]
    reg = _load(tmp_path, _csv(tmp_path / "reg.csv", ["0.5", "1", "2.25"]))
    assert reg.regression and list(reg.splits["train"]["label"]) == [0.5, 1.0, 2.25]


def test_negative_class_id_names_file_row_value(tmp_path):
    # Before: a raw "IndexError: Target -1 is out of bounds" from the loss, after the PiSSA set-up.
    with pytest.raises(ValueError, match=r"neg\.csv: row 3, column 'label': value -1 \(expected a class id >= 0\)"):
        _load(tmp_path, _csv(tmp_path / "neg.csv", [0, 1, -1, 1]))


def test_validation_label_outside_training_labels(tmp_path):
    # Before: found only by the evaluation after training ("IndexError: Target 7 is out of bounds").
    train = _csv(tmp_path / "train.csv", [0, 1, 0, 1])
    with pytest.raises(ValueError, match=r"dev\.csv: row 2, column 'label': label 7 is not a class id in 0\.\.1"):
        _load(tmp_path, train, _csv(tmp_path / "dev.csv", [1, 7, 0]))
    with pytest.raises(ValueError, match=r"dev2\.csv: row 1, column 'label': label 'maybe' is not among the training"):
        _load(tmp_path, _csv(tmp_path / "t2.csv", ["pos", "neg"]), _csv(tmp_path / "dev2.csv", ["maybe"]))


def test_nan_and_text_regression_targets(tmp_path):
    # Before: task_type regression turned "nan" into a NaN target, trained to the end and exited 0 (NaN adapter).
    nan = _csv(tmp_path / "nan.csv", ["0.5", "1.5", "nan", "2.0"])
    for task_type in ("regression", "auto"):
        with pytest.raises(ValueError, match=r"nan\.csv: row 3, column 'label': value 'nan' \(expected a finite"):
            _load(tmp_path, nan, task_type=task_type)
    with pytest.raises(ValueError, match=r"word\.csv: row 2, column 'label': value 'high' \(expected a number"):
        _load(tmp_path, _csv(tmp_path / "word.csv", ["0.5", "high", "2.0"]))
    with pytest.raises(ValueError, match=r"frac\.csv: row 2, column 'label': value 0\.5 \(expected an integer class"):
        _load(tmp_path, _csv(tmp_path / "frac.csv", ["0", "0.5", "1"]), task_type="classification")


def test_missing_label_is_an_error_not_regression(tmp_path):
    # Before: a JSON null made the int column float -> silently regression -> TypeError in float(None).
    path = tmp_path / "m.jsonl"
    path.write_text("".join(json.dumps({"text": f"s {i}", "label": None if i == 2 else i % 2}) + "\n" for i in range(4)))
    with pytest.raises(ValueError, match=r"m\.jsonl: row 3 \(line 3\), column 'label': missing label"):
        _load(tmp_path, path)
    # An empty CSV field: before, the empty string became a class of its own.
    with pytest.raises(ValueError, match=r"e\.csv: row 2, column 'label': missing label"):
        _load(tmp_path, _csv(tmp_path / "e.csv", ["1", "", "0"]))


def test_header_only_and_missing_text(tmp_path):
    (tmp_path / "h.csv").write_text("text,label\n")
    # Before: "Original column name __label_id not in the dataset".
    with pytest.raises(ValueError, match=r"h\.csv: the train split has no data rows"):
        _load(tmp_path, tmp_path / "h.csv")
    with pytest.raises(ValueError, match=r"hv\.csv: the validation split has no data rows"):
        (tmp_path / "hv.csv").write_text("text,label\n")
        _load(tmp_path, _csv(tmp_path / "ok.csv", [0, 1]), tmp_path / "hv.csv")
    path = tmp_path / "t.jsonl"
    path.write_text(json.dumps({"text": "fine", "label": 0}) + "\n" + json.dumps({"text": None, "label": 1}) + "\n")
    with pytest.raises(ValueError, match=r"t\.jsonl: row 2 \(line 2\), column 'text': missing value \(expected text\)"):
        _load(tmp_path, path)


def test_folder_rows_are_located_per_file(tmp_path):
    folder = tmp_path / "parts"
    folder.mkdir()
    _csv(folder / "a.csv", [0, 1])
    _csv(folder / "b.csv", [1, -3])
    with pytest.raises(ValueError, match=r"b\.csv: row 2, column 'label': value -3"):
        _load(tmp_path, folder)


def test_given_label_space_is_checked_too(tmp_path):
    """run_nlu re-checks data handed in with its label space (GLUE specs, the demo) the same way."""
    import datasets

    from balora.data.validate import LabelSpace, check_nlu_splits

    splits = {"train": datasets.Dataset.from_dict({"text": ["a", "b"], "label": [0, 1]}),
              "test": datasets.Dataset.from_dict({"text": ["c", "d"], "label": [1, -1]})}
    with pytest.raises(ValueError, match=r"split 'test': row 2, column 'label': label -1 is not a class id in 0\.\.1"):
        check_nlu_splits(splits, ["text"], "label", LabelSpace(2, ["neg", "pos"], False))
    reg = {"train": datasets.Dataset.from_dict({"text": ["a", "b"], "label": [0.5, np.inf]})}
    with pytest.raises(ValueError, match="expected a finite number"):
        check_nlu_splits(reg, ["text"], "label", LabelSpace(1, None, True))
