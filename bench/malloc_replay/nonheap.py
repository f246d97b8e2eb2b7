"""How much of a real step's peak RSS growth is not glibc's heap: sampled RSS against mallinfo2.

    python bench/malloc_replay/nonheap.py [FAMILY BATCH SEQ on|off fp32|bf16] ...
    (default: four rows of the matrix, GPT-2-style and Llama-style, checkpointed or not)

Runs the protocol (drive.py: 3 AdamW steps; bench/estimator_accuracy.py FAMILIES) of each row in a fresh process
with a thread that reads RSS (/proc/self/statm) and the heap (arena + mmapped bytes, mallinfo2) every
0.5 ms, and prints the RSS growth at its sampled peak, the heap growth at that moment and their
difference. If the difference is the same on every row, RSS is the heap plus a constant, and a heap
model (the replay, the allocator model) carries all of the shape dependence. The sampler disturbs the
heap a little (bench/results/estimator_accuracy.md, seventh pass), so the peaks are one draw each.
Caveat: some runs of bf16 rows without checkpointing (Llama-style and NeoX 8 x 512) read about 250 MiB
less heap at the same RSS peak (RSS - heap 337 instead of 87 MiB); which memory that is, is not known.
Linux with glibc >= 2.33.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
ROWS = [["gpt2-4x256", "8", "512", "on", "fp32"], ["gpt2-4x256", "8", "256", "on", "fp32"],
        ["llama-4x256-gqa", "4", "256", "on", "fp32"], ["gpt2-4x256", "8", "512", "off", "fp32"]]
MiB = 2**20


def _one(row: list[str]) -> dict:
    sys.path[:0] = [str(ROOT / "bench" / "malloc_replay"), str(ROOT / "bench"), str(ROOT)]
    import transformers
    from drive import protocol, rss

    from overseer_plan import heap_replay

    libc = heap_replay._libc()

    def heap() -> int:
        return heap_replay._heap_now(libc)  # arena + mmapped bytes, as the replay reads the heap

    transformers.logging.set_verbosity_error()
    fam, b, s, ckpt, precision = row[0], int(row[1]), int(row[2]), row[3] == "on", row[4]
    base_rss, base_heap = rss(), heap()
    samples: list[tuple[int, int]] = []
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            samples.append((rss(), heap()))
            time.sleep(0.0005)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    protocol(fam, b, s, ckpt, precision)
    done.set()
    sampler.join()
    at = max(range(len(samples)), key=lambda i: samples[i][0])
    peak_rss, heap_then = samples[at][0] - base_rss, samples[at][1] - base_heap
    return {"row": " ".join(row), "ru_maxrss_growth_mib": round((resource.getrusage(0).ru_maxrss * 1024 - base_rss) / MiB),
            "sampled_rss_peak_mib": round(peak_rss / MiB), "heap_then_mib": round(heap_then / MiB),
            "rss_minus_heap_mib": round((peak_rss - heap_then) / MiB)}


def main() -> None:
    if sys.argv[1:2] == ["--one"]:
        print(json.dumps(_one(sys.argv[2:])))
        return
    args = sys.argv[1:]
    rows = [args[i:i + 5] for i in range(0, len(args), 5)] if args else ROWS
    for row in rows:
        out = subprocess.run([sys.executable, __file__, "--one", *row], check=True, capture_output=True, text=True)
        print(out.stdout.strip().splitlines()[-1])


if __name__ == "__main__":
    main()
