"""`probe()`: read the machine into a `Hardware` profile, fast and without raising.

Every part is read on its own; what cannot be read is None (gpus: [] when there is simply no
driver) with the reason in `Hardware.unavailable`. File reads go through `_Sys(root)` so tests
can point the probe at fixture trees. No torch at module scope: see `_wants_torch` for when the
probe imports it.
"""

from __future__ import annotations

import ast
import heapq
import importlib.metadata
import importlib.util
import os
import platform
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from overseer_plan import _cgroup
from overseer_plan._cgroup import _Sys
from overseer_plan._cpu import probe_cpu
from overseer_plan._nvml import NvmlResult, probe_nvml, reorder_by_uuids
from overseer_plan.hardware import Cpu, Disk, Gpu, Hardware, Machine, ProcessMemory, Ram, Sensor, Software

__all__ = ["probe"]

T = TypeVar("T")
_TOP_PROCESSES = 5


def probe(output_dir: str | Path = ".", data_dir: str | Path | None = None, *,
          use_torch: bool | None = None, root: str | Path = "/") -> Hardware:
    """Read this machine's CPU, RAM, GPUs, disks, temperatures and software.

    Args:
        output_dir: where checkpoints will go (free space is checked there, or at its nearest existing parent).
        data_dir: where the data set lives, checked the same way; skipped when None.
        use_torch: ask torch about Apple MPS and ROCm GPUs and whether it can use each GPU.
            None (default) does so only when torch is already imported, on an Apple-silicon Mac,
            or when the installed torch is a ROCm build; importing torch costs about 1 s, and on
            an NVIDIA or CPU-only Linux machine NVML and /proc already say everything needed.
        root: filesystem root for /proc and /sys reads; tests pass a fixture tree.

    Returns:
        The profile. Never raises for an unreadable part.
    """
    fs = _Sys(root)
    unavailable: dict[str, str] = {}
    cpu = _guard(unavailable, "cpu", lambda: probe_cpu(fs, unavailable), _fallback_cpu)
    ram = _guard(unavailable, "ram", lambda: _ram(fs), _fallback_ram)
    nv = _guard(unavailable, "gpus", probe_nvml, lambda: NvmlResult(None))
    unavailable.update(nv.reasons)
    software = _guard(unavailable, "software", lambda: _software(fs, nv.driver), Software)
    gpus = nv.gpus
    if _wants_torch(use_torch, software.hip):
        gpus = _guard(unavailable, "torch", lambda: _with_torch(gpus, cpu, unavailable), lambda: gpus)
    targets = [(output_dir, "output")] + ([(data_dir, "data")] if data_dir is not None else [])
    return Hardware(
        cpu=cpu,
        ram=ram,
        gpus=gpus,
        disks=_guard(unavailable, "disks", lambda: _disks(fs, targets), lambda: None),
        temperatures=_guard(unavailable, "temperatures", lambda: _temperatures(unavailable), lambda: None),
        software=software,
        machine=_guard(unavailable, "machine", lambda: _machine(fs, unavailable), Machine),
        unavailable=unavailable,
    )


def _guard(unavailable: dict[str, str], key: str, read: Callable[[], T], fallback: Callable[[], T]) -> T:
    """read(), or fallback() with the reason recorded: one broken part never sinks the probe."""
    try:
        return read()
    except Exception as e:  # the probe's contract is to report, not raise
        unavailable[key] = f"{type(e).__name__}: {e}"
        return fallback()


def _fallback_cpu() -> Cpu:
    n = os.cpu_count() or 1
    return Cpu(logical_cores=n, usable_cores=n, usable_cores_source="os.cpu_count (probe failed)")


def _fallback_ram() -> Ram:
    # sysconf needs no psutil; free pages understate what is available, which is the safe side.
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    free = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")
    return Ram(total_bytes=total, available_bytes=free, effective_bytes=total, used_by_others_bytes=total - free)


