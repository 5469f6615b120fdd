"""LoRA vs PiSSA vs BA-LoRA: step time, peak memory and per-term breakdown, side by side (issue 6).

Run ``python benchmarks/overhead.py --help``; the same code is ``balora bench overhead``. The machinery
lives in the package (balora.bench.overhead, overhead_settings, overhead_cli) so that the installed
command works without this folder; importing this module re-exports it.
"""

from __future__ import annotations

import sys

from balora.bench.overhead import *  # noqa: F401,F403  (importable: the benchmark's building blocks)
from balora.bench.overhead_cli import add_arguments, main, run  # noqa: F401
from balora.bench.overhead_settings import (nlg_batch, nlg_breakdown, nlg_variants, nlu_batch,  # noqa: F401
                                            nlu_breakdown, nlu_variants, pissa_init_times)

if __name__ == "__main__":
    sys.exit(main())
