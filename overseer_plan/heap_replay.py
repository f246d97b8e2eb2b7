"""Real-allocator replay: the traced tensors allocated through this machine's glibc, for real.

Why. On CPU the peak RSS of a training step is set by glibc's heap, not by the live tensor
bytes: small long-lived blocks (TensorImpl, autograd nodes, Python objects) are carved out of
freed tensor holes, so the next step's tensors no longer fit them and the heap grows. Which
holes get pinned depends on the exact interleaving of hundreds of thousands of small calls,
which a tensor-level log cannot reproduce (bench/malloc_replay: replaying a real run's tensor
blocks alone gives 506 MiB where the run peaked at 1138 MiB; its whole malloc log, 1017-1049).

How. The traced dry run (trace.py) builds the same autograd graph on fake tensors, so its own
small allocations are the right kind and come in nearly the right order. Here, in a fresh
process that has imported torch and transformers like the training process, every traced
storage is `posix_memalign`ed (64-byte aligned, as c10's CPU allocator does) when the trace
creates it and freed when the trace releases it, and the heap's size (`mallinfo2`: arena +
mmapped bytes) is read after each allocation. The pages are never touched, so the replay costs
address space, not RAM. Its peak growth plus a calibrated constant (code pages, thread stacks,
pymalloc arenas: `CpuFactors.replay_constant_bytes`) predicts ru_maxrss growth.

The heap is chaotic: the same row replays 830-1050 MiB in different processes, as the real run
itself varies. `replay` therefore runs two processes side by side and keeps the larger,
since predicting too little is the error that crashes users.

Linux with glibc >= 2.33 only (mallinfo2); elsewhere `available()` is False and the caller
falls back to the tensor-level allocator model (`calibration.simulate_glibc`), as it does when
the environment sets OVERSEER_HEAP_REPLAY=0 (no subprocesses; the test suite does this except
where it tests the replay itself).
Run as ``python -m overseer_plan.heap_replay`` with a JSON job on stdin; prints one JSON line.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from transformers import PretrainedConfig

    from overseer_plan.estimate import EstimateConfig

_ALIGN = 64  # c10::alloc_cpu's posix_memalign alignment (c10/core/impl/alloc_cpu.cpp, gAlignment)
# Processes per estimate. The heap's peak varies up to ~12% between processes for the same row
# (bench/results/estimator_accuracy.md); the largest of several sits near the top of that spread.
# Two, run side by side, keep a traced estimate near 5 s on 2 cores (three took 9-10 s, over the
# 10 s budget). Deep models are traced at two reduced depths: one process each.
REPEATS = 2
_TIMEOUT_S = 600
ENV_SWITCH = "OVERSEER_HEAP_REPLAY"


class _Mallinfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]


@functools.cache
def _libc() -> Any:
    """glibc with the three calls used here, or None (musl, macOS, Windows, glibc < 2.33)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallinfo2.restype = _Mallinfo2
        libc.posix_memalign.argtypes = [ctypes.POINTER(ctypes.c_void_p), ctypes.c_size_t, ctypes.c_size_t]
        libc.free.argtypes = [ctypes.c_void_p]
    except (OSError, AttributeError):
        return None
    return libc


def available() -> bool:
    """Whether the replay runs here: Linux, glibc with mallinfo2, and not switched off by OVERSEER_HEAP_REPLAY=0."""
    if os.environ.get(ENV_SWITCH, "").strip().lower() in ("0", "off", "false", "no"):
        return False
    return _libc() is not None


class _RealHeap(list):
    """An event list (trace._AllocLog) that allocates each traced storage through glibc as it is logged."""

    def __init__(self, libc: Any) -> None:
        super().__init__()
        self._libc = libc
        self._ptrs: dict[int, int] = {}
        self.base = self.peak = self._heap()
        self.failed = False

    def _heap(self) -> int:
        info = self._libc.mallinfo2()
        return int(info.arena + info.hblkhd)

    def append(self, event: tuple[int, int, str]) -> None:
        super().append(event)
        key, nbytes, _ = event
        if nbytes > 0 and not self.failed:
            ptr = ctypes.c_void_p()
            if self._libc.posix_memalign(ctypes.byref(ptr), _ALIGN, nbytes) != 0:
                # Out of address space (a huge shape, or an RLIMIT_AS): give up the replay, keep tracing.
                self.failed = True
                self.release()
                return
            self._ptrs[key] = ptr.value
            self.peak = max(self.peak, self._heap())
        elif nbytes < 0:
            ptr = self._ptrs.pop(key, None)
            if ptr:
                self._libc.free(ptr)

    def release(self) -> None:
        for ptr in self._ptrs.values():
            self._libc.free(ptr)
        self._ptrs.clear()

    @property
    def growth_bytes(self) -> int | None:
        return None if self.failed else self.peak - self.base


