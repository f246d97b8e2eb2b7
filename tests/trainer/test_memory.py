"""trainer/memory.py: freed heap pages really go back to the system, and blocks in use stay intact."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from trainer import memory

# A heap fragmented the way a training step leaves it: 96 MiB of 64 KiB blocks (under glibc's
# mmap threshold, so they are carved from the heap), each followed by a small block that stays
# in use and pins its hole, as tensor and autograd metadata do. The big blocks are written,
# freed, and the small ones checked after the release.
_CHILD = r"""
import ctypes, json
from trainer.memory import release_freed_memory
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
big, small = [], []
for i in range(1536):
    p = libc.malloc(64 * 1024)
    ctypes.memset(p, 1, 64 * 1024)
    big.append(p)
    q = libc.malloc(64)
    ctypes.memset(q, i % 251, 64)
    small.append(q)
for p in big:
    libc.free(p)
r = release_freed_memory()
intact = all(ctypes.string_at(q, 64) == bytes([i % 251]) * 64 for i, q in enumerate(small))
print(json.dumps({"freed": r.freed_bytes, "supported": r.supported, "intact": intact, "seconds": r.seconds}))
"""


@pytest.mark.skipif(not memory.available(), reason="needs glibc's malloc_trim")
def test_release_returns_a_fragmented_heap_to_the_system() -> None:
    out = subprocess.run([sys.executable, "-c", _CHILD], capture_output=True, text=True, check=True)
    got = json.loads(out.stdout)
    assert got["supported"] and got["intact"]
    # 96 MiB were freed but pinned in place; the release returns nearly all of it.
    assert got["freed"] >= 80 * 2**20, got
    assert got["seconds"] < 1.0


def test_release_in_process_is_safe_and_reports_rss() -> None:
    r = memory.release_freed_memory()
    assert r.freed_bytes >= 0 and r.rss_after_bytes > 0
    assert r.supported == memory.available()
