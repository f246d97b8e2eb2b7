"""Overseer: make a training run fit the machine it runs on.

Public API (imported lazily so `overseer probe` never pays for torch):

    from overseer_plan import probe, estimate, make_plan, TrainingConfig, Hardware
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# name -> module that defines it
_EXPORTS = {
    "Hardware": "overseer_plan.hardware",
    "probe": "overseer_plan.probe",
    "TrainingConfig": "overseer_plan.config",
    "load_rulebook": "overseer_plan.rules",
    "Rulebook": "overseer_plan.rules",
    "estimate": "overseer_plan.estimate",
    "MemoryEstimate": "overseer_plan.estimate",
    "make_plan": "overseer_plan.plan",
    "Plan": "overseer_plan.plan",
    "run_doctor": "overseer_plan.doctor",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'overseer_plan' has no attribute {name!r}")
