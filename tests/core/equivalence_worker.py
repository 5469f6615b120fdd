"""Launched by test_equivalence.py with torchrun (2 CPU processes, gloo): every case of equivalence.CASES
trained with the 'ddp' and 'ddp-accumulated' splits; rank 0 writes the results to a JSON file."""

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

from tests.core.equivalence import CASES, train  # noqa: E402


def main(out_path: str) -> None:
    torch.set_num_threads(1)
    results = {}
    for case in CASES:
        for split in ("ddp", "ddp-accumulated"):
            results["|".join(map(str, case)) + "|" + split] = train(*case, split, os.path.dirname(out_path))
    if int(os.environ.get("RANK", "0")) == 0:
        with open(out_path, "w") as fh:
            json.dump(results, fh)
    import torch.distributed as dist

    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
