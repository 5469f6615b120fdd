"""RunConfig's regularizers section: one BALoRAConfig built and checked in build_config, read under its former name
`balora` too; method.quantize (QPiSSA) checked there and reaching prepare_model; sweep keys kept."""

from __future__ import annotations

import pytest
import torch

from balora.config import BALoRAConfig
from balora.training.run_config import RunConfig, build_config, load_config


def test_the_regularizers_section_is_one_balora_config_with_the_kinds_defaults():
    cfg = build_config({"kind": "nlg", "regularizers": {"lambda_svd": 0.1}})
    assert isinstance(cfg.regularizers, BALoRAConfig) and cfg.regularizers.task == "nlg"
    assert (cfg.regularizers.lambda_consistency, cfg.regularizers.lambda_svd, cfg.regularizers.svd_top_k) == \
        (0.025, 0.1, 10)
    assert RunConfig(kind="nlg").regularizers.lambda_consistency == 0.025  # built in code: the task's defaults
    with pytest.raises(ValueError, match="regularizers.task is 'nlu' but kind is 'nlg'"):
        RunConfig(kind="nlg", regularizers=BALoRAConfig(task="nlu"))


def test_the_former_section_name_is_read_from_files_overrides_and_both(tmp_path):
    old = tmp_path / "old.yaml"
    old.write_text("kind: nlu\nbalora: {lambda_consistency: 0.2, lambda_svd: 0.0}\n")
    cfg = load_config(str(old), ["--regularizers.lambda_svd", "0.05"])  # the command line wins over the file
    assert (cfg.regularizers.lambda_consistency, cfg.regularizers.lambda_svd) == (0.2, 0.05)
    new = tmp_path / "new.yaml"
    new.write_text("kind: nlu\nregularizers: {lambda_consistency: 0.2}\n")
    assert load_config(str(new), ["--balora.lambda_consistency", "0.3"]).regularizers.lambda_consistency == 0.3
    assert "balora" not in load_config(str(old)).to_dict()  # one name in what is written (run records)


def test_bad_regularizer_settings_name_the_section_and_field():
    with pytest.raises(ValueError, match=r"unknown regularizers option\(s\) \['lambda_cr'\]"):
        load_config(None, ["--balora.lambda_cr", "0.1"])
    with pytest.raises(ValueError, match="section regularizers: BALoRAConfig.lambda_svd must be a number >= 0"):
        load_config(None, ["--regularizers.lambda_svd", "-1"])
    with pytest.raises(ValueError, match=r"regularizers.svd_top_k must be an integer or empty, got 'five'"):
        load_config(None, ["--regularizers.svd_top_k", "five"])
    with pytest.raises(ValueError, match="unknown section 'regularisers'"):
        build_config({"regularisers": {}})


def test_method_quantize_is_checked_in_the_config():
    assert load_config(None, ["--method.quantize", "int4", "--method.quantize_group_size", "64"]).method.quantize == "int4"
    with pytest.raises(ValueError, match="method.quantize must be int8, int4 or empty, got 'fp3'"):
        load_config(None, ["--method.quantize", "fp3"])
    with pytest.raises(ValueError, match="offered for the lora and pissa methods .* not for method.name 'dora'"):
        load_config(None, ["--method.name", "dora", "--method.quantize", "int8"])


def test_method_quantize_reaches_prepare_model(tmp_path):
    pytest.importorskip("torchao", reason="torchao not installed (pip install 'balora[quant]')")
    from balora.quant import adapted_linears
    from balora.training.pipeline import prepare_method
    from tests.core.tiny import tiny_llama

    cfg = build_config({"kind": "nlg", "method": {"name": "ba-lora", "r": 4, "quantize": "int8"},
                        "train": {"output_dir": str(tmp_path)}})
    prepared = prepare_method(cfg, tiny_llama(), 8, tmp_path)
    layers = list(adapted_linears(prepared.model))
    assert layers and all(type(base.weight).__module__.startswith("torchao") for _, _, base in layers)
    assert prepared.info.adapter_kwargs["quantize"] == "int8"
    (tmp_path / "b").mkdir()
    plain = prepare_method(build_config({"kind": "nlg", "method": {"name": "ba-lora", "r": 4},
                                         "train": {"output_dir": str(tmp_path / "b")}}), tiny_llama(), 8, tmp_path / "b")
    assert not any(type(base.weight).__module__.startswith("torchao") for _, _, base in adapted_linears(plain.model))


def test_identity_keys_the_regularizers_as_given_under_the_former_name():
    given = build_config({"regularizers": {"schedule": "constant", "lambda_svd": 0}})
    assert given.identity()["balora"] == {"schedule": "constant", "lambda_svd": 0.0}  # a default given is kept
    assert build_config({}).identity()["balora"] == {}
    assert "quantize" not in build_config({}).identity()["method"]
    assert build_config({"method": {"quantize": "int8"}}).identity()["method"]["quantize"] == "int8"
    in_code = RunConfig(regularizers=BALoRAConfig(lambda_svd=0.0))
    assert in_code.identity()["balora"] == {"lambda_svd": 0.0}  # built in code: what differs from the defaults


@pytest.mark.skipif(torch.cuda.is_available(), reason="float16 may train on this GPU")
def test_float16_on_a_cpu_is_refused_naming_the_setting():
    from balora.training.common import check_runtime

    with pytest.raises(ValueError, match="model.dtype=float16.*needs a CUDA GPU"):
        check_runtime(build_config({"model": {"dtype": "float16"}}), has_eval=False)
