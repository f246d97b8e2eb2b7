"""Peak in-use bytes of a malloc log written by mlog.c, after its start mark, with no allocator in the way.

    python inuse_peak.py LOG [--by-thread]

Every malloc/calloc/realloc/posix_memalign counts its requested size until its free; the tracer's
logged tensors (op 5) count as well. For a real run's log this is the in-use peak of the unmarked
protocol run (no dispatch mode, unlike heap_vs_inuse.py); for a trace log it is the traced tensors
plus the tracer's own blocks. The heap's peak over this is fragmentation.

--by-thread also counts, per thread (mlog.c marks the first thread that allocates as 0, every other as 1),
the blocks it allocated and their in-use peak: a block a worker thread (torch's intra-op pool) mallocs
comes from that thread's own glibc arena, which replay.c, replaying every call on one thread, would
put in the main arena.
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


def by_thread(path: str) -> dict[int, tuple[int, int, int]]:
    """Per thread tag: (blocks allocated, bytes allocated, in-use peak of the blocks it allocated), whole log."""
    r = np.fromfile(path, dtype=REC)
    owner: dict[int, tuple[int, int]] = {}
    count: dict[int, int] = {}
    total: dict[int, int] = {}
    cur: dict[int, int] = {}
    peak: dict[int, int] = {}
    for op, tid, ptr, size in zip(r["op"].tolist(), r["tid"].tolist(), r["ptr"].tolist(), r["size"].tolist(),
                                  strict=True):
        if op in (1, 3):
            owner[ptr] = (tid, size)
            count[tid] = count.get(tid, 0) + 1
            total[tid] = total.get(tid, 0) + size
            cur[tid] = cur.get(tid, 0) + size
            peak[tid] = max(peak.get(tid, 0), cur[tid])
        elif op == 2 and ptr in owner:
            tid_of, size_of = owner.pop(ptr)
            cur[tid_of] -= size_of
    return {t: (count[t], total[t], peak[t]) for t in sorted(count)}


if __name__ == "__main__":
    print(f"in-use peak growth {peak_in_use(sys.argv[1]) / 2**20:.0f} MiB")
    if "--by-thread" in sys.argv[2:]:
        for tid, (n, nbytes, top) in by_thread(sys.argv[1]).items():
            print(f"thread {tid}: {n} blocks, {nbytes / 2**20:.0f} MiB allocated, in-use peak {top / 2**20:.0f} MiB")
