"""balora.data.glue: specs, Hub dispatch, and the real GLUE TSV / parquet files of the data pack."""

from __future__ import annotations

import datasets
import numpy as np
import pytest

from balora.data import glue
from balora.data.glue import GLUE_TASKS, get_task, is_labeled, load_glue

# Row counts from the data pack's MANIFEST.md.
COUNTS = {
    "cola": {"train": 8551, "validation": 1043, "test": 1063},
    "sst2": {"validation": 872, "test": 1821},
    "mrpc": {"train": 3668, "validation": 408, "test": 1725},
    "stsb": {"train": 5749, "validation": 1500, "test": 1379},
    "rte": {"train": 2490, "validation": 277, "test": 3000},
    "wnli": {"train": 635, "validation": 71, "test": 146},
    "qnli": {"validation": 5463, "test": 5463},
}


def test_specs_cover_nine_tasks():
    assert sorted(GLUE_TASKS) == sorted(["cola", "sst2", "mrpc", "qqp", "stsb", "mnli", "qnli", "rte", "wnli"])
    assert get_task("STS-B").is_regression and get_task("stsb").num_labels == 1
    assert get_task("mnli").validation_splits == ("validation_matched", "validation_mismatched")
    assert get_task("rte").tsv_label_map == {"entailment": 0, "not_entailment": 1}
    with pytest.raises(ValueError, match="unknown GLUE task 'foo'"):
        get_task("foo")


def test_hub_name_dispatches_to_load_dataset(monkeypatch):
    calls = []

    def fake_load(name, config):
        calls.append((name, config))
        return datasets.DatasetDict({"train": datasets.Dataset.from_dict(
            {"premise": ["p"], "hypothesis": ["h"], "label": [2], "idx": [0]})})

    monkeypatch.setattr(glue.datasets, "load_dataset", fake_load)
    out = load_glue("mnli")
    assert calls == [("nyu-mll/glue", "mnli")] and out["train"]["label"] == [2]
    monkeypatch.setattr(glue.datasets, "load_dataset", lambda n, c: datasets.DatasetDict(
        {"train": datasets.Dataset.from_dict({"sentence": ["s"]})}))
    with pytest.raises(ValueError, match=r"my/glue/sst2\[train\]: missing required column\(s\) \['label'\]"):
        load_glue("sst2", "my/glue")


def test_missing_local_folder_is_not_sent_to_the_hub(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such folder"):
        load_glue("rte", str(tmp_path / "absent"))


def test_unknown_tsv_label_names_file_row_and_value(tmp_path):
    folder = tmp_path / "RTE"
    folder.mkdir()
    (folder / "train.tsv").write_text("index\tsentence1\tsentence2\tlabel\n0\ta\tb\tentailment\n"
                                      "1\tc\td\tcontradiction\n")
    with pytest.raises(ValueError, match=r"train\.tsv: row 2: column 'label' has unknown label 'contradiction'"):
        load_glue("rte", tmp_path)


def test_tsv_with_missing_text_column(tmp_path):
    folder = tmp_path / "SST-2"
    folder.mkdir()
    (folder / "dev.tsv").write_text("text\tlabel\nfine\t1\n")
    with pytest.raises(ValueError, match=r"dev\.tsv: missing required column\(s\) \['sentence'\]"):
        load_glue("sst2", tmp_path)


@pytest.mark.shared_data
@pytest.mark.parametrize("layout", ["glue_data", "hf_parquet"])
def test_row_counts_match_manifest(shared_data, layout):
    for task, counts in COUNTS.items():
        if task == "sst2" and layout == "glue_data":
            counts = {**counts, "train": 67349}
        dsd = load_glue(task, shared_data / "glue" / layout)
        assert {s: len(d) for s, d in dsd.items()} == counts, (task, layout)
        assert is_labeled(dsd["validation"]) and not (layout == "glue_data" and is_labeled(dsd["test"]))


@pytest.mark.shared_data
@pytest.mark.parametrize("task", sorted(COUNTS))
def test_tsv_and_parquet_layouts_agree(shared_data, task):
    tsv = load_glue(task, shared_data / "glue" / "glue_data")
    pq = load_glue(task, shared_data / "glue" / "hf_parquet")
    spec = get_task(task)
    splits = [s for s in pq if s in tsv and (s != "test" or task != "mrpc")]  # GLUE's MRPC test TSV has no labels
    assert "validation" in splits
    for split in splits:
        a, b = tsv[split], pq[split]
        assert a.features == b.features and a.column_names == [*spec.text_columns, "label", "idx"]
        for col in spec.text_columns:
            assert a[col] == b[col], (task, split, col)
        assert np.array_equal(np.asarray(a["label"]), np.asarray(b["label"])), (task, split)
        if task != "mrpc":  # the Hub's MRPC idx counts rows of msr_paraphrase_train.txt
            assert a["idx"] == b["idx"]


@pytest.mark.shared_data
def test_label_values_on_real_files(shared_data):
    rte = load_glue("rte", shared_data / "glue" / "glue_data")["validation"]
    assert rte.features["label"].names == ["entailment", "not_entailment"]
    assert set(rte["label"]) == {0, 1}
    stsb = load_glue("stsb", shared_data / "glue" / "glue_data")["train"]
    assert stsb[0]["label"] == pytest.approx(5.0) and 0.0 <= min(stsb["label"]) and max(stsb["label"]) <= 5.0
    cola = load_glue("cola", shared_data / "glue" / "glue_data")["train"]
    assert cola[0]["sentence"].startswith("Our friends won't buy this analysis")  # header-less file
    mrpc = load_glue("mrpc", shared_data / "glue" / "glue_data")["validation"]
    assert mrpc[0]["sentence2"].startswith('" The foodservice pie business')  # bare quote kept
    assert sum(mrpc["label"]) == 279  # 68.4% positive, the known MRPC dev balance


def test_mnli_tsv_layout_gives_matched_and_mismatched_splits(tmp_path):
    folder = tmp_path / "MNLI"
    folder.mkdir()
    head = "index\tpromptID\tsentence1\tsentence2\tgold_label\n"
    (folder / "dev_matched.tsv").write_text(head + '0\t7\tA "quoted\tB\tneutral\n1\t8\tC\tD\tcontradiction\n')
    (folder / "dev_mismatched.tsv").write_text(head + "0\t9\tE\tF\tentailment\n")
    (folder / "test_matched.tsv").write_text("index\tpromptID\tsentence1\tsentence2\n0\t1\tG\tH\n")
    dsd = load_glue("mnli", tmp_path)
    assert list(dsd) == ["validation_matched", "validation_mismatched", "test_matched"]
    assert dsd["validation_matched"]["premise"] == ['A "quoted', "C"]
    assert dsd["validation_matched"]["label"] == [1, 2] and dsd["validation_mismatched"]["label"] == [0]
    assert dsd["test_matched"]["label"] == [-1] and not is_labeled(dsd["test_matched"])


def test_stsb_non_numeric_score_is_an_error(tmp_path):
    folder = tmp_path / "STS-B"
    folder.mkdir()
    (folder / "dev.tsv").write_text("index\tsentence1\tsentence2\tscore\n0\ta\tb\t4.2\n1\tc\td\thigh\n")
    with pytest.raises(ValueError, match=r"dev\.tsv: row 2: column 'score' has unknown label 'high' \(expected a number\)"):
        load_glue("stsb", tmp_path)
