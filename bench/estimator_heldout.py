"""Estimator accuracy on model shapes and settings outside bench/estimator_accuracy.py's matrix.

    python bench/estimator_heldout.py [--repeats 2]     # ~2 min on 2 cores

The matrix fixes one width and depth per family and power-of-two batch and sequence sizes; the
calibration models are fixed too. These rows change all of that at once (another family, Qwen2
with one key/value head and tied embeddings; odd widths, depths and vocabularies; sequence 640),
so they test what a user's model would see. Measured: the protocol of overseer_plan/_measure.py,
`--repeats` fresh processes per row, the mean reported with the runs' range.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
MiB = 2**20

ROWS = [
    ({"model_type": "qwen2", "num_hidden_layers": 4, "hidden_size": 320, "intermediate_size": 864,
      "num_attention_heads": 5, "num_key_value_heads": 1, "vocab_size": 6000, "max_position_embeddings": 1024,
      "tie_word_embeddings": True}, 4, 384, False, "fp32"),
    ({"model_type": "llama", "num_hidden_layers": 5, "hidden_size": 384, "intermediate_size": 1024,
      "num_attention_heads": 6, "num_key_value_heads": 2, "vocab_size": 10000, "max_position_embeddings": 1024,
      "tie_word_embeddings": False}, 2, 640, True, "fp32"),
    ({"model_type": "gpt2", "n_layer": 5, "n_embd": 320, "n_head": 5, "vocab_size": 9000, "n_positions": 1024},
     6, 256, False, "bf16"),
    ({"model_type": "gpt2", "n_layer": 3, "n_embd": 384, "n_head": 6, "vocab_size": 7000, "n_positions": 1024},
     6, 448, True, "fp32"),
    ({"model_type": "gpt_neox", "num_hidden_layers": 3, "hidden_size": 320, "intermediate_size": 1280,
      "num_attention_heads": 5, "vocab_size": 7000, "max_position_embeddings": 1024}, 6, 384, True, "bf16"),
]


def _cell(v: float | None, real: float) -> str:
    return "-" if v is None else f"{v / MiB:.0f} ({v / real - 1:+.1%})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=2, help="protocol runs per row")
    args = ap.parse_args()
    os.environ["OVERSEER_CACHE_DIR"] = tempfile.mkdtemp(prefix="overseer-heldout-")  # shipped defaults only
    from estimator_accuracy import _heap_models

    from overseer_plan._measure import measure
    from overseer_plan.estimate import EstimateConfig, estimate
    from overseer_plan.trace import quiet_transformers

    print("| model | batch x seq | ckpt | precision | measured MiB (runs) | traced (err) | replay half | "
          "allocator half | analytic (err) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for model, b, s, ckpt, prec in ROWS:
        runs = [measure({"config": dict(model), "batch_size": b, "seq_len": s, "gradient_checkpointing": ckpt,
                         "precision": prec, "steps": 3})["peak_delta_bytes"] for _ in range(args.repeats)]
        real = sum(runs) / len(runs)
        cfg = EstimateConfig(batch_size=b, seq_len=s, gradient_checkpointing=ckpt, precision=prec)
        with quiet_transformers():
            tr = estimate(dict(model), cfg, method="traced")
            an = estimate(dict(model), cfg, method="analytic")
        halves = _heap_models(tr)

        depth = model.get("num_hidden_layers", model.get("n_layer"))
        width = model.get("hidden_size", model.get("n_embd"))
        print(f"| {model['model_type']} {depth}x{width} | {b} x {s} | {'on' if ckpt else 'off'} | {prec} | "
              f"{real / MiB:.0f} ({min(runs) / MiB:.0f}-{max(runs) / MiB:.0f}) | {_cell(tr.peak_bytes, real)} | "
              f"{_cell(halves.get('replay_only'), real)} | {_cell(halves.get('allocator_only'), real)} | "
              f"{_cell(an.peak_bytes, real)} |",
              flush=True)


if __name__ == "__main__":
    main()
