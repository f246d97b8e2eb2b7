"""Plan files: the YAML `overseer plan -o` writes and `overseer train --config` reads."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from overseer_plan._io import atomic_write_text


def plan_document(plan: Any) -> dict[str, Any]:
    """The plan as plain data; `config:` is what training reads, the rest documents it."""
    return {
        "mode": plan.mode,
        "device": plan.device,
        "num_processes": plan.num_processes,
        "config": _portable(plan.config.model_dump(mode="json")),
        "budget_bytes": plan.budget_bytes,
        "estimated_peak_bytes": plan.estimate["peak_bytes"] if plan.estimate else None,
        "decisions": [d.model_dump(mode="json") for d in plan.decisions],
        "mode_reasons": plan.mode_reasons,
    }


def save_plan(plan: Any, path: str | Path) -> None:
    """Write the plan as YAML, atomically."""
    import yaml

    text = "# Written by `overseer plan`. Train with: overseer train --config " + Path(path).name + "\n"
    atomic_write_text(Path(path), text + yaml.safe_dump(plan_document(plan), sort_keys=False))


def _portable(config: dict[str, Any]) -> dict[str, Any]:
    """A local model directory as an absolute path: `train --config` may run from another directory."""
    model = config.get("model")
    if model and not Path(model).is_absolute() and Path(model).exists():
        config = {**config, "model": str(Path(model).resolve())}
    return config
