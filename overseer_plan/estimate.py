"""Predict the peak memory of one training step, before any real memory is touched.

    from overseer_plan.estimate import estimate, EstimateConfig
    est = estimate("llama-3.2-1b", EstimateConfig(batch_size=4, seq_len=1024, precision="bf16"),
                   device="cuda", method="analytic")
    est.peak_bytes, est.host_peak_bytes, est.breakdown, est.peak_phase

Two methods give the live-tensor picture of a step:
- "analytic" (`_analytic.py`): closed form from the HF config, microseconds per call;
- "traced" (`trace.py`): the real HF class run on fake tensors, seconds per call.
`calibration.py` then turns live tensor bytes into what the device shows: host RSS on
CPU (allocator model + fitted factors), or the CUDA caching allocator's view plus context.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, model_validator

from overseer_plan._model import StrictModel
from overseer_plan.errors import UserInputError

if TYPE_CHECKING:
    from overseer_plan.models import ResolvedModel

Precision = Literal["fp32", "fp16", "bf16", "bf16-pure"]
Optimizer = Literal["adamw", "sgd", "adafactor", "adamw8bit"]
Attention = Literal["eager", "sdpa"]
Device = Literal["cpu", "cuda"]
Method = Literal["analytic", "traced"]
Phase = Literal["forward", "backward", "optimizer"]


class LoraSettings(StrictModel):
    """LoRA adapters on a frozen base (Hu et al. 2021, arXiv 2106.09685)."""

    rank: int = Field(8, ge=1)
    """Adapter rank r."""
    targets: list[str] | None = None
    """Linear module names to adapt (e.g. ['q_proj', 'v_proj']); None = peft's default for the family."""
    dropout: float = Field(0.0, ge=0, lt=1)
    """peft's lora_dropout: each adapter then keeps its own dropped-out copy of its input for backward."""


class EstimateConfig(StrictModel):
    """The training settings that decide a step's memory."""

    batch_size: int = 1
    """Micro-batch size (sequences per forward pass)."""
    seq_len: int = 512
    """Tokens per sequence."""
    grad_accum: int = 1
    """Micro-batches per optimizer step; gradients stay alive across them."""
    precision: Precision = "fp32"
    """fp32; fp16/bf16 = autocast with fp32 master weights; bf16-pure = params and optimizer in bf16."""
    gradient_checkpointing: bool = False
    """Recompute each block in backward instead of saving its activations."""
    optimizer: Optimizer = "adamw"
    """adamw, sgd (with momentum), adafactor, or adamw8bit (bitsandbytes, modelled without it)."""
    attention: Attention = "sdpa"
    """Attention implementation: eager keeps seq x seq probabilities, sdpa does not."""
    lora: LoraSettings | None = None
    """LoRA adapters on a frozen base, or None for full fine-tuning."""
    num_processes: int = 1
    """Data-parallel processes (DDP: each holds a full replica plus a flat copy of its gradients)."""
    kv_cache: bool = False
    """Whether the forward pass fills a KV cache (transformers' `use_cache`). The trainer turns it off;
    a model built from its config with defaults has it on, which copies each layer's keys and values
    and, for fused-QKV models (GPT-2, GPT-NeoX), frees the fused projection the values view instead."""

    @model_validator(mode="after")
    def _check(self) -> EstimateConfig:
        problems = []
        if self.batch_size < 1:
            problems.append(f"batch_size must be at least 1 (got {self.batch_size}); pass --batch-size 1 or more")
        if self.seq_len < 1:
            problems.append(f"seq_len must be at least 1 (got {self.seq_len}); pass --seq-len 1 or more")
        if self.grad_accum < 1:
            problems.append(f"grad_accum must be at least 1 (got {self.grad_accum}); pass --grad-accum 1 or more")
        if self.num_processes < 1:
            problems.append(f"num_processes must be at least 1 (got {self.num_processes})")
        if problems:
            raise ValueError("; ".join(problems))
        return self

    @classmethod
    def build(cls, **kwargs: Any) -> EstimateConfig:
        """Validate keyword settings, raising one-line `UserInputError`s instead of pydantic's."""
        from pydantic import ValidationError

        try:
            return cls(**kwargs)
        except ValidationError as e:
            msgs = []
            for err in e.errors():
                loc = ".".join(str(x) for x in err["loc"])
                msg = str(err["msg"]).removeprefix("Value error, ")
                msgs.append(f"{loc}: {msg}" if loc else msg)
            raise UserInputError("; ".join(msgs)) from None

    @classmethod
    def from_training_config(
        cls,
        *,
        batch_size: int,
        max_sequence_length: int,
        gradient_accumulation_steps: int = 1,
        mixed_precision: bool = False,
        gradient_checkpointing: bool = False,
        optimizer: str = "adamw",
        use_gpu: bool = False,
        **_ignored: Any,
    ) -> EstimateConfig:
        """Adapter from the trainer's TrainingConfig fields (pass `**training_config.model_dump()`).

        mixed_precision=True maps to bf16 autocast (fp32 master weights); `use_gpu` picks the
        device and is not part of this config (pass device='cuda' to `estimate`).
        """
        return cls.build(
            batch_size=batch_size,
            seq_len=max_sequence_length,
            grad_accum=gradient_accumulation_steps,
            precision="bf16" if mixed_precision else "fp32",
            gradient_checkpointing=gradient_checkpointing,
            optimizer=str(optimizer).lower().replace("_", "").replace("-", ""),
        )


