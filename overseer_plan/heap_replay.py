"""Real-allocator replay: the traced tensors allocated through this machine's glibc, for real.

Why. On CPU the peak RSS of a training step is set by glibc's heap, not by the live tensor
bytes: small long-lived blocks (TensorImpl, autograd nodes, Python objects) are carved out of
freed tensor holes, so the next step's tensors no longer fit them and the heap grows. Which
holes get pinned depends on the exact interleaving of hundreds of thousands of small calls,
which a tensor-level log cannot reproduce (bench/malloc_replay: replaying a real run's tensor
blocks alone gives 506 MiB where the run peaked at 1138 MiB; its whole malloc log, 1017-1049).

How. The traced dry run (trace.py) builds the same autograd graph on fake tensors, so its own
long-lived small allocations are the right kind and come in nearly the right order. Its
short-lived ones are not: FakeTensorMode boxes every op through Python, which mallocs about ten
times a real step's short-lived tiny blocks. They keep glibc's tcache stocked, so the trace's
long-lived blocks pin fewer tensor holes, and the replayed heap comes out 7-14% under a real
step's (bench/malloc_replay/transients.py; BENCHMARKS.md §2, nineteenth pass). The calibrated
constant below absorbs the average of that, not its row-to-row variation. Here, in a fresh
process that has imported torch and transformers like the training process, every traced
storage is `posix_memalign`ed (64-byte aligned, as c10's CPU allocator does) when the trace
creates it and freed when the trace releases it, and the heap's size (`mallinfo2`: arena +
mmapped bytes) is read after each allocation. The pages are never touched, so the replay costs
address space, not RAM. Its peak growth plus a calibrated constant (`CpuFactors.replay_constant_bytes`)
predicts ru_maxrss growth. Of that constant's 117 MiB, 81-91 are measured outside the heap: code pages,
thread stacks and pymalloc arenas (bench/malloc_replay/nonheap.py). The rest is the deficit above.

The heap is chaotic: the same row replays 830-1050 MiB in different processes, as the real run
itself varies. `replay` therefore runs two processes side by side and keeps the larger,
since predicting too little is the error that crashes users. A deep model is replayed at its
deeper reduced depth that way too; its shallower one runs as a fork of the first process, which
imports once (`_forked`).

Speed. Importing torch, transformers' modelling stack and torch._dynamo costs a replay process
~5 s of CPU on a 2-core machine, more than its trace. `Workers` starts the processes when a
traced CPU estimate begins, so they import while the caller resolves the model; they import
before reading their job (`warm_up`) and count the heap that took as growth, as if it had been
imported inside the trace, where a fresh process would import it.

Linux with glibc >= 2.33 only (mallinfo2); elsewhere `available()` is False and the caller
falls back to the tensor-level allocator model (`calibration.simulate_glibc`), as it does when
the environment sets OVERSEER_HEAP_REPLAY=0 (no subprocesses; the test suite does this except
where it tests the replay itself).
Run as ``python -m overseer_plan.heap_replay``: a JSON ``{"jobs": [...]}`` on stdin (one job, or
one per depth to run as forks); prints one JSON line, a list of results.
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
# Two, run side by side, keep a traced estimate near 5 s on a fast 2-core machine and under 10 s on a
# slow one (three took 9-10 s on the fast one). A deep model's two reduced depths: the first
# process forks one per depth, the others repeat the deeper one.
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
        return _heap_now(self._libc)

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


def warm_up() -> int:
    """Import what a trace imports on first use, before the job arrives; the heap bytes that took.

    A trace's first `FakeTensorMode()` and `from_config` import torch._dynamo and transformers'
    modelling stack: ~3 s on a 2-core machine, which a worker started early (`Workers`) spends
    while its parent resolves the model. Those imports come before the first tensor in the trace
    as they do in a training process, so moving them before the replay's baseline changes nothing
    but where the heap is read; their heap bytes are added back to the growth (`run_job`).
    """
    # What a trace has imported before its replay's baseline anyway (trace._run): not counted.
    import torch
    import torch._subclasses.fake_tensor  # noqa: F401

    import overseer_plan.calibration  # noqa: F401
    import overseer_plan.estimate  # noqa: F401
    import overseer_plan.trace  # noqa: F401

    libc = _libc()
    before = _heap_now(libc)
    import torch._dynamo  # noqa: F401  (the first FakeTensorMode() imports it)
    import transformers.modeling_utils  # noqa: F401  (the first from_config)

    del torch
    return _heap_now(libc) - before


def _heap_now(libc: Any) -> int:
    if libc is None:
        return 0
    info = libc.mallinfo2()
    return int(info.arena + info.hblkhd)


def run_job(job: dict[str, Any], *, warmed_heap_bytes: int = 0) -> dict[str, Any]:
    """Trace one depth with the real heap replay, in *this* process (call it only in a fresh one).

    `warmed_heap_bytes`: heap the process's `warm_up` took before the job; it counts as growth.
    """
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
    growth = heaps[0].growth_bytes
    return {
        "depth": run.num_layers, "live": run.live_peak_bytes, "phase": run.peak_phase, "parts": run.breakdown,
        "phases": run.phases,
        "sim_peak": simulate_glibc(run.events), "churn": heap_churn(run.events),
        "growth": None if growth is None else growth + warmed_heap_bytes, "wall_s": time.perf_counter() - t0,
        # What the trace and the replay cost in RAM (Linux reports ru_maxrss in KiB).
        "maxrss_growth": (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - maxrss0) * 1024,
    }


class Workers:
    """Replay processes started ahead of their jobs.

    Each imports torch, transformers and what a trace needs (`warm_up`, ~5 s of CPU on a 2-core
    machine) while the caller is still resolving the model and building its census, then waits
    for its job on stdin. `estimate()` starts `REPEATS` as soon as it knows a traced CPU estimate
    is wanted, and kills whatever it did not use, e.g. on a cache hit.
    """

    def __init__(self, count: int = 0) -> None:
        """Start `count` processes (none where the replay is unavailable)."""
        self._procs: list[subprocess.Popen[str]] = []
        while len(self._procs) < count and available():
            proc = _start()
            if proc is None:
                break
            self._procs.append(proc)

    def take(self) -> subprocess.Popen[str] | None:
        """A started process, or None when none is left."""
        return self._procs.pop(0) if self._procs else None

    def close(self) -> None:
        """Stop the processes nobody took."""
        while self._procs:
            _stop(self._procs.pop())

    def __enter__(self) -> Workers:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _start() -> subprocess.Popen[str] | None:
    env = dict(os.environ)
    # Perturbing freed memory would touch every page (and make the replay cost real RAM).
    env.pop("MALLOC_PERTURB_", None)
    try:
        return subprocess.Popen([sys.executable, "-m", "overseer_plan.heap_replay"], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    except OSError:
        return None


def _stop(proc: subprocess.Popen[str]) -> None:
    proc.kill()
    try:
        proc.communicate(timeout=30)
    except (OSError, ValueError, subprocess.TimeoutExpired):
        pass


def _finish(proc: subprocess.Popen[str], jobs: list[dict[str, Any]]) -> list[dict[str, Any]] | None:
    """Send `jobs` to a started process; one result per job, or None when any failed or gave up."""
    try:
        out, _ = proc.communicate(json.dumps({"jobs": jobs}), timeout=_TIMEOUT_S)
        got = json.loads(out.strip().splitlines()[-1]) if proc.returncode == 0 else None
    except (OSError, ValueError, IndexError, subprocess.TimeoutExpired):
        _stop(proc)
        return None
    if not isinstance(got, list) or len(got) != len(jobs):
        return None
    return got if all(isinstance(r, dict) and r.get("growth") is not None for r in got) else None


def replay(config: PretrainedConfig, cfg: EstimateConfig, depths: list[int], *,
           repeats: int | None = None, workers: Workers | None = None) -> list[list[dict[str, Any]]] | None:
    """Run `run_job` for the deepest depth in `repeats` fresh processes (default `REPEATS`, in
    parallel, one per core), and for a shallower one once, as a fork of the first process.

    The deepest depth's heap is the one a deep model's estimate scales to full depth
    (`calibration.replay_at_full_depth`), so it gets the same independent draws, the largest
    kept, as a model traced whole and the calibration points; a shallower depth gives only the
    tensor-level model's inputs, which do not vary. `workers`: processes already started
    (`Workers`), used before any new one is started.

    Returns, per depth, the runs' results; None when the replay is unavailable or any process
    failed (the caller then uses the tensor-level allocator model).
    """
    if not available():
        return None
    batches = [list(depths)] + [[depths[-1]] for _ in range((REPEATS if repeats is None else repeats) - 1)]

    def one(batch: list[int]) -> list[dict[str, Any]] | None:
        proc = (workers.take() if workers is not None else None) or _start()
        return None if proc is None else _finish(proc, [_job(config, cfg, d) for d in batch])

    with ThreadPoolExecutor(max_workers=max(1, min(len(batches), os.cpu_count() or 1))) as pool:
        got = list(pool.map(one, batches))
    if any(r is None for r in got):
        return None
    results = [r for batch in got for r in batch or []]
    return [[r for r in results if r["depth"] == d] for d in depths]


def _job(config: PretrainedConfig, cfg: EstimateConfig, depth: int) -> dict[str, Any]:
    return {"config": config.to_dict(), "settings": cfg.model_dump(mode="json"), "depth": depth}


def _forked(jobs: list[dict[str, Any]], warmed: int) -> list[dict[str, Any] | None]:
    """Every job but the last in its own fork of this process, the last in this process, side by side.

    A fork starts from the heap this process's imports left, as a fresh process would after the
    same imports, without paying for them again (~5 s of CPU each on 2 cores). Forks share the
    parent's address layout and hash seed, so they are not independent draws of the heap's chaos:
    right for a deep model's two depths, not for repeats of one (`replay` repeats in processes).
    The last job runs here rather than in one more fork: the heap it starts from is the same, and
    the tree holds one process fewer (a fork's trace dirties ~50 MiB; a traced estimate of a deep
    model peaked at 960 MiB of PSS over its 5 processes, BENCHMARKS.md §2, twenty-fourth pass).
    """
    children = []
    for job in jobs[:-1]:  # all forked before this process's own job touches the heap
        read_fd, write_fd = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: trace, write the result, leave without running the parent's exit code
            os.close(read_fd)
            code = 1
            try:
                data = json.dumps(run_job(job, warmed_heap_bytes=warmed)).encode()
                code = 0
            except BaseException:  # noqa: BLE001 - the parent reports a failed depth as None
                data = b""
            with os.fdopen(write_fd, "wb") as out:
                out.write(data)
            os._exit(code)
        os.close(write_fd)
        children.append((pid, read_fd))
    try:
        own: dict[str, Any] | None = run_job(jobs[-1], warmed_heap_bytes=warmed)
    except Exception:  # noqa: BLE001 - reported as a failed depth, as a fork's failure is
        own = None
    results: list[dict[str, Any] | None] = []
    for pid, read_fd in children:
        with os.fdopen(read_fd, "rb") as pipe:
            data = pipe.read()
        _, status = os.waitpid(pid, 0)
        results.append(json.loads(data) if status == 0 and data else None)
    return [*results, own]


def main() -> None:
    import transformers

    transformers.logging.set_verbosity_error()
    warmed = warm_up()
    text = sys.stdin.read()
    if not text.strip():
        return  # the parent did not need this process after all
    print(json.dumps(_forked(json.loads(text)["jobs"], warmed)))  # one job: no fork, it runs here


if __name__ == "__main__":
    main()
