"""Why the traced dry run's heap stays below a real step's: the tracer's short-lived tiny blocks.

    python transients.py REAL_LOG TRACE_LOG [--draws 12]

REAL_LOG is a real protocol run's malloc log (drive.py under mlog.c), TRACE_LOG the traced dry run
of the same row (trace_drive.py); `run.sh` writes both. A block is transient when it is malloc'd
after the first tensor of 1 MiB or more and freed before the next tensor event of 64 KiB or more.
A fake-tensor trace makes about ten times a real step's transients (FakeTensorMode boxes every op's
arguments), nearly all under 64 bytes. This writes copies of the logs without some transients and
replays each `--draws` times through glibc (replay.c with a seed per draw: the heap's peak is chaotic,
so only a draw's median says anything), printing the median peak growth of the heap per copy.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from filter import REC  # the record layout mlog.c writes

HERE = Path(__file__).resolve().parent


def without_transients(r: np.ndarray, tensor_op: int, lo: int, hi: int) -> np.ndarray:
    """A copy of log `r` without the transient op-1 blocks of lo <= size < hi (and their frees)."""
    start = int(np.where((r["op"] == 9) & (r["aux"] == 1))[0][0])
    size = r["size"].astype(np.int64)
    first = int(np.where((r["op"] == tensor_op) & (size >= 1 << 20) & (np.arange(len(r)) > start))[0][0])
    keep = np.ones(len(r), bool)
    opened: dict[int, tuple[int, int, int]] = {}  # ptr -> (record, tensor events so far, size)
    events = 0
    ops, ptrs, sizes = r["op"].tolist(), r["ptr"].tolist(), size.tolist()
    for i in range(first, len(r)):
        op = ops[i]
        if op == tensor_op and sizes[i] >= 1 << 16:
            events += 1
        elif op == 1:
            opened[ptrs[i]] = (i, events, sizes[i])
        elif op == 2:
            got = opened.pop(ptrs[i], None)
            if got and got[1] == events and lo <= got[2] < hi:
                keep[got[0]] = keep[i] = False
    return r[keep]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("real_log")
    ap.add_argument("trace_log")
    ap.add_argument("--draws", type=int, default=12)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as work:
        replay = f"{work}/replay"
        subprocess.run(["gcc", "-O2", "-o", replay, str(HERE / "replay.c")], check=True)
        real, traced = np.fromfile(args.real_log, REC), np.fromfile(args.trace_log, REC)
        copies = {
            "real run, whole log": (real, None),
            "real run, no transients": (real, (3, 0, 1 << 62)),
            "traced, whole log": (traced, None),
            "traced, no transients": (traced, (5, 0, 1 << 62)),
            "traced, no transients < 64 B": (traced, (5, 0, 64)),
            "traced, no transients >= 64 B": (traced, (5, 64, 1 << 62)),
        }
        print(f"median heap peak growth over {args.draws} draws (MiB), [min-max], transient blocks dropped")
        for name, (log, cut) in copies.items():
            copy = log if cut is None else without_transients(log, *cut)
            path = f"{work}/copy.bin"
            copy.tofile(path)
            peaks = []
            for seed in range(1, args.draws + 1):
                out = subprocess.run([replay, path, str(seed)], check=True, capture_output=True, text=True).stdout
                peaks.append(float(out.split()[-2]))
            dropped = (len(log) - len(copy)) // 2
            print(f"  {name:32} {statistics.median(peaks):6.0f}  [{min(peaks):.0f}-{max(peaks):.0f}]  {dropped}")


if __name__ == "__main__":
    sys.exit(main())
