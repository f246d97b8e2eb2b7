"""A background thread that samples memory, CPU and temperatures and raises a flag under pressure.

Every `interval_s` it appends one line to monitor.jsonl. When RAM (percent of the memory this
process may really use: the cgroup limit inside a container, else total RAM) or GPU memory crosses
the mode's threshold it records 'high' pressure; above threshold + half the remaining gap it records
'critical'. The training loop polls the flag at each optimizer-step boundary and steps down a rung
(and, when critical, writes an emergency checkpoint) before the allocator or the kernel's OOM killer
fails. The thread only reads counters (/proc, cgroup files, CUDA's mem_get_info), so it costs well
under 1% of a training step (bench/monitor_overhead.py measures it).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil

Level = str  # 'ok' | 'high' | 'critical'
_RANK = {"ok": 0, "high": 1, "critical": 2}
HOT_DEFAULT_C = 90.0
"""Temperature warning when a sensor reports no 'high' threshold of its own."""


_CGROUP_LIMITED: list[bool] = []  # resolved once: walking the cgroup tree costs ~2 ms, /proc/meminfo 0.2 ms


def read_ram() -> dict[str, int]:
    """System RAM in use and the effective total (container-aware), plus this process's RSS."""
    vm = psutil.virtual_memory()
    total, used = int(vm.total), int(vm.total - vm.available)
    cg = None
    if not _CGROUP_LIMITED or _CGROUP_LIMITED[0]:
        try:
            from overseer_plan._cgroup import _Sys, memory_limit

            cg = memory_limit(_Sys())
        except Exception:  # unreadable cgroup files must never stop training
            cg = None
        if not _CGROUP_LIMITED:
            _CGROUP_LIMITED.append(cg is not None)
    if cg is not None and cg.limit_bytes < total:
        total = cg.limit_bytes
        if cg.usage_bytes is not None:  # page cache the kernel can drop is not pressure
            used = cg.usage_bytes - cg.inactive_file_bytes
    return {"ram_total_bytes": total, "ram_used_bytes": used, "rss_bytes": int(psutil.Process().memory_info().rss)}


def read_gpu() -> dict[str, int]:
    """Device memory in use (all processes) and torch's own reserved/allocated bytes; {} without CUDA."""
    import torch

    # is_initialized() first: it is a flag read, while is_available() may probe the driver (~100 ms).
    if not torch.cuda.is_initialized():
        return {}
    free, total = torch.cuda.mem_get_info()
    return {"gpu_total_bytes": int(total), "gpu_used_bytes": int(total - free),
            "gpu_reserved_bytes": int(torch.cuda.memory_reserved()),
            "gpu_allocated_bytes": int(torch.cuda.memory_allocated())}


def read_temperatures() -> list[dict[str, Any]]:
    """Sensors that are at or above their 'high' mark (or 90 °C when they have none)."""
    try:
        sensors = psutil.sensors_temperatures()
    except (AttributeError, OSError):
        return []
    hot = []
    for chip, entries in (sensors or {}).items():
        for e in entries:
            limit = e.high or HOT_DEFAULT_C
            if e.current and e.current >= limit:
                hot.append({"chip": chip, "label": e.label, "current_c": e.current, "limit_c": limit})
    return hot


