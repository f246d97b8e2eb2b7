"""The doctor's machine checks: limits, storage, heat, shared memory and GPUs, torch vs the driver.

Each check is a small function `(ctx) -> Finding`. Where a check needs a threshold it reads
the rule that holds it (e.g. `practice.close-apps` for "other apps hold too much RAM"), so
hardware constants stay in the rulebook. `overseer_plan.doctor` registers and runs them.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from overseer_plan import _cuda_drivers as cuda
from overseer_plan.facts import hardware_facts
from overseer_plan.hardware import Hardware, ProcessMemory
from overseer_plan.modes import ModeAdvice, recommend_mode
from overseer_plan.rules import Rulebook
from overseer_plan.units import fmt_bytes

Status = Literal["ok", "warn", "fail", "skip", "info"]

# Rules whose conditions hold the thresholds these checks use (see rules/practices.yaml).
CLOSE_APPS_RULE = "practice.close-apps"
TEMPERATURE_RULE = "practice.temperature"
_TOP_CONSUMERS = 3
# What a run leaves in its directory (TrainingConfig.output_dir): an earlier run on this machine.
_RUN_MARKERS = ("metrics.jsonl", "summary.json", "*/metrics.jsonl", "*/summary.json", "*/*/summary.json")


@dataclass
class Finding:
    """What one check found."""

    status: Status
    message: str
    fix: str | None = None
    details: dict[str, Any] = field(default_factory=dict)


class DoctorContext:
    """What every check reads; derived values are computed once, on first use."""

    def __init__(self, hw: Hardware, rulebook: Rulebook, output_dir: Path):
        self.hw = hw
        self.rulebook = rulebook
        self.output_dir = output_dir

    @functools.cached_property
    def mode(self) -> ModeAdvice:
        return recommend_mode(self.hw, self.rulebook)

    @functools.cached_property
    def facts(self) -> dict[str, Any]:
        first = not any(any(self.output_dir.glob(p)) for p in _RUN_MARKERS)
        return hardware_facts(self.hw, {"mode": self.mode.mode, "run.first_on_machine": first})

    def unavailable(self, part: str, default: str) -> str:
        """Why a part of the profile is missing, as the probe recorded it."""
        return self.hw.unavailable.get(part) or default


def _procs(procs: list[ProcessMemory]) -> str:
    return ", ".join(f"{p.name or '?'} (pid {p.pid}) {fmt_bytes(p.memory_bytes)}" for p in procs)


def check_memory_limit(ctx: DoctorContext) -> Finding:
    """A cgroup or RLIMIT_AS limit below the host's RAM, and which one binds."""
    ram = ctx.hw.ram
    details = {"ram.total_bytes": ram.total_bytes, "ram.limit_bytes": ram.limit_bytes,
               "ram.limit_source": ram.limit_source, "ram.effective_bytes": ram.effective_bytes}
    if ram.limit_bytes is None:
        return Finding("ok", f"no container or address-space limit: training may use the host's {fmt_bytes(ram.total_bytes)}",
                       details=details)
    source = ram.limit_source or "an unnamed limit"
    if ram.limit_bytes >= ram.total_bytes:
        return Finding("ok", f"{source} {fmt_bytes(ram.limit_bytes)} is above the host's {fmt_bytes(ram.total_bytes)}: host RAM binds",
                       details=details)
    message = (f"{source} limits training to {fmt_bytes(ram.limit_bytes)} of the host's {fmt_bytes(ram.total_bytes)}; "
               f"Overseer plans from {fmt_bytes(ram.effective_bytes)}")
    if "RLIMIT_AS" in source:
        fix = "Lift the address-space limit before training: ulimit -v unlimited (CUDA maps large address ranges and fails under it)"
    else:
        fix = "Give the container more memory (docker run --memory=16g, or the pod's resources.limits.memory); plans already fit the limit"
    return Finding("warn", message, fix, details)


def check_other_memory(ctx: DoctorContext) -> Finding:
    """RAM held by other processes, with the top consumers named (spec: close other apps)."""
    ram = ctx.hw.ram
    share = ctx.facts["ram.others_fraction"]
    top = ram.top_processes[:_TOP_CONSUMERS]
    details = {"ram.used_by_others_bytes": ram.used_by_others_bytes, "ram.effective_bytes": ram.effective_bytes,
               "ram.others_fraction": share, "top_processes": [p.model_dump() for p in ram.top_processes]}
    message = f"other processes hold {fmt_bytes(ram.used_by_others_bytes)} of {fmt_bytes(ram.effective_bytes)} usable"
    if share is not None:
        message += f" ({share:.0%})"
    if top:
        message += f"; largest: {_procs(top)}"
    rule = ctx.rulebook[CLOSE_APPS_RULE]
    if not rule.when.holds(ctx.facts):
        return Finding("ok", message, details=details)
    names = ", ".join(p.name or f"pid {p.pid}" for p in top) or "other applications"
    fix = f"Close {names} before training, or share the machine: overseer train --resource-efficient"
    return Finding("warn", message, fix, details | {"rule": rule.id, "spec": rule.source})


