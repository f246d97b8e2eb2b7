"""Fit the analytic estimator's two heap stand-ins on traced dry runs of the calibration models.

    python bench/fit_analytic_heap.py        # ~2 min on 2 cores; prints the constants and residuals

The analytic method (overseer_plan/_analytic.py) has no trace, so it stands in for two traced
quantities with closed forms in the config:
- the heap gap, `calibration.simulate_glibc` peak minus the live tensor peak, as
  intercept + slope (with or without checkpointing) x one block's saved activations
  (`_HEAP_GAP_INTERCEPT`, `_HEAP_GAP_PER_BLOCK`);
- the heap churn, `calibration.heap_churn`, as intercept + slope x (2 x all blocks' activations,
  doubled under checkpointing, + 2 x fp32 trainable parameters) (`_CHURN_INTERCEPT`, `_CHURN_SLOPE`).
Both are least squares over the calibration runs (`calibration._CALIBRATION_RUNS`) at fp32 and
bf16: none of them is a row of bench/estimator_accuracy.py. Re-run this after any change to what
the trace allocates, and copy the printed constants into _analytic.py.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
MiB = 2**20


def main() -> None:
    os.environ["OVERSEER_CACHE_DIR"] = tempfile.mkdtemp(prefix="overseer-fit-")
    import numpy as np

    from overseer_plan import _analytic, calibration
    from overseer_plan.estimate import EstimateConfig
    from overseer_plan.models import resolve_model_config
    from overseer_plan.trace import quiet_transformers, trace_peak

    gap_x, gap_y, churn_x, churn_y = [], [], [], []
    print("model  b x s  ckpt precision | gap MiB  block MiB | churn MiB  work MiB")
    for model, b, s, ckpt, precision in calibration._CALIBRATION_RUNS:
        with quiet_transformers():
            config = resolve_model_config(dict(model))
        shape = _analytic.model_shape(config, json.dumps(model, sort_keys=True))
        cfg = EstimateConfig(batch_size=b, seq_len=s, gradient_checkpointing=ckpt, precision=precision)
        tr = trace_peak(config, cfg)
        gap = tr.extrapolate([calibration.simulate_glibc(r.events) for r in tr.runs]) - tr.live_peak_bytes
        churn = tr.extrapolate([calibration.heap_churn(r.events) for r in tr.runs])
        block = _analytic.layer_activation_bytes(shape, cfg, "cpu")
        trainable = _analytic.step_memory(shape, cfg, "cpu").trainable_params
        work = 2 * shape.num_layers * block * (2 if ckpt else 1) + 2 * trainable * 4
        gap_x.append([1.0, block if ckpt else 0.0, 0.0 if ckpt else block])
        gap_y.append(gap)
        churn_x.append([1.0, work])
        churn_y.append(churn)
        print(f"{model['model_type']:6s} {b} x {s:<4d} {'on ' if ckpt else 'off'}  {precision:9s} | "
              f"{gap / MiB:7.1f}  {block / MiB:9.1f} | {churn / MiB:9.1f}  {work / MiB:8.1f}")
    g, *_ = np.linalg.lstsq(np.array(gap_x), np.array(gap_y), rcond=None)
    c, *_ = np.linalg.lstsq(np.array(churn_x), np.array(churn_y), rcond=None)
    gap_res = (np.array(gap_x) @ g - np.array(gap_y)) / MiB
    churn_res = (np.array(churn_x) @ c - np.array(churn_y)) / MiB
    print(f"\n_HEAP_GAP_INTERCEPT = {g[0] / MiB:.1f} * 2**20")
    print(f"_HEAP_GAP_PER_BLOCK = {{True: {g[1]:.3f}, False: {g[2]:.3f}}}   "
          f"(residuals {gap_res.min():+.1f} to {gap_res.max():+.1f} MiB)")
    print(f"_CHURN_SLOPE = {c[1]:.3f}")
    print(f"_CHURN_INTERCEPT = {c[0] / MiB:.1f} * 2**20   (residuals {churn_res.min():+.0f} to {churn_res.max():+.0f} MiB)")
    print(f"shipped: gap {_analytic._HEAP_GAP_INTERCEPT / MiB:.1f} MiB + {_analytic._HEAP_GAP_PER_BLOCK}; "
          f"churn {_analytic._CHURN_INTERCEPT / MiB:.1f} MiB + {_analytic._CHURN_SLOPE} x work")


if __name__ == "__main__":
    main()
