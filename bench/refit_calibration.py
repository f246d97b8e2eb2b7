"""Refit the shipped CPU calibration defaults after a change to what the trace allocates.

    python bench/refit_calibration.py [--draws 3]     # ~6 min on 2 cores; prints the constants

`overseer estimate --calibrate` measures and traces the calibration points (`calibration.
_CALIBRATION_RUNS`) on the user's machine. The shipped defaults (`calibration.DEFAULTS`) are that
fit on the development machine; when only the trace changes, the measurements stay valid, so this
script reuses them (bench/results/calibration_measurements.json) and recomputes the trace side:
`estimate.trace_inputs` per point `--draws` times: the tensor-level allocator model and heap churn,
and a real-allocator replay each time, the larger of `heap_replay.REPEATS` processes as `estimate()`
uses it.
Copy the printed constants into `calibration.DEFAULTS`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
MiB = 2**20


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--draws", type=int, default=3, help="replays per point (each the larger of 2 processes)")
    args = ap.parse_args()
    os.environ["OVERSEER_CACHE_DIR"] = tempfile.mkdtemp(prefix="overseer-refit-")
    from overseer_plan import calibration
    from overseer_plan.estimate import EstimateConfig, trace_inputs
    from overseer_plan.models import resolve_model_config
    from overseer_plan.trace import quiet_transformers

    data = json.loads((ROOT / "bench" / "results" / "calibration_measurements.json").read_text())
    measured = [m * MiB for m in data["measured_mib"]]
    if len(measured) != len(calibration._CALIBRATION_RUNS):
        sys.exit("calibration_measurements.json does not match calibration._CALIBRATION_RUNS; re-measure")
    churn_points, replay_points = [], []
    print("model  b x s  ckpt precision | measured  tensor-level  churn | replay draws (MiB)")
    for (model, b, s, ckpt, precision), real in zip(calibration._CALIBRATION_RUNS, measured, strict=True):
        with quiet_transformers():
            config = resolve_model_config(dict(model))
        settings = EstimateConfig(batch_size=b, seq_len=s, gradient_checkpointing=ckpt, precision=precision)
        half = calibration.is_half_precision(precision)
        # What `calibration.calibrate` and estimate() use; the allocator model and churn are the
        # same in every draw, the replay's heap is not.
        got = [trace_inputs(config, settings, "cpu") for _ in range(args.draws)]
        if any(g["growth"] is None for g in got):
            sys.exit("the real-allocator replay is unavailable here (needs glibc)")
        sim, churn, draws = got[0]["sim_peak"], got[0]["churn"], [g["growth"] for g in got]
        churn_points.append((sim, churn, real, half))
        replay_points += [(d, real, half) for d in draws]
        print(f"{model['model_type']:6} {b} x {s} {'on ' if ckpt else 'off'}  {precision:9} | {real / MiB:8.0f} {sim / MiB:13.0f} "
              f"{churn / MiB:6.0f} | {', '.join(f'{d / MiB:.0f}' for d in draws)}")
    fraction, constant, churn_offset = calibration.fit_churn_factors(churn_points)
    replay_constant, replay_offset = calibration.fit_replay_constant(replay_points)
    residuals = [(y - x) / MiB for x, y, _ in replay_points]
    offset = calibration.half_precision_offset(churn_offset, replay_offset)
    print(f"churn_fraction={fraction:.4f} constant_bytes={constant} ({constant / MiB:.1f} MiB)")
    print(f"replay_constant_bytes={replay_constant} ({replay_constant / MiB:.1f} MiB; residuals "
          f"{min(residuals):.0f}-{max(residuals):.0f} MiB)")
    print(f"half_precision_bytes={offset} ({offset / MiB:+.1f} MiB; allocator model {churn_offset / MiB:+.1f}, "
          f"replay {replay_offset / MiB:+.1f})")


if __name__ == "__main__":
    main()
