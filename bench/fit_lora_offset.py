"""Fit the CPU calibration's offset for LoRA on a frozen base, on the calibration models only.

    python bench/fit_lora_offset.py [--repeats 2]     # needs peft; ~4 min on 2 cores

For each fp32 calibration point (overseer_plan/calibration.py `_CALIBRATION_RUNS`) the protocol
(overseer_plan/_measure.py) trains peft LoRA adapters (rank 8 on the family's default targets:
q_proj/v_proj, c_attn) and the traced estimate predicts it with the shipped calibration and no
LoRA offset. The offset is the mean of measured - predicted; it goes into
`CpuFactors.frozen_base_bytes` by hand, with these residuals in its provenance.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    os.environ["OVERSEER_CACHE_DIR"] = tempfile.mkdtemp(prefix="overseer-lora-fit-")  # shipped defaults only
    from overseer_plan._measure import measure
    from overseer_plan.calibration import _CALIBRATION_RUNS, DEFAULTS
    from overseer_plan.estimate import EstimateConfig, estimate
    from overseer_plan.trace import quiet_transformers

    resid = []
    for model, b, s, ckpt, precision in _CALIBRATION_RUNS:
        if precision != "fp32":
            continue
        targets = ["c_attn"] if model["model_type"] == "gpt2" else ["q_proj", "v_proj"]
        cfg = EstimateConfig(batch_size=b, seq_len=s, gradient_checkpointing=ckpt,
                             lora={"rank": 8, "targets": targets})
        job = {"config": dict(model), "batch_size": b, "seq_len": s, "steps": 3, "gradient_checkpointing": ckpt,
               "precision": precision, "lora": cfg.lora.model_dump()}
        runs = [measure(job)["peak_delta_bytes"] for _ in range(args.repeats)]
        real = statistics.mean(runs)
        with quiet_transformers():
            pred = estimate(dict(model), cfg, method="traced").peak_bytes - DEFAULTS.cpu.frozen_base_bytes
        resid.append(real - pred)
        print(f"{model['model_type']} {b}x{s} ckpt={ckpt}: measured {real / 2**20:.0f} MiB "
              f"({', '.join(f'{r / 2**20:.0f}' for r in runs)}), predicted {pred / 2**20:.0f}, "
              f"residual {(real - pred) / 2**20:+.1f} MiB", flush=True)
    print(f"offset: mean residual {statistics.mean(resid) / 2**20:+.1f} MiB "
          f"(range {min(resid) / 2**20:+.1f} .. {max(resid) / 2**20:+.1f}); bytes {int(statistics.mean(resid))}")


if __name__ == "__main__":
    main()
