"""Malloc in-use peak vs heap peak vs ru_maxrss growth of a real GPT-2 5x320 training run.

    python bench/malloc_replay/heap_vs_inuse.py eager|sdpa 1|0 BATCH SEQ     # 1 = gradient checkpointing

Samples glibc's mallinfo2 after every aten op of 3 AdamW steps: in-use bytes (uordblks + mmapped)
against the heap's size (arena + mmapped). Their gap is fragmentation. Results:
bench/results/estimator_accuracy.md, eighth pass. Caveat (ninth pass): the sampling mode itself makes
ATen treat every tensor as subclass-like, so the autograd engine sums gradients out of place here,
unlike the protocol run; heap_determinism.py and run.sh measure without any mode.
"""

from __future__ import annotations

import resource
import sys
from pathlib import Path

import torch
import transformers
from torch.utils._python_dispatch import TorchDispatchMode

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from overseer_plan.heap_replay import _libc  # noqa: E402

GPT2 = {"n_layer": 5, "n_embd": 320, "n_head": 5, "vocab_size": 9000, "n_positions": 1024}
MiB = 2**20


def main() -> None:
    attn, ckpt, b, s = sys.argv[1], sys.argv[2] == "1", int(sys.argv[3]), int(sys.argv[4])
    transformers.logging.set_verbosity_error()
    libc = _libc()
    peak = {"inuse": 0, "heap": 0}

    def sample() -> None:
        info = libc.mallinfo2()
        peak["inuse"] = max(peak["inuse"], info.uordblks + info.hblkhd)
        peak["heap"] = max(peak["heap"], info.arena + info.hblkhd)

    class Sampler(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
            out = func(*args, **(kwargs or {}))
            sample()
            return out

    info = libc.mallinfo2()
    base_inuse, base_heap = info.uordblks + info.hblkhd, info.arena + info.hblkhd
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    model = transformers.AutoModelForCausalLM.from_config(
        transformers.AutoConfig.for_model("gpt2", **GPT2), attn_implementation=attn)
    if ckpt:
        model.gradient_checkpointing_enable()
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    with Sampler():
        for _ in range(3):
            ids = torch.randint(0, GPT2["vocab_size"], (b, s))
            model(input_ids=ids, labels=ids).loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
    grown = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0) / 1024
    print(f"{attn} ckpt={ckpt} {b}x{s}: malloc in-use peak {(peak['inuse'] - base_inuse) / MiB:.0f} MiB, "
          f"heap peak growth {(peak['heap'] - base_heap) / MiB:.0f} MiB, ru_maxrss growth {grown:.0f} MiB")


if __name__ == "__main__":
    main()
