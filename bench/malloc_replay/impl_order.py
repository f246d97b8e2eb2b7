"""Does the order of a tensor's small C++ blocks explain the real heap's excess over the trace's?

    python impl_order.py TRACE_LOG OUT before|after|both      # then: replay OUT

In a real step's malloc log (mlog.c, drive.py) c10 allocates a 96-byte block (the StorageImpl)
before each tensor's data and a 176- and a 24-byte block (TensorImpl and its sizes) right after
it. The traced dry run's fake tensors have their own small blocks, but all of them before the
replayed data block (trace_drive.py's log, op 5). This writes a copy of a traced log with those
real blocks added around every traced tensor, freed with it: `after` frees them right after the
data, `before` right before it, `both` also adds the 96-byte block before the data. Replaying the
copy (replay.c) shows how much of the real heap's excess that ordering carries.
"""

import sys

import numpy as np

REC = np.dtype([("op", "u1"), ("tid", "u1"), ("pad", "u2"), ("pad2", "u4"), ("ptr", "u8"), ("size", "u8"), ("aux", "u8")])


def main(src: str, dst: str, variant: str) -> None:
    r = np.fromfile(src, dtype=REC)
    pre_sizes = [96] if variant == "both" else []
    post_sizes = [176, 24]
    fake_ptr = [0x700000000000]
    open_blocks: dict[int, tuple[list[int], list[int]]] = {}
    chunks, last = [], 0

    def rec(op: int, ptr: int, size: int = 0) -> np.ndarray:
        x = np.zeros(1, dtype=REC)
        x["op"], x["ptr"], x["size"] = op, ptr, size
        return x

    def fresh() -> int:
        fake_ptr[0] += 64
        return fake_ptr[0]

    sizes = r["size"].astype(np.int64)
    for i in np.where(r["op"] == 5)[0]:
        chunks.append(r[last:i])
        last = i + 1
        key, nbytes = int(r["ptr"][i]), int(sizes[i])
        if nbytes > 0:
            pre, post = [fresh() for _ in pre_sizes], [fresh() for _ in post_sizes]
            chunks += [rec(1, p, b) for p, b in zip(pre, pre_sizes, strict=True)]
            chunks.append(r[i:i + 1])
            chunks += [rec(1, p, b) for p, b in zip(post, post_sizes, strict=True)]
            open_blocks[key] = (pre, post)
            continue
        pre, post = open_blocks.pop(key, ([], []))
        if variant == "before":
            chunks += [rec(2, p) for p in post] + [r[i:i + 1]] + [rec(2, p) for p in pre]
        else:
            chunks += [r[i:i + 1]] + [rec(2, p) for p in post + pre]
    chunks.append(r[last:])
    np.concatenate(chunks).tofile(dst)


if __name__ == "__main__":
    if len(sys.argv) != 4 or sys.argv[3] not in ("before", "after", "both"):
        sys.exit(__doc__)
    main(*sys.argv[1:])
