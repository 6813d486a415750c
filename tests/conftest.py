"""Shared fixtures. Tests use tiny real inputs; the real datasets live in ../shared/data (CI has it too)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# Offline for the whole session, set at import (before test modules import transformers/datasets).
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# OpenMP threads sleep instead of spinning while idle: with several torch processes on 2 cores (the Prefect
# worker tests, subprocess CLI tests) spin-waiting made scoring ~100x slower.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# Eval results of base models are cached by content; tests start from an empty cache of their own (the
# model aliases stay in the shared $SFTFLOW_CACHE, they are slow to build).
os.environ.setdefault("SFTFLOW_EVAL_CACHE", tempfile.mkdtemp(prefix="sftflow-eval-cache-"))

SHARED_DATA = Path(os.environ.get("SFTFLOW_DATA_DIR", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The licensed datasets folder (../shared/data beside the checkout)."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data folder {SHARED_DATA} not present")
    return SHARED_DATA

