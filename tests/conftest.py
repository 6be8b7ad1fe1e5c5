"""Shared test setup: GPU tests skip cleanly where no CUDA GPU exists."""

from __future__ import annotations

import pytest
import torch


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
