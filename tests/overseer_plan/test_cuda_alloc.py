"""The caching-allocator replay (cuda_alloc.py) and the CUDA side of traced estimates.

The last tests compare traced `--device cuda` estimates with peaks recorded on an NVIDIA H100
(torch 2.11.0+cu130, bench/results/gpu_measurements.json): no GPU is needed to run them.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from overseer_plan import cuda_alloc
from overseer_plan.cuda_alloc import CachingAllocator, MiB, replay, round_size, segment_size

REPO = Path(__file__).resolve().parents[2]


def test_request_rounding_and_segment_sizes_follow_the_allocator() -> None:
    assert round_size(1) == 512 and round_size(513) == 1024 and round_size(4096) == 4096
    assert segment_size(512) == 2 * MiB and segment_size(1 * MiB) == 2 * MiB  # small pool
    assert segment_size(1 * MiB + 512) == 20 * MiB and segment_size(9 * MiB) == 20 * MiB
    assert segment_size(10 * MiB) == 10 * MiB and segment_size(11 * MiB + 1) == 12 * MiB


def test_small_requests_share_a_segment_and_large_ones_split_only_past_one_mib() -> None:
    a = CachingAllocator()
    for _ in range(4):
        a.malloc(500 * 1024)  # four 500 KiB blocks fit one 2 MiB small segment
    assert a.reserved == 2 * MiB
    b = CachingAllocator()
    b.malloc(3 * MiB)  # 20 MiB segment, split: 17 MiB stay cached
    b.malloc(15 * MiB)  # served from the cached remainder
    assert b.reserved == 20 * MiB and b.allocated == 18 * MiB
    c = CachingAllocator()
    c.malloc(19 * MiB + 512)  # remainder under 1 MiB is not split off: the block is counted whole
    assert c.allocated == 20 * MiB


def test_freed_blocks_merge_and_are_reused_before_reserving_more() -> None:
    a = CachingAllocator()
    x, y = a.malloc(8 * MiB), a.malloc(8 * MiB)  # both from one 20 MiB segment
    a.free(x)
    a.free(y)  # merges back into one 20 MiB free block
    a.malloc(19 * MiB)
    assert a.reserved == 20 * MiB and a.peak_allocated == 20 * MiB


def test_best_fit_keeps_a_large_free_block_for_a_large_request() -> None:
    events = [(1, 100 * MiB, "f"), (2, 40 * MiB, "f"), (1, -100 * MiB, "f"), (2, -40 * MiB, "f"),
              (3, 30 * MiB, "f"), (4, 90 * MiB, "f")]
    # 30 MiB goes to the 40 MiB block (best fit), so 90 MiB still fits the freed 100 MiB one.
    assert replay(events).reserved == 140 * MiB


def test_workspaces_are_placed_at_the_first_matmul_of_each_thread() -> None:
    events = [(1, 250 * MiB, "backward0"), (1, -250 * MiB, "backward0"), (2, 250 * MiB, "backward0")]
    # At the start of backward the workspace takes a segment of its own; inside the freed 250 MiB
    # block it fragments it, and the next 250 MiB request needs a new segment (as on the H100).
    early = replay(events, extra=cuda_alloc.workspaces({"backward": 0}, 32 * MiB))
    late = replay(events, extra=cuda_alloc.workspaces({"backward": 2}, 32 * MiB))
    assert early.reserved == 282 * MiB and late.reserved == 500 * MiB
    assert cuda_alloc.workspaces({"forward": 3}, 0) == []


# Rows measured on the H100 whose traced estimate exercises one CUDA-specific part of the trace each.
H100_ROWS = [
    # GPT-2's tanh GeLU calls torch.pow, which CUDA autocast runs in fp32.
    "gpt2-4x256|b8|s512|ga1|ckpt0|bf16|default",
    # fp32 with grouped key/value heads takes SDPA's math kernel on CUDA.
    "llama-4x256-gqa|b8|s512|ga1|ckpt0|fp32|default",
    # The backward thread's cuBLAS workspace lands inside a freed logits block.
    "llama-4x256-gqa|b8|s512|ga1|ckpt1|bf16|default",
    "neox-4x256|b4|s256|ga1|ckpt1|fp32|default",
    # With the KV cache on, GPT-NeoX copies the values out of the fused QKV projection and frees it.
    "neox-4x256|b1|s512|ga1|ckpt0|fp32|default",
]


@pytest.mark.parametrize("key", H100_ROWS)
def test_traced_cuda_estimates_match_the_recorded_h100_peaks(key: str, tmp_path, monkeypatch) -> None:
    import sys

    monkeypatch.setenv("OVERSEER_CACHE_DIR", str(tmp_path))
    sys.path.insert(0, str(REPO / "bench"))
    from gpu_accuracy import _parse_key, model_config

    from overseer_plan.estimate import EstimateConfig, estimate

    runs = json.loads((REPO / "bench" / "results" / "gpu_measurements.json").read_text())["runs"][key]
    name, b, s, ckpt, prec, ga, _ = _parse_key(key)
    # As the protocol builds them: from the config's defaults, KV cache on.
    cfg = EstimateConfig(batch_size=b, seq_len=s, gradient_checkpointing=ckpt, precision=prec, grad_accum=ga,
                         kv_cache=True)
    est = estimate(model_config(name), cfg, device="cuda", method="traced")
    assert est.reserved_bytes == pytest.approx(runs[0]["max_reserved_bytes"], rel=0.03)
    assert est.allocated_bytes == pytest.approx(runs[0]["max_allocated_bytes"], rel=0.03)
    assert est.peak_bytes == est.reserved_bytes + est.cuda_context_bytes
