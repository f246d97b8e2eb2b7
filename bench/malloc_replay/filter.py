"""Write a copy of a malloc log without some allocations (and their frees), to see what drives the heap.

    python filter.py LOG OUT tensors-only      # drop every non-tensor malloc after the start mark
    python filter.py LOG OUT no-lived-small    # drop small (< 512 B) mallocs that outlive a tensor event

Tensor storage comes from c10's CPU allocator (posix_memalign, record op 3); everything else is op 1.
"""

import sys

import numpy as np

REC = np.dtype([("op", "u1"), ("tid", "u1"), ("pad", "u2"), ("pad2", "u4"), ("ptr", "u8"), ("size", "u8"), ("aux", "u8")])


def main(src: str, dst: str, mode: str) -> None:
    r = np.fromfile(src, dtype=REC)
    start = int(np.where((r["op"] == 9) & (r["aux"] == 1))[0][0])
    keep = np.ones(len(r), bool)
    open_at: dict[int, tuple[int, int]] = {}  # non-tensor ptr -> (record index, tensor events so far)
    tensors: set[int] = set()
    events = 0
    for i in range(start, len(r)):
        op, ptr = int(r["op"][i]), int(r["ptr"][i])
        if op == 3:
            tensors.add(ptr)
            events += 1
        elif op == 1:
            open_at[ptr] = (i, events)
        elif op == 2:
            if ptr in tensors:
                tensors.discard(ptr)
                events += 1
                continue
            got = open_at.pop(ptr, None)
            if got is None:
                continue
            j, born = got
            drop = mode == "tensors-only" or (mode == "no-lived-small" and int(r["size"][j]) < 512 and events > born)
            if drop:
                keep[i] = keep[j] = False
    if mode == "tensors-only":
        for j, _ in open_at.values():
            keep[j] = False
    r[keep].tofile(dst)


if __name__ == "__main__":
    main(*sys.argv[1:4])
