"""trainer/oom.py: OOM classification across backends, and the exact rungs of the retry ladder."""

from __future__ import annotations

import pytest
import torch

from overseer_plan.config import TrainingConfig
from overseer_plan.rules import load_rulebook
from trainer.oom import OomPolicy, is_oom, next_rung, step_down, step_up

# (exception, expected verdict): every message of /work/shared/reference/oom-recovery.md section 7.
CASES = [
    (torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of 79.15 GiB"), "oom"),
    (RuntimeError("CUDA out of memory. Tried to allocate 576.00 MiB (GPU 0; 15.78 GiB total capacity)"), "oom"),
    (torch.OutOfMemoryError("HIP out of memory. Tried to allocate 64.00 GiB. GPU 0 has a total capacity"), "oom"),
    (torch.OutOfMemoryError("XPU out of memory. Tried to allocate 1.00 GiB"), "oom"),
    (RuntimeError("UR_RESULT_ERROR_OUT_OF_DEVICE_MEMORY"), "oom"),
    (RuntimeError("Allocation is out of device memory on current platform."), "oom"),
    (RuntimeError("MPS backend out of memory (MPS allocated: 17.36 GB, other allocations: 613.56 MB, max allowed: "
                  "18.13 GB). Tried to allocate 192.00 MB on private pool."), "oom"),
    (torch.AcceleratorError("CUDA error: out of memory\nCUDA kernel errors might be asynchronously reported"), "oom"),
    (RuntimeError("CUDA error: out of memory"), "oom"),
    (RuntimeError("[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate memory: you "
                  "tried to allocate 8589934592 bytes. Error code 12 (Cannot allocate memory)"), "oom"),
    (RuntimeError("DefaultCPUAllocator: not enough memory: you tried to allocate 1024 bytes."), "oom"),
    (RuntimeError("FATAL ERROR :: MODULE:PT_DEVMEM Allocation failed"), "oom"),
    (MemoryError(), "oom"),
    (RuntimeError("CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`"), "probable"),
    (RuntimeError("could not create a primitive"), "probable"),  # oneDNN under an address-space cap
    (RuntimeError("cuDNN error: CUDNN_STATUS_NOT_SUPPORTED. This error may appear if you passed in a non-contiguous input."), "probable"),
    (RuntimeError("cuDNN error: CUDNN_STATUS_INTERNAL_ERROR"), "probable"),
    (RuntimeError("NCCL error in: ProcessGroupNCCL.cpp:1234, unhandled cuda error"), "probable"),
    (torch.AcceleratorError("CUDA error: an illegal memory access was encountered"), "restart"),
    (RuntimeError("CUDA error: device-side assert triggered"), "restart"),
    (RuntimeError("shape '[-1, 16]' is invalid for input of size 10"), None),
    (ValueError("out of memory"), None),  # not a RuntimeError: a user's ValueError is not an OOM
    (RuntimeError("DataLoader worker (pid 12345) is killed by signal: Killed."), None),
]


@pytest.mark.parametrize("exc, verdict", CASES, ids=[f"{type(e).__name__}-{str(e)[:30]}" for e, _ in CASES])
def test_is_oom_classifies_every_reference_message(exc, verdict):
    assert is_oom(exc) == verdict


def _cfg(**kw):
    base = dict(batch_size=16, gradient_accumulation_steps=4, max_sequence_length=512, gradient_checkpointing=False,
                mixed_precision=False)
    return TrainingConfig(**{**base, **kw})


def _walk(cfg, fits=None):
    book, seen = load_rulebook(), []
    while (step := next_rung(cfg, book, fits)) is not None:
        cfg, rule = step
        seen.append((rule.id, cfg.batch_size, cfg.gradient_accumulation_steps, cfg.gradient_checkpointing,
                     cfg.mixed_precision, cfg.max_sequence_length))
    return seen


def test_ladder_halves_micro_batch_then_checkpointing_then_stops_without_sequence_consent():
    assert _walk(_cfg()) == [
        ("ladder.oom.batch-size", 8, 8, False, False, 512),
        ("ladder.oom.batch-size", 4, 16, False, False, 512),
        ("ladder.oom.batch-size", 2, 32, False, False, 512),
        ("ladder.oom.batch-size", 1, 64, False, False, 512),
        ("ladder.oom.gradient-checkpointing", 1, 64, True, False, 512),
    ]


def test_ladder_with_sequence_consent_halves_sequence_last_and_keeps_tokens_per_step():
    rungs = _walk(_cfg(batch_size=2, gradient_accumulation_steps=1, gradient_checkpointing=True,
                       max_sequence_length=256, allow_sequence_reduction=True))
    assert rungs == [
        ("ladder.oom.batch-size", 1, 2, True, False, 256),
        ("ladder.oom.sequence-length", 1, 4, True, False, 128),
        ("ladder.oom.sequence-length", 1, 8, True, False, 64),
    ]
    for _id, micro, accum, _gc, _mp, seq in rungs:  # tokens per optimizer step never change
        assert micro * accum * seq == 2 * 256


def test_micro_batch_follows_divisors_so_the_effective_batch_is_exact():
    rungs = _walk(_cfg(batch_size=48, gradient_accumulation_steps=1, gradient_checkpointing=True))
    assert [(m, a) for _id, m, a, *_ in rungs] == [(24, 2), (12, 4), (6, 8), (3, 16), (1, 48)]
    assert all(m * a == 48 for _id, m, a, *_ in rungs)


def test_mixed_precision_off_only_when_the_estimator_says_it_fits():
    at_floor = _cfg(batch_size=1, gradient_accumulation_steps=64, gradient_checkpointing=True, mixed_precision=True)
    assert _walk(at_floor) == []  # no estimator: skipped
    assert _walk(at_floor, fits=lambda c: not c.mixed_precision) == [
        ("ladder.oom.mixed-precision-off", 1, 64, True, False, 512)]


def test_step_down_jumps_to_the_first_rung_the_estimator_accepts():
    taken = step_down(_cfg(), load_rulebook(), fits=lambda c: c.batch_size <= 2)
    assert [c.batch_size for c, _ in taken] == [8, 4, 2]
    # When the estimator accepts nothing, only one rung: the real allocation decides.
    taken = step_down(_cfg(), load_rulebook(), fits=lambda c: False)
    assert [c.batch_size for c, _ in taken] == [8]


def test_step_up_returns_to_the_previous_rung_then_doubles_along_divisors():
    cfg = _cfg(batch_size=4, gradient_accumulation_steps=16)
    prev = _cfg(batch_size=8, gradient_accumulation_steps=8)
    assert step_up(cfg, [prev]) is prev
    up = step_up(cfg, [])
    assert (up.batch_size, up.gradient_accumulation_steps) == (8, 8)
    assert step_up(_cfg(batch_size=64, gradient_accumulation_steps=1), []) is None


def test_policy_retries_a_probable_oom_once_per_step():
    policy = OomPolicy(load_rulebook())
    assert policy.retry_probable(5) is True
    assert policy.retry_probable(5) is False
    assert policy.retry_probable(6) is True
    assert "overseer doctor oom" in policy.floor_message(_cfg(batch_size=1, gradient_accumulation_steps=64))
