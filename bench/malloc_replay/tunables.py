"""Does a glibc tunable in the replay process bring its heap closer to a real step's?

    python bench/malloc_replay/tunables.py [--variants default,tc0,mx0,tc0mx0] [--draws 2]

The traced dry run mallocs about ten times a real step's short-lived tiny blocks, which keep glibc's
tcache and fastbins stocked (BENCHMARKS.md §2, nineteenth pass). The replay process is ours to start,
so GLIBC_TUNABLES could change how those bins behave there without touching the training process:
tc0 = no tcache (glibc.malloc.tcache_count=0), mx0 = no fastbins (glibc.malloc.mxfast=0).
For 14 matrix rows (the two at the edges of the traced errors among them) this runs the replay
(`python -m overseer_plan.heap_replay`, one fresh process per draw, two side by side) under each
variant and prints the measured median (bench/results/estimator_measurements.json) less the larger
draw: the constant a variant would need per row. A better variant makes that residual more uniform
across rows; its level is refitted anyway.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
MiB = 2**20
VARIANTS = {"default": "", "tc0": "glibc.malloc.tcache_count=0", "mx0": "glibc.malloc.mxfast=0",
            "tc0mx0": "glibc.malloc.tcache_count=0:glibc.malloc.mxfast=0"}
ROWS = [("gpt2-4x256", 8, 512, True, "fp32", 1), ("gpt2-4x256", 8, 512, True, "bf16", 1),
        ("llama-4x256-gqa", 4, 256, True, "fp32", 1), ("gpt2-4x256", 8, 256, True, "fp32", 1),
        ("gpt2-4x256", 4, 512, True, "fp32", 1), ("neox-4x256", 8, 512, True, "fp32", 1),
        ("llama-4x256-gqa", 8, 512, False, "fp32", 1), ("gpt2-4x256", 8, 512, False, "fp32", 1),
        ("neox-4x256", 1, 256, False, "fp32", 1), ("llama-4x256-gqa", 4, 512, True, "bf16", 1),
        ("gpt2-4x256", 1, 512, True, "fp32", 1), ("neox-4x256", 4, 256, False, "bf16", 1),
        ("gpt2-4x256", 2, 256, True, "fp32", 8), ("llama-4x256-gqa", 2, 256, False, "fp32", 8)]


def _job(row: tuple) -> dict:
    import transformers
    from estimator_accuracy import FAMILIES

    from overseer_plan.estimate import EstimateConfig
    from overseer_plan.heap_replay import _job as replay_job

    fam, b, s, ckpt, prec, ga = row
    spec = dict(FAMILIES[fam])
    config = transformers.CONFIG_MAPPING[spec.pop("model_type")](**spec)
    cfg = EstimateConfig(batch_size=b, seq_len=s, gradient_checkpointing=ckpt, precision=prec, grad_accum=ga)
    return replay_job(config, cfg, config.num_hidden_layers)


def _draw(job: dict, tunables: str) -> float:
    env = {k: v for k, v in os.environ.items() if k != "MALLOC_PERTURB_"}
    if tunables:
        env["GLIBC_TUNABLES"] = tunables
    out = subprocess.run([sys.executable, "-m", "overseer_plan.heap_replay"], input=json.dumps({"jobs": [job]}),
                         capture_output=True, text=True, env=env, cwd=ROOT, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])[0]["growth"] / MiB


def main() -> None:
    from estimator_accuracy import _row_key

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--draws", type=int, default=2)
    args = ap.parse_args()
    variants = args.variants.split(",")
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        sys.exit(f"tunables.py: unknown variant(s) {', '.join(unknown)} (choose from {', '.join(VARIANTS)})")
    measured = json.loads((ROOT / "bench" / "results" / "estimator_measurements.json").read_text())
    tasks = [(row, v) for row in ROWS for v in variants for _ in range(args.draws)]
    jobs = {row: _job(row) for row in ROWS}
    with ThreadPoolExecutor(2) as pool:
        got = list(pool.map(lambda t: _draw(jobs[t[0]], VARIANTS[t[1]]), tasks))
    draws: dict[tuple, dict[str, list[float]]] = {}
    for (row, v), growth in zip(tasks, got, strict=True):
        draws.setdefault(row, {}).setdefault(v, []).append(growth)
    resid: dict[str, list[float]] = {v: [] for v in variants}
    print("row | measured MiB | " + " | ".join(f"{v}: draws, residual" for v in variants))
    for row in ROWS:
        m = statistics.median(measured[_row_key(*row)]) / MiB
        cells = []
        for v in variants:
            d = draws[row][v]
            resid[v].append(m - max(d))
            cells.append(f"{'/'.join(f'{x:.0f}' for x in d)}, {m - max(d):.0f}")
        print(f"{row} | {m:.0f} | " + " | ".join(cells))
    for v in variants:
        r = resid[v]
        print(f"{v}: residual mean {statistics.mean(r):.0f} MiB, SD {statistics.pstdev(r):.0f}, range {min(r):.0f}..{max(r):.0f}")


if __name__ == "__main__":
    main()
