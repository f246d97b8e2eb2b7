"""How the CPU peak grows with gradient accumulation, against the estimates.

    python bench/accum_growth.py MODEL BATCHxSEQ GA[,GA...] [--repeats 3] [--precision fp32]

MODEL is a matrix family (bench/estimator_accuracy.py), `qwen2` (the held-out Qwen2 of
bench/estimator_heldout.py), `cal-llama` / `cal-gpt2` (the calibration models), or a catalogue name
(`gpt2` is GPT-2 124M: minutes per run at GA 16). Each GA is measured
with the protocol (overseer_plan/_measure.py, `--repeats` fresh processes, median printed) and
estimated both ways. The traced estimate runs two micro-batches whatever the GA
(estimate.trace_inputs), so this shows what the real heap does past them.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
MiB = 2**20


def models() -> dict[str, dict]:
    from estimator_accuracy import FAMILIES
    from estimator_heldout import QWEN

    from overseer_plan.calibration import _CALIBRATION_RUNS
    from overseer_plan.models import list_catalogue

    calibration = {f"cal-{run[0]['model_type']}": run[0] for run in _CALIBRATION_RUNS}
    return {**{e.name: e.config for e in list_catalogue()}, **FAMILIES, "qwen2": QWEN, **calibration}


def parse_sizes(ap: argparse.ArgumentParser, shape: str, values: str, repeats: int,
                what: str) -> tuple[int, int, list[int]]:
    """BATCHxSEQ and a comma-separated list of `what`, all at least 1 with `repeats`; else a usage error."""
    try:
        b, s = (int(x) for x in shape.lower().split("x"))
        got = [int(x) for x in values.split(",")]
    except ValueError:
        ap.error(f"shape is BATCHxSEQ and {what} a comma-separated list of integers")
    if min(b, s, repeats, *got) < 1:
        ap.error(f"batch, sequence, {what} and --repeats must all be at least 1")
    return b, s, got


def main() -> None:
    known = models()
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", choices=sorted(known))
    ap.add_argument("shape", help="micro-batch x sequence, e.g. 2x384")
    ap.add_argument("accum", help="comma-separated accumulation steps, e.g. 1,2,4,8,16")
    ap.add_argument("--repeats", type=int, default=3, help="protocol runs per GA")
    ap.add_argument("--precision", default="fp32", choices=("fp32", "bf16", "fp16", "bf16-pure"))
    args = ap.parse_args()
    b, s, accums = parse_sizes(ap, args.shape, args.accum, args.repeats, "accumulation steps")
    os.environ["OVERSEER_CACHE_DIR"] = tempfile.mkdtemp(prefix="overseer-accum-")  # shipped defaults only
    from overseer_plan._measure import measure
    from overseer_plan.estimate import EstimateConfig, estimate

    model = known[args.model]
    print("| GA | measured MiB (runs) | live MiB | analytic (err) | traced (err) |")
    print("|---|---|---|---|---|")
    for ga in accums:
        job = {"config": dict(model), "batch_size": b, "seq_len": s, "grad_accum": ga, "steps": 3,
               "precision": args.precision}
        runs = [measure(job)["peak_delta_bytes"] for _ in range(args.repeats)]
        real = statistics.median(runs)
        cfg = EstimateConfig(batch_size=b, seq_len=s, grad_accum=ga, precision=args.precision)
        an = estimate(dict(model), cfg).peak_bytes
        tr = estimate(dict(model), cfg, method="traced")
        print(f"| {ga} | {real / MiB:.0f} ({', '.join(f'{r / MiB:.0f}' for r in runs)}) | "
              f"{tr.live_tensor_bytes / MiB:.0f} | {an / MiB:.0f} ({an / real - 1:+.1%}) | "
              f"{tr.peak_bytes / MiB:.0f} ({tr.peak_bytes / real - 1:+.1%}) |", flush=True)


if __name__ == "__main__":
    main()
