"""Shared test fixtures: small thread count, deterministic seeds, location of the optional data pack."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

torch.set_num_threads(int(os.environ.get("BALORA_TEST_THREADS", "1")))

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("BALORA_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture
def shared_data() -> Path:
    """The developer/CI data pack (../shared/data); tests using it skip on users' machines."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"data pack not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)
