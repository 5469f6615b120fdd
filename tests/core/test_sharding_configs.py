"""The sharding configs under configs/ load through accelerate (DeepSpeed ZeRO-2/3, FSDP2); DeepSpeed itself is
not needed to parse them (and does not run in the CPU test environment)."""

from __future__ import annotations

from pathlib import Path

import pytest
from accelerate.commands.config.config_args import load_config_from_file
from accelerate.utils import DeepSpeedPlugin, DistributedType

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("stage", [2, 3])
def test_deepspeed_configs_parse_through_accelerate(stage):
    launch = load_config_from_file(str(ROOT / f"configs/accelerate/deepspeed_zero{stage}.yaml"))
    assert launch.distributed_type == DistributedType.DEEPSPEED
    ds_file = ROOT / launch.deepspeed_config["deepspeed_config_file"]
    assert ds_file.is_file(), f"{ds_file} named by the accelerate config does not exist"
    # PiSSA runs on the full weights in prepare_model: ZeRO-3's zero.Init would partition them at load time
    assert launch.deepspeed_config.get("zero3_init_flag") is False
    plugin = DeepSpeedPlugin(hf_ds_config=str(ds_file))
    assert plugin.zero_stage == stage
    config = plugin.hf_ds_config.config
    # the batch / accumulation / precision fields are left to Trainer ("auto"), so the run's YAML decides them
    for key in ("train_micro_batch_size_per_gpu", "gradient_accumulation_steps", "gradient_clipping"):
        assert config[key] == "auto", key
    assert config["bf16"]["enabled"] == "auto"
    if stage == 3:  # balora export needs the full 16-bit adapter on save
        assert config["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] is True


@pytest.mark.parametrize("name", ["fsdp2_full_shard.yaml", "fsdp2_cpu_2proc.yaml"])
def test_fsdp_configs_parse_through_accelerate(name):
    launch = load_config_from_file(str(ROOT / "configs/accelerate" / name))
    assert launch.distributed_type == DistributedType.FSDP
    fsdp = launch.fsdp_config
    assert fsdp["fsdp_version"] == 2 and fsdp["fsdp_reshard_after_forward"] is True  # full shard
    assert fsdp["fsdp_cpu_ram_efficient_loading"] is False  # PiSSA needs the full weights on every rank


def test_every_deepspeed_json_is_named_by_an_accelerate_config():
    """So the parse test above covers each of them (an orphan JSON would go untested)."""
    named = set()
    for path in (ROOT / "configs/accelerate").glob("*.yaml"):
        launch = load_config_from_file(str(path))
        if launch.distributed_type == DistributedType.DEEPSPEED:
            named.add(launch.deepspeed_config["deepspeed_config_file"])
    files = {str(p.relative_to(ROOT)) for p in (ROOT / "configs/deepspeed").glob("*.json")}
    assert files, "configs/deepspeed holds no JSON config"
    assert files <= named, f"not named by any configs/accelerate/*.yaml: {sorted(files - named)}"


@pytest.mark.slow
@pytest.mark.parametrize("same_seed", [False, True])
def test_ranks_with_different_pissa_inits_are_refused(tmp_path, same_seed):
    """FSDP / ZeRO do not broadcast rank 0's weights (DDP does): differing randomised PiSSA inits must not start."""
    import os
    import subprocess
    import sys

    from .test_equivalence import _free_port

    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(_free_port()), str(Path(__file__).with_name("rank_init_worker.py")), str(tmp_path),
           "1" if same_seed else "0"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = [(tmp_path / f"rank{r}.txt").read_text() for r in (0, 1)]
    if same_seed:
        assert results == ["started|agreed", "started|agreed"]
    else:  # refused when sharded; DDP (which broadcasts rank 0's weights) only warns
        assert all(r.startswith("refused:") and "differ between ranks" in r and r.endswith("|warned")
                   for r in results), results
