"""Fit the CPU calibration's offsets for LoRA on a frozen base, on the calibration models only.

    python bench/fit_lora_offset.py [--repeats 6] [--precision fp32|bf16|all] [--no-measure]   # needs peft

For each calibration point (overseer_plan/calibration.py `_CALIBRATION_RUNS`: the fp32 ones, the
bf16-autocast ones, or both) the protocol (overseer_plan/_measure.py) trains peft LoRA adapters (rank 8 on
the family's default targets: q_proj/v_proj, c_attn) and the traced estimate predicts it with the shipped
calibration, the peft import's share of the modelling stack taken off (overseer_plan/preload.py), the
half-precision offset applied at bf16, and no LoRA offset. Protocol runs are kept in
bench/results/lora_calibration_measurements.json (keyed by point and library versions), so that runs
from several sessions pool: each invocation measures until every point has `--repeats` runs
(`--no-measure`: none, the stored ones only). A point's measured value is the mean of its runs, as
in `overseer estimate --calibrate`.

Offsets (into `CpuFactors` by hand, with these residuals in the provenance):
- `frozen_base_bytes`: the mean of measured - predicted over the fp32 points;
- `frozen_half_bytes`: the mean over the bf16 points less that (what a frozen base adds under 16-bit matmuls).
The residuals of the traced estimate's two halves (real-allocator replay, tensor-level allocator model) are
printed too.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
STORE = ROOT / "bench" / "results" / "lora_calibration_measurements.json"
MiB = 2**20


def _key(model: dict, b: int, s: int, ckpt: bool, precision: str, versions: str) -> str:
    return f"{model['model_type']}-{model.get('num_hidden_layers', model.get('n_layer'))}x" \
           f"{model.get('hidden_size', model.get('n_embd'))}|b{b}|s{s}|ckpt{int(ckpt)}|{precision}|lora8|{versions}"


def _versions() -> str:
    import peft
    import torch
    import transformers
    return f"torch {torch.__version__}|transformers {transformers.__version__}|peft {peft.__version__}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=6, help="protocol runs per point, stored ones included")
    ap.add_argument("--precision", choices=("fp32", "bf16", "all"), default="all")
    ap.add_argument("--no-measure", action="store_true", help="use the stored runs only")
    args = ap.parse_args()
    os.environ["OVERSEER_CACHE_DIR"] = tempfile.mkdtemp(prefix="overseer-lora-fit-")  # shipped defaults only
    from overseer_plan._measure import measure
    from overseer_plan.calibration import _CALIBRATION_RUNS, DEFAULTS, frozen_base_offset, is_half_precision
    from overseer_plan.estimate import EstimateConfig, estimate
    from overseer_plan.trace import quiet_transformers

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from estimator_accuracy import _heap_models

    store = json.loads(STORE.read_text()) if STORE.exists() else {}
    versions = _versions()
    resid: dict[str, list[float]] = {"fp32": [], "bf16": []}
    halves: dict[str, dict[str, list[float]]] = {p: {"replay_only": [], "allocator_only": []} for p in resid}
    for model, b, s, ckpt, precision in _CALIBRATION_RUNS:
        if args.precision != "all" and precision != args.precision:
            continue
        targets = ["c_attn"] if model["model_type"] == "gpt2" else ["q_proj", "v_proj"]
        cfg = EstimateConfig(batch_size=b, seq_len=s, gradient_checkpointing=ckpt, precision=precision,
                             lora={"rank": 8, "targets": targets})
        job = {"config": dict(model), "batch_size": b, "seq_len": s, "steps": 3, "gradient_checkpointing": ckpt,
               "precision": precision, "lora": cfg.lora.model_dump()}
        key = _key(model, b, s, ckpt, precision, versions)
        runs = list(store.get(key, []))
        while not args.no_measure and len(runs) < args.repeats:
            runs.append(int(measure(job)["peak_delta_bytes"]))
            store[key] = runs
            tmp = STORE.with_suffix(".tmp")
            tmp.write_text(json.dumps(store, indent=1) + "\n")
            tmp.replace(STORE)
        if not runs:
            print(f"{key}: no stored runs, skipped")
            continue
        real = statistics.mean(runs)
        with quiet_transformers():
            tr = estimate(dict(model), cfg, method="traced")
        # The shipped LoRA offsets come off (at bf16 the frozen-half one too).
        off = frozen_base_offset(DEFAULTS, is_half_precision(precision))
        pred = tr.peak_bytes - off
        resid[precision].append(real - pred)
        split = {k: real - (v - off) for k, v in _heap_models(tr).items()}
        for k, v in split.items():
            halves[precision][k].append(v)
        print(f"{model['model_type']} {b}x{s} ckpt={ckpt} {precision}: measured {real / MiB:.0f} MiB "
              f"({', '.join(f'{r / MiB:.0f}' for r in runs)}), predicted {pred / MiB:.0f}, "
              f"residual {(real - pred) / MiB:+.1f} MiB"
              + "".join(f", {k} {v / MiB:+.1f}" for k, v in split.items()), flush=True)
    base = statistics.mean(resid["fp32"]) if resid["fp32"] else None
    for precision, values in resid.items():
        if not values:
            continue
        print(f"{precision}: mean residual {statistics.mean(values) / MiB:+.1f} MiB "
              f"(range {min(values) / MiB:+.1f} .. {max(values) / MiB:+.1f}); bytes {int(statistics.mean(values))}")
        for k, v in halves[precision].items():
            print(f"  {k}: mean residual {statistics.mean(v) / MiB:+.1f} MiB "
                  f"(range {min(v) / MiB:+.1f} .. {max(v) / MiB:+.1f})")
    if base is not None:
        print(f"frozen_base_bytes = {int(base)}")
        if resid["bf16"]:
            print(f"frozen_half_bytes = {int(statistics.mean(resid['bf16']) - base)}")


if __name__ == "__main__":
    main()
