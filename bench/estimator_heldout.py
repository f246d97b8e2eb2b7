"""Estimator accuracy on model shapes and settings outside bench/estimator_accuracy.py's matrix.

    python bench/estimator_heldout.py [--repeats 2] [--rows all|shapes|settings|families|deep|lora|lora-deep|8bit]

The matrix fixes one width and depth per family and power-of-two batch and sequence sizes; the
calibration models are fixed too. These rows change all of that at once (another family, Qwen2
with one key/value head and tied embeddings; odd widths, depths and vocabularies; sequence 640),
so they test what a user's model would see. The settings rows vary, one at a time, what the matrix
keeps fixed: SGD and Adafactor (as the trainer runs them), eager attention, fp16 autocast, pure
bf16, gradient accumulation. Measured: the protocol of overseer_plan/_measure.py,
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

QWEN = {"model_type": "qwen2", "num_hidden_layers": 4, "hidden_size": 320, "intermediate_size": 864,
        "num_attention_heads": 5, "num_key_value_heads": 1, "vocab_size": 6000, "max_position_embeddings": 1024,
        "tie_word_embeddings": True}
GPT2_5 = {"model_type": "gpt2", "n_layer": 5, "n_embd": 320, "n_head": 5, "vocab_size": 9000, "n_positions": 1024}
# Shapes: (model, settings). The matrix and the calibration use fp32/bf16 autocast, AdamW, sdpa.
SHAPE_ROWS = [
    (QWEN, dict(batch_size=4, seq_len=384)),
    ({"model_type": "llama", "num_hidden_layers": 5, "hidden_size": 384, "intermediate_size": 1024,
      "num_attention_heads": 6, "num_key_value_heads": 2, "vocab_size": 10000, "max_position_embeddings": 1024,
      "tie_word_embeddings": False}, dict(batch_size=2, seq_len=640, gradient_checkpointing=True)),
    (GPT2_5, dict(batch_size=6, seq_len=256, precision="bf16")),
    ({"model_type": "gpt2", "n_layer": 3, "n_embd": 384, "n_head": 6, "vocab_size": 7000, "n_positions": 1024},
     dict(batch_size=6, seq_len=448, gradient_checkpointing=True)),
    ({"model_type": "gpt_neox", "num_hidden_layers": 3, "hidden_size": 320, "intermediate_size": 1280,
      "num_attention_heads": 5, "vocab_size": 7000, "max_position_embeddings": 1024},
     dict(batch_size=6, seq_len=384, gradient_checkpointing=True, precision="bf16")),
]
# Settings the matrix never varies, one at a time on held-out models (optimizers as the trainer runs them).
SETTING_ROWS = [
    (QWEN, dict(batch_size=4, seq_len=384, optimizer="sgd")),
    (QWEN, dict(batch_size=4, seq_len=384, optimizer="adafactor")),
    (QWEN, dict(batch_size=4, seq_len=384, attention="eager")),
    (QWEN, dict(batch_size=4, seq_len=384, precision="fp16")),
    (QWEN, dict(batch_size=4, seq_len=384, precision="bf16-pure")),
    (QWEN, dict(batch_size=2, seq_len=384, grad_accum=4)),
    (GPT2_5, dict(batch_size=6, seq_len=256, attention="eager", gradient_checkpointing=True)),
    (GPT2_5, dict(batch_size=6, seq_len=256, optimizer="adafactor", precision="bf16-pure")),
]

# Architectures outside the matrix's three families, each as transformers builds it by default
# (Gemma 2 and Bloom have no SDPA path: the estimate and the protocol both take eager).
_W = {"num_hidden_layers": 4, "hidden_size": 256, "num_attention_heads": 4, "vocab_size": 8000,
      "max_position_embeddings": 1024, "pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2}
FAMILY_ROWS = [
    ({"model_type": "gemma", **_W, "intermediate_size": 704, "num_key_value_heads": 1, "head_dim": 64},
     dict(batch_size=4, seq_len=384)),
    ({"model_type": "gemma2", **_W, "intermediate_size": 704, "num_key_value_heads": 2, "head_dim": 64},
     dict(batch_size=2, seq_len=384, precision="bf16")),
    ({"model_type": "phi3", **_W, "intermediate_size": 704, "num_key_value_heads": 2},
     dict(batch_size=4, seq_len=384, gradient_checkpointing=True)),
    ({"model_type": "opt", **_W, "ffn_dim": 1024, "word_embed_proj_dim": 256}, dict(batch_size=4, seq_len=384)),
    ({"model_type": "falcon", **_W, "num_kv_heads": 1}, dict(batch_size=4, seq_len=384, precision="bf16")),
    ({"model_type": "mixtral", **_W, "intermediate_size": 352, "num_key_value_heads": 2, "num_local_experts": 4,
      "num_experts_per_tok": 2}, dict(batch_size=4, seq_len=256)),
    ({"model_type": "bloom", "n_layer": 4, "hidden_size": 256, "n_head": 4, "vocab_size": 8000},
     dict(batch_size=4, seq_len=256, gradient_checkpointing=True)),
    ({"model_type": "olmo2", **_W, "intermediate_size": 704, "num_key_value_heads": 2}, dict(batch_size=4, seq_len=384)),
    # Added in the thirteenth pass, after the closed form learned q/k norms, sandwich norms and routed
    # experts; measured once, nothing fitted on them.
    ({"model_type": "qwen3", **_W, "intermediate_size": 704, "num_key_value_heads": 2, "head_dim": 64},
     dict(batch_size=4, seq_len=384)),
    ({"model_type": "gemma3_text", **_W, "intermediate_size": 704, "num_key_value_heads": 2, "head_dim": 64},
     dict(batch_size=4, seq_len=384, precision="bf16")),
    ({"model_type": "qwen2_moe", **_W, "intermediate_size": 704, "num_key_value_heads": 2, "num_experts": 8,
      "num_experts_per_tok": 2, "moe_intermediate_size": 256, "shared_expert_intermediate_size": 512},
     dict(batch_size=4, seq_len=256)),
]

# LoRA on a frozen base, measured with peft (`pip install peft`), which the trace then also uses.
_QKVO = ["q_proj", "k_proj", "v_proj", "o_proj"]
LORA_ROWS = [
    (QWEN, dict(batch_size=4, seq_len=384, lora=dict(rank=8, targets=["q_proj", "v_proj"]))),
    (QWEN, dict(batch_size=4, seq_len=384, lora=dict(rank=16, targets=_QKVO + ["gate_proj", "up_proj", "down_proj"]))),
    (QWEN, dict(batch_size=4, seq_len=384, gradient_checkpointing=True, lora=dict(rank=8, targets=["q_proj", "v_proj"]))),
    (QWEN, dict(batch_size=4, seq_len=384, precision="bf16", lora=dict(rank=8, targets=["q_proj", "v_proj"]))),
    (QWEN, dict(batch_size=4, seq_len=384, lora=dict(rank=8, targets=_QKVO, dropout=0.1))),
    (GPT2_5, dict(batch_size=6, seq_len=256, lora=dict(rank=8, targets=["c_attn"]))),
    (QWEN, dict(batch_size=4, seq_len=384, precision="bf16-pure", lora=dict(rank=8, targets=["q_proj", "v_proj"]))),
    # fp16 autocast: the frozen-half offset was fitted on bf16 points only.
    (GPT2_5, dict(batch_size=6, seq_len=256, precision="fp16", lora=dict(rank=8, targets=["c_attn"]))),
]

# LoRA on real catalogue models (deep: traced at two reduced depths and extrapolated).
LORA_DEEP_ROWS = [
    ("qwen2-0.5b", dict(batch_size=1, seq_len=512, lora=dict(rank=8, targets=["q_proj", "v_proj"]))),
    ("gpt2", dict(batch_size=4, seq_len=512, gradient_checkpointing=True, lora=dict(rank=16, targets=["c_attn"]))),
]

# bitsandbytes' 8-bit AdamW (`pip install bitsandbytes`), as the trainer runs it; the last row's
# rank-8 adapters are under bitsandbytes' 4096-element minimum, so their states stay fp32.
EIGHT_BIT_ROWS = [
    (QWEN, dict(batch_size=4, seq_len=384, optimizer="adamw8bit")),
    (GPT2_5, dict(batch_size=6, seq_len=256, optimizer="adamw8bit")),
    ("gpt2", dict(batch_size=2, seq_len=256, optimizer="adamw8bit")),
    (QWEN, dict(batch_size=4, seq_len=384, optimizer="adamw8bit", lora=dict(rank=8, targets=["q_proj", "v_proj"]))),
]

# A deep, narrow modern model users fine-tune on CPUs: SmolLM2-135M's shape (HuggingFaceTB/SmolLM2-135M
# config.json: Llama, 30 layers, width 576, 9 query / 3 key-value heads, tied 49152-token embeddings),
# traced at two reduced depths and extrapolated 7.5x; and Qwen2-0.5B fully fine-tuned. All fp32: one
# run of the 30-layer model at 2 x 512 with bf16 autocast took over 12 min here.
SMOL = {"model_type": "llama", "num_hidden_layers": 30, "hidden_size": 576, "intermediate_size": 1536,
        "num_attention_heads": 9, "num_key_value_heads": 3, "vocab_size": 49152, "max_position_embeddings": 8192,
        "rope_theta": 100000.0, "rms_norm_eps": 1e-5, "tie_word_embeddings": True, "bos_token_id": 0,
        "eos_token_id": 0}
MODERN_DEEP_ROWS = [
    (SMOL, dict(batch_size=4, seq_len=256)),
    (SMOL, dict(batch_size=2, seq_len=512, gradient_checkpointing=True)),
    (SMOL, dict(batch_size=2, seq_len=256, grad_accum=4)),
    ("qwen2-0.5b", dict(batch_size=1, seq_len=256)),
]

# Deeper real models from the catalogue: traced at 2 and 4 layers on CPU and extrapolated to 12.
DEEP_ROWS = [
    ("gpt2", dict(batch_size=2, seq_len=256)),
    ("gpt2", dict(batch_size=4, seq_len=512, gradient_checkpointing=True)),
    ("gpt2", dict(batch_size=2, seq_len=512, precision="bf16")),
    ("pythia-160m", dict(batch_size=2, seq_len=256)),
]


def _cell(v: float | None, real: float) -> str:
    return "-" if v is None else f"{v / MiB:.0f} ({v / real - 1:+.1%})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=2, help="protocol runs per row")
    ap.add_argument("--rows", choices=("all", "shapes", "settings", "families", "deep", "lora", "lora-deep", "8bit", "modern-deep"),
                    default="all",
                    help="shapes: other models and shapes; settings: optimizers, attention, precisions, accumulation; "
                         "families: architectures outside the matrix (Gemma, Phi-3, OPT, Falcon, Mixtral, Bloom, ...); "
                         "deep: 12-layer catalogue models (GPT-2, Pythia-160M), ~5 min; "
                         "lora: LoRA adapters on a frozen base (needs peft); lora-deep: LoRA on Qwen2-0.5B and GPT-2; "
                         "8bit: bitsandbytes' 8-bit AdamW (needs bitsandbytes; the LoRA row also peft); "
                         "modern-deep: SmolLM2-135M's 30-layer shape and Qwen2-0.5B, fully fine-tuned, ~15 min")
    args = ap.parse_args()
    os.environ["OVERSEER_CACHE_DIR"] = tempfile.mkdtemp(prefix="overseer-heldout-")  # shipped defaults only
    from estimator_accuracy import _heap_models

    from overseer_plan._measure import measure
    from overseer_plan.estimate import EstimateConfig, estimate
    from overseer_plan.models import resolve_model_config
    from overseer_plan.trace import quiet_transformers

    print("| model | batch x seq | settings | measured MiB (runs) | traced (err) | replay half | allocator half | "
          "analytic (err) |")
    print("|---|---|---|---|---|---|---|---|")
    rows = {"all": SHAPE_ROWS + SETTING_ROWS + FAMILY_ROWS + DEEP_ROWS, "shapes": SHAPE_ROWS,
            "settings": SETTING_ROWS, "families": FAMILY_ROWS, "deep": DEEP_ROWS, "lora": LORA_ROWS,
            "lora-deep": LORA_DEEP_ROWS, "8bit": EIGHT_BIT_ROWS,
            "modern-deep": MODERN_DEEP_ROWS}[args.rows]
    for model, settings in rows:
        cfg = EstimateConfig(**settings)
        name = model if isinstance(model, str) else None
        if name:
            model = {"name": name, **resolve_model_config(name).to_dict()}
        job = {"config": {k: v for k, v in model.items() if k != "name"}, "batch_size": cfg.batch_size, "seq_len": cfg.seq_len,
               "grad_accum": cfg.grad_accum, "gradient_checkpointing": cfg.gradient_checkpointing,
               "precision": cfg.precision, "optimizer": cfg.optimizer, "steps": 3,
               "attention": settings.get("attention"),  # None: the default implementation, as the protocol says
               "lora": cfg.lora.model_dump() if cfg.lora else None}
        runs = [measure(job)["peak_delta_bytes"] for _ in range(args.repeats)]
        real = sum(runs) / len(runs)
        with quiet_transformers():
            tr = estimate(name or dict(model), cfg, method="traced")
            an = estimate(name or dict(model), cfg, method="analytic")
        halves = _heap_models(tr)

        depth = model.get("num_hidden_layers", model.get("n_layer"))
        if cfg.attention == "sdpa" and tr.config.attention != cfg.attention:
            settings = {**settings, "attention": f"{tr.config.attention} (no sdpa)"}
        width = model.get("hidden_size", model.get("n_embd"))
        shown = ", ".join(f"{k} {v}" for k, v in settings.items() if k not in ("batch_size", "seq_len")) or "-"
        print(f"| {name or model['model_type']} {depth}x{width} | {cfg.batch_size} x {cfg.seq_len} | {shown} | "
              f"{real / MiB:.0f} ({min(runs) / MiB:.0f}-{max(runs) / MiB:.0f}) | {_cell(tr.peak_bytes, real)} | "
              f"{_cell(halves.get('replay_only'), real)} | {_cell(halves.get('allocator_only'), real)} | "
              f"{_cell(an.peak_bytes, real)} |",
              flush=True)


if __name__ == "__main__":
    main()