class ModelInfo(StrictModel):
    """Parameter census of the estimated model."""

    name: str
    """What the model was resolved from (catalogue name, path, Hub id or 'config')."""
    model_type: str
    """HF model_type."""
    num_params: int
    """All parameters, shared (tied) tensors counted once, lm_head included."""
    trainable_params: int
    """Parameters that get gradients and optimizer state (LoRA adapters only, with LoRA)."""
    num_layers: int
    """Decoder blocks."""
    max_positions: int | None
    """Longest sequence the config allows, when it says."""


class Breakdown(StrictModel):
    """Bytes at the peak, by what holds them."""

    parameters: int
    """Weights (fp32 master weights under autocast; bf16 for bf16-pure; frozen base included)."""
    gradients: int
    """Gradients alive at the peak (all of them across accumulation micro-steps)."""
    optimizer_states: int
    """Optimizer moments / buffers."""
    activations: int
    """Tensors saved for backward."""
    temporaries: int
    """Transient buffers at the peak: fp32 logits and loss buffers, optimizer-step temporaries."""
    overhead: int
    """Framework and allocator: RSS beyond live tensors on CPU; context, workspace, slack on CUDA."""


class MemoryEstimate(StrictModel):
    """Predicted peak memory of one training step."""

    peak_bytes: int
    """Peak on the training device: VRAM on cuda; on cpu, growth of the process's peak RSS over its
    RSS after importing torch and transformers (the benchmark protocol, overseer_plan/_measure.py)."""
    host_peak_bytes: int
    """Peak host RAM of the whole training process (RSS, imports included)."""
    breakdown: Breakdown
    """peak_bytes split by category (sums to peak_bytes)."""
    peak_phase: Phase
    """Where the peak falls: forward, backward or optimizer step."""
    method: Method
    """analytic (closed form) or traced (fake-tensor dry run)."""
    device: Device
    """Device that trains."""
    live_tensor_bytes: int
    """Live tensor storage at the peak, before allocator/framework overhead."""
    reserved_bytes: int | None = None
    """On cuda, the caching allocator's reserved peak (what `torch.cuda.max_memory_reserved()` reports
    after the steps); peak_bytes adds the CUDA context to it. None on cpu."""
    allocated_bytes: int | None = None
    """On cuda, the peak of bytes handed out by the caching allocator (`max_memory_allocated()`),
    cuBLAS workspaces included. None on cpu."""
    cuda_context_bytes: int = 0
    """On cuda, device memory the process holds outside the caching allocator (CUDA context, kernel
    images loaded by the step, cuBLAS handles), part of peak_bytes. 0 on cpu."""
    long_run_extra_bytes: int = 0
    """On cpu, what a long run adds to both peaks past the protocol's 3 steps (glibc's heap keeps
    fragmenting for about a dozen forward/backward passes); the planner budgets for it. 0 on cuda."""
    model_info: ModelInfo
    config: EstimateConfig
    """The settings estimated."""
    notes: list[str] = Field(default_factory=list)
    """Assumptions and where calibration came from."""
    elapsed_s: float = 0.0
    """Seconds this estimate took."""

    @property
    def total_bytes(self) -> int:
        """Alias of peak_bytes."""
        return self.peak_bytes

    @property
    def long_run_peak_bytes(self) -> int:
        """peak_bytes after many steps: what a plan must fit."""
        return self.peak_bytes + self.long_run_extra_bytes

    @property
    def long_run_host_peak_bytes(self) -> int:
        """host_peak_bytes after many steps."""
        return self.host_peak_bytes + self.long_run_extra_bytes


