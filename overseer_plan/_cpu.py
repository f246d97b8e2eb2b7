"""The CPU: brand, core counts, the cores this process may use, and training-relevant ISA flags.

On Linux everything comes from /proc/cpuinfo (0.2 ms). py-cpuinfo's `get_cpu_info()` costs about
1 s (it starts a Python subprocess and, for CPUID, a multiprocessing child that sleeps 1 s;
workhorsy/py-cpuinfo#155, #205), so it runs only where nothing cheaper exists, in a thread with a
timeout, and its answer is cached on disk per boot.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from overseer_plan import _cgroup
from overseer_plan._cgroup import _Sys
from overseer_plan._io import atomic_write_text
from overseer_plan.hardware import Cpu

# Flags that change how training runs on a CPU (aten/src/ATen/cpu/Utils.cpp dispatches AVX512 only
# with f+bw+vl+dq; bf16 autocast is native only with avx512_bf16 or AMX). Kernel spellings
# (arch/x86/include/asm/cpufeatures.h); ARM 'bf16', 'i8mm', 'sve' from the aarch64 'Features' line.
TRAINING_FLAGS = (
    "avx2", "fma", "f16c",
    "avx512f", "avx512bw", "avx512vl", "avx512dq",
    "avx512_bf16", "avx512_vnni", "avx_vnni",
    "amx_bf16", "amx_tile", "amx_int8",
    "bf16", "i8mm", "sve", "sve2",
)
# py-cpuinfo and CPUID dumps write 'avx512bf16' where the kernel writes 'avx512_bf16':
# compare with underscores removed.
_BY_SQUASHED = {f.replace("_", ""): f for f in TRAINING_FLAGS}
_CPUINFO_TIMEOUT_S = 5.0
_LINUX = sys.platform.startswith("linux")


def normalise_flags(raw: list[str] | tuple[str, ...]) -> list[str]:
    """Keep the training-relevant flags, in canonical spelling, in TRAINING_FLAGS order."""
    found = {_BY_SQUASHED[s] for s in (f.strip().lower().replace("_", "") for f in raw) if s in _BY_SQUASHED}
    return [f for f in TRAINING_FLAGS if f in found]


def parse_proc_cpuinfo(text: str) -> dict[str, Any]:
    """Brand, flags and physical core count from the text of /proc/cpuinfo (x86 or aarch64)."""
    model: str | None = None
    flags: list[str] = []
    cores: set[tuple[str, str]] = set()
    block: dict[str, str] = {}
    arm_ids: tuple[str, str] | None = None
    for line in [*text.splitlines(), ""]:
        if not line.strip():  # a blank line ends one processor's block
            if "core id" in block:
                cores.add((block.get("physical id", "0"), block["core id"]))
            block = {}
            continue
        key, _, value = line.partition(":")
        key, value = key.strip().lower(), value.strip()
        block[key] = value
        if key in ("model name", "hardware", "model", "cpu model") and model is None and not value.isdigit():
            model = value
        elif key in ("flags", "features") and not flags:
            flags = value.split()
        elif key == "cpu part" and "cpu implementer" in block:
            arm_ids = (block["cpu implementer"], value)
    if model is None and arm_ids:
        # aarch64 kernels print no brand string; keep the MIDR ids so the CPU is at least identifiable.
        model = f"ARM implementer {arm_ids[0]} part {arm_ids[1]}"
    return {"model": model, "flags": normalise_flags(flags), "physical_cores": len(cores) or None}


def usable_cores(fs: _Sys, logical: int) -> tuple[int, str]:
    """Affinity mask intersected with the cgroup CPU quota, and what binds."""
    try:
        affinity = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # macOS and Windows have no sched_getaffinity
        affinity = _psutil_affinity() or logical
    quota = _cgroup.cpu_quota(fs)
    if quota and quota[0] < affinity:
        return quota
    return affinity, "affinity"


def _psutil_affinity() -> int | None:
    try:
        import psutil

        return len(psutil.Process().cpu_affinity())
    except Exception:  # psutil has no cpu_affinity on macOS; any failure means "unknown"
        return None


def probe_cpu(fs: _Sys, unavailable: dict[str, str], *, cache_dir: Path | None = None) -> Cpu:
    """The CPU part of the profile. Never raises; what cannot be read is None with a reason."""
    logical = os.cpu_count() or 1
    text = fs.read("/proc/cpuinfo")
    if text:
        info = parse_proc_cpuinfo(text)
    elif _LINUX:
        info = {}  # Linux without /proc: py-cpuinfo would find nothing better, only slower
        unavailable["cpu.flags"] = "/proc/cpuinfo is unreadable"
    else:
        info = _from_py_cpuinfo(unavailable, cache_dir or _default_cache_dir())
    if not info.get("physical_cores"):
        info["physical_cores"] = _psutil_physical()
    usable, source = usable_cores(fs, logical)
    if info.get("model") is None:
        unavailable.setdefault("cpu.model", "no brand string in /proc/cpuinfo")
    return Cpu(
        model=info.get("model"),
        logical_cores=logical,
        physical_cores=info.get("physical_cores"),
        usable_cores=min(usable, logical),
        usable_cores_source=source,
        flags=info.get("flags", []),
        architecture=platform.machine() or None,
    )


def _psutil_physical() -> int | None:
    try:
        import psutil

        return psutil.cpu_count(logical=False)
    except Exception:  # psutil may be missing or fail on exotic platforms: unknown, not fatal
        return None


def _default_cache_dir() -> Path:
    from overseer_plan._io import cache_root

    return cache_root()


def _boot_key() -> str:
    """Identifies this boot: a CPU can only change across a reboot (or a VM migration, rarely)."""
    try:
        import psutil

        return str(int(psutil.boot_time()))
    except Exception:  # no boot time: cache under a fixed key rather than not at all
        return "unknown-boot"


def _from_py_cpuinfo(unavailable: dict[str, str], cache_dir: Path) -> dict[str, Any]:
    """Brand and flags from py-cpuinfo, cached per boot; {} with a reason when it fails or hangs."""
    cache = cache_dir / f"cpuinfo-{_boot_key()}.json"
    try:
        return json.loads(cache.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        pass
    try:
        import cpuinfo
    except ImportError:
        unavailable["cpu.flags"] = "no /proc/cpuinfo and py-cpuinfo not installed"
        return {}
    raw = run_with_timeout(cpuinfo.get_cpu_info, _CPUINFO_TIMEOUT_S)
    if not isinstance(raw, dict):
        unavailable["cpu.flags"] = f"py-cpuinfo: {raw}"
        return {}
    info = {"model": raw.get("brand_raw") or None, "flags": normalise_flags(raw.get("flags", []))}
    try:
        atomic_write_text(cache, json.dumps(info))
    except OSError:
        pass  # a read-only home only costs the next run another second
    return info


def run_with_timeout(fn: Callable[[], Any], timeout_s: float) -> Any:
    """fn() in a daemon thread; its result, or a string saying why there is none."""
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = fn()
        except Exception as e:  # reported as a reason, never raised out of probe()
            box["error"] = f"{type(e).__name__}: {e}"

    t = threading.Thread(target=target, name="overseer-cpuinfo", daemon=True)
    t.start()
    t.join(timeout_s)
    if t.is_alive():
        return f"timed out after {timeout_s:g} s"
    return box.get("value", box.get("error"))
