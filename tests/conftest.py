"""Suite-wide settings: GPU tests run only where torch sees a CUDA device."""

from __future__ import annotations

import importlib.util

import pytest


def _cuda_available() -> bool:
    if importlib.util.find_spec("torch") is None:
        return False
    import torch

    return torch.cuda.is_available()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    gpu_items = [item for item in items if "gpu" in item.keywords]
    if gpu_items and not _cuda_available():
        skip = pytest.mark.skip(reason="needs a CUDA GPU (torch.cuda.is_available() is False)")
        for item in gpu_items:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _no_heap_replay(monkeypatch: pytest.MonkeyPatch) -> None:
    """Traced CPU estimates use the in-process allocator model: the real-allocator replay starts
    three processes per estimate, so only its own tests (test_heap_replay.py) switch it back on."""
    monkeypatch.setenv("OVERSEER_HEAP_REPLAY", "0")
