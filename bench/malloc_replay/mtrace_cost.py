"""Can the replay process log its own mallocs with glibc alone (no compiler, no LD_PRELOAD shim of ours)?

    python bench/malloc_replay/mtrace_cost.py [FAMILY BATCH SEQ on|off fp32|bf16] [--draws 2]
    (default: gpt2-4x256 8 512 on fp32, the matrix row the traced estimate under-predicts)

The traced dry run's replayed heap runs 7-14% under a real step's because the tracer mallocs about ten
times a real step's short-lived tiny blocks; without them its malloc log replays within 1-6% of the real
one (BENCHMARKS.md §2, nineteenth pass). Dropping them needs every malloc and free of the replay
process logged, and the only logger every glibc >= 2.34 ships is mtrace(3) in libc_malloc_debug.so.0.
From Python its `mtrace` is only reachable with dlvsym (it is a versioned compatibility symbol, so
ctypes' plain dlsym finds libc's no-op stub, which is why an earlier attempt wrote no log).
This runs the row's replay job (`heap_replay.run_job`, what `estimate()` runs in each replay process)
in fresh processes with and without mtrace on around the job, and prints the job's wall time, the
log's size and the replayed heap growth.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
MiB = 2**20
DEBUG_LIB = "libc_malloc_debug.so.0"


def _mtrace_calls() -> tuple[object, object]:
    """mtrace and muntrace from the preloaded debug library, by version (see the module docstring)."""
    libc = ctypes.CDLL("libc.so.6")
    libc.dlvsym.restype = ctypes.c_void_p
    libc.dlvsym.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_char_p]
    handle = ctypes.CDLL(DEBUG_LIB)._handle
    calls = [libc.dlvsym(handle, name, b"GLIBC_2.2.5") for name in (b"mtrace", b"muntrace")]
    if not all(calls):
        sys.exit(f"{DEBUG_LIB} has no versioned mtrace/muntrace here")
    return tuple(ctypes.CFUNCTYPE(None)(c) for c in calls)  # type: ignore[return-value]


def child() -> None:
    """In a fresh process: warm up as a replay worker does, then run the job from stdin, traced or not."""
    import transformers

    from overseer_plan import heap_replay

    transformers.logging.set_verbosity_error()
    warmed = heap_replay.warm_up()
    job = json.loads(sys.stdin.read())
    traced = bool(os.environ.get("MALLOC_TRACE"))
    start, stop = _mtrace_calls() if traced else (None, None)
    if traced:
        start()
    got = heap_replay.run_job(job, warmed_heap_bytes=warmed)
    if traced:
        stop()
    print(json.dumps({"wall_s": got["wall_s"], "growth": got["growth"]}))


def _run(job: dict, log: Path | None) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("MALLOC_TRACE", "LD_PRELOAD")}
    if log is not None:
        env.update(LD_PRELOAD=DEBUG_LIB, MALLOC_TRACE=str(log))
    out = subprocess.run([sys.executable, __file__, "--child"], input=json.dumps(job), env=env, cwd=ROOT,
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    if "--child" in sys.argv:
        child()
        return
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("row", nargs="*", default=["gpt2-4x256", "8", "512", "on", "fp32"])
    ap.add_argument("--draws", type=int, default=2, help="fresh processes per condition")
    args = ap.parse_args()
    family, batch, seq, ckpt, precision = args.row
    from tunables import _job  # the replay job of one matrix row, as estimate() builds it

    job = _job((family, int(batch), int(seq), ckpt == "on", precision, 1))
    print(f"{family} {batch} x {seq} checkpointing {ckpt} {precision}: replay job per fresh process")
    print("condition   job wall s   heap growth MiB   mtrace log")
    with tempfile.TemporaryDirectory(prefix="overseer-mtrace-") as tmp:
        for draw in range(args.draws):
            for traced in (False, True):
                log = Path(tmp) / f"mtrace-{draw}.txt" if traced else None
                got = _run(job, log)
                size = ""
                if log is not None and log.exists():
                    with log.open("rb") as f:
                        lines = sum(1 for _ in f)
                    size = f"{lines:,} lines, {log.stat().st_size / MiB:.0f} MiB"
                    log.unlink()
                print(f"{'mtrace' if traced else 'plain':10} {got['wall_s']:11.1f} {got['growth'] / MiB:17.0f}   {size}")


if __name__ == "__main__":
    main()