def check_storage_type(ctx: DoctorContext) -> Finding:
    """SSD or spinning disk where checkpoints and data go (spec: use SSD storage)."""
    disks = ctx.hw.disks
    if not disks:
        return Finding("skip", ctx.unavailable("disks", "no output or data directory was checked"))
    kinds = {True: "HDD (rotational)", False: "SSD", None: "unknown type"}
    parts = [f"{d.role} {d.path}: {kinds[d.rotational]}, {d.fstype or 'unknown fs'}, {fmt_bytes(d.free_bytes)} free"
             for d in disks]
    details = {d.role: d.model_dump() for d in disks}
    spinning = [d for d in disks if d.rotational]
    if spinning:
        fix = "Put checkpoints and data on an SSD: overseer train --output /path/on/ssd"
        return Finding("warn", "; ".join(parts), fix, details)
    if all(d.rotational is None for d in disks):
        return Finding("skip", "; ".join(parts) + " (the OS does not say whether it is an SSD, e.g. a virtual disk)",
                       details=details)
    return Finding("ok", "; ".join(parts), details=details)


@dataclass
class _Reading:
    name: str
    current_c: float
    limit_c: float | None
    limit_name: str
    fact: str
    """The fact the margin to the limit feeds (the rule's condition reads it)."""


def _readings(hw: Hardware) -> list[_Reading]:
    """Every host sensor and GPU temperature, with the limit `overseer_plan.facts` measures margins to."""
    out = []
    for s in hw.temperatures or []:
        limit, which = (s.critical_c, "critical") if s.critical_c else (s.high_c, "high")
        out.append(_Reading(f"{s.chip} {s.label}".strip(), s.current_c, limit, which, "temps.margin_c"))
    for g in hw.gpus or []:
        if g.temperature_c is not None:
            out.append(_Reading(f"GPU{g.index}", g.temperature_c, g.temperature_slowdown_c, "slowdown",
                                "gpu.temperature_margin_c"))
    return out


def check_temperatures(ctx: DoctorContext) -> Finding:
    """Host sensors near high/critical and GPUs near their slowdown temperature (spec: monitor temperature)."""
    readings = _readings(ctx.hw)
    if not readings:
        return Finding("skip", "no temperature sensors: " + ctx.unavailable("temperatures", "the OS exposes none"))
    rule = ctx.rulebook[TEMPERATURE_RULE]
    details = {r.name: {"current_c": r.current_c, f"{r.limit_name}_c": r.limit_c} for r in readings}
    hot = [r for r in readings if r.limit_c is not None and rule.when.holds({r.fact: r.limit_c - r.current_c})]
    if hot:
        message = "; ".join(f"{r.name} at {r.current_c:.0f}°C, {r.limit_c - r.current_c:.0f}°C below its "
                            f"{r.limit_name} point {r.limit_c:.0f}°C" for r in hot if r.limit_c is not None)
        fix = "Improve cooling (airflow, clean fans) and lower the load: overseer train --resource-efficient"
        return Finding("warn", message, fix, details | {"rule": rule.id, "spec": rule.source})
    top = max(readings, key=lambda r: r.current_c)
    limit = f", {top.limit_name} at {top.limit_c:.0f}°C" if top.limit_c is not None else ", no limit reported"
    return Finding("ok", f"hottest: {top.name} at {top.current_c:.0f}°C{limit}", details=details)


def check_gpu_sharing(ctx: DoctorContext) -> Finding:
    """Other processes (e.g. training runs) on the same GPU (spec: multiple training sessions)."""
    gpus = ctx.hw.gpus
    if gpus is None:
        return Finding("skip", "GPUs could not be probed: " + ctx.unavailable("gpus", "unknown reason"))
    if not gpus:
        return Finding("skip", "no GPU: nothing to share")
    busy = [g for g in gpus if g.processes]
    details = {f"GPU{g.index}": [p.model_dump() for p in g.processes] for g in gpus}
    if not busy:
        return Finding("ok", f"no other process uses {', '.join(f'GPU{g.index}' for g in gpus)}", details=details)
    message = "; ".join(f"GPU{g.index} ({g.name}) is used by {len(g.processes)} other process(es): {_procs(g.processes)}"
                        for g in busy)
    idle = [g for g in gpus if not g.processes]
    if idle:
        fix = f"Train on an idle GPU: CUDA_VISIBLE_DEVICES={idle[0].index} overseer train ..."
    else:
        fix = "Wait for the other runs to finish, or share the GPU: overseer train --resource-efficient"
    return Finding("warn", message, fix, details)


