"""OOM policy: classify an exception, and step the config down one rung of the rulebook's ladder.

Both functions are pure; the training loop (trainer/loop.py) does the freeing and the retry.
Sources for every signature: /work/shared/reference/oom-recovery.md section 7, and the matchers of
accelerate (utils/memory.py), Lightning (utilities/memory.py) and Composer, whose gaps it lists.
"""

from __future__ import annotations

import gc
from collections.abc import Callable
from typing import Any, Literal

from overseer_plan.config import TrainingConfig

Verdict = Literal["oom", "probable", "restart"]

# (substring, verdict, where it comes from). Checked in order after the exception type; the first hit wins,
# so the sticky errors come before the broad " out of memory" that some of them also contain.
OOM_SIGNATURES: list[tuple[str, Verdict, str]] = [
    # Sticky CUDA errors: the context is unusable, only a fresh process can continue (KernelBench #76,
    # Composer "irrecoverable"; pytorch #84018 reports illegal accesses where an OOM was the cause).
    ("illegal memory access", "restart", "CUDA: an illegal memory access was encountered"),
    ("device-side assert", "restart", "CUDA: device-side assert triggered"),
    ("unspecified launch failure", "restart", "CUDA: unspecified launch failure"),
    # Allocators that failed outright.
    ("CUDA out of memory", "oom", "CUDA caching allocator (torch.OutOfMemoryError; older torch: RuntimeError)"),
    ("CUDA error: out of memory", "oom", "CUDA runtime/driver, torch.AcceleratorError (no trailing period)"),
    ("HIP out of memory", "oom", "ROCm caching allocator"),
    ("XPU out of memory", "oom", "Intel XPU allocator"),
    ("UR_RESULT_ERROR_OUT_OF_DEVICE_MEMORY", "oom", "Intel XPU, Unified Runtime"),
    ("UR_RESULT_ERROR_OUT_OF_HOST_MEMORY", "oom", "Intel XPU, Unified Runtime"),
    ("Allocation is out of device memory on current platform", "oom", "Intel XPU (OTX/Geti matcher)"),
    ("MPS backend out of memory", "oom", "Apple MPS allocator (plain RuntimeError)"),
    ("DefaultCPUAllocator: can't allocate memory", "oom", "CPU allocator, Linux/macOS (plain RuntimeError)"),
    ("DefaultCPUAllocator: not enough memory", "oom", "CPU allocator, Windows/Android"),
    ("PT_DEVMEM Allocation failed", "oom", "Habana HPU"),
    ("Failed to CUDA calloc", "oom", "NCCL buffer allocation (with NCCL_DEBUG)"),
    # Library handles that fail to allocate workspace: usually OOM, sometimes not (bad indices for
    # cuBLAS, non-contiguous input for cuDNN), so retry once and treat a repeat as OOM.
    ("CUBLAS_STATUS_ALLOC_FAILED", "probable", "cuBLAS handle/workspace allocation (ambiguous)"),
    ("CUDNN_STATUS_INTERNAL_ERROR", "probable", "cuDNN needs ~500 MB to load kernels (pytorch #81620)"),
    ("CUDNN_STATUS_NOT_SUPPORTED", "probable", "cuDNN with very large batches (pytorch #4107)"),
    ("unhandled cuda error", "probable", "NCCL DistBackendError hiding a CUDA OOM"),
    ("could not create a primitive", "probable",
     "oneDNN (CPU) failing to allocate its workspace: seen under a 1.5 GiB RLIMIT_AS cap, bench/plan_quality.py"),
    (" out of memory", "oom", "any other backend's allocator ('... out of memory')"),
]


def is_oom(exc: BaseException) -> Verdict | None:
    """'oom', 'probable' (retry once, then treat as OOM), 'restart' (needs a fresh process) or None."""
    import torch

    if isinstance(exc, torch.OutOfMemoryError) or isinstance(exc, MemoryError):
        return "oom"
    if not isinstance(exc, RuntimeError):
        return None
    text = str(exc)
    for needle, verdict, _where in OOM_SIGNATURES:
        if needle in text:
            return verdict
    return None


# ---- the ladder ----

Fits = Callable[[TrainingConfig], bool]
# Settings whose change does not reliably lower memory: only used when the estimator says it helps
# (fp32 without autocast drops the 16-bit activation copies but doubles the kept activations).
_NEEDS_ESTIMATE = {"mixed_precision"}


def next_rung(config: TrainingConfig, rulebook: Any, fits: Fits | None = None) -> tuple[TrainingConfig, Any] | None:
    """One step down the rulebook's retry ladder, or None at the floor.

    Rungs come in the rulebook's retry order (semantics-preserving first). A rung that changes
    nothing (micro-batch already 1, checkpointing already on) is skipped. Sequence reduction changes
    what is learned, so it is used only with `allow_sequence_reduction`; without it the ladder ends
    before it. Mixed precision off is used only when `fits` says the result fits.
    """
    for rule in rulebook.retry_ladder():
        if not rule.semantics_preserving and not config.allow_sequence_reduction:
            continue
        candidate = apply_rung(config, rule)
        if candidate is None:
            continue
        if set(rule.change.set) & _NEEDS_ESTIMATE and (fits is None or not fits(candidate)):
            continue
        return candidate, rule
    return None


