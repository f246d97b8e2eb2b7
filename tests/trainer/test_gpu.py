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


def test_a_real_cuda_oom_in_training_steps_down_and_loses_no_step(tmp_path) -> None:
    """No injection: the allocator is capped (set_per_process_memory_fraction raises the real
    torch.OutOfMemoryError) below what the requested micro-batch needs; the ladder steps down,
    retries the same step and keeps the effective batch."""
    import torch
    from _train_helpers import tiny_corpus

    from trainer.oom import free_memory

    corpus = tiny_corpus(tmp_path / "big", files=16, words=20000)
    total = torch.cuda.get_device_properties(0).total_memory
    # Micro-batch 2048 x 64 tokens: its logits alone (2048 x 64 x 288 in bf16, then fp32 for the
    # loss) are ~380 MB, over a 160 MiB cap; micro-batch 128 needs ~25 MB.
    torch.cuda.set_per_process_memory_fraction(160 * 2**20 / total)
    try:
        cfg = tiny_config(tmp_path / "run", use_gpu=True, mixed_precision=True, batch_size=2048,
                          gradient_accumulation_steps=1, max_steps=3, data=[str(corpus)], eval_steps=100,
                          save_steps=100)
        got = run_trainer(cfg)
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0)
        free_memory("cuda")
    assert got.device.startswith("cuda")
    assert got.oom_events >= 1 and got.step_downs >= 1
    assert got.optimizer_steps == 3
    assert got.effective_batch_size == 2048
