"""Launched by test_sharding_configs.py with torchrun (2 CPU processes): ranks seeded differently run the randomised
PiSSA init; the check BALoRATrainer.train runs first must refuse them when sharded (FSDP/ZeRO) and only warn under
DDP. Writes '<sharded check>|<ddp train>' per rank: 'refused: <message>' or 'started', 'warned' or 'agreed'."""

from __future__ import annotations

import os
import sys
import warnings

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
warnings.filterwarnings("ignore")

import torch  # noqa: E402
from transformers import TrainingArguments  # noqa: E402

from balora import BALoRATrainer, prepare_model  # noqa: E402
from tests.core.tiny import tiny_llama  # noqa: E402


def main(out_dir: str, same_seed: str) -> None:
    rank = int(os.environ["RANK"])
    args = TrainingArguments(output_dir=out_dir, per_device_train_batch_size=2, max_steps=1, report_to=[],
                             use_cpu=True, save_strategy="no", ddp_backend="gloo", disable_tqdm=True)
    model = tiny_llama(seed=0)
    torch.manual_seed(0 if same_seed == "1" else rank)  # the randomised SVD draws from the global generator
    prepared = prepare_model(model, "ba-lora", r=4, pissa_niter=2)
    from balora.sharding import check_ranks_agree

    trainer = BALoRATrainer(model=prepared.model, objective=prepared.objective(), args=args, train_dataset=[{"input_ids": torch.ones(4, dtype=torch.long)}])
    try:  # what train() does under FSDP / ZeRO
        check_ranks_agree(trainer.model, sharded=True)
        result = "started"
    except ValueError as err:
        result = f"refused: {err}"
    result += "|" + ("agreed" if check_ranks_agree(trainer.model, sharded=False) else "warned")
    with open(os.path.join(out_dir, f"rank{rank}.txt"), "w") as fh:
        fh.write(result)
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