# ---- RAM ----
def _ram(fs: _Sys) -> Ram:
    """Host RAM clamped by the cgroup limit and the RLIMIT_AS headroom, whichever is tighter."""
    import psutil

    vm = psutil.virtual_memory()
    mine = psutil.Process().memory_info()
    available = vm.available
    limits: list[tuple[int, str]] = []
    cg = _cgroup.memory_limit(fs)
    if cg is not None and cg.limit_bytes < vm.total:  # a limit above the host's RAM never binds
        limits.append((cg.limit_bytes, cg.source))
        if cg.usage_bytes is not None:
            # Page cache is charged to the cgroup but reclaimed before an OOM kill (cgroup-v2.rst).
            available = min(available, cg.limit_bytes - (cg.usage_bytes - cg.inactive_file_bytes))
    headroom = rlimit_as_headroom(mine.vms)
    if headroom is not None and headroom < vm.total:
        limits.append((headroom, "RLIMIT_AS"))
        available = min(available, headroom)
    limit, source = min(limits) if limits else (None, None)
    effective = vm.total if limit is None else min(vm.total, limit)
    available = max(0, min(available, effective))
    return Ram(
        total_bytes=vm.total,
        available_bytes=available,
        limit_bytes=limit,
        limit_source=source,
        effective_bytes=effective,
        used_by_others_bytes=max(0, effective - available - mine.rss),
        swap_total_bytes=_swap_total(),
        top_processes=top_processes(_TOP_PROCESSES),
    )


def rlimit_as_headroom(current_vms: int) -> int | None:
    """What `ulimit -v` still lets this process map: the soft RLIMIT_AS minus its current virtual size."""
    try:
        import resource
    except ImportError:  # Windows
        return None
    soft, _hard = resource.getrlimit(resource.RLIMIT_AS)
    if soft == resource.RLIM_INFINITY or soft < 0:
        return None
    return max(0, soft - current_vms)


def _swap_total() -> int | None:
    import psutil

    try:
        return psutil.swap_memory().total
    except Exception:  # some containers hide /proc/swaps; swap is informative only
        return None


def top_processes(n: int) -> list[ProcessMemory]:
    """The n largest other processes by resident memory; unreadable ones are skipped."""
    import psutil

    me = os.getpid()
    rows = []
    # process_iter skips processes that vanish and fills AccessDenied attributes with None.
    for p in psutil.process_iter(["pid", "name", "memory_info"], ad_value=None):
        info = p.info
        if info["pid"] != me and info.get("memory_info") is not None:
            rows.append(ProcessMemory(pid=info["pid"], name=info.get("name"), memory_bytes=info["memory_info"].rss))
    return heapq.nlargest(n, rows, key=lambda r: r.memory_bytes or 0)


# ---- disks ----
def _disks(fs: _Sys, targets: list[tuple[str | Path, str]]) -> list[Disk]:
    """Free space, filesystem and disk kind where outputs and data go."""
    import psutil

    mounts = psutil.disk_partitions(all=True)  # all=True keeps overlay/nfs/tmpfs, which matter here
    disks = []
    for path, role in targets:
        wanted = Path(path).expanduser().absolute()
        here = next((p for p in (wanted, *wanted.parents) if p.exists()), Path(wanted.anchor))
        usage = psutil.disk_usage(str(here))
        real = os.path.realpath(here)
        # The filesystem holding a path is the mount with the longest mount point above it.
        above = [m for m in mounts if real == m.mountpoint or real.startswith(m.mountpoint.rstrip(os.sep) + os.sep)]
        fstype = max(above, key=lambda m: len(m.mountpoint)).fstype if above else None
        disks.append(Disk(path=str(wanted), role=role, free_bytes=usage.free, total_bytes=usage.total,
                          fstype=fstype or None, rotational=rotational(fs, os.stat(here).st_dev)))
    return disks


