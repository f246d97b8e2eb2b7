"""NVIDIA GPUs through NVML (`import pynvml`, shipped by nvidia-ml-py), in torch's device order.

NVML knows nothing of CUDA_VISIBLE_DEVICES and numbers devices by PCI bus, so we apply the
variable ourselves (ints, 'GPU-…'/'MIG-…' UUID prefixes, order kept, parsing stops at the first
bad entry as CUDA does) and give each device the index torch will use. MIG instances are devices
of their own and are read through their MIG handles: the parent handle's memory is an aggregate
that needs privileges. Failure handling follows dask/distributed's diagnostics/nvml.py: no driver
is a normal machine (gpus = []), an unsupported metric is None, and one failing device never
loses the others.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from overseer_plan.hardware import Gpu, ProcessMemory

# nvmlInit raises these on a machine without a usable NVIDIA driver (dask catches the same three).
_NO_DRIVER = ("NVMLError_LibraryNotFound", "NVMLError_DriverNotLoaded", "NVMLError_Unknown")


@dataclass
class NvmlResult:
    gpus: list[Gpu] | None
    """Visible NVIDIA devices; [] with no driver, None when NVML could not tell."""
    driver: str | None = None
    """Driver version string, e.g. '535.183.01'."""
    reasons: dict[str, str] = field(default_factory=dict)
    """Keys for Hardware.unavailable -> why."""


@dataclass
class _Device:
    nvml_index: int
    """Index of the physical board in NVML (PCI) order."""
    handle: Any
    """NVML handle to query (a MIG handle for MIG instances)."""
    uuid: str | None
    """'GPU-…' or 'MIG-…'."""
    board_uuid: str | None = None
    """UUID of the physical board ('GPU-…'); the device's own for a whole GPU."""
    parent: Any = None
    """The physical board's handle for a MIG instance (temperature and capability live there)."""


def _text(value: Any) -> str | None:
    """Old bindings return bytes for names and UUIDs, current ones str."""
    if value is None:
        return None
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


class _Nvml:
    """Calls into the pynvml module that return None (with a reason) instead of raising."""

    def __init__(self, module: Any):
        self.m = module
        mismatch = getattr(module, "NVMLLibraryMismatchError", None)
        self.errors = tuple(e for e in (getattr(module, "NVMLError", None), mismatch) if e is not None)

    def get(self, reasons: dict[str, str] | None, key: str, fn: str, *args: Any, **kwargs: Any) -> Any:
        """module.fn(*args); on an NVML error None, and the reason under `key` unless reasons is None."""
        call = getattr(self.m, fn, None)
        if call is None:
            if reasons is not None:
                reasons[key] = f"{fn} is missing from this nvidia-ml-py"
            return None
        try:
            return call(*args, **kwargs)
        except self.errors as e:
            if reasons is not None:
                reasons[key] = f"NVML {fn}: {e or type(e).__name__}"
            return None


def probe_nvml(module: Any = None, env: Mapping[str, str] | None = None) -> NvmlResult:
    """Visible NVIDIA GPUs in torch order. Never raises.

    Args:
        module: the pynvml module (tests pass a fake); imported when None.
        env: environment for CUDA_VISIBLE_DEVICES / CUDA_DEVICE_ORDER; os.environ when None.
    """
    env = os.environ if env is None else env
    if module is None:
        try:
            import pynvml as module
        except ImportError:
            return NvmlResult(None, reasons={"gpus": "nvidia-ml-py is not installed (pip install nvidia-ml-py)"})
    no_driver = tuple(c for c in (getattr(module, n, None) for n in _NO_DRIVER) if isinstance(c, type))
    try:
        module.nvmlInit()
    except no_driver as e:
        return NvmlResult([], reasons={"gpus": f"no NVIDIA driver (NVML: {e or type(e).__name__})"})
    except Exception as e:  # any other init failure: we cannot tell whether GPUs exist
        return NvmlResult(None, reasons={"gpus": f"NVML init failed: {type(e).__name__}: {e}"})
    try:
        return _enumerate(_Nvml(module), env)
    finally:
        try:
            module.nvmlShutdown()
        except Exception:
            pass  # shutting down is best effort; the answer is already read


def _enumerate(nv: _Nvml, env: Mapping[str, str]) -> NvmlResult:
    reasons: dict[str, str] = {}
    driver = _text(nv.get(reasons, "software.nvidia_driver", "nvmlSystemGetDriverVersion"))
    count = nv.get(reasons, "gpus", "nvmlDeviceGetCount")
    if count is None:
        return NvmlResult(None, driver, reasons)
    boards = [_board(nv, i, reasons) for i in range(count)]
    visible = select_visible([b for b in boards if b], env.get("CUDA_VISIBLE_DEVICES"), reasons)
    gpus: list[Gpu] = []
    for index, dev in enumerate(visible):
        try:
            gpu = _read(nv, dev, index, reasons)
        except Exception as e:  # a driver hiccup on one device must not lose the others
            reasons[f"gpus[{index}]"] = f"left out: {type(e).__name__}: {e}"
            gpu = None
        if gpu is not None:
            gpus.append(gpu)
    _note_order(gpus, env, reasons)
    return NvmlResult(gpus, driver, reasons)


