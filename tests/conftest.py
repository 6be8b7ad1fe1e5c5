"""Shared test setup: GPU tests skip cleanly where no CUDA GPU exists; no test reads or writes
the user's calibration cache (~/.cache/rooflight); the recorded H100 profile, built once."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from rooflight import api
from tests.recorded import recorded_h100_decode


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (none on this machine)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _no_user_hw_dir(monkeypatch):
    """Tests see only the built-in specs unless they set ROOFLIGHT_HW_DIR themselves."""
    monkeypatch.delenv("ROOFLIGHT_HW_DIR", raising=False)


@pytest.fixture(scope="session")
def _cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("rooflight-cache")


@pytest.fixture(autouse=True)
def _no_user_cache(monkeypatch, _cache_dir):
    """Calibrations go to a directory of the test session's, never to the user's cache (CLI
    subprocesses inherit it)."""
    monkeypatch.setenv("ROOFLIGHT_CACHE_DIR", str(_cache_dir))


@pytest.fixture(scope="session")
def h100_decode() -> api.Profile:
    return recorded_h100_decode()
