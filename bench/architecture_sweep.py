"""Does every causal-LM architecture estimate? Both methods on small configs of many model types.

    python bench/architecture_sweep.py [TYPE ...]    # ~2 min on 2 cores for the default 33 types

Each model type is built from its transformers config class with 4 layers, width 256 and vocab 8000
(plus what the type needs to be valid), and estimated at 4 x 512 tokens, fp32 and bf16 autocast,
with checkpointing off and on. Prints the analytic and traced live-tensor peaks (MiB) and their
difference, or the error that stopped the estimate. No measurement: this finds architectures the
estimator cannot handle and where its closed form drifts from the trace. The real-allocator replay is
off (OVERSEER_HEAP_REPLAY=0), since live tensors do not depend on it.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
MiB = 2**20

TYPES = ["llama", "gpt2", "gpt_neox", "mistral", "qwen2", "qwen3", "phi", "phi3", "gemma", "gemma2", "gemma3_text",
         "opt", "falcon", "bloom", "gpt_neo", "gptj", "codegen", "mixtral", "qwen2_moe", "deepseek_v3", "starcoder2",
         "olmo", "olmo2", "stablelm", "cohere", "gpt_bigcode", "biogpt", "mpt", "xglm", "nemotron", "persimmon",
         "smollm3", "glm"]
BASE = {"num_hidden_layers": 4, "hidden_size": 256, "num_attention_heads": 4, "num_key_value_heads": 2,
        "intermediate_size": 704, "vocab_size": 8000, "max_position_embeddings": 1024,
        "pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2}
# What some types need on top of BASE to be a valid small model.
EXTRA = {
    "gptj": {"rotary_dim": 32, "n_positions": 1024},
    "codegen": {"rotary_dim": 32, "n_positions": 1024},
    "gpt_neo": {"attention_types": [[["global", "local"], 2]], "num_layers": 4},
    "mixtral": {"num_local_experts": 8, "num_experts_per_tok": 2},
    "qwen2_moe": {"num_experts": 8, "num_experts_per_tok": 2, "moe_intermediate_size": 352,
                  "shared_expert_intermediate_size": 704},
    "deepseek_v3": {"num_key_value_heads": 4, "n_routed_experts": 8, "num_experts_per_tok": 2,
                    "moe_intermediate_size": 352, "first_k_dense_replace": 1, "q_lora_rank": None,
                    "kv_lora_rank": 64, "qk_rope_head_dim": 16, "qk_nope_head_dim": 32, "v_head_dim": 32,
                    "n_group": 1, "topk_group": 1},
}
# Types that name depth and width their own way.
ALIASES = {"n_layer": 4, "n_embd": 256, "n_head": 4, "num_layers": 4, "ffn_dim": 704, "word_embed_proj_dim": 256,
           "n_positions": 1024, "n_inner": 704}
SHAPES = [("fp32", False), ("bf16", False), ("fp32", True), ("bf16", True)]


def config_for(model_type: str) -> dict:
    import transformers

    extra = EXTRA.get(model_type, {})
    config = transformers.CONFIG_MAPPING[model_type](**{**BASE, **extra})
    for name, value in ALIASES.items():
        if hasattr(config, name) and name not in extra:
            setattr(config, name, value)
    return config.to_dict()


def main() -> None:
    os.environ["OVERSEER_HEAP_REPLAY"] = "0"
    os.environ["OVERSEER_CACHE_DIR"] = tempfile.mkdtemp(prefix="overseer-sweep-")
    from overseer_plan.estimate import EstimateConfig, estimate
    from overseer_plan.trace import quiet_transformers

    print("| model type | params | " + " | ".join(f"{p}{' ckpt' if c else ''}: analytic / traced live MiB"
                                               for p, c in SHAPES) + " |")
    print("|---|---|" + "---|" * len(SHAPES))
    for model_type in sys.argv[1:] or TYPES:
        cells, params, note = [], "-", ""
        try:
            config = config_for(model_type)
            for precision, ckpt in SHAPES:
                cfg = EstimateConfig(batch_size=4, seq_len=512, precision=precision, gradient_checkpointing=ckpt)
                with quiet_transformers():
                    an = estimate(config, cfg, method="analytic")
                    tr = estimate(config, cfg, method="traced")
                params = f"{an.model_info.num_params / 1e6:.1f} M"
                cells.append(f"{an.live_tensor_bytes / MiB:.0f} / {tr.live_tensor_bytes / MiB:.0f} "
                             f"({an.live_tensor_bytes / tr.live_tensor_bytes - 1:+.0%})")
                note = next((n for n in tr.notes if "no SDPA" in n), note)
        except Exception as e:  # a sweep reports every failure and goes on
            cells = [f"FAILED: {type(e).__name__}: {str(e).splitlines()[0][:120]}"] + [""] * (len(SHAPES) - 1)
        print(f"| {model_type}{' (eager)' if note else ''} | {params} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