def _torch_install(driver: str | None, *, windows: bool) -> str:
    """The install command for the newest torch CUDA build `driver` can run."""
    if driver is None:
        return "pip install --force-reinstall torch  (a CUDA build: https://pytorch.org/get-started/locally/)"
    wheel = cuda.best_torch_wheel(driver, windows=windows)
    if wheel is None:
        return f"upgrade the NVIDIA driver (now {driver}), then: pip install --force-reinstall torch"
    return f"pip install --force-reinstall torch --index-url {cuda.TORCH_INDEX}/{wheel}"


def check_torch_gpu(ctx: DoctorContext) -> Finding:
    """A GPU NVML sees but torch cannot use: CPU-only torch build, or a driver too old for torch's CUDA."""
    hw, sw = ctx.hw, ctx.hw.software
    gpus = [g for g in hw.gpus or [] if g.backend == "cuda"]
    if not gpus:
        return Finding("skip", "no NVIDIA GPU: nothing for torch's CUDA build to drive")
    names = ", ".join(f"GPU{g.index} {g.name}" for g in gpus)
    windows = sw.wsl or "windows" in (sw.os or "").lower()
    install = _torch_install(sw.nvidia_driver, windows=windows)
    details = {"torch": sw.torch, "cuda": sw.cuda, "nvidia_driver": sw.nvidia_driver}
    if sw.torch is None:
        return Finding("warn", f"torch is not installed; {names} unused", install, details)
    if sw.cuda is None:
        message = f"torch {sw.torch} is a CPU-only build: NVML sees {names} but torch cannot use it"
        return Finding("warn", message, install, details)
    if sw.nvidia_driver is None:
        return Finding("skip", f"torch {sw.torch} (CUDA {sw.cuda}); NVIDIA driver version unknown", details=details)
    need = cuda.driver_need(sw.cuda, windows=windows)
    details |= {"driver_minimum": need.minimum, "driver_toolkit": need.toolkit,
                "source": "NVIDIA CUDA Toolkit release notes (CUDA Toolkit and Corresponding Driver Versions)"}
    if cuda.driver_too_old(sw.nvidia_driver, need):
        message = (f"NVIDIA driver {sw.nvidia_driver} is older than {need.minimum}, the minimum for CUDA {sw.cuda} "
                   f"(torch {sw.torch}): torch cannot use {names}")
        fix = f"Upgrade the NVIDIA driver to >= {need.toolkit or need.minimum}"
        if cuda.best_torch_wheel(sw.nvidia_driver, windows=windows):
            fix += f", or install a torch this driver runs: {install}"
        return Finding("warn", message, fix, details)
    unusable = [g for g in gpus if g.torch_usable is False]
    if unusable:
        message = f"torch {sw.torch} reports {', '.join(f'GPU{g.index}' for g in unusable)} unusable"
        return Finding("warn", message, "Check CUDA_VISIBLE_DEVICES and the GPU's compute mode (nvidia-smi -q -d COMPUTE)",
                       details)
    need_text = f">= {need.minimum}" if need.minimum else "minimum unknown"
    return Finding("ok", f"torch {sw.torch} (CUDA {sw.cuda}) with driver {sw.nvidia_driver} ({need_text}) can use {names}",
                   details=details)


def check_pynvml(ctx: DoctorContext) -> Finding:
    """The deprecated `pynvml` distribution next to nvidia-ml-py (it warns on import and can shadow it)."""
    sw = ctx.hw.software
    details = {"nvidia_ml_py": sw.nvidia_ml_py, "pynvml_distribution": sw.pynvml_distribution}
    if sw.pynvml_distribution is not None:
        message = (f"the deprecated 'pynvml' package {sw.pynvml_distribution} is installed: it prints a FutureWarning "
                   "on every `import pynvml` and can shadow nvidia-ml-py")
        return Finding("warn", message, "pip uninstall pynvml   (nvidia-ml-py provides `import pynvml`)", details)
    if sw.nvidia_ml_py is None:
        return Finding("skip", "nvidia-ml-py is not installed (needed only for NVIDIA GPUs: pip install nvidia-ml-py)",
                       details=details)
    return Finding("ok", f"nvidia-ml-py {sw.nvidia_ml_py} provides NVML; no conflicting 'pynvml' package", details=details)
