"""Launched by test_fsdp.py with `accelerate launch` (FSDP2 full shard, 2 CPU processes, gloo): the NLG cases of
equivalence.CASES trained with the 'ddp' split (4 rows per rank); rank 0 writes the results to a JSON file."""

from __future__ import annotations

import json
import logging
import os
import sys
import warnings

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
warnings.filterwarnings("ignore")
logging.disable(logging.WARNING)

import torch  # noqa: E402

from tests.core.equivalence import FSDP_CASES, train  # noqa: E402


def main(out_path: str) -> None:
    torch.set_num_threads(1)
    results = {}
    for case in FSDP_CASES:
        try:
            results["|".join(map(str, case))] = train(*case, "ddp", os.path.dirname(out_path))
        except Exception as err:  # noqa: BLE001 - reported to the test
            results["|".join(map(str, case))] = {"error": f"{type(err).__name__}: {err}"}
    if int(os.environ.get("RANK", "0")) == 0:
        with open(out_path, "w") as fh:
            json.dump(results, fh)
    import torch.distributed as dist

    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