def run_job(job: dict[str, Any]) -> dict[str, Any]:
    """Trace one depth with the real heap replay, in *this* process (call it only in a fresh one)."""
    import resource

    import transformers

    from overseer_plan.calibration import heap_churn, simulate_glibc
    from overseer_plan.estimate import EstimateConfig
    from overseer_plan.trace import trace_peak

    libc = _libc()
    if libc is None:
        raise RuntimeError("heap replay needs Linux with glibc >= 2.33 (mallinfo2)")
    data = dict(job["config"])
    config = transformers.CONFIG_MAPPING[data["model_type"]].from_dict(data)
    cfg = EstimateConfig.model_validate(job["settings"])
    heaps: list[_RealHeap] = []

    def sink() -> _RealHeap:
        heaps.append(_RealHeap(libc))
        return heaps[-1]

    t0 = time.perf_counter()
    maxrss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    tr = trace_peak(config, cfg, device="cpu", depths=[int(job["depth"])], events=sink)
    run = tr.runs[0]
    heaps[0].release()
    return {
        "depth": run.num_layers, "live": run.live_peak_bytes, "phase": run.peak_phase, "parts": run.breakdown,
        "phases": run.phases,
        "sim_peak": simulate_glibc(run.events), "churn": heap_churn(run.events),
        "growth": heaps[0].growth_bytes, "wall_s": time.perf_counter() - t0,
        # What the trace and the replay cost in RAM (Linux reports ru_maxrss in KiB).
        "maxrss_growth": (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - maxrss0) * 1024,
    }


def replay(config: PretrainedConfig, cfg: EstimateConfig, depths: list[int], *,
           repeats: int | None = None) -> list[list[dict[str, Any]]] | None:
    """Run `run_job` for each depth, `repeats` fresh processes each (in parallel, one per core).

    `repeats` defaults to `REPEATS` for one depth and 1 per depth for two.

    Returns, per depth, the runs' results; None when the replay is unavailable or any process
    failed (the caller then uses the tensor-level allocator model).
    """
    if not available():
        return None

    def one(depth: int) -> dict[str, Any] | None:
        return run_job_in_subprocess(config, cfg, depth=depth)

    if repeats is None:
        repeats = REPEATS if len(depths) == 1 else 1
    work = [d for d in depths for _ in range(repeats)]
    with ThreadPoolExecutor(max_workers=max(1, min(len(work), os.cpu_count() or 1))) as pool:
        results = list(pool.map(one, work))
    if any(r is None for r in results):
        return None
    return [[r for r in results if r["depth"] == d] for d in depths]


def run_job_in_subprocess(config: PretrainedConfig, cfg: EstimateConfig, *, depth: int) -> dict[str, Any] | None:
    """`run_job` in a fresh process: its result, or None when the process failed or the replay gave up."""
    env = dict(os.environ)
    # Perturbing freed memory would touch every page (and make the replay cost real RAM).
    env.pop("MALLOC_PERTURB_", None)
    job = {"config": config.to_dict(), "settings": cfg.model_dump(mode="json"), "depth": depth}
    try:
        out = subprocess.run([sys.executable, "-m", "overseer_plan.heap_replay"], input=json.dumps(job),
                             capture_output=True, text=True, env=env, timeout=_TIMEOUT_S, check=False)
        got = json.loads(out.stdout.strip().splitlines()[-1]) if out.returncode == 0 else None
    except (OSError, subprocess.TimeoutExpired, ValueError, IndexError):
        return None
    return got if isinstance(got, dict) and got.get("growth") is not None else None


def main() -> None:
    import transformers

    transformers.logging.set_verbosity_error()
    print(json.dumps(run_job(json.loads(sys.stdin.read()))))


if __name__ == "__main__":
    main()
