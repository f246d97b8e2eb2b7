"""Fit the CPU calibration's offset for LoRA on a frozen base, on the calibration models only.

    python bench/fit_lora_offset.py [--repeats 2] [--precision fp32|bf16|all]   # needs peft; ~3 min per precision

For each fp32 calibration point (or bf16-autocast point, with `--precision`) (overseer_plan/calibration.py `_CALIBRATION_RUNS`) the protocol
(overseer_plan/_measure.py) trains peft LoRA adapters (rank 8 on the family's default targets:
q_proj/v_proj, c_attn) and the traced estimate predicts it with the shipped calibration, the peft
import's share of the modelling stack taken off (overseer_plan/preload.py), and no LoRA offset. The offset is the mean of measured - predicted; it goes into
`CpuFactors.frozen_base_bytes` by hand, with these residuals in its provenance. The residuals of the
traced estimate's two halves (real-allocator replay, tensor-level allocator model) are printed too.
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
    ap.add_argument("--precision", choices=("fp32", "bf16", "all"), default="fp32",
                    help="which calibration points: the shipped offset is fitted on fp32; bf16 checks whether "
                         "it carries over on top of the half-precision offset")
    args = ap.parse_args()
    os.environ["OVERSEER_CACHE_DIR"] = tempfile.mkdtemp(prefix="overseer-lora-fit-")  # shipped defaults only
    from overseer_plan._measure import measure
    from overseer_plan.calibration import _CALIBRATION_RUNS, DEFAULTS
    from overseer_plan.estimate import EstimateConfig, estimate
    from overseer_plan.trace import quiet_transformers

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from estimator_accuracy import _heap_models

    resid: list[float] = []
    halves: dict[str, list[float]] = {"replay_only": [], "allocator_only": []}
    for model, b, s, ckpt, precision in _CALIBRATION_RUNS:
        if args.precision != "all" and precision != args.precision:
            continue
        targets = ["c_attn"] if model["model_type"] == "gpt2" else ["q_proj", "v_proj"]
        cfg = EstimateConfig(batch_size=b, seq_len=s, gradient_checkpointing=ckpt,
                             lora={"rank": 8, "targets": targets})
        job = {"config": dict(model), "batch_size": b, "seq_len": s, "steps": 3, "gradient_checkpointing": ckpt,
               "precision": precision, "lora": cfg.lora.model_dump()}
        runs = [measure(job)["peak_delta_bytes"] for _ in range(args.repeats)]
        real = statistics.mean(runs)
        with quiet_transformers():
            tr = estimate(dict(model), cfg, method="traced")
        pred = tr.peak_bytes - DEFAULTS.cpu.frozen_base_bytes
        resid.append(real - pred)
        split = {k: real - (v - DEFAULTS.cpu.frozen_base_bytes) for k, v in _heap_models(tr).items()}
        for k, v in split.items():
            halves[k].append(v)
        print(f"{model['model_type']} {b}x{s} ckpt={ckpt}: measured {real / 2**20:.0f} MiB "
              f"({', '.join(f'{r / 2**20:.0f}' for r in runs)}), predicted {pred / 2**20:.0f}, "
              f"residual {(real - pred) / 2**20:+.1f} MiB"
              + "".join(f", {k} {v / 2**20:+.1f}" for k, v in split.items()), flush=True)
    print(f"offset: mean residual {statistics.mean(resid) / 2**20:+.1f} MiB "
          f"(range {min(resid) / 2**20:+.1f} .. {max(resid) / 2**20:+.1f}); bytes {int(statistics.mean(resid))}")
    for k, v in halves.items():
        if v:
            print(f"{k}: mean residual {statistics.mean(v) / 2**20:+.1f} MiB "
                  f"(range {min(v) / 2**20:+.1f} .. {max(v) / 2**20:+.1f}); bytes {int(statistics.mean(v))}")


if __name__ == "__main__":
    main()
