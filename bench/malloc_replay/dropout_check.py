"""Is dropout why the GPT-2-style rows fragment more per churned byte than Llama- or NeoX-style ones?

    python bench/malloc_replay/dropout_check.py [--runs 5] [--shape 8x512] [--no-ckpt] [--precision fp32]

The matrix's GPT-2-style model trains with dropout 0.1 (transformers' GPT-2 default); the Llama- and
NeoX-style ones without. Dropout adds a mask per dropped tensor, and with dropout SDPA on CPU takes
its math path. This measures the protocol (overseer_plan/_measure.py) with dropout 0.1 and with all
three dropouts at 0, and traces both (tensor-level allocator model, no replay): if dropout were the
cause, measured minus the allocator model's peak would fall without it.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
MiB = 2**20


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--shape", default="8x512", help="BATCHxSEQ")
    ap.add_argument("--no-ckpt", dest="ckpt", action="store_false", help="without gradient checkpointing")
    ap.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    args = ap.parse_args()
    os.environ["OVERSEER_HEAP_REPLAY"] = "0"
    import transformers
    from estimator_accuracy import FAMILIES

    from overseer_plan._measure import measure
    from overseer_plan.calibration import DEFAULTS, cpu_rss_from_sim, heap_churn, simulate_glibc
    from overseer_plan.estimate import EstimateConfig
    from overseer_plan.trace import trace_peak

    transformers.logging.set_verbosity_error()
    b, s = (int(x) for x in args.shape.split("x"))
    for drop in (0.1, 0.0):
        spec = {**FAMILIES["gpt2-4x256"], "attn_pdrop": drop, "resid_pdrop": drop, "embd_pdrop": drop}
        job = {"config": spec, "batch_size": b, "seq_len": s, "gradient_checkpointing": args.ckpt,
               "precision": args.precision, "grad_accum": 1, "steps": 3}
        runs = [measure(job)["peak_delta_bytes"] / MiB for _ in range(args.runs)]
        kwargs = {k: v for k, v in spec.items() if k != "model_type"}
        config = transformers.CONFIG_MAPPING[spec["model_type"]](**kwargs)
        cfg = EstimateConfig(batch_size=b, seq_len=s, gradient_checkpointing=args.ckpt, precision=args.precision)
        run = trace_peak(config, cfg, device="cpu", depths=[config.n_layer]).runs[0]
        sim_bytes, churn_bytes = simulate_glibc(run.events), heap_churn(run.events)
        model = cpu_rss_from_sim(sim_bytes, DEFAULTS, churn_bytes, half=args.precision == "bf16") / MiB
        sim, churn = sim_bytes / MiB, churn_bytes / MiB
        m = statistics.median(runs)
        print(f"{b}x{s} ckpt {args.ckpt} {args.precision} dropout {drop}: measured {m:.0f} MiB "
              f"({min(runs):.0f}-{max(runs):.0f}, {len(runs)} runs), live {run.live_peak_bytes / MiB:.0f}, "
              f"allocator model {sim:.0f} + churn {churn:.0f} -> {model:.0f}, measured - peak {m - sim:.0f}",
              flush=True)


if __name__ == "__main__":
    main()