def rotational(fs: _Sys, st_dev: int) -> bool | None:
    """Whether the block device behind st_dev spins, from /sys; None when it cannot be told.

    Virtual disks report what the hypervisor chooses (virtio often says rotational on SSDs).
    """
    major, minor = os.major(st_dev), os.minor(st_dev)
    if major == 0:  # anonymous device: overlay, tmpfs, nfs, btrfs subvolumes, fuse
        return None
    node = fs.realpath(f"/sys/dev/block/{major}:{minor}")
    return _node_rotational(fs, node, depth=0) if node else None


def _node_rotational(fs: _Sys, node: str, depth: int) -> bool | None:
    if fs.exists(f"{node}/partition"):  # queue/ lives on the whole disk, not the partition
        node = str(Path(node).parent)
    slaves = fs.listdir(f"{node}/slaves")
    if slaves and depth < 4:  # device-mapper / md: ask the members; any spinning member makes it slow
        found = [_node_rotational(fs, fs.realpath(f"{node}/slaves/{s}") or "", depth + 1) for s in slaves]
        known = [v for v in found if v is not None]
        return any(known) if known else None
    return {"1": True, "0": False}.get((fs.read(f"{node}/queue/rotational") or "").strip())


# ---- temperatures ----
def _temperatures(unavailable: dict[str, str]) -> list[Sensor] | None:
    import psutil

    if not hasattr(psutil, "sensors_temperatures"):  # only Linux and FreeBSD have it
        unavailable["temperatures"] = f"psutil reads no temperature sensors on {platform.system()}"
        return None
    sensors = [
        Sensor(chip=chip, label=s.label or "", current_c=float(s.current),
               high_c=float(s.high) if s.high else None, critical_c=float(s.critical) if s.critical else None)
        for chip, entries in (psutil.sensors_temperatures() or {}).items()
        for s in entries
        if s.current is not None
    ]
    if not sensors:
        unavailable["temperatures"] = "no sensors exposed (VM or container)"
        return None
    return sensors


# ---- software and form factor ----
def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def torch_build() -> dict[str, str | None]:
    """torch.version.cuda and .hip, read from torch/version.py's text so torch is not imported."""
    try:
        spec = importlib.util.find_spec("torch")  # finds the package without executing it
    except (ImportError, ValueError):
        spec = None
    for folder in (spec.submodule_search_locations or []) if spec else []:
        try:
            text = (Path(folder) / "version.py").read_text(encoding="utf-8")
        except OSError:
            continue
        return {name: _assigned(text, name) for name in ("cuda", "hip")}
    return {"cuda": None, "hip": None}


def _assigned(text: str, name: str) -> str | None:
    """The string literal assigned to `name` in Python source (`cuda: Optional[str] = '12.4'`)."""
    m = re.search(rf"^{name}\s*(?::[^=\n]*)?=\s*(.+?)\s*$", text, re.MULTILINE)
    try:
        value = ast.literal_eval(m.group(1)) if m else None
    except (ValueError, SyntaxError):
        return None
    return value if isinstance(value, str) else None


def _software(fs: _Sys, driver: str | None) -> Software:
    build = torch_build()
    release = (fs.read("/proc/sys/kernel/osrelease") or platform.release()).lower()
    return Software(
        os=platform.platform(), python=platform.python_version(),
        torch=_version("torch"), cuda=build["cuda"], hip=build["hip"],
        transformers=_version("transformers"), accelerate=_version("accelerate"),
        nvidia_ml_py=_version("nvidia-ml-py"), pynvml_distribution=_version("pynvml"),
        nvidia_driver=driver, in_container=_cgroup.in_container(fs, os.environ), wsl="microsoft" in release,
    )