_RESOLVED: dict[Any, Any] = {}


def _resolve(model: Any) -> ResolvedModel:
    """The resolved model, memoised per name/path (and file mtime) or config object within a process,
    so planners can call us in loops."""
    import os

    from overseer_plan.models import resolve

    if isinstance(model, str) or hasattr(model, "__fspath__"):
        key: Any = str(model)
        try:
            key += f"@{os.stat(key).st_mtime_ns}"
        except OSError:
            pass
    elif isinstance(model, dict):
        return resolve(model)
    else:
        key = ("id", id(model))
    hit = _RESOLVED.get(key)
    if hit is None or (isinstance(key, tuple) and hit._config is not model):
        hit = _RESOLVED[key] = resolve(model)
    return hit


def _trace_cache_key(fingerprint: str, cfg: EstimateConfig, device: str, extra: str = "") -> str:
    """Everything a traced result depends on: config, settings, device, library versions and
    the tracer's own code (so an edited trace.py / calibration.py never reuses stale results)."""
    import hashlib
    from importlib.metadata import version
    from pathlib import Path

    h = hashlib.sha256()
    for part in (fingerprint, cfg.model_dump_json(), device, extra, version("torch"), version("transformers")):
        h.update(part.encode() + b"\0")
    here = Path(__file__).parent
    for name in ("trace.py", "calibration.py", "estimate.py", "heap_replay.py", "cuda_alloc.py"):
        h.update((here / name).read_bytes())
    return h.hexdigest()[:40]


def _trace_cache_path(key: str) -> Any:
    from overseer_plan.calibration import cache_dir

    return cache_dir() / "traces" / f"{key}.json"


def _read_trace_cache(key: str) -> dict[str, Any] | None:
    """A cached traced result (validated), or None."""
    import json

    try:
        data = json.loads(_trace_cache_path(key).read_text(encoding="utf-8"))
        if data.get("key") != key:
            return None
        got = data["result"]
        int(got["live"]), float(got["churn"]), float(got["wall_s"]), str(got["phase"])
        if got["sim_peak"] is not None:
            float(got["sim_peak"])
        if got.get("growth") is not None:
            float(got["growth"]), float(got["growth_min"]), int(got["repeats"])
            float(got["replayed_sim_peak"]), float(got["replayed_churn"])
        if not isinstance(got["parts"], dict) or not isinstance(got["depths"], list):
            return None
        return got
    except (OSError, ValueError, TypeError, KeyError):
        return None


def _write_trace_cache(key: str, result: dict[str, Any]) -> None:
    import json

    from overseer_plan._io import atomic_write_text

    try:
        atomic_write_text(_trace_cache_path(key), json.dumps({"key": key, "result": result}))
    except OSError:
        pass


