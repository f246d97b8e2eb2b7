"""Step time and peak RSS of a real GPT-2 5x320, 6x256 training run under glibc's default allocator
or a fixed mmap threshold.

    python bench/malloc_replay/mmap_threshold.py 1|0                         # 1 = gradient checkpointing
    MALLOC_MMAP_THRESHOLD_=1048576 python bench/malloc_replay/mmap_threshold.py 1|0

8 timed AdamW steps after 2 warm-up steps; ru_maxrss growth from before the model is built.
Results: bench/results/estimator_accuracy.md, eighth pass.
"""

from __future__ import annotations

import os
import resource
import sys
import time

import torch
import transformers

GPT2 = {"n_layer": 5, "n_embd": 320, "n_head": 5, "vocab_size": 9000, "n_positions": 1024}


def main() -> None:
    ckpt = sys.argv[1] == "1"
    transformers.logging.set_verbosity_error()
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    model = transformers.AutoModelForCausalLM.from_config(transformers.AutoConfig.for_model("gpt2", **GPT2))
    if ckpt:
        model.gradient_checkpointing_enable()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step() -> None:
        ids = torch.randint(0, GPT2["vocab_size"], (6, 256))
        model(input_ids=ids, labels=ids).loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    for _ in range(2):
        step()
    t0 = time.perf_counter()
    for _ in range(8):
        step()
    grown = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0) / 1024
    threshold = os.environ.get("MALLOC_MMAP_THRESHOLD_", "default")
    print(f"ckpt={ckpt} mmap threshold {threshold}: step {(time.perf_counter() - t0) / 8:.3f} s, "
          f"ru_maxrss growth {grown:.0f} MiB")


if __name__ == "__main__":
    main()
