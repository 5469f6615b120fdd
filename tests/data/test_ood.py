"""balora.data.ood: the GLUE-X-style OOD sets on the real files, label mapping and errors."""

from __future__ import annotations

from collections import Counter

import datasets
import pytest

from balora.data import ood
from balora.data.glue import GLUE_TASKS, get_task
from balora.data.ood import OOD_FOR_TASK, OOD_SETS, load_ood


def test_every_listed_set_is_declared_and_fits_its_task():
    assert OOD_FOR_TASK and set(OOD_FOR_TASK) <= set(GLUE_TASKS)
    for task, names in OOD_FOR_TASK.items():
        assert names and set(names) <= set(OOD_SETS), task
        spec = get_task(task)
        for name in names:  # the shaping load_ood does: same number of texts, every label mapped to a class
            assert len(OOD_SETS[name].text_columns) == len(spec.text_columns), (task, name)
            ids = ood._label_ids(OOD_SETS[name], spec)
            assert set(ids) == set(OOD_SETS[name].label_map), (task, name)
            assert set(ids.values()) <= set(range(spec.num_labels)), (task, name)


def test_two_class_set_cannot_become_mnli():
    with pytest.raises(ValueError, match="'hans': label 'not_entailment' has no counterpart among task 'mnli'"):
        load_ood("hans", task="mnli")
    with pytest.raises(ValueError, match="cannot be shaped for task 'rte'"):
        load_ood("mr", "/nowhere", task="rte")


def test_local_set_without_root_says_how_to_fix(monkeypatch):
    monkeypatch.delenv("BALORA_OOD_ROOT", raising=False)
    with pytest.raises(ValueError, match="pass root=<folder> or set BALORA_OOD_ROOT"):
        load_ood("cr")


def test_hub_set_dispatch_maps_labels_and_drops_only_declared_unlabeled(monkeypatch, caplog):
    def fake_load(name, config, split):
        assert (name, config, split) == ("stanfordnlp/snli", None, "test")
        return datasets.Dataset.from_dict(
            {"premise": ["a", "b", "c"], "hypothesis": ["x", "y", "z"], "label": [2, -1, 1]})

    monkeypatch.setattr(ood.datasets, "load_dataset", fake_load)
    ds = load_ood("snli", task="rte")
    assert ds.column_names == ["sentence1", "sentence2", "label"]
    assert ds["label"] == [1, 1] and ds["sentence1"] == ["a", "c"]
    assert "removed 1 rows without a gold label" in caplog.text


def test_unknown_label_names_file_row_and_value(tmp_path):
    (tmp_path / "mr").mkdir()
    (tmp_path / "mr" / "train.tsv").write_text("1\tgood\n0\tbad\n2\tmeh\n")
    (tmp_path / "mr" / "dev.tsv").write_text("1\tok\n")
    with pytest.raises(ValueError, match=r"mr/train\.tsv: row 3: column 'label' has unknown label '2'"):
        load_ood("mr", tmp_path)


SENTIMENT = {"amazon_books": (2000, {0: 1000, 1: 1000}), "amazon_dvd": (2000, {0: 1000, 1: 1000}),
             "amazon_electronics": (2000, {0: 1000, 1: 1000}), "amazon_kitchen": (2000, {0: 1000, 1: 1000}),
             "airline": (2000, {0: 1000, 1: 1000}), "mr": (10662, {0: 5331, 1: 5331}),
             "cr": (3771, {0: 1366, 1: 2405})}


@pytest.mark.shared_data
@pytest.mark.parametrize("name", sorted(SENTIMENT))
def test_sentiment_sets_on_real_files(shared_data, name):
    ds = load_ood(name, shared_data / "ood")
    rows, counts = SENTIMENT[name]
    assert ds.column_names == ["sentence", "label"] and len(ds) == rows
    assert dict(Counter(ds["label"])) == counts
    assert ds.features["label"].names == ["negative", "positive"]
    if name.startswith("amazon"):
        assert any("\n" in s for s in ds["sentence"])  # quoted multi-line reviews parsed as one row


@pytest.mark.shared_data
def test_sick_three_and_two_class(shared_data):
    mnli = load_ood("sick", shared_data / "ood")
    assert mnli.column_names == ["premise", "hypothesis", "label"] and len(mnli) == 9840
    assert dict(Counter(mnli["label"])) == {0: 2821, 1: 5595, 2: 1424}  # entailment/neutral/contradiction
    rte = load_ood("sick", shared_data / "ood", task="rte")
    assert rte.column_names == ["sentence1", "sentence2", "label"]
    assert dict(Counter(rte["label"])) == {0: 2821, 1: 5595 + 1424}
    qnli = load_ood("sick", shared_data / "ood", task="qnli")
    assert qnli.column_names == ["question", "sentence", "label"] and qnli["label"] == rte["label"]
    assert mnli[0]["premise"].startswith("A group of kids is playing in a yard")