def _board(nv: _Nvml, i: int, reasons: dict[str, str]) -> list[_Device] | None:
    """The devices CUDA sees on NVML board i: the board itself, or its MIG instances."""
    h = nv.get(reasons, f"gpus.nvml{i}", "nvmlDeviceGetHandleByIndex", i)
    if h is None:
        return None
    board_uuid = _text(nv.get(reasons, f"gpus.nvml{i}.uuid", "nvmlDeviceGetUUID", h))
    mode = nv.get(None, "", "nvmlDeviceGetMigMode", h)  # NotSupported on boards without MIG
    if not mode or mode[0] != getattr(nv.m, "NVML_DEVICE_MIG_ENABLE", 1):
        return [_Device(i, h, board_uuid, board_uuid)]
    devices = []
    for j in range(nv.get(reasons, f"gpus.nvml{i}.mig", "nvmlDeviceGetMaxMigDeviceCount", h) or 0):
        mh = nv.get(None, "", "nvmlDeviceGetMigDeviceHandleByIndex", h, j)  # NotFound = empty slot
        if mh is not None:
            uuid = _text(nv.get(reasons, f"gpus.nvml{i}.mig{j}.uuid", "nvmlDeviceGetUUID", mh))
            devices.append(_Device(i, mh, uuid, board_uuid, parent=h))
    return devices


def select_visible(boards: list[list[_Device]], cvd: str | None, reasons: dict[str, str]) -> list[_Device]:
    """Apply CUDA_VISIBLE_DEVICES as CUDA does: ints index boards, UUID prefixes pick devices, order kept."""
    if cvd is None:
        return [d for b in boards for d in b]
    if not cvd.strip():
        reasons["gpus"] = "CUDA_VISIBLE_DEVICES is set to an empty string: no GPU is visible"
        return []
    chosen: list[_Device] = []
    for token in (t.strip() for t in cvd.split(",")):
        picked = _pick(boards, token)
        if not picked or any(d in chosen for d in picked):
            # CUDA stops at the first invalid or repeated entry and ignores the rest.
            reasons["gpus.cuda_visible_devices"] = f"entry {token!r} matches no device; CUDA ignores it and all after it"
            break
        chosen.extend(picked)
    return chosen


def _pick(boards: list[list[_Device]], token: str) -> list[_Device]:
    """The devices one CUDA_VISIBLE_DEVICES entry names; [] when it names none or is ambiguous."""
    kind = token[:4].upper()
    if kind in ("GPU-", "MIG-"):
        attr = "board_uuid" if kind == "GPU-" else "uuid"
        hits = [d for b in boards for d in b if (getattr(d, attr) or "").lower().startswith(token.lower())]
        # A UUID prefix must name one board ('GPU-') or one instance ('MIG-'); CUDA rejects ambiguity.
        one = len({d.nvml_index for d in hits}) == 1 and (kind == "GPU-" or len(hits) == 1)
        return hits if one else []
    try:
        n = int(token)
    except ValueError:
        return []
    by_index = {b[0].nvml_index: b for b in boards if b}
    return list(by_index.get(n, [])) if n >= 0 else []


def _read(nv: _Nvml, dev: _Device, index: int, reasons: dict[str, str]) -> Gpu | None:
    """One Gpu; None (reason recorded) when its name or memory cannot be read."""
    local: dict[str, str] = {}
    gpu = _fields(nv, dev, index, local)
    reasons.update({f"gpus[{index}].{k}": v for k, v in local.items()})
    if gpu is None:
        reasons[f"gpus[{index}]"] = "left out: its name or memory could not be read"
    return gpu