# SMBIOS chassis types (DMTF DSP0134 3.7, table 17), as /sys/class/dmi/id/chassis_type prints them.
_LAPTOP_CHASSIS = {8: "Portable", 9: "Laptop", 10: "Notebook", 14: "Sub Notebook", 31: "Convertible", 32: "Detachable"}
_OTHER_CHASSIS = {3: "Desktop", 4: "Low Profile Desktop", 5: "Pizza Box", 6: "Mini Tower", 7: "Tower",
                  13: "All in One", 15: "Space-saving", 16: "Lunch Box", 17: "Main Server Chassis",
                  23: "Rack Mount Chassis", 28: "Blade", 29: "Blade Enclosure", 35: "Mini PC", 36: "Stick PC"}


def _machine(fs: _Sys, unavailable: dict[str, str]) -> Machine:
    """Laptop or not, from a battery or the DMI chassis type."""
    if _has_battery(fs):
        return Machine(is_laptop=True, laptop_evidence="a system battery is present")
    text = (fs.read("/sys/class/dmi/id/chassis_type") or "").strip()
    kind = int(text) if text.isdigit() else None
    if kind in _LAPTOP_CHASSIS:
        return Machine(is_laptop=True, laptop_evidence=f"DMI chassis type {kind} ({_LAPTOP_CHASSIS[kind]})")
    if kind in _OTHER_CHASSIS:
        return Machine(is_laptop=False, laptop_evidence=f"DMI chassis type {kind} ({_OTHER_CHASSIS[kind]})")
    unavailable["machine"] = "no battery and no known DMI chassis type" + (f" (type {kind})" if kind else "")
    return Machine()


def _has_battery(fs: _Sys) -> bool:
    if fs.exists("/sys/class/power_supply"):
        # scope 'Device' marks a mouse or keyboard battery, not the machine's.
        return any((fs.read(f"/sys/class/power_supply/{n}/type") or "").strip() == "Battery"
                   and (fs.read(f"/sys/class/power_supply/{n}/scope") or "").strip() != "Device"
                   for n in fs.listdir("/sys/class/power_supply"))
    import psutil

    return getattr(psutil, "sensors_battery", lambda: None)() is not None


# ---- torch: Apple MPS, ROCm, and whether torch can use each GPU ----
def _wants_torch(use_torch: bool | None, hip_build: str | None) -> bool:
    if use_torch is not None:
        return use_torch
    apple_silicon = sys.platform == "darwin" and platform.machine() == "arm64"
    return "torch" in sys.modules or apple_silicon or hip_build is not None


def _with_torch(nvml_gpus: list[Gpu] | None, cpu: Cpu, unavailable: dict[str, str]) -> list[Gpu] | None:
    """NVML's GPUs marked usable or not by torch, plus MPS and ROCm devices only torch can see."""
    import torch

    gpus = list(nvml_gpus or [])
    cuda_count = torch.cuda.device_count() if torch.version.cuda else 0  # NVML-based: no CUDA context
    if gpus and torch.cuda.is_initialized():  # torch's own order costs nothing once CUDA is up
        gpus = reorder_by_uuids(gpus, [str(torch.cuda.get_device_properties(i).uuid) for i in range(cuda_count)])
    gpus = [g.model_copy(update={"torch_usable": g.index < cuda_count}) for g in gpus]
    if torch.version.hip and torch.cuda.is_available():
        # ROCm reuses torch.cuda; reading properties initialises HIP (there is no NVML to ask).
        for i in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(i)
            gpus.append(Gpu(index=i, name=props.name, backend="rocm", memory_total_bytes=props.total_memory,
                            torch_usable=True))
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        # Unified memory: the GPU's share is a ceiling inside RAM, never added to it.
        gpus.append(Gpu(index=0, name=f"{cpu.model or 'Apple'} GPU", backend="mps",
                        memory_total_bytes=int(torch.mps.recommended_max_memory()), torch_usable=True))
    if gpus and "gpus" in unavailable and not nvml_gpus:
        del unavailable["gpus"]  # e.g. 'no NVIDIA driver' on a Mac that has an MPS device
    return gpus if gpus or nvml_gpus is not None else None
