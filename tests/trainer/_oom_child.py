"""Child process for the real-OOM test: cap the address space after setup, then train.

Usage: python _oom_child.py ROOT HEADROOM_MB
The cap is set after torch, the model and the data are loaded (a cap before imports would fail the
imports, not the training step), at current address space + HEADROOM_MB: enough for a small
micro-batch's activations, not for the requested one. MALLOC_ARENA_MAX=1 (set by the parent) keeps
glibc from reserving a 64 MiB arena per new thread, which would eat the headroom.
"""

from __future__ import annotations

import json
import resource
import sys
from pathlib import Path

import psutil
from _train_helpers import tiny_config

from trainer.loop import Trainer


def main() -> None:
    root, headroom_mb = Path(sys.argv[1]), int(sys.argv[2])
    cfg = tiny_config(root, batch_size=64, gradient_accumulation_steps=1, max_sequence_length=128, max_steps=3,
                      save_steps=100, eval_steps=100, memory_check_interval=60.0)
    trainer = Trainer(cfg, cache_dir=root / "cache")
    trainer.setup()
    vms = psutil.Process().memory_info().vms
    resource.setrlimit(resource.RLIMIT_AS, (vms + headroom_mb * 2**20, resource.RLIM_INFINITY))
    try:
        result = trainer.train()
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
        trainer.close()
    print(json.dumps({"steps": result.optimizer_steps, "config": result.config, "ooms": result.oom_events}))


if __name__ == "__main__":
    main()
