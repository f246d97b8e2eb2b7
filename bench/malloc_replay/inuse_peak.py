"""Peak in-use bytes of a malloc log written by mlog.c, after its start mark, with no allocator in the way.

    python inuse_peak.py LOG

Every malloc/calloc/realloc/posix_memalign counts its requested size until its free; the tracer's
logged tensors (op 5) count as well. For a real run's log this is the in-use peak of the unmarked
protocol run (no dispatch mode, unlike heap_vs_inuse.py); for a trace log it is the traced tensors
plus the tracer's own blocks. The heap's peak over this is fragmentation.
"""

import sys

import numpy as np
from filter import REC


def peak_in_use(path: str) -> int:
    r = np.fromfile(path, dtype=REC)
    start = int(np.where((r["op"] == 9) & (r["aux"] == 1))[0][0])
    live: dict[int, int] = {}
    traced: dict[int, int] = {}
    cur = peak = 0
    for op, ptr, size in zip(r["op"][start:].tolist(), r["ptr"][start:].tolist(), r["size"][start:].tolist(),
                             strict=True):
        if op in (1, 3):
            live[ptr] = size
            cur += size
        elif op == 2:
            cur -= live.pop(ptr, 0)
        elif op == 5:
            signed = size - (1 << 64) if size >= 1 << 63 else size
            if signed > 0:
                traced[ptr] = signed
                cur += signed
            else:
                cur -= traced.pop(ptr, 0)
        peak = max(peak, cur)
    return peak


if __name__ == "__main__":
    print(f"in-use peak growth {peak_in_use(sys.argv[1]) / 2**20:.0f} MiB")
