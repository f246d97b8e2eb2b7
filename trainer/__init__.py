"""Overseer's trainer: an accelerate-based loop that steps down on OOM and never loses progress.

Public API (imported lazily: `import trainer` does not import torch):

    from trainer import train, Trainer, TrainResult, is_oom, next_rung, ResourceMonitor, ByteTokenizer
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "train": "trainer.run",
    "Trainer": "trainer.loop",
    "TrainResult": "trainer.loop",
    "CheckpointError": "trainer.loop",
    "OutOfMemoryAtFloor": "trainer.loop",
    "RestartRequired": "trainer.loop",
    "OomPolicy": "trainer.oom",
    "is_oom": "trainer.oom",
    "next_rung": "trainer.oom",
    "ResourceMonitor": "trainer.monitor",
    "ByteTokenizer": "trainer.tokenizer",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'trainer' has no attribute {name!r}")