def _fields(nv: _Nvml, dev: _Device, index: int, local: dict[str, str]) -> Gpu | None:
    name = _text(nv.get(local, "name", "nvmlDeviceGetName", dev.handle))
    memory = _memory(nv, dev.handle, local)
    if name is None or memory is None:
        return None
    board = dev.parent if dev.parent is not None else dev.handle
    cc = nv.get(local, "compute_capability", "nvmlDeviceGetCudaComputeCapability", board)
    util = nv.get(local, "utilization_percent", "nvmlDeviceGetUtilizationRates", dev.handle)
    slowdown = nv.get(local, "temperature_slowdown_c", "nvmlDeviceGetTemperatureThreshold", board,
                      getattr(nv.m, "NVML_TEMPERATURE_THRESHOLD_SLOWDOWN", 1))
    return Gpu(
        index=index, name=name, uuid=dev.uuid, backend="cuda",
        memory_total_bytes=memory[0], memory_free_bytes=memory[1], memory_reserved_bytes=memory[2],
        temperature_c=_temperature(nv, board, local),
        temperature_slowdown_c=None if slowdown is None else float(slowdown),
        utilization_percent=None if util is None else float(util.gpu),
        compute_capability=None if cc is None else f"{cc[0]}.{cc[1]}",
        is_mig=dev.parent is not None,
        processes=_processes(nv, dev.handle, local),
    )


def _memory(nv: _Nvml, h: Any, local: dict[str, str]) -> tuple[int, int | None, int | None] | None:
    """(total, free, reserved): the v2 struct reports driver-reserved memory; v1 where it is missing."""
    v2 = getattr(nv.m, "nvmlMemory_v2", None)
    if v2 is not None:
        try:
            m = nv.m.nvmlDeviceGetMemoryInfo(h, version=v2)
            return int(m.total), int(m.free), int(m.reserved)
        except (TypeError, *nv.errors):  # bindings without `version`, or a driver older than R510
            pass
    m = nv.get(local, "memory", "nvmlDeviceGetMemoryInfo", h)
    return None if m is None else (int(m.total), int(m.free), None)


def _temperature(nv: _Nvml, h: Any, local: dict[str, str]) -> float | None:
    """nvmlDeviceGetTemperatureV where the driver has it; the deprecated call (gone in CUDA 14) before."""
    sensor = getattr(nv.m, "NVML_TEMPERATURE_GPU", 0)
    tried: dict[str, str] = {}
    t = nv.get(tried, "new", "nvmlDeviceGetTemperatureV", h, sensor)
    if t is None:
        t = nv.get(tried, "old", "nvmlDeviceGetTemperature", h, sensor)
    if t is None:  # report the current API's failure unless these bindings lack it
        local["temperature_c"] = tried["new"] if hasattr(nv.m, "nvmlDeviceGetTemperatureV") else tried["old"]
    return None if t is None else float(t)


def _processes(nv: _Nvml, h: Any, local: dict[str, str]) -> list[ProcessMemory]:
    """Other compute processes on the device; PIDs are host PIDs, so names may be unreadable in a container."""
    found = nv.get(local, "processes", "nvmlDeviceGetComputeRunningProcesses", h) or []
    out = []
    for p in found:
        if p.pid == os.getpid():
            continue
        used = getattr(p, "usedGpuMemory", None)  # None under WDDM and without permission
        out.append(ProcessMemory(pid=p.pid, name=_process_name(p.pid), memory_bytes=None if used is None else int(used)))
    return sorted(out, key=lambda p: -(p.memory_bytes or 0))


def _process_name(pid: int) -> str | None:
    try:
        import psutil

        return psutil.Process(pid).name()
    except Exception:  # gone, not ours, or a host PID invisible from this container
        return None


def _note_order(gpus: list[Gpu], env: Mapping[str, str], reasons: dict[str, str]) -> None:
    """Say where our indices may disagree with CUDA's, rather than guess."""
    if len({g.name for g in gpus if not g.is_mig}) > 1 and env.get("CUDA_DEVICE_ORDER") != "PCI_BUS_ID":
        reasons["gpus.order"] = ("mixed GPU models: CUDA numbers the fastest first, these indices follow PCI order; "
                                 "set CUDA_DEVICE_ORDER=PCI_BUS_ID to make them agree")
    if sum(g.is_mig for g in gpus) > 1:
        reasons["gpus.mig"] = ("one CUDA process uses one MIG instance; run one process per instance "
                               "with CUDA_VISIBLE_DEVICES=MIG-…")


def reorder_by_uuids(gpus: list[Gpu], torch_uuids: list[str]) -> list[Gpu]:
    """Put `gpus` in torch's order given torch's device UUIDs (with or without the 'GPU-' prefix).

    Used only when CUDA is already initialised in this process, so reading the order costs nothing;
    unchanged when the two lists do not describe the same devices.
    """
    def bare(u: str | None) -> str:
        u = (u or "").lower()
        return u[4:] if u.startswith(("gpu-", "mig-")) else u

    by_uuid = {bare(g.uuid): g for g in gpus}
    wanted = [bare(u) for u in torch_uuids]
    if len(wanted) != len(gpus) or set(wanted) != set(by_uuid):
        return gpus
    return [by_uuid[u].model_copy(update={"index": i}) for i, u in enumerate(wanted)]