class ResourceMonitor:
    """Samples resources every `interval_s` seconds in a daemon thread. Start with start(), end with stop()."""

    def __init__(self, *, interval_s: float, ram_percent: float, gpu_percent: float, path: Path | None,
                 on_event: Callable[[str, dict[str, Any]], None] | None = None,
                 read: Callable[[], dict[str, Any]] | None = None):
        self.interval_s, self.ram_percent, self.gpu_percent = interval_s, ram_percent, gpu_percent
        self.path, self.on_event = path, on_event or (lambda kind, data: None)
        self._read = read or (lambda: {**read_ram(), **read_gpu()})
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._pending: tuple[Level, dict[str, Any]] | None = None
        self._level: Level = "ok"
        self._hot: set[str] = set()
        self.last: dict[str, Any] = {}
        self.peak: dict[str, float] = {}
        self.samples = 0
        self.failure: str | None = None
        """Why the thread stopped early (None while it runs or after a clean stop); the loop reports it."""

    def start(self) -> None:
        psutil.cpu_percent(None)  # prime: the first call compares against this moment
        self.sample()
        self._thread = threading.Thread(target=self._run, name="overseer-monitor", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _run(self) -> None:
        try:
            # Event.wait raises OverflowError above threading.TIMEOUT_MAX (e.g. an interval of .inf).
            wait_s = min(self.interval_s, threading.TIMEOUT_MAX)
            while not self._stop.wait(wait_s):
                try:
                    self.sample()
                except Exception as e:  # a failed reading is logged, never fatal
                    self.on_event("monitor_error", {"error": f"{type(e).__name__}: {e}"})
        except Exception as e:  # a dead monitor must be visible: training goes on without pressure checks
            self.failure = f"{type(e).__name__}: {e}"
            self.on_event("monitor_stopped", {"error": self.failure})

    def sample(self) -> dict[str, Any]:
        """Take one sample now: record it, update peaks, raise the pressure flag if needed."""
        s = {"time": time.time(), **self._read(), "cpu_percent": psutil.cpu_percent(None)}
        s["ram_percent"] = round(100.0 * s["ram_used_bytes"] / s["ram_total_bytes"], 2)
        if s.get("gpu_total_bytes"):
            s["gpu_percent"] = round(100.0 * s["gpu_used_bytes"] / s["gpu_total_bytes"], 2)
        if self.samples % 10 == 0:  # sensors are slower to read; temperatures change slowly
            self._check_temperatures(read_temperatures())
        with self._lock:
            self.last = s
            self.samples += 1
            for key in ("ram_percent", "gpu_percent", "rss_bytes", "gpu_reserved_bytes"):
                if key in s:
                    self.peak[key] = max(self.peak.get(key, 0.0), s[key])
            self._check_pressure(s)
        if self.path is not None:
            with open(self.path, "a", encoding="utf-8") as fh:
                fh.write(json.dumps(s) + "\n")
        return s

    def _check_pressure(self, s: dict[str, Any]) -> None:
        level, why = "ok", {}
        for kind, limit in (("ram", self.ram_percent), ("gpu", self.gpu_percent)):
            pct = s.get(f"{kind}_percent")
            if pct is None or pct < limit:
                continue
            critical_at = limit + (100.0 - limit) / 2  # half of the remaining gap
            this = "critical" if pct >= critical_at else "high"
            if _RANK[this] > _RANK[level]:
                level, why = this, {"resource": kind, "percent": pct, "threshold_percent": limit,
                                    "critical_percent": round(critical_at, 2)}
        if level != self._level:  # log crossings, not every sample above the line
            self.on_event("threshold_crossed", {"from": self._level, "to": level, **why,
                                                "ram_percent": s["ram_percent"], "rss_bytes": s["rss_bytes"]})
            self._level = level
        if level != "ok" and (self._pending is None or _RANK[level] > _RANK[self._pending[0]]):
            self._pending = (level, why)

    def _check_temperatures(self, hot: list[dict[str, Any]]) -> None:
        now = {f"{h['chip']}/{h['label']}" for h in hot}
        for h in hot:
            if f"{h['chip']}/{h['label']}" not in self._hot:
                self.on_event("temperature_warning", h)
        self._hot = now

    def poll(self) -> tuple[Level, dict[str, Any]] | None:
        """The worst pressure since the last poll (and clear it); None when there was none."""
        with self._lock:
            pending, self._pending = self._pending, None
        return pending

    def reset_peak(self) -> None:
        with self._lock:
            self.peak = {k: self.last[k] for k in self.peak if k in self.last}

    def headroom_ok(self, factor: float) -> bool:
        """True when the measured peak, grown by `factor` for the part training adds, stays under every threshold."""
        with self._lock:
            peak, last = dict(self.peak), dict(self.last)
        if not last:
            return False
        for kind, limit in (("ram", self.ram_percent), ("gpu", self.gpu_percent)):
            if f"{kind}_percent" in peak and peak[f"{kind}_percent"] * factor >= limit:
                return False
        return True
