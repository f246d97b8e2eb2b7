"""What makes the same protocol row peak at a different RSS from one process to the next?

    python bench/malloc_replay/heap_determinism.py [--runs N] [FAMILY BATCH SEQ on|off fp32|bf16]
    (default: gpt2-4x256 8 512 on fp32, 3 runs per condition)

Runs the measurement protocol (overseer_plan/_measure.py, seeded token batches) of one benchmark
row in fresh processes under four conditions, and prints each run's ru_maxrss growth:
  default                  as the benchmark measures it
  hash fixed               PYTHONHASHSEED=0
  ASLR off                 `setarch -R` (address-space layout randomisation off for the child)
  hash fixed + ASLR off    both
If the last condition repeats to the KiB while the others spread, the spread is neither the data
nor thread timing but glibc's heap reacting to where Python objects and mappings happen to land
(dict orders follow the hash seed; id()-keyed tables follow the addresses). Results:
bench/results/estimator_accuracy.md, ninth pass. Needs Linux with util-linux's setarch.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))
from estimator_accuracy import protocol_job  # noqa: E402

CONDITIONS = {
    "default": ({}, False),
    "hash fixed": ({"PYTHONHASHSEED": "0"}, False),
    "ASLR off": ({}, True),
    "hash fixed + ASLR off": ({"PYTHONHASHSEED": "0"}, True),
}


def one_run(job: dict, extra_env: dict[str, str], no_aslr: bool) -> int:
    """ru_maxrss growth (bytes) of one protocol run in a fresh process."""
    cmd = [sys.executable, "-m", "overseer_plan._measure"]
    if no_aslr:
        cmd = ["setarch", os.uname().machine, "-R", *cmd]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONHASHSEED"}
    env.update(extra_env, PYTHONWARNINGS="ignore")
    out = subprocess.run(cmd, input=json.dumps(job), capture_output=True, text=True, env=env, cwd=ROOT,
                         check=True)
    return int(json.loads(out.stdout.strip().splitlines()[-1])["peak_delta_bytes"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("row", nargs="*", default=["gpt2-4x256", "8", "512", "on", "fp32"])
    a = ap.parse_args()
    if shutil.which("setarch") is None:
        sys.exit("heap_determinism: needs setarch (util-linux) to switch ASLR off for a child process")
    fam, b, s, ckpt, precision = a.row
    job = protocol_job(fam, int(b), int(s), ckpt == "on", precision, 1)
    print(f"{fam} {b}x{s} ckpt {ckpt} {precision}, {a.runs} runs per condition (ru_maxrss growth, MiB)")
    for name, (extra, no_aslr) in CONDITIONS.items():
        runs = [one_run(job, extra, no_aslr) for _ in range(a.runs)]
        mib = [round(r / 2**20) for r in runs]
        spread = (max(runs) - min(runs)) / sorted(runs)[len(runs) // 2] * 100
        print(f"  {name:22} {mib}  spread {spread:.1f}%", flush=True)


if __name__ == "__main__":
    main()