def trace_inputs(config: Any, cfg: EstimateConfig, device: str, *, cuda_workspace_bytes: int = 0,
                 workers: Any = None) -> dict[str, Any]:
    """The traced dry run's results, as cached: live peak, breakdown, phase and the heap models' inputs
    (tensor-level allocator peak `sim_peak`, `churn`, and the replay's heap `growth` or None).

    On CPU, with glibc, each depth runs in fresh processes under the real-allocator replay
    (heap_replay.py); otherwise in this process, with the tensor-level allocator model only.
    On CUDA the log is replayed through the caching allocator (cuda_alloc.py), with a cuBLAS
    workspace of `cuda_workspace_bytes` for each thread that runs matrix products, giving
    `cuda_reserved` and `cuda_allocated`. `workers`: replay processes already started
    (heap_replay.Workers).
    """
    import time

    from overseer_plan import heap_replay
    from overseer_plan.calibration import churn_microbatches, heap_churn, simulate_glibc
    from overseer_plan.trace import extrapolate_depths, peak_of_phases, trace_depths, trace_peak

    t0 = time.perf_counter()
    # Two micro-batches per step show everything accumulation does to memory (gradients stay alive
    # from the first micro-batch on; each later one repeats the same pattern), and tracing GA=32
    # would cost 16x the time for the same peak.
    traced_cfg = cfg.model_copy(update={"grad_accum": min(cfg.grad_accum, 2)})
    # The churn allowance was fitted per micro-batch, then counts as many as `churn_microbatches` says
    # (calibration.ACCUM_CHURN_MICROBATCHES).
    churn_scale = churn_microbatches(cfg.grad_accum) / traced_cfg.grad_accum
    depths = trace_depths(config, device)
    runs = heap_replay.replay(config, traced_cfg, depths, workers=workers) if device == "cpu" else None
    if runs is not None:
        first = [r[0] for r in runs]

        def extra(values: list[float]) -> float:
            return extrapolate_depths(depths, values, int(config.num_hidden_layers))

        live, phase, parts = peak_of_phases(depths, [r["phases"] for r in first], int(config.num_hidden_layers))
        # The replay's heap at the deepest traced depth, with the tensor-level model's inputs there:
        # `calibration.replay_at_full_depth` scales it to the model's depth (a straight line through
        # two replayed depths multiplies their draws' noise, see there).
        return {
            "live": live, "phase": phase, "parts": parts,
            "sim_peak": extra([r["sim_peak"] for r in first]), "churn": extra([r["churn"] for r in first]) * churn_scale,
            # The largest heap of the repeats: it varies between processes, as the real run's does.
            "growth": max(x["growth"] for x in runs[-1]), "growth_min": min(x["growth"] for x in runs[-1]),
            "replayed_sim_peak": first[-1]["sim_peak"], "replayed_churn": first[-1]["churn"] * churn_scale,
            "repeats": len(runs[-1]), "depths": depths, "wall_s": time.perf_counter() - t0,
        }
    tr = trace_peak(config, traced_cfg, device=device, depths=depths)
    got = {
        "live": tr.live_peak_bytes, "parts": tr.breakdown, "phase": tr.peak_phase,
        "sim_peak": tr.extrapolate([simulate_glibc(r.events) for r in tr.runs]) if device == "cpu" else None,
        "churn": tr.extrapolate([heap_churn(r.events) for r in tr.runs]) * churn_scale if device == "cpu" else 0.0,
        "growth": None, "depths": [r.num_layers for r in tr.runs], "wall_s": tr.wall_s,
    }
    if device == "cuda":
        from overseer_plan import cuda_alloc

        peaks = [cuda_alloc.replay(r.events, extra=cuda_alloc.workspaces(r.first_matmul, cuda_workspace_bytes))
                 for r in tr.runs]
        deepest, run = peaks[-1], tr.runs[-1]
        if len(peaks) == 1:
            got["cuda_reserved"], got["cuda_allocated"] = deepest.reserved, deepest.allocated
        else:
            # Too deep to trace whole: the live peak is extrapolated per phase; rounding and
            # workspaces are the deepest trace's, and so is reserved over allocated.
            got["cuda_allocated"] = tr.live_peak_bytes + deepest.allocated - run.live_peak_bytes
            got["cuda_reserved"] = got["cuda_allocated"] * deepest.reserved / deepest.allocated
        got["wall_s"] = time.perf_counter() - t0
    return got


