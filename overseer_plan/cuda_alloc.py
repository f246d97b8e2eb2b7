"""PyTorch's CUDA caching allocator, replayed: from a traced allocation log to `max_memory_reserved`.

The trace (trace.py) logs every tensor storage a training step allocates and frees, in program
order. On a GPU those requests go through c10's caching allocator
(c10/cuda/CUDACachingAllocator.cpp), which never hands memory back to the driver during
training, so what the device shows is the allocator's high-water mark of *reserved* segments,
not of live bytes. This module replays the log through the allocator's default policy
(no `PYTORCH_CUDA_ALLOC_CONF`, one stream):

- request sizes are rounded up to 512 bytes (`kMinBlockSize`);
- requests of at most 1 MiB (`kSmallSize`) come from the small pool, whose segments are 2 MiB
  (`kSmallBuffer`); larger ones from the large pool, whose segments are 20 MiB (`kLargeBuffer`)
  for requests under 10 MiB (`kMinLargeAlloc`) and the request rounded up to 2 MiB
  (`kRoundLarge`) otherwise;
- a request takes the smallest cached free block of its pool that is large enough (best fit);
  only when none is does the allocator reserve (cudaMalloc) a new segment;
- a block larger than the request is split when the remainder is at least 512 bytes (small pool)
  or more than 1 MiB (large pool); otherwise the request keeps the whole block, and
  `memory_allocated` counts it whole;
- a freed block merges with free neighbours of the same segment and goes back to its pool.

`replay` returns the peaks of reserved and of allocated bytes, what `torch.cuda.max_memory_reserved`
and `max_memory_allocated` report after the same steps.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

MiB = 1024**2
MIN_BLOCK = 512  # kMinBlockSize
SMALL_SIZE = 1 * MiB  # kSmallSize: largest request served from the small pool
SMALL_BUFFER = 2 * MiB  # kSmallBuffer: small-pool segment size
LARGE_BUFFER = 20 * MiB  # kLargeBuffer: segment size for large requests under MIN_LARGE_ALLOC
MIN_LARGE_ALLOC = 10 * MiB  # kMinLargeAlloc
# The phases whose thread first multiplies matrices: each has its own cuBLAS handle and workspace
# (`workspaces`).
WORKSPACE_THREADS = ("forward", "backward")
ROUND_LARGE = 2 * MiB  # kRoundLarge: rounding of segments for requests of MIN_LARGE_ALLOC and more


def round_size(nbytes: int) -> int:
    """The allocator's block size for a request (`round_size`)."""
    return MIN_BLOCK if nbytes < MIN_BLOCK else -(-nbytes // MIN_BLOCK) * MIN_BLOCK


def segment_size(size: int) -> int:
    """Bytes reserved with cudaMalloc when no cached block fits a request of `size` (`get_allocation_size`)."""
    if size <= SMALL_SIZE:
        return SMALL_BUFFER
    if size < MIN_LARGE_ALLOC:
        return LARGE_BUFFER
    return -(-size // ROUND_LARGE) * ROUND_LARGE


@dataclass(eq=False)
class _Block:
    segment: int
    offset: int
    size: int
    free: bool = True
    prev: _Block | None = None
    """The block just below this one in its segment (blocks tile a segment, as in the allocator)."""
    next: _Block | None = None


class _Pool:
    """Free blocks of one pool, ordered by (size, segment, offset) like the allocator's BlockPool."""

    def __init__(self) -> None:
        self.keys: list[tuple[int, int, int]] = []

    def add(self, b: _Block) -> None:
        bisect.insort(self.keys, (b.size, b.segment, b.offset))

    def remove(self, b: _Block) -> None:
        i = bisect.bisect_left(self.keys, (b.size, b.segment, b.offset))
        del self.keys[i]

    def best_fit(self, size: int) -> tuple[int, int, int] | None:
        i = bisect.bisect_left(self.keys, (size, -1, -1))
        return self.keys[i] if i < len(self.keys) else None


@dataclass
class Peaks:
    """What the caching allocator's statistics would report after replaying a log."""

    reserved: int
    """max_memory_reserved: the high-water mark of cudaMalloc'd segments."""
    allocated: int
    """max_memory_allocated: the high-water mark of bytes in blocks handed out (rounded sizes)."""
    segments: int
    """Segments reserved by the end."""


class CachingAllocator:
    """The default policy of c10's CUDA caching allocator on one stream (see the module docstring)."""

    def __init__(self) -> None:
        self.pools = {True: _Pool(), False: _Pool()}  # is_small -> pool
        self.blocks: dict[tuple[int, int], _Block] = {}  # (segment, offset) -> block, free or not
        self.segments: list[tuple[int, bool]] = []  # (size, is_small)
        self.reserved = self.allocated = 0
        self.peak_reserved = self.peak_allocated = 0

    def malloc(self, nbytes: int) -> tuple[int, int]:
        """Serve a request; returns the block's (segment, offset)."""
        size = round_size(nbytes)
        small = size <= SMALL_SIZE
        pool = self.pools[small]
        found = pool.best_fit(size)
        if found is not None:
            pool.remove(self.blocks[(found[1], found[2])])
            block = self.blocks[(found[1], found[2])]
        else:
            seg_bytes = segment_size(size)
            seg = len(self.segments)
            self.segments.append((seg_bytes, small))
            self.reserved += seg_bytes
            self.peak_reserved = max(self.peak_reserved, self.reserved)
            block = _Block(seg, 0, seg_bytes)
            self.blocks[(seg, 0)] = block
        rest = block.size - size
        if (rest >= MIN_BLOCK) if small else (rest > SMALL_SIZE):
            tail = _Block(block.segment, block.offset + size, rest, prev=block, next=block.next)
            if block.next is not None:
                block.next.prev = tail
            block.next = tail
            self.blocks[(tail.segment, tail.offset)] = tail
            pool.add(tail)
            block.size = size
        block.free = False
        self.allocated += block.size
        self.peak_allocated = max(self.peak_allocated, self.allocated)
        return block.segment, block.offset

    def free(self, where: tuple[int, int]) -> None:
        block = self.blocks[where]
        block.free = True
        self.allocated -= block.size
        pool = self.pools[self.segments[block.segment][1]]
        # Merge with the free neighbours in the segment (`try_merge_blocks`).
        if block.next is not None and block.next.free:
            pool.remove(block.next)
            self._absorb(block, block.next)
        if block.prev is not None and block.prev.free:
            pool.remove(block.prev)
            block = self._absorb(block.prev, block)
        pool.add(block)

    def _absorb(self, left: _Block, right: _Block) -> _Block:
        """Join `right` onto its neighbour `left` (neither in a pool); returns `left`."""
        del self.blocks[(right.segment, right.offset)]
        left.size += right.size
        left.next = right.next
        if right.next is not None:
            right.next.prev = left
        return left


def replay(events: Sequence[tuple[int, int, str]], *, extra: Iterable[tuple[int, int]] = ()) -> Peaks:
    """Replay a trace's allocation log (key, +bytes | -bytes, phase) through the caching allocator.

    `extra`: (event index, bytes) allocations made just before that event and kept for the rest of
    the run (the cuBLAS workspaces, `workspaces`).
    """
    alloc = CachingAllocator()
    at: dict[int, list[int]] = {}
    for index, nbytes in extra:
        at.setdefault(index, []).append(nbytes)
    where: dict[int, tuple[int, int]] = {}
    for i, (key, nbytes, _phase) in enumerate(events):
        for size in at.get(i, ()):
            alloc.malloc(size)
        if nbytes > 0:
            where[key] = alloc.malloc(nbytes)
        elif nbytes < 0 and key in where:
            alloc.free(where.pop(key))
    return Peaks(reserved=alloc.peak_reserved, allocated=alloc.peak_allocated, segments=len(alloc.segments))


def workspaces(first_matmul: dict[str, int], nbytes: int) -> list[tuple[int, int]]:
    """The cuBLAS workspaces of a training step, as `replay`'s `extra`.

    cuBLAS handles are per thread, and a CUDA step multiplies matrices on two: the Python thread
    (forward) and the autograd engine's device thread (backward, checkpoint recomputation
    included). Each handle allocates its workspace through the caching allocator at its first
    matrix product and keeps it. Measured on an H100 (torch 2.11, torch.cuda.memory snapshots):
    two 32 MiB blocks live at every peak, one allocated by the first forward matmul, one inside the
    first backward; placing the second at the start of backward instead reserved a 32 MiB segment
    the real run never had and missed a 250 MiB one it had (Llama-style 4 x 256, 8 x 512 bf16).
    """
    if nbytes <= 0:
        return []
    return [(first_matmul[g], nbytes) for g in WORKSPACE_THREADS if g in first_matmul]
