"""Closed-form memory of one training step of an HF causal LM (live tensor bytes).

Per-layer activations follow Korthikanti et al. 2022 ("Reducing Activation Recomputation in
Large Transformer Models", arXiv 2205.05198, Sec. 4.1: sbh(34 + 5as/h) for a GeLU block in
16-bit), re-derived tensor by tensor for what HF's modelling code actually saves for
backward: RMSNorm vs LayerNorm, SwiGLU (3 matrices of width I) vs GeLU MLP, GQA k/v widths,
fused (GPT-2, NeoX) vs separate projections, rotary copies, dropout masks (1 byte per
element), the s x s probabilities of eager/math attention (fused SDPA keeps only a
logsumexp), fp32 norms under autocast and the autocast cache of 16-bit weight copies.
The loss term is HF's ForCausalLMLoss: fp32 logits through log_softmax, whose output is saved;
at the start of backward two more fp32 logits-sized buffers exist (the reference measured
"Temp = exactly 2 x fp32 logits", /work/shared/reference/estimators.md Sec. 9). Checked
against traced runs in tests/overseer_plan/test_estimate.py.

Only arithmetic happens per call; the parameter census (a model built on the meta device)
is cached per config, so a call takes microseconds after the first per model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Callable

    from transformers import PretrainedConfig

    from overseer_plan.estimate import EstimateConfig

_SHAPES: dict[str, ModelShape] = {}


@dataclass(frozen=True)
class ModelShape:
    """What the formulas need from a model: architecture numbers and an exact parameter census."""

    family: str  # 'llama' (RMSNorm, rotary, separate q/k/v), 'gpt2' (fused c_attn), 'neox' (fused qkv, partial rotary)
    num_layers: int
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int
    gated_mlp: bool
    rms_norm: bool
    gelu_ops: int  # tensors the MLP activation saves: 1 fused kernel, 4 for GPT-2's composed gelu_new
    attn_dropout: float
    resid_dropout: float
    embd_dropout: float
    parallel_residual: bool
    max_positions: int | None
    num_params: int
    embedding_params: int
    per_layer_params: int
    largest_param: int
    linear_params: int  # weights of nn.Linear/Conv1D layers (autocast caches 16-bit copies of these)
    param_numels: tuple[int, ...] = field(repr=False)
    param_shapes: tuple[tuple[int, ...], ...] = field(default=(), repr=False)
    # LoRA-able linear layers: name -> (count over the model, in_features and out_features summed over
    # those layers). Sums, because one name may hold layers of different widths: GPT-2's `c_proj` is
    # both the attention's 768 -> 768 and the MLP's 3072 -> 768.
    linears: dict[str, tuple[int, int, int]] = field(default_factory=dict, repr=False)
    supports_sdpa: bool = True  # False where transformers has no SDPA path for the class (Bloom, GPT-J, ...)
    # Norms in a block: over the hidden width (2 in most families, 4 in Gemma 2/3's sandwich
    # blocks), and whether queries and keys are normalised too (Qwen3, Gemma 3, OLMo 2).
    block_norms: int = 2
    qk_norm: bool = False
    attn_softcap: bool = False  # eager scores soft-capped with tanh (Gemma 2), which saves its output
    logit_softcap: bool = False  # logits soft-capped with tanh before the loss (Gemma 2)
    # Mixture of experts (Mixtral, Qwen-MoE, DeepSeek, OLMoE): blocks whose MLP routes each token
    # to `experts_per_token` of `experts` experts (0 for dense models), the experts' width, and the
    # summed width of always-on shared experts (`shared_expert_gated`: scaled by a sigmoid gate).
    # Multi-head latent attention (DeepSeek V2/V3): keys and values come out of a normalised
    # `mla_kv_rank`-wide latent; queries and keys are `mla_qk_head` wide per head, values `mla_v_head`,
    # of which `mla_rope` dimensions carry the rotary part; queries have a latent of `mla_q_rank` (0: none).
    mla_kv_rank: int = 0
    mla_q_rank: int = 0
    mla_rope: int = 0
    mla_qk_head: int = 0
    mla_v_head: int = 0
    moe_layers: int = 0
    experts: int = 0
    experts_per_token: int = 0
    expert_intermediate: int = 0
    expert_gated: bool = True
    shared_expert_intermediate: int = 0
    shared_expert_gated: bool = False


def model_shape(config: PretrainedConfig | Callable[[], PretrainedConfig], fingerprint: str) -> ModelShape:
    """The cached `ModelShape` of a config (built on the meta device on first use).

    `config` may be a function returning it, called only when the census is not cached.

    Cached in memory and on disk (`calibration.cache_dir()/census/`, one JSON file per config
    fingerprint and transformers version): building the model on meta costs ~0.3-1 s per
    process (plus importing the modeling module), the census is exact and depends only on the
    config and the transformers version, so a later process reads it back instead.
    """
    shape = _SHAPES.get(fingerprint)
    if shape is None:
        shape = _read_census(fingerprint)
        if shape is None:
            shape = _census(config() if callable(config) else config)
            _write_census(fingerprint, shape)
        _SHAPES[fingerprint] = shape
    return shape


_CENSUS_FORMAT = 7  # 7: `linears` holds summed widths


def _census_path(fingerprint: str) -> Any:
    import hashlib
    from importlib.metadata import version

    from overseer_plan.calibration import cache_dir

    key = hashlib.sha256(f"{fingerprint}\0transformers={version('transformers')}".encode()).hexdigest()[:32]
    return cache_dir() / "census" / f"{key}.json"


def _read_census(fingerprint: str) -> ModelShape | None:
    """The census cached on disk, or None when missing, unreadable, stale or malformed."""
    import dataclasses
    import json

    try:
        data = json.loads(_census_path(fingerprint).read_text(encoding="utf-8"))
        if data.get("format") != _CENSUS_FORMAT or data.get("fingerprint") != fingerprint:
            return None
        fields = dict(data["shape"])
        names = {f.name for f in dataclasses.fields(ModelShape)}
        if set(fields) != names:
            return None
        fields["param_numels"] = tuple(int(n) for n in fields["param_numels"])
        fields["param_shapes"] = tuple(tuple(int(d) for d in sh) for sh in fields["param_shapes"])
        fields["linears"] = {str(k): (int(v[0]), int(v[1]), int(v[2])) for k, v in fields["linears"].items()}
        shape = ModelShape(**fields)
        if shape.num_params != sum(shape.param_numels) or shape.num_layers < 1:
            return None
        return shape
    except (OSError, ValueError, TypeError, KeyError, IndexError, AttributeError):
        return None


def _write_census(fingerprint: str, shape: ModelShape) -> None:
    """Best effort: an unwritable cache dir only costs the next process a rebuild."""
    import dataclasses
    import json

    from overseer_plan._io import atomic_write_text

    data = {"format": _CENSUS_FORMAT, "fingerprint": fingerprint, "shape": dataclasses.asdict(shape)}
    try:
        atomic_write_text(_census_path(fingerprint), json.dumps(data, separators=(",", ":")))
    except OSError:
        pass


def linear_features(module: Any) -> tuple[int, int] | None:
    """(in, out) features of a LoRA-able linear layer: torch's Linear, or transformers' Conv1D (GPT-2's
    c_attn and c_proj, weight stored [in, out]); None for any other module."""
    import torch

    weight = getattr(module, "weight", None)
    if weight is None or weight.dim() != 2:
        return None
    if isinstance(module, torch.nn.Linear):
        return module.in_features, module.out_features
    if type(module).__name__ == "Conv1D":
        return int(weight.shape[0]), int(weight.shape[1])
    return None


def _census(config: PretrainedConfig) -> ModelShape:
    """Instantiate the real HF class on the meta device and count what it holds.

    `parameters()` de-duplicates shared tensors, so tied embeddings count once and an untied
    lm_head is included (accelerate's estimator builds `AutoModel` and misses it).
    """
    import torch
    import transformers

    from overseer_plan.errors import UserInputError
    from overseer_plan.models import supports_sdpa
    from overseer_plan.trace import quiet_transformers

    try:
        with torch.device("meta"), quiet_transformers():
            model = transformers.AutoModelForCausalLM.from_config(config)
    except (AssertionError, ValueError, TypeError, RuntimeError, IndexError, KeyError) as e:
        # An inconsistent config (e.g. a pad_token_id outside the vocabulary) fails inside transformers.
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserInputError(f"model_type {config.model_type!r}: transformers cannot build a model from this "
                             f"config ({first[:160]}); check its sizes and token ids") from None
    numels = tuple(int(p.numel()) for p in model.parameters())
    emb = model.get_input_embeddings()
    linears: dict[str, list[int]] = {}
    linear_params = 0
    for name, mod in model.named_modules():
        features = linear_features(mod) if mod is not emb else None
        if features is None:
            continue
        fin, fout = features
        linear_params += mod.weight.numel()
        key = name.rsplit(".", 1)[-1]
        entry = linears.setdefault(key, [0, 0, 0])
        entry[0] += 1
        entry[1] += int(fin)
        entry[2] += int(fout)
    layers = int(config.num_hidden_layers)
    blocks = _find_blocks(model)
    per_layer = sum(int(p.numel()) for p in blocks[0].parameters()) if blocks else 0
    c = config
    mt = c.model_type
    family = "gpt2" if mt == "gpt2" else "neox" if mt == "gpt_neox" else "llama"
    hidden = int(c.hidden_size)
    heads = int(c.num_attention_heads)
    head_dim = int(getattr(c, "head_dim", None) or hidden // heads)
    inter = (_mlp_width(blocks[0] if blocks else None, hidden)
             or getattr(c, "intermediate_size", None) or getattr(c, "n_inner", None) or 4 * hidden)
    act = str(getattr(c, "hidden_act", None) or getattr(c, "activation_function", "gelu"))
    gated = any(n in linears for n in ("gate_proj", "w1", "gate_up_proj"))
    return ModelShape(
        family=family,
        num_layers=layers,
        hidden=hidden,
        heads=heads,
        kv_heads=int(getattr(c, "num_key_value_heads", None) or heads),
        head_dim=head_dim,
        intermediate=int(inter),
        vocab=int(c.vocab_size),
        gated_mlp=gated,
        rms_norm=_uses_rms_norm(blocks[0] if blocks else model, family),
        gelu_ops=4 if act == "gelu_new" and family == "gpt2" else 1,
        attn_dropout=_first_rate(c, "attn_pdrop", "attention_dropout", "attention_probs_dropout_prob"),
        resid_dropout=_first_rate(c, "resid_pdrop", "hidden_dropout", "hidden_dropout_prob"),
        embd_dropout=float(getattr(c, "embd_pdrop", 0.0) or 0.0),
        parallel_residual=bool(getattr(c, "use_parallel_residual", False)),
        max_positions=_max_positions(c),
        num_params=sum(numels),
        embedding_params=int(emb.weight.numel()),
        per_layer_params=per_layer,
        largest_param=max(numels),
        linear_params=linear_params,
        param_numels=numels,
        param_shapes=tuple(tuple(int(d) for d in p.shape) for p in model.parameters()),
        linears={k: (v[0], v[1], v[2]) for k, v in linears.items()},
        supports_sdpa=supports_sdpa(config),
        **_norm_census(blocks[0] if blocks else None, hidden),
        attn_softcap=bool(getattr(c, "attn_logit_softcapping", None)),
        logit_softcap=bool(getattr(c, "final_logit_softcapping", None)),
        **_moe_census(model, c),
        **_mla_census(c),
    )


def _mla_census(config: Any) -> dict[str, Any]:
    """The latent-attention fields of `ModelShape` (configs with a `kv_lora_rank`, DeepSeek V2/V3)."""
    rank = getattr(config, "kv_lora_rank", None)
    if not isinstance(rank, int) or rank <= 0:
        return {}
    rope, nope = int(config.qk_rope_head_dim), int(config.qk_nope_head_dim)
    return {"mla_kv_rank": rank, "mla_q_rank": int(getattr(config, "q_lora_rank", None) or 0), "mla_rope": rope,
            "mla_qk_head": rope + nope, "mla_v_head": int(config.v_head_dim)}


def _mlp_width(block: Any, hidden: int) -> int | None:
    """The MLP's inner width as the block builds it: the widest input of a projection back to the
    hidden width inside the block's MLP (config names differ, and some configs carry an
    `intermediate_size` their class ignores, as Falcon's does)."""
    if block is None:
        return None
    widths = []
    for name, mod in block.named_modules():
        if not any(part in name for part in ("mlp", "ffn", "feed_forward")) or "expert" in name:
            continue
        features = linear_features(mod)
        if features is not None and features[1] == hidden:
            widths.append(features[0])
    return max(widths) if widths else None


def _norm_census(block: Any, hidden: int) -> dict[str, Any]:
    """`block_norms` and `qk_norm` of `ModelShape`, from one block's norm modules (their weights' width)."""
    if block is None:
        return {}
    widths, names = [], set()
    for name, mod in block.named_modules():
        if "Norm" not in type(mod).__name__:
            continue
        leaf = name.rsplit(".", 1)[-1]
        names.add(leaf)
        if leaf in ("q_norm", "k_norm"):  # per-head widths can equal the hidden width
            continue
        weight = getattr(mod, "weight", None)
        shape = getattr(mod, "normalized_shape", None) or (tuple(weight.shape) if weight is not None else ())
        widths.append(int(shape[-1]) if shape else 0)
    block_norms = sum(w == hidden for w in widths)
    return {"block_norms": block_norms or 2, "qk_norm": {"q_norm", "k_norm"} <= names}


def _moe_census(model: Any, config: Any) -> dict[str, Any]:
    """The routed-experts fields of `ModelShape`, read from the built modules.

    transformers 5 keeps a block's experts in one module holding 3-D `down_proj` (and
    `gate_up_proj` or `up_proj`) parameters and a `num_experts` attribute, beside a router and,
    in some families, shared experts (`shared_expert` / `shared_experts`, a dense MLP).
    """
    import torch

    experts = [m for m in model.modules()
               if isinstance(getattr(m, "down_proj", None), torch.nn.Parameter) and m.down_proj.dim() == 3
               and isinstance(getattr(m, "num_experts", None), int)]
    if not experts:
        return {}
    first = experts[0]
    # down_proj is (experts, hidden, intermediate), or (experts, intermediate, hidden) when transposed.
    inter = int(first.down_proj.shape[1] if getattr(first, "is_transposed", False) else first.down_proj.shape[2])
    shared, gated_shared = 0, False
    for name, mod in model.named_modules():
        leaf = name.rsplit(".", 1)[-1]
        if leaf in ("shared_expert", "shared_experts"):
            down = getattr(mod, "down_proj", None)
            if isinstance(down, torch.nn.Linear):
                shared = int(down.in_features)
                parent = model.get_submodule(name.rsplit(".", 1)[0])
                gated_shared = isinstance(getattr(parent, "shared_expert_gate", None), torch.nn.Linear)
            break
    top_k = getattr(config, "num_experts_per_tok", None) or getattr(config, "top_k", None) or 1
    return {
        "moe_layers": len(experts),
        "experts": int(first.num_experts),
        "experts_per_token": int(top_k),
        "expert_intermediate": inter,
        "expert_gated": bool(getattr(first, "has_gate", hasattr(first, "gate_up_proj"))),
        "shared_expert_intermediate": shared,
        "shared_expert_gated": gated_shared,
    }


def _uses_rms_norm(block: Any, family: str) -> bool:
    """Whether the block normalises with RMSNorm (by its norm modules' classes; the family when it has none)."""
    import torch

    modules = list(block.modules())
    if any("RMSNorm" in type(m).__name__ for m in modules):
        return True
    if any(isinstance(m, torch.nn.LayerNorm) or type(m).__name__.endswith("LayerNorm") for m in modules):
        return False
    return family == "llama"


def _first_rate(config: Any, *names: str) -> float:
    """The first of these dropout-rate attributes the config sets (families name them differently)."""
    for name in names:
        value = getattr(config, name, None)
        if isinstance(value, (int, float)) and value:
            return float(value)
    return 0.0


def _find_blocks(model: Any) -> list:
    import torch

    for mod in model.modules():
        if isinstance(mod, torch.nn.ModuleList) and len(mod) > 0:
            return list(mod)
    return []


def _max_positions(config: Any) -> int | None:
    for attr in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        val = getattr(config, attr, None)
        if isinstance(val, int) and val > 0:
            return val
    return None


@dataclass
class StepMemory:
    """Live tensor bytes of one step, by category, at the peak."""

    parameters: int
    gradients: int
    optimizer_states: int
    activations: int
    temporaries: int
    peak_phase: str
    trainable_params: int

    @property
    def total(self) -> int:
        return self.parameters + self.gradients + self.optimizer_states + self.activations + self.temporaries


def lora_params(shape: ModelShape, rank: int, targets: list[str] | None) -> int:
    """Adapter parameters: r x (in + out) per adapted linear (Hu et al. 2021, arXiv 2106.09685)."""
    names = targets or default_lora_targets(shape)
    return sum(rank * (fin + fout) for key, (_, fin, fout) in shape.linears.items() if key in names)


def lora_shapes(shape: ModelShape, rank: int, targets: list[str] | None) -> tuple[tuple[int, ...], ...]:
    """The adapters' matrices, A (r x in) and B (out x r) per adapted linear (widths averaged per name)."""
    names = targets or default_lora_targets(shape)
    return tuple(sh for key, (n, fin, fout) in shape.linears.items() if key in names and n
                 for _ in range(n) for sh in ((rank, fin // n), (fout // n, rank)))


def default_lora_targets(shape: ModelShape) -> list[str]:
    """peft's per-family default targets (query/value projections)."""
    return lora_targets_among(set(shape.linears))


def lora_targets_among(names: set[str]) -> list[str]:
    """peft's usual default among these linear-layer names: the attention query/value projections,
    by the names the family uses; else every linear but the head."""
    for pair in (["q_proj", "v_proj"], ["query_key_value"], ["c_attn"]):
        if set(pair) <= names:
            return pair
    return sorted(names - {"lm_head"})


def _uses_math_attention(shape: ModelShape, cfg: EstimateConfig, device: str) -> bool:
    """Whether attention materialises s x s probabilities.

    eager always does; SDPA on CPU falls back to the math kernel when dropout is on (measured:
    torch 2.13 `_fused_sdp_choice` returns MATH for dropout_p > 0, FLASH otherwise); on CUDA
    flash / memory-efficient kernels handle dropout, but fp32 inputs with grouped key/value heads
    take the math kernel there (flash needs 16 bits, the efficient kernel takes no `enable_gqa`;
    measured on an H100, trace.py `_cuda_kernels`).
    """
    if cfg.attention == "eager":
        return True
    if device == "cuda":
        return cfg.precision == "fp32" and shape.kv_heads < shape.heads
    return shape.attn_dropout > 0


def step_block_sizes(shape: ModelShape, cfg: EstimateConfig, device: str) -> list[int]:
    """Sizes of the largest tensors a training step creates and frees, per micro-batch: the fp32
    logits the loss reads, the MLP's intermediate and, where attention materialises it, the s x s
    score matrix."""
    T, s = cfg.batch_size * cfg.seq_len, cfg.seq_len
    e = 4 if cfg.precision == "fp32" else 2
    sizes = [T * shape.vocab * 4, T * shape.intermediate * e]
    if shape.moe_layers:  # the experts' up projection over the routed pairs, in the weights' dtype
        sizes.append(T * shape.experts_per_token * 2 * shape.expert_intermediate * (2 if cfg.precision == "bf16-pure" else 4))
    if _uses_math_attention(shape, cfg, device):
        sizes.append(cfg.batch_size * shape.heads * s * s * e)
    return sizes


def dropout_mask_bytes(elem_bytes: int, device: str) -> int:
    """Bytes per element that dropout saves for backward.

    CUDA runs the fused `native_dropout` kernel, which saves a bool mask (1 byte; Korthikanti
    et al. 2022 count the same). On CPU `F.dropout` is not fused (torch's `is_fused_kernel_acceptable`
    is CUDA/XPU-only): `_dropout_impl` multiplies by a noise tensor in the input's dtype and
    the multiplication saves that noise.
    """
    return 1 if device == "cuda" else elem_bytes


def layer_activation_bytes(shape: ModelShape, cfg: EstimateConfig, device: str, *, largest: bool = False) -> float:
    """Bytes one decoder block saves for backward (no checkpointing), for the whole micro-batch.

    The mean over the blocks; `largest`: the largest block's (they differ where a mixture-of-experts
    model keeps some dense blocks)."""
    T = cfg.batch_size * cfg.seq_len
    b, s, h = cfg.batch_size, cfg.seq_len, shape.hidden
    nq, nkv, inner = shape.heads * shape.head_dim, shape.kv_heads * shape.head_dim, shape.intermediate
    mixed = cfg.precision in ("fp16", "bf16")
    e = 2 if cfg.precision != "fp32" else 4  # matmul outputs / attention
    res = 2 if cfg.precision == "bf16-pure" else 4  # residual stream (fp32 under autocast)

    # Norms, per token x hidden: input + normalised value + output saved by the next linear
    # (16-bit cast copy under autocast). HF RMSNorm computes in fp32 (upcast copies in bf16).
    if shape.rms_norm:
        norm = {4: 12, 2: 8}[res] if not mixed else 10
    else:
        norm = res + (2 if mixed else res)
    # Sandwich blocks (Gemma 2/3) also normalise the attention and MLP outputs before the residual
    # add, which saves nothing: those keep their input and the normalised value, not an output.
    norms = (2 * norm + max(0, shape.block_norms - 2) * (norm - res)) * T * h
    if shape.qk_norm:
        # q_norm and k_norm save an fp32 copy of their input and the normalised value (HF norms upcast).
        norms += 8 * T * (nq + nkv)

    # Attention inputs saved by the kernel.
    if shape.family == "gpt2":
        qkv = T * (nq + 2 * nkv) * e  # views of the fused c_attn output
    elif shape.family == "neox":
        qkv = T * (nq + 2 * nkv) * e + T * (nq + nkv) * e  # fused output (v is a view) + rotary q, k
    else:
        qkv = T * (nq + 2 * nkv) * e  # rotary q, k copies and v
    out = 2 * T * nq * e  # attention output + the contiguous copy o_proj saves
    if shape.mla_kv_rank:
        # Latent attention: the kv latent (+ its rotary part) kept by its norm, the norm's output kept
        # by the key/value up-projection, whose output the values view; new query and key tensors
        # (nope and rope parts joined); the output and o_proj's copy of it (v-wide heads).
        H, r, qk, v = shape.heads, shape.mla_kv_rank, shape.mla_qk_head, shape.mla_v_head
        nq = nkv = H * qk
        latent = shape.mla_rope * e + r * norm + (shape.mla_q_rank * norm if shape.mla_q_rank else 0)
        qkv = T * latent + T * (2 * H * qk + H * (qk - shape.mla_rope + v)) * e
        out = 3 * T * H * v * e
    mask_b = dropout_mask_bytes(e, device)
    if _uses_math_attention(shape, cfg, device):
        probs = b * shape.heads * s * s
        drop = shape.attn_dropout > 0
        # fp32 softmax output (+ 16-bit cast), dropout mask and output (Korthikanti's 5as/h term).
        attn = probs * (4 + (e if e != 4 else 0) + ((mask_b + e) if drop else 0))
        if shape.attn_softcap:
            attn += probs * e  # tanh's output, saved for its backward
        if cfg.attention == "sdpa":
            attn += T * (nq + nkv) * e  # math SDPA scales q and k into new tensors
        if shape.kv_heads != shape.heads:
            attn += 2 * T * nq * e  # repeat_kv copies
    else:
        attn = b * shape.heads * s * 4  # logsumexp
    # MLP: SwiGLU saves gate, act(gate), up, product; GeLU saves fc output (+ gelu_new's
    # composed intermediates) and its output.
    mlp = 4 * T * inner * e if shape.gated_mlp else (1 + shape.gelu_ops) * T * inner * e
    if device == "cuda" and cfg.precision in ("fp16", "bf16") and shape.gelu_ops > 1:
        # CUDA autocast runs pow (gelu_new's x**3) in fp32, and the rest of the composed chain follows
        # (trace.py `_cuda_autocast`; measured on an H100).
        mlp = T * inner * e + shape.gelu_ops * T * inner * 4
    if shape.moe_layers:
        moe = moe_mlp_bytes(shape, cfg)
        dense_layers = max(0, shape.num_layers - shape.moe_layers)
        if largest:
            mlp = max(moe, mlp if dense_layers else 0)
        else:
            mlp = (shape.moe_layers * moe + dense_layers * mlp) / shape.num_layers
    # Residual dropout masks (attention and MLP outputs).
    dropm = 2 * T * h * mask_b if shape.resid_dropout > 0 else 0
    return norms + qkv + out + attn + mlp + dropm


def moe_mlp_bytes(shape: ModelShape, cfg: EstimateConfig) -> float:
    """Bytes a routed-experts MLP saves for backward, for the whole micro-batch.

    transformers 5 runs the experts with `grouped_mm` over the S = tokens x experts_per_token
    routed pairs, sorted by expert (integrations/moe.py `grouped_mm_experts_forward`). grouped_mm is
    not autocast: its input is cast to the weights' dtype, so the experts compute in fp32 under
    mixed precision. Saved: the gathered inputs, the up projection (its gate and up halves are views
    that keep it whole), the activation, their product, and the down projection (kept by the routing
    weights' multiply), plus the router's fp32 softmax and the sort's indices. Shared experts are a
    dense MLP over every token, under autocast like any linear.
    """
    T, h = cfg.batch_size * cfg.seq_len, shape.hidden
    S, i = T * shape.experts_per_token, shape.expert_intermediate
    ex = 2 if cfg.precision == "bf16-pure" else 4
    e = 2 if cfg.precision != "fp32" else 4
    inner = (2 * i + i + i) if shape.expert_gated else (i + i)
    routed = S * (2 * h + inner) * ex + S * (4 + 3 * 8)
    router = T * shape.experts * 4 + T * shape.experts_per_token * 16
    si = shape.shared_expert_intermediate
    shared = 4 * T * si * e if si else 0
    if si and shape.shared_expert_gated:
        shared += T * h * e + T * 4  # the shared output and its sigmoid gate, saved by their multiply
    return routed + router + shared


def step_memory(shape: ModelShape, cfg: EstimateConfig, device: str) -> StepMemory:
    """Peak live tensor bytes of a steady-state step, and which phase it falls in."""
    T = cfg.batch_size * cfg.seq_len
    h, V = shape.hidden, shape.vocab
    pbytes = 2 if cfg.precision == "bf16-pure" else 4
    mixed = cfg.precision in ("fp16", "bf16")
    e = 2 if cfg.precision != "fp32" else 4

    if cfg.lora is not None:
        n_lora = lora_params(shape, cfg.lora.rank, cfg.lora.targets)
        trainable, shapes = n_lora, lora_shapes(shape, cfg.lora.rank, cfg.lora.targets)
        largest = max((cfg.lora.rank * max(fin, fout) // n for n, fin, fout in shape.linears.values()), default=0)
        params = shape.num_params * pbytes + n_lora * pbytes
    else:
        trainable, shapes, largest = shape.num_params, shape.param_shapes, shape.largest_param
        params = shape.num_params * pbytes
    grads = trainable * pbytes
    states, opt_temp = _optimizer_bytes(cfg.optimizer, trainable, shapes, largest, pbytes, device)

    # Saved activations.
    per_layer = layer_activation_bytes(shape, cfg, device)
    L = shape.num_layers
    res = 2 if cfg.precision == "bf16-pure" else 4
    # Embedding output (+ the dropout's saved mask/noise).
    embed = T * h * res + (T * h * dropout_mask_bytes(res, device) if shape.embd_dropout > 0 else 0)
    final_norm = T * h * (res + (2 if mixed else res))
    logsm = T * V * 4  # fp32 log_softmax output saved by the loss
    # Soft-capped logits (Gemma 2): tanh's output, in the logits' dtype, lives from the forward's end
    # until the loss's gradient has passed through it. (Against the trace: exact with checkpointing,
    # 8% high in fp32 without, where the backward's buffers overlap less; erring high.)
    softcap = T * V * e if shape.logit_softcap else 0
    # Autocast's 16-bit weight copies: cached for trainable weights until autocast exits; for a
    # frozen (LoRA) base each copy is saved by its matmul instead, which checkpointing drops.
    cast_cache = 2 * shape.linear_params if mixed and (cfg.lora is None or not cfg.gradient_checkpointing) else 0
    lora_targets = (cfg.lora.targets or default_lora_targets(shape)) if cfg.lora is not None else []
    if cfg.lora is not None and not mixed:
        # Frozen linears save only their input; LoRA adds r-wide intermediates (small).
        lora_act = 2 * T * cfg.lora.rank * e * len(lora_targets) * L
    else:
        lora_act = 0
    if cfg.lora is not None and cfg.lora.dropout > 0:
        # peft drops out each adapter's input separately, and lora_A saves that copy (+ dropout's
        # mask or noise): one input-sized tensor per adapted linear, per block that keeps its own.
        per_block = sum(fin for key, (_, fin, _) in shape.linears.items() if key in lora_targets) / max(L, 1)
        kept = 1 if cfg.gradient_checkpointing else L
        lora_act += kept * T * per_block * (res + dropout_mask_bytes(res, device))
    if cfg.gradient_checkpointing:
        layers_saved = L * T * h * res  # each block keeps only its input
        recompute = layer_activation_bytes(shape, cfg, device, largest=True)  # one block re-created in backward
    else:
        layers_saved, recompute = L * per_layer, 0
    acts = layers_saved + embed + final_norm + logsm + cast_cache + lora_act

    grads_alive = grads if cfg.grad_accum > 1 else 0
    fp32_logits = T * V * 4
    # (1) forward end: 16-bit logits + their fp32 copy + saved log_softmax output.
    fwd_tmp = T * V * e + (fp32_logits if e != 4 else 0) + softcap
    # (2) backward start: two fp32 logits-sized gradient buffers (nll_loss / log_softmax backward)
    #     plus the lm_head weight gradient being written.
    head_grad = 0 if (cfg.grad_accum > 1 or cfg.lora is not None) else shape.embedding_params * pbytes
    bwd_tmp = 2 * fp32_logits + head_grad + softcap
    # (3) later in backward with checkpointing: one recomputed block + its input gradient, with most
    #     gradients already written.
    gc_tmp = recompute + 2 * T * h * res
    candidates = {
        "forward": params + states + grads_alive + acts - logsm + fwd_tmp + logsm,
        "backward": params + states + grads_alive + acts + bwd_tmp,
        "optimizer": params + states + grads + opt_temp,
    }
    if cfg.gradient_checkpointing:
        candidates["backward"] = max(candidates["backward"], params + states + grads + layers_saved + gc_tmp)
    phase = max(candidates, key=lambda k: candidates[k])
    total = candidates[phase]
    if phase == "optimizer":
        act_part, tmp_part, grad_part = 0, opt_temp, grads
    else:
        grad_part = grads_alive if not (phase == "backward" and cfg.gradient_checkpointing
                                         and total > params + states + grads_alive + acts + bwd_tmp) else grads
        act_part = min(acts, total - params - states - grad_part)
        tmp_part = total - params - states - grad_part - act_part
    return StepMemory(
        parameters=int(params), gradients=int(grad_part), optimizer_states=int(states),
        activations=int(act_part), temporaries=int(tmp_part), peak_phase=phase,
        trainable_params=int(trainable),
    )


# Closed-form stand-in for the traced heap churn (calibration.heap_churn, the bytes one step cycles
# through glibc's heap): least squares of traced churn on 2 x (saved block activations, doubled
# with checkpointing's recompute) + 2 x fp32 trainable params (gradients + optimizer temporaries),
# over the calibration runs only (calibration._CALIBRATION_RUNS at fp32 and bf16, 12 traces; traced
# churn 250-1397 MiB, this proxy 72-1184 MiB, residuals -126 to +75 MiB, which the 0.08 churn
# fraction scales to 10 MiB). Refitted with bench/fit_analytic_heap.py after the trace learned the
# autograd engine's in-place gradient accumulation (2026-11-24). It feeds the same fragmentation
# allowance as the trace.
_CHURN_SLOPE = 1.070
_CHURN_INTERCEPT = 194.0 * 2**20


def heap_churn_estimate(shape: ModelShape, cfg: EstimateConfig, device: str, trainable: int) -> float:
    """Approximate bytes one step allocates from the heap (see `_CHURN_SLOPE`)."""
    work = 2 * shape.num_layers * layer_activation_bytes(shape, cfg, device) * (2 if cfg.gradient_checkpointing else 1)
    return _CHURN_SLOPE * (work + 2 * trainable * 4) + _CHURN_INTERCEPT


# Closed-form stand-in for the allocator replay's excess over live tensors (calibration.simulate_glibc
# peak - live peak: holes the heap keeps between blocks). Least squares over the calibration runs at
# fp32 and bf16 (12 traces, none a benchmark row; gap 16-121 MiB, fit within 6 MiB; refitted with
# bench/fit_analytic_heap.py, 2026-11-24) on one block's activations: recompute under checkpointing
# re-allocates a block's worth while the saved inputs and gradients sit between the holes, so the
# gap grows with it; without it, little.
# The constant part is holes around the long-lived blocks (parameters, gradients, optimizer
# states), so for tiny models it is capped at a fifth of their fp32 bytes (16 per parameter).
_HEAP_GAP_INTERCEPT = 20.9 * 2**20
_HEAP_GAP_PER_BLOCK = {True: 1.055, False: 0.044}
_HEAP_GAP_STATE_CAP = 0.2


def heap_gap_estimate(shape: ModelShape, cfg: EstimateConfig, device: str) -> float:
    """Approximate bytes the CPU heap holds beyond the live tensors at the peak (see `_HEAP_GAP_PER_BLOCK`)."""
    block = layer_activation_bytes(shape, cfg, device)
    constant = min(_HEAP_GAP_INTERCEPT, _HEAP_GAP_STATE_CAP * 16 * shape.num_params)
    return constant + _HEAP_GAP_PER_BLOCK[bool(cfg.gradient_checkpointing)] * block


# bitsandbytes' 8-bit optimizers: tensors under BNB_MIN_8BIT_SIZE elements keep fp32 states
# (Optimizer8bit's min_8bit_size); the others one fp32 absmax per BNB_BLOCK-element block per state.
BNB_MIN_8BIT_SIZE = 4096
BNB_BLOCK = 256


def _optimizer_bytes(
    name: str, trainable: int, shapes: tuple[tuple[int, ...], ...], largest: int, pbytes: int, device: str
) -> tuple[int, int]:
    """(state bytes, peak temporary bytes during step()) for the optimizer.

    AdamW: two moments per parameter in the parameter dtype (Loshchilov & Hutter, arXiv 1711.05101).
    On CUDA torch defaults to foreach kernels: one parameter-sized temporary list (sqrt of the
    second moment; the reference measured grads + states + one param-sized temporary). On CPU
    the per-tensor loop holds two temporaries of one parameter (sqrt, then the division).
    SGD with momentum: one buffer, updated in place. Adafactor (Shazeer & Stern 2018, arXiv
    1804.04235): row + column second moments for matrices. AdamW8bit (Dettmers et al. 2021,
    arXiv 2110.02861): two uint8 states + one fp32 absmax per 256-element block per state.
    """
    if name == "adamw":
        temp = trainable * pbytes if device == "cuda" else 2 * largest * pbytes
        return 2 * trainable * pbytes, temp
    if name == "sgd":
        return trainable * pbytes, 0
    if name == "adafactor":
        if shapes:
            states = sum(_adafactor_state(sh) for sh in shapes) * pbytes
        else:  # no shapes known: r x d-like matrices, factored into r + d
            states = int(2 * math.sqrt(max(trainable, 1))) * pbytes
        return states, 2 * largest * pbytes
    if name == "adamw8bit":
        sizes = [math.prod(sh) for sh in shapes] if shapes else [trainable]
        states = sum(8 * n if n < BNB_MIN_8BIT_SIZE else 2 * n + 2 * 4 * (-(-n // BNB_BLOCK)) for n in sizes)
        if device == "cuda":
            return states, 0  # one fused kernel
        # CPU (bitsandbytes 0.50 backends/cpu/ops.py): per tensor, both states dequantized to fp32, a
        # scaled fp32 copy of the gradient, sqrt(v) and its quotient; a 16-bit tensor adds its fp32 copy.
        return states, largest * (20 if pbytes == 4 else 24)
    raise ValueError(f"unknown optimizer {name!r}")


def _adafactor_state(shape: tuple[int, ...]) -> int:
    """torch.optim.Adafactor state elements: row (.., r, 1) + column (.., 1, c) variances for
    tensors of 2+ dims, a full variance for vectors."""
    if len(shape) < 2:
        return math.prod(shape)
    lead = math.prod(shape[:-2])
    return lead * (shape[-2] + shape[-1])
