"""Shared test set-up: every test runs offline, on CPU, with few threads."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402

# OMP_NUM_THREADS, when set, wins: on a shared, loaded machine two spinning threads per op run ~10x slower than one.
torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS") or max(1, min(2, os.cpu_count() or 1))))


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Point the package's cache at a per-session temporary folder."""
    cache = tmp_path_factory.getbasetemp() / "hf_encoderlock_cache"
    monkeypatch.setenv("HF_ENCODERLOCK_CACHE", str(cache))
    yield