def estimate(
    model: Any,
    config: EstimateConfig | None = None,
    device: Device = "cpu",
    method: Method = "analytic",
) -> MemoryEstimate:
    """Predict the peak memory of one training step of `model` under `config`.

    Args:
        model: catalogue name, local directory or config.json path, Hugging Face Hub id
            (config only, local cache first), or a `transformers.PretrainedConfig`.
        config: training settings; defaults to `EstimateConfig()`.
        device: "cpu" (peak_bytes = host RSS growth) or "cuda" (peak_bytes = VRAM).
        method: "analytic" (closed form, microseconds) or "traced" (fake-tensor dry run, seconds).

    Raises:
        UserInputError: unknown/malformed model, non-causal-LM model type, or settings the
            model cannot take (e.g. a sequence longer than its max positions).
    """
    import time

    from overseer_plan import heap_replay

    t0 = time.perf_counter()
    cfg = config if config is not None else EstimateConfig()
    if device not in ("cpu", "cuda"):
        raise UserInputError(f"device must be 'cpu' or 'cuda' (got {device!r})")
    if method not in ("analytic", "traced"):
        raise UserInputError(f"method must be 'analytic' or 'traced' (got {method!r})")
    # A traced CPU estimate replays in fresh processes (heap_replay.py): start them now, so their
    # imports run while this process resolves the model and builds its census (they are killed
    # unused on bad input or a cache hit).
    replayed = method == "traced" and device == "cpu"
    with heap_replay.Workers(heap_replay.REPEATS if replayed else 0) as workers:
        return _estimate(_resolve(model), cfg, device, method, workers, t0)