def step_down(config: TrainingConfig, rulebook: Any, fits: Fits | None = None) -> list[tuple[TrainingConfig, Any]]:
    """Rungs from `config` down to the first one `fits` accepts ([] at the floor).

    Without `fits`, one rung. When the estimator accepts none, one rung too: the estimate is only a
    model, the real allocation decides.
    """
    taken: list[tuple[TrainingConfig, Any]] = []
    current = config
    while (step := next_rung(current, rulebook, fits)) is not None:
        taken.append(step)
        current = step[0]
        if fits is None or fits(current):
            return taken
    return taken[:1]


def apply_rung(config: TrainingConfig, rule: Any) -> TrainingConfig | None:
    """`config` with the rung's change for a running job, or None when it is a no-op or impossible.

    The rulebook's changes are interpreted in one place (`overseer_plan.ladder.apply_change`);
    in flight, a shorter sequence re-cuts the packed blocks so each step keeps its tokens.
    """
    from overseer_plan.ladder import apply_change

    if rule.change.action is not None or rule.change.halve not in (None, "batch_size", "max_sequence_length"):
        return None  # not a rung the trainer can take automatically
    return apply_change(config, rule, in_flight=True)


def step_up(config: TrainingConfig, history: list[TrainingConfig]) -> TrainingConfig | None:
    """One rung back up: the config before the last step down, else a micro-batch twice as large
    along the divisors of the per-process batch (the 'slow' ladder's less-accumulation rung)."""
    if history:
        return history[-1]
    per_process = config.batch_size * config.gradient_accumulation_steps
    for micro in range(config.batch_size * 2, per_process + 1):
        if per_process % micro == 0:
            return config.with_changes(batch_size=micro, gradient_accumulation_steps=per_process // micro)
    return None


def free_memory(device_type: str) -> dict[str, int]:
    """Collect garbage, give freed heap pages and the device cache back; memory figures before and after, in bytes.

    Call it after leaving the `except` block: inside it the traceback still pins the failed frames'
    tensors (PyTorch FAQ, "My out of memory exception handler can't allocate memory").
    """
    before = _memory_in_use(device_type)
    gc.collect()
    import torch

    from trainer.memory import release_freed_memory

    # The failed step's freed tensors stay resident in glibc's heap; in a container the cgroup counts them.
    released = release_freed_memory().freed_bytes
    if device_type == "cuda":
        torch.cuda.empty_cache()
    elif device_type == "mps":
        torch.mps.empty_cache()
    elif device_type == "xpu":
        torch.xpu.empty_cache()
    return {"before_bytes": before, "after_bytes": _memory_in_use(device_type), "host_released_bytes": released}


def _memory_in_use(device_type: str) -> int:
    import torch

    if device_type == "cuda":
        return int(torch.cuda.memory_allocated())
    if device_type == "mps":
        return int(torch.mps.current_allocated_memory())
    import psutil

    return int(psutil.Process().memory_info().rss)


class OomPolicy:
    """The OOM policy the loop is given: classification, the ladder and its estimator, the floor message."""

    def __init__(self, rulebook: Any, fits: Fits | None = None):
        self.rulebook, self.fits = rulebook, fits
        self._probable_at: int | None = None

    @classmethod
    def default(cls, fits: Fits | None = None) -> OomPolicy:
        from overseer_plan.rules import load_rulebook

        return cls(load_rulebook(), fits)

    def classify(self, exc: BaseException) -> Verdict | None:
        return is_oom(exc)

    def retry_probable(self, step: int) -> bool:
        """True the first time a probable OOM hits optimizer step `step` (retry it unchanged)."""
        if self._probable_at == step:
            return False
        self._probable_at = step
        return True

    def step_down(self, config: TrainingConfig) -> list[tuple[TrainingConfig, Any]]:
        return step_down(config, self.rulebook, self.fits)

    def floor_message(self, config: TrainingConfig, running_precision: str | None = None) -> str:
        """The floor's one line; `running_precision` is what the loop runs (fp32 where a CPU ignores the preset's fp16)."""
        seq_hint = ("" if config.allow_sequence_reduction
                    else "; --allow-sequence-reduction would let it shorten sequences (changes what is learned)")
        return (f"out of memory at the floor of the ladder (micro-batch {config.batch_size}, gradient checkpointing "
                f"{'on' if config.gradient_checkpointing else 'off'}, precision {running_precision or config.precision()}, sequence "
                f"{config.max_sequence_length}){seq_hint}; run `overseer doctor oom` for what else to change "
                "(smaller model, shorter --max-sequence-length, close other applications)")
