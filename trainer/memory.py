"""Give the heap's freed pages back to the operating system.

Why. On CPU a training step frees most of what it allocates, but glibc keeps the freed pages:
its heap only shrinks from the top, and small long-lived blocks (tensor and autograd metadata)
pin holes in the middle. A process that has trained holds far more than it uses: after one
continuous-learning round of GPT-2 124M the waiting process sat at 1.9 GiB of RSS and gave
1.5 GiB back (bench/memory_release.py --between-rounds). Without a release that memory stays
out of reach of the other applications for as long as the process lives.

How. `malloc_trim(0)` walks glibc's free lists, unmaps whole free pages anywhere in the heap
(`madvise(MADV_DONTNEED)`, since glibc 2.8) and shrinks the heap's top. Blocks in use are not
touched. It costs 15-50 ms on a heap of a few hundred MiB, and whatever is released is faulted in
again when it is next used. So it runs where memory is released for good or needed now: after an
OOM (trainer/oom.py) and between continuous-learning rounds. After every optimizer step it was
measured and not adopted: a 3-12% lower peak at one micro-batch per step, none at four, for 5-25%
of the step's time (BENCHMARKS.md, section 9). Elsewhere (macOS, Windows, musl) there is nothing to call and
the release reports zero.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import sys
import time
from typing import Any

import psutil
from pydantic import BaseModel, ConfigDict


class Released(BaseModel):
    """What one release gave back."""

    model_config = ConfigDict(use_attribute_docstrings=True, frozen=True)

    freed_bytes: int
    """Resident memory returned to the system (RSS before minus after; 0 when it did not shrink)."""
    rss_after_bytes: int
    """This process's resident memory after the release."""
    seconds: float
    """Time the release took."""
    supported: bool
    """False where the C library has no `malloc_trim` (not glibc): nothing was released."""


@functools.cache
def _malloc_trim() -> Any:
    """glibc's `malloc_trim`, or None on a platform without it."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        fn = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):  # musl has no malloc_trim
        return None
    fn.argtypes, fn.restype = [ctypes.c_size_t], ctypes.c_int
    return fn


def available() -> bool:
    """Whether this process's allocator can give freed heap pages back (Linux with glibc)."""
    return _malloc_trim() is not None


def release_freed_memory() -> Released:
    """Return the heap's free pages to the system; blocks in use are untouched."""
    proc = psutil.Process()
    before = int(proc.memory_info().rss)
    trim = _malloc_trim()
    t0 = time.perf_counter()
    if trim is not None:
        trim(0)  # 0: keep no padding at the top of the heap
    seconds = time.perf_counter() - t0
    after = int(proc.memory_info().rss)
    return Released(freed_bytes=max(0, before - after), rss_after_bytes=after, seconds=seconds,
                    supported=trim is not None)