def _estimate(resolved: Any, cfg: EstimateConfig, device: Device, method: Method, workers: Any,
              t0: float) -> MemoryEstimate:
    """`estimate` once the model is resolved (`workers`: heap_replay.Workers for a traced CPU run)."""
    import time

    from overseer_plan import _analytic, preload
    from overseer_plan.calibration import (
        cpu_rss_from_sim,
        cpu_rss_from_trace,
        cuda_allocated_from_live,
        cuda_reserved_from_allocated,
        frozen_base_offset,
        is_half_precision,
        load_calibration,
        long_run_heap_bytes,
        replay_at_full_depth,
    )
    from overseer_plan.models import choose_attention

    name, fingerprint = resolved.name, resolved.fingerprint
    shape = _analytic.model_shape(lambda: resolved.config, fingerprint)
    if shape.max_positions is not None and cfg.seq_len > shape.max_positions:
        raise UserInputError(
            f"seq_len {cfg.seq_len} is longer than {name}'s max positions ({shape.max_positions}); "
            f"pass --seq-len {shape.max_positions} or less"
        )
    if cfg.lora is not None and cfg.lora.targets:
        unknown = sorted(set(cfg.lora.targets) - set(shape.linears))
        if unknown:
            raise UserInputError(
                f"lora targets {unknown} are not linear layers of {name}; choose from {sorted(shape.linears)}"
            )
    cal, notes = load_calibration()
    notes = list(notes)
    attention, attention_note = choose_attention(resolved.model_type, shape.supports_sdpa, cfg.attention)
    if attention_note:
        cfg = cfg.model_copy(update={"attention": attention})
        notes.append(attention_note)
    heap_growth: float | None = None  # CPU heap growth from the real-allocator replay, when it ran

    if method == "analytic":
        mem = _analytic.step_memory(shape, cfg, device)
        live = mem.total
        parts = {
            "parameters": mem.parameters, "gradients": mem.gradients, "optimizer_states": mem.optimizer_states,
            "activations": mem.activations, "temporaries": mem.temporaries,
        }
        phase, trainable = mem.peak_phase, mem.trainable_params
        sim_peak = float(live)
        if device == "cpu":
            from overseer_plan.calibration import churn_microbatches

            sim_peak += _analytic.heap_gap_estimate(shape, cfg, device)
            churn = _analytic.heap_churn_estimate(shape, cfg, device, mem.trainable_params) * churn_microbatches(cfg.grad_accum)
        else:
            churn = 0.0
    else:
        trainable = (
            _analytic.lora_params(shape, cfg.lora.rank, cfg.lora.targets) if cfg.lora else shape.num_params
        )
        workspace = cal.cuda.cublas_workspace_bytes if device == "cuda" else 0
        cache_key = _trace_cache_key(fingerprint, cfg, device, f"workspace {workspace}" if workspace else "")
        got = _read_trace_cache(cache_key)
        if got is None:
            got = trace_inputs(resolved.config, cfg, device, cuda_workspace_bytes=workspace, workers=workers)
            _write_trace_cache(cache_key, got)
        else:
            notes.append("trace: reused this machine's cached result for the same config and versions")
        live, parts, phase = int(got["live"]), {k: int(v) for k, v in got["parts"].items()}, str(got["phase"])
        sim_peak = float(got["sim_peak"]) if got["sim_peak"] is not None else float(live)
        churn = float(got["churn"])
        growth = got.get("growth")
        if device == "cpu" and growth is not None and cal.cpu.replay_constant_bytes is not None:
            heap_growth = replay_at_full_depth(float(growth), float(got["replayed_sim_peak"]),
                                               float(got["replayed_churn"]), sim_peak, churn, cal)
            heap = (f"{float(got['growth_min']) / 2**20:.0f}-{float(growth) / 2**20:.0f} MiB over "
                    f"{got['repeats']} processes, the largest used" if int(got["repeats"]) > 1
                    else f"{float(growth) / 2**20:.0f} MiB")
            if len(got["depths"]) > 1:
                heap += (f", at {got['depths'][-1]} layers; scaled to {heap_growth / 2**20:.0f} MiB at "
                         f"{shape.num_layers} by the tensor-level model's heap")
            notes.append(f"cpu: mean of the real-allocator replay (heap {heap}) and the tensor-level allocator model")
        elif device == "cpu" and growth is not None:
            notes.append("cpu: the calibration in use has no real-allocator replay constant (re-run --calibrate); "
                         "tensor-level allocator model used")
        elif device == "cpu":
            notes.append("cpu: real-allocator replay unavailable here; tensor-level allocator model used")
        if len(got["depths"]) > 1:
            notes.append(
                f"traced at {got['depths'][0]} and {got['depths'][1]} layers, extrapolated to {shape.num_layers}"
            )
        notes.append(f"trace took {float(got['wall_s']):.1f} s")

    if cfg.num_processes > 1:
        # torch DDP's reducer keeps the gradients in flat communication buckets, a second copy of them
        # for the process's lifetime (unless gradient_as_bucket_view=True, which accelerate does not set).
        buckets = int(trainable) * (2 if cfg.precision == "bf16-pure" else 4)
        parts["gradients"] = parts.get("gradients", 0) + buckets
        live += buckets
        sim_peak += buckets
        heap_growth = heap_growth + buckets if heap_growth is not None else None
        notes.append(f"{cfg.num_processes} data-parallel processes: per process, plus DDP's gradient buckets "
                     f"({buckets / 2**20:.0f} MiB)")

    long_run = 0
    if device == "cpu":
        half = is_half_precision(cfg.precision)
        long_run = long_run_heap_bytes(churn, cfg.grad_accum, cal, _analytic.step_block_sizes(shape, cfg, device))
        frozen = cfg.lora is not None
        if heap_growth is not None:
            peak = cpu_rss_from_trace(heap_growth, sim_peak, churn, cal, half=half, frozen=frozen)
        else:
            peak = cpu_rss_from_sim(sim_peak, cal, churn, half=half, frozen=frozen)
        if half and cal.cpu.half_precision_bytes:
            notes.append(f"cpu: {cal.cpu.half_precision_bytes / 2**20:+.0f} MiB calibrated offset for 16-bit matmuls")
        frozen_bytes = frozen_base_offset(cal, half)
        if frozen and frozen_bytes:
            notes.append(f"cpu: {frozen_bytes / 2**20:+.0f} MiB calibrated offset for a frozen base (LoRA"
                         + (", 16-bit matmuls)" if half else ")"))
        grown, baseline, mods = preload.adjustment(cfg, cal.imports)
        peak += grown
        host = peak + cal.import_rss_bytes + baseline
        if mods:
            notes.append(f"cpu: {', '.join(mods)} imported before the baseline, as a script using it does: it already "
                         f"imported {-grown / 2**20:.0f} MiB of transformers' modelling stack, which the growth no longer "
                         f"shows; the baseline grows by {baseline / 2**20:.0f} MiB")
        notes.append("cpu: peak_bytes is RSS growth over the post-import baseline; host_peak adds the baseline")
        if long_run:
            notes.append(f"cpu: a long run adds about {long_run / 2**20:.0f} MiB past the 3 steps peak_bytes predicts "
                         "(heap fragmentation; included when planning)")
    else:
        if method == "traced" and got.get("cuda_reserved") is not None:
            reserved, allocated = int(got["cuda_reserved"]), int(got["cuda_allocated"])
            if cfg.num_processes > 1:
                reserved, allocated = reserved + buckets, allocated + buckets
            notes.append("cuda: reserved memory from replaying the trace through the caching allocator's policy")
        else:
            allocated = cuda_allocated_from_live(live, cal)
            reserved = cuda_reserved_from_allocated(allocated, cal, checkpointing=cfg.gradient_checkpointing)
        context = cal.cuda.context_bytes
        peak = reserved + context
        host = cal.import_rss_bytes + cal.cuda.host_bytes + shape.num_params * (2 if cfg.precision == "bf16-pure" else 4)
        where = ("measured on this machine (--calibrate)" if "--calibrate" in cal.cuda.provenance
                 else "as measured on an H100 with torch 2.11; `overseer estimate --calibrate --device cuda` "
                 "measures your GPU" if cal.cuda.measured else "literature defaults")
        notes.append(f"cuda: context {context / 2**20:.0f} MiB and cuBLAS workspace "
                     f"{cal.cuda.cublas_workspace_bytes / 2**20:.0f} MiB per thread, {where}")
        notes.append("cuda: host peak assumes the model is built on the host in its training dtype, then moved")
    breakdown = Breakdown(**{k: int(v) for k, v in parts.items()}, overhead=int(peak - sum(parts.values())))
    return MemoryEstimate(
        peak_bytes=int(peak),
        host_peak_bytes=int(host),
        breakdown=breakdown,
        peak_phase=phase,  # type: ignore[arg-type]
        method=method,
        device=device,
        live_tensor_bytes=int(live),
        reserved_bytes=int(reserved) if device == "cuda" else None,
        allocated_bytes=int(allocated) if device == "cuda" else None,
        cuda_context_bytes=int(context) if device == "cuda" else 0,
        long_run_extra_bytes=int(long_run),
        model_info=ModelInfo(
            name=name, model_type=resolved.model_type, num_params=shape.num_params,
            trainable_params=int(trainable), num_layers=shape.num_layers, max_positions=shape.max_positions,
        ),
        config=cfg,
        notes=notes,
        elapsed_s=time.perf_counter() - t0,
    )
