"""How the CPU peak grows with the number of steps, against the estimate's long-run allowance.

    python bench/long_run.py MODEL BATCHxSEQ [--steps 3,12,48] [--repeats 4] [--precision fp32] [--ckpt]

MODEL as in bench/accum_growth.py (a matrix family, `qwen2`, `cal-llama`, `cal-gpt2`). Each step
count runs the protocol (overseer_plan/_measure.py) at GA 1 in `--repeats` fresh processes, two at a
time; the median is printed. The estimate's `peak_bytes` predicts the 3-step protocol and
`long_run_peak_bytes` what a long run reaches (calibration.long_run_heap_bytes).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
MiB = 2**20


def main() -> None:
    from accum_growth import models, parse_sizes

    known = models()
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", choices=sorted(known))
    ap.add_argument("shape", help="micro-batch x sequence, e.g. 2x384")
    ap.add_argument("--steps", default="3,12,48", help="comma-separated optimizer step counts")
    ap.add_argument("--repeats", type=int, default=4, help="protocol runs per step count")
    ap.add_argument("--precision", default="fp32", choices=("fp32", "bf16", "fp16", "bf16-pure"))
    ap.add_argument("--ckpt", action="store_true", help="gradient checkpointing")
    args = ap.parse_args()
    b, s, steps = parse_sizes(ap, args.shape, args.steps, args.repeats, "step counts")
    os.environ["OVERSEER_CACHE_DIR"] = tempfile.mkdtemp(prefix="overseer-longrun-")  # shipped defaults only
    from overseer_plan._measure import measure
    from overseer_plan.estimate import EstimateConfig, estimate

    model = known[args.model]

    def one(n: int) -> tuple[int, int]:
        job = {"config": dict(model), "batch_size": b, "seq_len": s, "grad_accum": 1, "steps": n,
               "precision": args.precision, "gradient_checkpointing": args.ckpt}
        return n, measure(job)["peak_delta_bytes"]

    with ThreadPoolExecutor(2) as pool:
        got = list(pool.map(one, [n for n in steps for _ in range(args.repeats)]))
    cfg = EstimateConfig(batch_size=b, seq_len=s, precision=args.precision, gradient_checkpointing=args.ckpt)
    ests = {m: estimate(dict(model), cfg, method=m) for m in ("analytic", "traced")}
    print(f"{args.model} {b} x {s} {args.precision}{' checkpointed' if args.ckpt else ''}, GA 1")
    print("| steps | measured MiB (runs) | vs 3 steps |")
    print("|---|---|---|")
    base = None
    for n in steps:
        runs = sorted(r for k, r in got if k == n)
        med = statistics.median(runs)
        base = med if base is None else base
        print(f"| {n} | {med / MiB:.0f} ({', '.join(f'{r / MiB:.0f}' for r in runs)}) | {med / base - 1:+.1%} |")
    last = statistics.median(r for k, r in got if k == steps[-1])
    for m, e in ests.items():
        print(f"- {m}: peak {e.peak_bytes / MiB:.0f} MiB ({e.peak_bytes / base - 1:+.1%} vs {steps[0]} steps), "
              f"long run {e.long_run_peak_bytes / MiB:.0f} MiB ({e.long_run_peak_bytes / last - 1:+.1%} vs "
              f"{steps[-1]} steps; allowance {e.long_run_extra_bytes / MiB:.0f} MiB)")


if __name__ == "__main__":
    main()
