"""On a CUDA machine: the real CUDA OOM is classified, and training recovers from OOMs in place.

Skipped without a GPU (see tests/conftest.py).
"""

from __future__ import annotations

import pytest
from _train_helpers import run_trainer, tiny_config

pytestmark = pytest.mark.gpu


def test_a_real_cuda_oom_is_classified_and_memory_comes_back() -> None:
    import torch

    from trainer.oom import free_memory, is_oom

    total = torch.cuda.get_device_properties(0).total_memory
    caught = None
    try:
        torch.empty(2 * total, dtype=torch.uint8, device="cuda")  # more than the device has
    except Exception as e:  # noqa: BLE001 - the point is what the allocator raises
        caught = e
    assert caught is not None and is_oom(caught) == "oom"
    del caught
    free_memory("cuda")
    assert torch.cuda.memory_allocated() == 0


def test_injected_oom_on_cuda_keeps_steps_and_effective_batch(tmp_path, monkeypatch) -> None:
    plain = run_trainer(tiny_config(tmp_path / "a", use_gpu=True, mixed_precision=True))
    monkeypatch.setenv("OVERSEER_INJECT_OOM", "3")
    hit = run_trainer(tiny_config(tmp_path / "b", use_gpu=True, mixed_precision=True))
    assert hit.device.startswith("cuda") and hit.oom_events == 1
    assert hit.optimizer_steps == plain.optimizer_steps
    assert hit.effective_batch_size == plain.effective_batch_size
