"""Flatten a hardware profile into the named facts that rule conditions read.

The fact names are the rulebook's vocabulary; adding a fact here makes it usable
in `rules/*.yaml`. Unknown values stay None, and a comparison on None is false.
"""

from __future__ import annotations

from typing import Any

from overseer_plan.hardware import Hardware

FACTS = {
    "ram.total_bytes": "host RAM",
    "ram.effective_bytes": "RAM training can use (container and address-space limits applied)",
    "ram.available_bytes": "RAM available now",
    "ram.others_fraction": "share of usable RAM held by other processes (0-1)",
    "gpu.present": "at least one usable GPU (None when it could not be told)",
    "gpu.count": "number of usable GPUs",
    "gpu.memory_bytes": "memory of the smallest usable GPU",
    "gpu.other_processes": "processes other than this one using any GPU",
    "gpu.temperature_margin_c": "smallest distance of a GPU to its slowdown temperature",
    "cpu.usable_cores": "cores this process may use",
    "cpu.logical_cores": "logical cores",
    "cpu.native_bf16": "CPU runs bf16 natively",
    "disk.output_free_bytes": "free space where checkpoints go",
    "disk.output_rotational": "checkpoint disk is rotational (None: unknown)",
    "machine.is_laptop": "a laptop-class machine",
    "temps.margin_c": "smallest distance of a host sensor to its high/critical point",
    "mode": "the chosen mode, when known",
    "run.first_on_machine": "no earlier Overseer run found in the output directory",
    "run.purpose": "what the user said the run is for (--purpose): development, production or speed; None: not said",
}


def hardware_facts(hw: Hardware, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Facts about `hw`, plus `extra` facts by name (e.g. {"mode": "standard"})."""
    facts: dict[str, Any] = {
        "ram.total_bytes": hw.ram.total_bytes,
        "ram.effective_bytes": hw.ram.effective_bytes,
        "ram.available_bytes": hw.ram.available_bytes,
        "ram.others_fraction": hw.ram.used_by_others_bytes / hw.ram.effective_bytes if hw.ram.effective_bytes else None,
        "cpu.usable_cores": hw.cpu.usable_cores,
        "cpu.logical_cores": hw.cpu.logical_cores,
        "cpu.native_bf16": hw.cpu.has_native_bf16(),
        "machine.is_laptop": hw.machine.is_laptop,
    }
    facts.update(_gpu_facts(hw))
    out = [d for d in (hw.disks or []) if d.role == "output"] or (hw.disks or [])[:1]
    facts["disk.output_free_bytes"] = out[0].free_bytes if out else None
    facts["disk.output_rotational"] = out[0].rotational if out else None
    margins = [(s.critical_c or s.high_c) - s.current_c for s in hw.temperatures or [] if (s.critical_c or s.high_c)]
    facts["temps.margin_c"] = min(margins) if margins else None
    facts.update(extra or {})
    unknown = set(facts) - set(FACTS)
    assert not unknown, f"facts without a description: {unknown}"
    return facts


def _gpu_facts(hw: Hardware) -> dict[str, Any]:
    if hw.gpus is None:
        keys = ("gpu.present", "gpu.count", "gpu.memory_bytes", "gpu.other_processes", "gpu.temperature_margin_c")
        return dict.fromkeys(keys)
    margins = [g.temperature_slowdown_c - g.temperature_c for g in hw.gpus
               if g.temperature_c is not None and g.temperature_slowdown_c is not None]
    return {
        "gpu.present": bool(hw.gpus),
        "gpu.count": len(hw.gpus),
        "gpu.memory_bytes": hw.smallest_gpu_bytes(),
        "gpu.other_processes": sum(len(g.processes) for g in hw.gpus),
        "gpu.temperature_margin_c": min(margins) if margins else None,
    }
