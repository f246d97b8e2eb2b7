"""From live tensor bytes to what the machine shows: allocator model and calibrated factors.

CPU. A process's RSS grows past its live tensor bytes. Measured here (torch 2.13 CPU,
glibc 2.36): a GPT-2-style 4 x 256 model, batch 8 x 512, AdamW fp32 holds 1314 MiB of live
tensors at its peak while ru_maxrss grows 1694 MiB. Four causes, modelled in turn:
1. glibc's dynamic mmap threshold (mallopt(3), "M_MMAP_THRESHOLD"): blocks above the
   threshold are mmap'd and returned on free; freeing one raises the threshold to its size
   (up to 32 MiB on 64-bit), after which same-sized tensors come from the heap, whose free
   space is kept (measured: the main arena reached 1.2 GiB with 1.0 GiB free, never trimmed,
   because small long-lived blocks pin its top). `simulate_glibc` replays the traced
   allocation log through that policy (best-fit heap with coalescing, no trimming).
   Measured on this stack: the threshold is at its 32 MiB cap after the first backward.
2. Kernel scratch invisible to tracing (trace.py `_kernel_scratch`).
3. Heap fragmentation the tensor-only replay cannot see: small long-lived blocks carved out
   of freed tensor holes stop them from fitting the next step's tensors and from coalescing,
   so the real heap grows step over step. Modelled as an allowance proportional to the bytes
   that cycle through the heap per step (`heap_churn`, `CpuFactors.churn_fraction`).
4. Code pages and model-class imports touched by the first step, thread pools, Python
   objects: a constant. 3 and 4 are fitted by
   `overseer estimate --calibrate` on a calibration model that is *not* any benchmark
   shape, and stored per machine and torch version.
Where glibc allows it, traced CPU estimates replace 1 and 3 by the real thing: heap_replay.py
allocates the traced tensors through this machine's glibc next to the tracer's own small
blocks, and only a constant is added (`CpuFactors.replay_constant_bytes`). The tensor-level
model above is the fallback (and the analytic method's stand-in).

CUDA: the traced method replays its allocation log through the caching allocator's policy
(cuda_alloc.py), which gives max_memory_reserved; the context (outside the allocator) and the
cuBLAS workspace size were measured on an H100 (`DEFAULTS.cuda`); the analytic method uses a
reserved-over-allocated slack instead of the replay.
"""

from __future__ import annotations

import bisect
import json
import os
import platform
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import Field, ValidationError, model_validator

from overseer_plan._io import atomic_write_text
from overseer_plan._model import FiniteModel
from overseer_plan.preload import DEFAULT_PROFILE, ImportProfile, measure_profile

MiB = 1024**2
_PAGE = 4096
_MMAP_THRESHOLD_START = 128 * 1024  # glibc DEFAULT_MMAP_THRESHOLD_MIN
_MMAP_THRESHOLD_MAX = 32 * MiB  # glibc DEFAULT_MMAP_THRESHOLD_MAX on 64-bit
_CHUNK_OVERHEAD = 8 + 64  # malloc header + c10 alloc_cpu's 64-byte posix_memalign slack


# Bounds on the stored factors. The fits floor the constants and fractions at 0 (`fit_churn_factors`,
# `fit_replay_constant`), so a negative one, NaN or infinity means an edited or damaged file: it
# is ignored with a warning (load_calibration) rather than printing a negative peak or crashing in
# int(). The upper bounds are tens of times the shipped values, far past any measured machine.
_MAX_HALF_PRECISION_BYTES = 2 * 1024**3
# `python bench/fit_lora_offset.py` (2026-12-07, nineteenth session; peft 0.21.2 with bitsandbytes 0.50.2
# installed, 6 protocol runs per point, stored in bench/results/lora_calibration_measurements.json): every
# calibration point trained as peft LoRA, rank 8 on q_proj/v_proj (c_attn for GPT-2), measured - traced
# without these offsets, MiB. fp32: llama-style 2x256 +19.4, 6x384 -4.3, 6x384 ckpt -17.8; gpt2-style
# 2x384 -4.0, 6x256 +7.2, 6x384 ckpt -5.3; mean -0.8 (a fit on 2 runs per point the session before gave
# -11.0). bf16 autocast, the half-precision offset applied: +35.4, +20.3, +11.4; +7.0, +10.8, +34.0; mean
# +19.8, so a frozen base under 16-bit matmuls keeps 20.6 MiB more than the fp32 offset says, on every
# point (the estimate predicts a larger bf16 saving than LoRA runs show; which buffers make it up is not
# known). An earlier version of the script traced the bf16 points at fp32 and read them as 18 MiB over.
# The peft import's share of the modelling stack (preload.py, -101 MiB) is applied first; before it
# was, the fp32 offset was fitted at -100.6 MiB.
FROZEN_BASE_BYTES = -827_605
FROZEN_HALF_BYTES = 21_591_708


class CpuFactors(FiniteModel):
    """peak RSS growth = scale * simulated allocator peak + constant_bytes."""

    scale: float = Field(gt=0, le=50)
    """Multiplier on the allocator-model peak (heap fragmentation beyond the model, untraced buffers)."""
    constant_bytes: int = Field(ge=0)
    """Bytes added regardless of shape (model-class imports, code pages, thread pools)."""
    churn_fraction: float = Field(default=0.0, ge=0, le=5)
    """Heap fragmentation allowance per byte of heap churn (`heap_churn`): the allocator replay
    sees only tensor blocks, while in the real process small long-lived blocks (TensorImpl,
    autograd nodes, Python objects) are carved out of freed tensor holes, which then no longer
    fit the next step's same-sized tensor nor coalesce, so the heap keeps growing (measured
    with mallinfo2: 634 -> 730 -> 858 MiB main arena after backward 1/2/3, ~180 MiB in use)."""
    replay_constant_bytes: int | None = Field(default=None, ge=0)
    """Bytes ru_maxrss grows beyond the real-allocator replay's heap growth (heap_replay.py): code
    pages and model-class imports touched by the first step, thread stacks and per-thread arenas,
    pymalloc's own mmapped arenas. None: not fitted, the replay is not used."""
    half_precision_bytes: int = Field(default=0, ge=-_MAX_HALF_PRECISION_BYTES, le=_MAX_HALF_PRECISION_BYTES)
    """Added to both constants above when the step's matmuls run in 16 bits (bf16 or fp16 autocast,
    pure bf16): fitted on the calibration models run at fp32 and at bf16. Negative here: an fp32 step
    keeps about 11 MiB more outside its traced tensors than a bf16 one of the same model (a
    measured offset; which buffers make it up is not known)."""
    frozen_base_bytes: int = Field(default=FROZEN_BASE_BYTES, ge=-_MAX_HALF_PRECISION_BYTES,
                                   le=_MAX_HALF_PRECISION_BYTES)
    """Added to both constants above when a frozen base trains LoRA adapters: fitted on the calibration
    models trained with peft LoRA (bench/fit_lora_offset.py), after the peft import's own effect
    (`Calibration.imports`). Files written before it existed get the shipped value."""
    frozen_half_bytes: int = Field(default=FROZEN_HALF_BYTES, ge=-_MAX_HALF_PRECISION_BYTES,
                                   le=_MAX_HALF_PRECISION_BYTES)
    """Added on top of `frozen_base_bytes` when the frozen base's matmuls run in 16 bits (bf16 or fp16
    autocast, pure bf16): fitted the same way on the bf16-autocast calibration points. Files written
    before it existed get the shipped value."""
    provenance: str
    """How these numbers were obtained."""


class CudaFactors(FiniteModel):
    """peak = reserved + context; reserved from the caching-allocator replay (traced) or
    (1 + reserved_slack) * (live bytes + two cuBLAS workspaces) (analytic)."""

    context_bytes: int = Field(ge=0)
    """Device memory outside the caching allocator: CUDA context, kernel images, library handles."""
    cublas_workspace_bytes: int = Field(ge=0)
    """cuBLAS workspace per handle, allocated through the caching allocator (one handle per thread
    that multiplies matrices: two in a training step)."""
    reserved_slack: float = Field(ge=0, le=5)
    """Reserved-over-allocated fraction of the caching allocator (fragmentation, block rounding),
    for the analytic method."""
    checkpointing_slack: float | None = Field(default=None, ge=0, le=5)
    """The same with gradient checkpointing, whose recomputation interleaves short-lived blocks with
    saved ones and fragments more; None: reserved_slack."""
    host_bytes: int = Field(ge=0)
    """Host RSS added by the CUDA runtime (driver and runtime libraries, pinned staging)."""
    measured: bool
    """Whether these were measured on this machine (False: literature defaults)."""
    provenance: str
    """How these numbers were obtained."""


class Calibration(FiniteModel):
    """Per-machine factors, stored in the calibration file."""

    torch_version: str
    """torch.__version__ the factors were fitted with."""
    machine: str
    """platform.node() / processor, for the record."""
    cpu: CpuFactors
    cuda: CudaFactors
    import_rss_bytes: int = Field(ge=0)
    """RSS of a process after importing torch and transformers (host baseline)."""
    points: list[dict[str, Any]] = []
    """The calibration measurements: shape, measured bytes, simulated bytes."""
    imports: ImportProfile = DEFAULT_PROFILE
    """What the modelling stack's imports cost here, alone and after peft, bitsandbytes or
    transformers.optimization (overseer_plan/preload.py). Files written before it existed get the dev box's."""

    @model_validator(mode="before")
    @classmethod
    def _older_file(cls, data: Any) -> Any:
        # Files written before the import profile carry the LoRA offset fitted without it (-100.6 MiB),
        # which the profile's peft figures now account for: they get the shipped residual instead.
        if isinstance(data, dict) and "imports" not in data and isinstance(data.get("cpu"), dict):
            data = {**data, "cpu": {k: v for k, v in data["cpu"].items() if k != "frozen_base_bytes"}}
        return data


# Shipped defaults: data, with provenance. CPU factors fitted by `overseer estimate --calibrate`
# on this repository's development machine (2-core x86-64 CPU, 24 GiB RAM, no GPU, glibc 2.36,
# torch 2.13.0+cpu, transformers 5.23.0) on 2026-11-24, calibration model `_CALIBRATION_MODEL`.
DEFAULTS = Calibration(
    torch_version="2.13.0+cpu",
    machine="overseer dev box: 2-core x86-64, glibc 2.36",
    cpu=CpuFactors(
        scale=1.0,
        constant_bytes=135_102_763,
        churn_fraction=0.0805,
        provenance=(
            "fitted 2026-11-24 on the dev machine (2-core x86-64, 24 GiB, torch 2.13.0+cpu, transformers 5.23.0, "
            "glibc 2.36) on the calibration models only, each shape at fp32 and at bf16 autocast. Measured: the mean "
            "of 5 protocol runs per point (bench/results/calibration_measurements.json). Trace side by `python "
            "bench/refit_calibration.py`: tensor-level model and churn from one trace, replay = 3 draws of the "
            "larger of 2 processes. churn_fraction, constant_bytes and the allocator model's half-precision offset: "
            "least squares of measured - tensor-level model = churn_fraction * heap churn + constant (+ offset at "
            "bf16), scale fixed at 1.0. replay_constant_bytes: mean of measured - replayed heap growth at fp32; its "
            "offset the bf16 mean minus that. half_precision_bytes: the mean of the two offsets (-9.9 and -11.9 MiB). "
            "Points fp32 | bf16, measured / tensor-level model / churn / replay draws MiB: llama-style 3x192 2x256 "
            "354/186/250/226,226,244 | 327/179/276/215,239,247; 6x384 670/511/471/544,553,558 | "
            "635/478/432/527,521,531; 6x384 ckpt 617/448/615/510,526,521 | 588/444/552/486,478,498; gpt2-style 3x192 "
            "2x384 419/260/359/304,303,303 | 404/254/343/313,302,312; 6x256 611/442/587/490,492,497 | "
            "549/396/474/444,445,459; 6x384 ckpt 736/491/1397/625,591,607 | 687/465/1164/524,555,584. Result 0.0805 "
            "per churned byte + 128.8 MiB; replay constant 116.7 MiB (residuals 80-163 MiB; replayed 2026-12-07 "
            "with warmed replay processes, which count the trace's first-use imports as growth: 128.5 MiB before); "
            "half precision -10.9 MiB"
        ),
        replay_constant_bytes=122_415_104,
        half_precision_bytes=-11_389_858,
        frozen_base_bytes=FROZEN_BASE_BYTES,
    ),
    cuda=CudaFactors(
        context_bytes=300_744_704,
        cublas_workspace_bytes=32 * MiB,
        reserved_slack=0.075,
        checkpointing_slack=0.165,
        host_bytes=1024 * MiB,
        measured=True,
        provenance=(
            "measured 2026-11-24 on one NVIDIA H100 80GB HBM3 (driver 580.159.04, torch 2.11.0+cu130, "
            "transformers 5.23.0) with the GPU protocol (bench/gpu_accuracy.py, "
            "bench/results/gpu_measurements.json). Context: device memory in use after the 3 steps (mem_get_info) "
            "less the NVML reading before CUDA initialisation less memory_reserved(), 286.8 MiB with bf16 kernels "
            "loaded, 270.8 MiB at fp32, the same for the three matrix families. cuBLAS workspace: two 32 MiB "
            "blocks live at every peak in torch.cuda.memory snapshots (one per thread that multiplies: forward "
            "and the autograd engine's). reserved_slack and checkpointing_slack (analytic method only; the traced "
            "method replays the caching allocator): medians of measured reserved over analytic live + workspaces "
            "on the catalogue rows of the first GPU set without (5 rows) and with (4) checkpointing. host_bytes: host RSS growth "
            "past the parameters, 712-817 MiB up to Qwen2-0.5B, 1302 MiB for Llama-3.2-1B at fp32"
        ),
    ),
    import_rss_bytes=249_015_296,  # measured with the points above
)

# Calibration models: one Llama-style block (RMSNorm, SwiGLU, GQA, no dropout) and one GPT-2-style
# block (LayerNorm, GeLU, dropout 0.1), at widths, depths, vocabularies and shapes that appear in
# no benchmark row, so the benchmark tests generalisation rather than the fit.
# The checkpointed points give the heap-churn term a lever (recompute churns the most); each shape
# runs at fp32 and under bf16 autocast, which give the half-precision offset its lever.
_CALIBRATION_RUNS: tuple[tuple[dict[str, Any], int, int, bool, str], ...] = tuple(
    (model, b, s, ckpt, precision)
    for precision in ("fp32", "bf16")
    for model, shapes in (
        ({"model_type": "llama", "num_hidden_layers": 3, "hidden_size": 192, "intermediate_size": 512,
          "num_attention_heads": 6, "num_key_value_heads": 3, "vocab_size": 12000,
          "max_position_embeddings": 1024, "tie_word_embeddings": False},
         ((2, 256, False), (6, 384, False), (6, 384, True))),
        ({"model_type": "gpt2", "n_layer": 3, "n_embd": 192, "n_head": 4, "vocab_size": 12000,
          "n_positions": 1024}, ((2, 384, False), (6, 256, False), (6, 384, True))),
    )
    for b, s, ckpt in shapes
)


def cache_dir() -> Path:
    """Where per-machine files live: Overseer's cache root ($OVERSEER_CACHE_DIR or ~/.cache/overseer)."""
    from overseer_plan._io import cache_root

    return cache_root()


def calibration_path() -> Path:
    return cache_dir() / "calibration.json"


def load_calibration() -> tuple[Calibration, list[str]]:
    """The calibration to use and notes on where it came from.

    A missing file gives the shipped defaults; a malformed one is ignored with a warning
    (and a note), never an error; one fitted with another torch version is ignored too.
    """
    path = calibration_path()
    if not path.exists():
        return DEFAULTS, ["calibration: shipped defaults (run `overseer estimate --calibrate` to fit this machine)"]
    try:
        cal = Calibration.model_validate_json(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, ValidationError) as e:
        why = type(e).__name__
        if isinstance(e, ValidationError):  # name the value at fault: an edited factor, NaN, a negative size
            err = e.errors()[0]
            why = f"{'.'.join(str(x) for x in err['loc']) or 'file'}: {err['msg']}"
        msg = (f"calibration file {path} is malformed and was ignored ({why}); using shipped defaults "
               "(re-run `overseer estimate --calibrate` or delete the file)")
        warnings.warn(msg, stacklevel=2)
        return DEFAULTS, [msg]
    from importlib.metadata import version

    # The installed distribution's version, read without importing torch (planning does not otherwise
    # need it). It carries torch.__version__'s local tag (+cpu) on some builds and not on others
    # (measured: 2.11.0 for a 2.11.0+cu130 build), so only the public versions are compared.
    torch_version = version("torch")
    if cal.torch_version.split("+")[0] != torch_version.split("+")[0]:
        return DEFAULTS, [
            f"calibration file {path} was fitted with torch {cal.torch_version}, not {torch_version}; "
            "using shipped defaults (re-run --calibrate)"
        ]
    return cal, [f"calibration: {path}"]


def simulate_glibc(events: list[tuple[int, int, str]]) -> int:
    """Peak bytes glibc's main arena keeps resident while replaying an allocation log.

    Policy (glibc 2.36 malloc/malloc.c): a request at or above the mmap threshold gets its own
    page-rounded mmap, unmapped on free; freeing such a chunk no larger than 32 MiB raises the
    threshold to its size. Smaller requests are served best-fit from the heap's free chunks
    (coalesced on free) or from fresh space past the high-water mark. The heap is never trimmed
    (see module docstring), so its resident size is its high-water mark. Free space at the end
    of the heap is not extended into by a larger request: in the real process small metadata
    blocks (TensorImpl, autograd nodes, Python objects) sit between tensor blocks and stop
    freed tensors from merging back into glibc's top chunk; replaying only tensor blocks, this
    rule stands in for them (it matched the measured GPT-2-style rows better than merging:
    error -4 % vs -7 % at 2 x 512, -6 % vs -10 % at 4 x 256). We also set the threshold to its cap at the first
    backward mark (measured: kernel scratch frees push it there). Returns max over time of heap
    extent + live mmapped bytes.
    """
    threshold = _MMAP_THRESHOLD_START
    free: list[tuple[int, int]] = []  # (address, size), sorted, coalesced
    top = 0  # heap extent
    where: dict[int, tuple[int, int]] = {}  # key -> (address or -1 for mmap, size)
    mapped = peak = 0
    saw_backward = False
    for key, nbytes, phase in events:
        if nbytes == 0:
            if phase.startswith("backward") and not saw_backward:
                saw_backward, threshold = True, _MMAP_THRESHOLD_MAX
            continue
        if nbytes > 0:
            req = nbytes + _CHUNK_OVERHEAD
            if req >= threshold:
                size = -(-req // _PAGE) * _PAGE
                where[key] = (-1, size)
                mapped += size
            else:
                size = -(-req // 16) * 16
                best = -1
                for j, (_, fsize) in enumerate(free):
                    if fsize >= size and (best < 0 or fsize < free[best][1]):
                        best = j
                if best >= 0:
                    addr, fsize = free.pop(best)
                    if fsize - size >= 32:
                        bisect.insort(free, (addr + size, fsize - size))
                    else:
                        size = fsize
                    where[key] = (addr, size)
                else:
                    where[key] = (top, size)
                    top += size
            peak = max(peak, top + mapped)
            continue
        addr, size = where.pop(key, (None, 0))
        if addr is None:
            continue
        if addr < 0:
            mapped -= size
            if threshold < size <= _MMAP_THRESHOLD_MAX:
                threshold = size
            continue
        k = bisect.bisect_left(free, (addr, 0))
        if k > 0 and free[k - 1][0] + free[k - 1][1] == addr:
            addr, size = free[k - 1][0], free[k - 1][1] + size
            free.pop(k - 1)
            k -= 1
        if k < len(free) and free[k][0] == addr + size:
            size += free[k][1]
            free.pop(k)
        free.insert(k, (addr, size))
    return peak


def heap_churn(events: list[tuple[int, int, str]]) -> int:
    """Bytes the last traced step allocates from glibc's heap (blocks under the 32 MiB mmap cap).

    The fragmentation the replay cannot see (small non-tensor blocks carved out of freed
    tensor holes, see `CpuFactors.churn_fraction`) grows with how many bytes cycle through
    the heap per step, so this is the quantity the allowance is proportional to.
    """
    def step(phase: str) -> str:
        return phase[len(phase.rstrip("0123456789")):]

    last = ""
    for _, nbytes, phase in events:
        if nbytes == 0 and step(phase):
            last = step(phase)
    return sum(n for _, n, ph in events
               if 0 < n + _CHUNK_OVERHEAD < _MMAP_THRESHOLD_MAX and step(ph) == last)


# Gradient accumulation. The allowance was fitted on steps of one micro-batch: the protocol's 3 steps
# are 3 forward/backward cycles. With accumulation they are 3 x GA cycles with the gradients live
# throughout, and the heap fragments further before it settles (bench/estimator_accuracy.py
# accumulation rows, GA 8 x 2 x 256: one micro-batch's churn under-predicted GPT-2 fp32 by 11%; the
# churn of the two micro-batches the trace runs, 4%). So with GA >= 2 the allowance counts the
# churn of this many micro-batches.
ACCUM_CHURN_MICROBATCHES = 2


def churn_microbatches(grad_accum: int) -> int:
    """How many micro-batches' heap churn the fragmentation allowance counts (see above)."""
    return min(max(grad_accum, 1), ACCUM_CHURN_MICROBATCHES)


# Long runs. The protocol's 3 steps at GA 1 are 3 forward/backward passes; a training run makes
# thousands, and the heap goes on fragmenting for about a dozen of them, then settles. Measured
# (`python bench/long_run.py`, protocol at GA 1, medians of 4-5 fresh runs, MiB, 3 -> 48 steps):
# calibration models gpt2-style 3x192 at 2 x 384 414 -> 446 and llama-style 3x192 at 6 x 384
# 668 -> 690; matrix families gpt2-4x256 at 4 x 256 575 -> 629 and llama-4x256-gqa at 1 x 512
# 458 -> 541 (BENCHMARKS.md). One more micro-batch of the churn allowance covers the first three
# (runs with accumulation already make 3 x GA passes, and their estimate counts two micro-batches'
# churn). The fourth grows by two to three of its 31 MiB logits: a block just under glibc's 32 MiB
# mmap cap goes to the heap or to its own mapping depending on the dynamic threshold at that moment,
# and over many steps a few of them get pinned. So blocks in the top half of the heap's range count
# twice more, at any GA: with accumulation the protocol's estimate leaves them out (its GA 8
# matrix rows would run 6-12% high with them), yet llama-4x256-gqa at 2 x 256, whose logits are
# 31.25 MiB, was under-predicted by 4.7% and 7.4% at GA 16 and 32 (48 and 96 passes). It is a margin: checkpointed steps churn the most and are over-covered (+18% at 48
# steps for gpt2-4x256 4 x 512), and a held-out Qwen2 came out 6-9% high.
LONG_RUN_EDGE_BLOCKS = 2


def edge_block_bytes(block_sizes: Sequence[int]) -> int:
    """The largest of a step's big blocks that glibc may keep in the heap: under its 32 MiB mmap
    cap and at least half of it (0 if none)."""
    inside = [n for n in block_sizes if _MMAP_THRESHOLD_MAX // 2 <= n + _CHUNK_OVERHEAD < _MMAP_THRESHOLD_MAX]
    return max(inside, default=0)


def long_run_heap_bytes(churn_bytes: float, grad_accum: int, cal: Calibration, block_sizes: Sequence[int] = ()) -> int:
    """Bytes a long CPU run's peak RSS adds past the protocol's 3 steps (see above).

    `churn_bytes` is the churn the estimate counted (`churn_microbatches(grad_accum)` micro-batches'
    worth); `block_sizes` the step's largest tensors (`_analytic.step_block_sizes`).
    """
    counted = churn_microbatches(grad_accum)
    missing = max(ACCUM_CHURN_MICROBATCHES - counted, 0)
    churn = cal.cpu.churn_fraction * churn_bytes / counted * missing
    return int(round(churn + LONG_RUN_EDGE_BLOCKS * edge_block_bytes(block_sizes)))


def is_half_precision(precision: str) -> bool:
    """Whether a step at `precision` runs its matmuls in 16 bits (the `half_precision_bytes` offset applies)."""
    return precision in ("bf16", "fp16", "bf16-pure")


def frozen_base_offset(cal: Calibration, half: bool) -> int:
    """The calibrated offset for a frozen base (LoRA): its fp32 one, plus the 16-bit one when `half`."""
    return cal.cpu.frozen_base_bytes + (cal.cpu.frozen_half_bytes if half else 0)


def _offsets(cal: Calibration, half: bool, frozen: bool) -> int:
    return (cal.cpu.half_precision_bytes if half else 0) + (frozen_base_offset(cal, half) if frozen else 0)


def cpu_rss_from_sim(sim_peak_bytes: float, cal: Calibration, churn_bytes: float = 0.0, *, half: bool = False,
                     frozen: bool = False) -> int:
    """Predicted ru_maxrss growth over the post-import RSS, from the allocator-model peak."""
    frag = cal.cpu.churn_fraction * churn_bytes
    return int(round(cal.cpu.scale * sim_peak_bytes + frag + cal.cpu.constant_bytes + _offsets(cal, half, frozen)))


def cpu_rss_from_replay(heap_growth_bytes: float, cal: Calibration, *, half: bool = False, frozen: bool = False) -> int:
    """Predicted ru_maxrss growth from the real-allocator replay's heap growth (heap_replay.py)."""
    return int(round(heap_growth_bytes + (cal.cpu.replay_constant_bytes or 0) + _offsets(cal, half, frozen)))


def replay_at_full_depth(growth_bytes: float, replayed_sim_peak: float, replayed_churn: float, sim_peak: float,
                         churn: float, cal: Calibration) -> float:
    """The replay's heap growth at a model's full depth, from a replay at the depth it was traced at.

    A deep model is traced at two reduced depths (trace.py). Its replayed heap is not drawn
    through the two depths and extended along that line: the line multiplies the difference of two
    draws by (layers - 4) / 2, and GPT-2 124M at 4 x 512 checkpointed came out 26% under to 34% over
    its measured peak from one draw to the next (BENCHMARKS.md section 2, eighteenth pass). The
    replay instead says by how much the real heap exceeds the tensor-level model at the deepest
    traced depth, and that ratio carries to full depth, where the tensor-level model's heap
    (`scale` x allocator-model peak + `churn_fraction` x churn) is extrapolated from exact
    quantities. For a model traced whole both heaps are the same and the growth is unchanged.
    """
    replayed = cal.cpu.scale * replayed_sim_peak + cal.cpu.churn_fraction * replayed_churn
    full = cal.cpu.scale * sim_peak + cal.cpu.churn_fraction * churn
    return growth_bytes * full / replayed if replayed > 0 else growth_bytes


def cpu_rss_from_trace(heap_growth_bytes: float, sim_peak_bytes: float, churn_bytes: float, cal: Calibration, *,
                       half: bool = False, frozen: bool = False) -> int:
    """Predicted ru_maxrss growth of a traced estimate: the mean of the two heap models.

    The replay samples one heap layout, and its draw varies from process to process (sd of
    measured - replayed: 26 MiB over the benchmark rows); the tensor-level model has no draw but
    misses what small blocks pin. Both are calibrated on the same points, so their mean is too,
    and their errors are partly independent: over two sets of replays of the 84 benchmark rows
    the mean's largest error was 15.2% and 10.8% against 20.6% and 14.9% for the replay alone
    (bench/results/estimator_accuracy.md, sixth pass); after the seventh pass's trace fix, 10.6%
    against 17.3%, though the replay alone had no row under -5% and the mean one.
    """
    replay = cpu_rss_from_replay(heap_growth_bytes, cal, half=half, frozen=frozen)
    return int(round((replay + cpu_rss_from_sim(sim_peak_bytes, cal, churn_bytes, half=half, frozen=frozen)) / 2))


def cuda_allocated_from_live(live_peak_bytes: float, cal: Calibration) -> int:
    """The caching allocator's allocated peak from live tensor bytes, for the analytic method: plus one
    cuBLAS workspace per thread that multiplies (cuda_alloc.workspaces)."""
    from overseer_plan.cuda_alloc import WORKSPACE_THREADS

    return int(live_peak_bytes) + len(WORKSPACE_THREADS) * cal.cuda.cublas_workspace_bytes


def cuda_reserved_from_allocated(allocated_bytes: float, cal: Calibration, *, checkpointing: bool = False) -> int:
    """The caching allocator's reserved peak for the analytic method: allocated plus the fitted
    reserved-over-allocated slack."""
    c = cal.cuda
    slack = c.checkpointing_slack if checkpointing and c.checkpointing_slack is not None else c.reserved_slack
    return int(round((1.0 + slack) * allocated_bytes))


def calibrate(*, write: bool = True, repeats: int = 2, cpu: bool = True) -> Calibration:
    """Measure the calibration models on this machine and fit the CPU factors, and the CUDA ones
    where torch sees a GPU (`calibrate_cuda`). `cpu=False` refits only the CUDA factors and keeps
    the CPU ones of the calibration in use.

    Each run of `_CALIBRATION_RUNS` is measured with the benchmark protocol (`_measure.py`,
    a fresh subprocess each) and traced as estimate() traces (`estimate.trace_inputs`);
    `churn_fraction` and `constant_bytes` are the least-squares fit of measured - tensor-level
    allocator model against the heap churn (`fit_churn_factors`), with scale fixed at 1.0,
    `replay_constant_bytes` the mean of measured - replayed heap (`fit_replay_constant`), and
    `half_precision_bytes` the mean of the two fits' bf16-minus-fp32 offsets. The import profile
    (`preload.measure_profile`) is measured for the libraries installed here.
    Writes the file atomically. Takes a few minutes on a 2-core CPU
    (`repeats` measurements per point, averaged).
    """
    import torch

    from overseer_plan._measure import measure
    from overseer_plan.estimate import EstimateConfig, trace_inputs
    from overseer_plan.models import resolve_model_config

    cuda = calibrate_cuda() if torch.cuda.is_available() else None
    if not cpu:
        if cuda is None:
            raise RuntimeError("no CUDA device: nothing to calibrate on cuda")
        current = load_calibration()[0]
        cal = current.model_copy(update={"cuda": cuda, "torch_version": torch.__version__})
        if write:
            _save(cal)
        return cal
    points = []
    for model, b, s, ckpt, precision in _CALIBRATION_RUNS:
        # ru_maxrss of the same run varies by a few percent between processes (thread timing):
        # average repeats.
        reals = [measure({"config": dict(model), "batch_size": b, "seq_len": s, "steps": 3,
                          "gradient_checkpointing": ckpt, "precision": precision})
                 for _ in range(repeats)]
        real = {
            "peak_delta_bytes": sum(r["peak_delta_bytes"] for r in reals) / repeats,
            "rss_after_import_bytes": sum(r["rss_after_import_bytes"] for r in reals) / repeats,
        }
        config = resolve_model_config(dict(model))
        settings = EstimateConfig(batch_size=b, seq_len=s, gradient_checkpointing=ckpt, precision=precision)
        got = trace_inputs(config, settings, "cpu")  # what estimate() feeds the heap models
        points.append({
            "model_type": model["model_type"], "batch_size": b, "seq_len": s, "gradient_checkpointing": ckpt,
            "precision": precision,
            "measured_bytes": int(real["peak_delta_bytes"]), "simulated_bytes": int(got["sim_peak"]),
            "churn_bytes": int(got["churn"]), "import_rss_bytes": int(real["rss_after_import_bytes"]),
            # The statistic estimate() uses: the largest heap of the replay's processes.
            "replay_bytes": int(got["growth"]) if got["growth"] is not None else None,
        })
    churn_fraction, constant, offset = fit_churn_factors(
        [(p["simulated_bytes"], p["churn_bytes"], p["measured_bytes"], is_half_precision(p["precision"]))
         for p in points])
    replay = fit_replay_constant(
        [(p["replay_bytes"], p["measured_bytes"], is_half_precision(p["precision"]))
         for p in points if p["replay_bytes"] is not None])
    replay_constant = replay[0] if replay else None
    offset = half_precision_offset(offset, replay[1] if replay else None)
    cal = Calibration(
        torch_version=torch.__version__,
        machine=f"{platform.node()} {platform.machine()} {os.cpu_count()} CPUs",
        cpu=CpuFactors(scale=1.0, constant_bytes=constant, churn_fraction=round(churn_fraction, 4),
                       replay_constant_bytes=replay_constant, half_precision_bytes=offset,
                       # Not refitted here (it needs LoRA runs): the shipped offset, fitted the same way.
                       frozen_base_bytes=FROZEN_BASE_BYTES, frozen_half_bytes=FROZEN_HALF_BYTES,
                       provenance=f"fitted by `overseer estimate --calibrate` on {platform.node()}"),
        cuda=cuda or DEFAULTS.cuda,
        import_rss_bytes=int(sum(p["import_rss_bytes"] for p in points) / len(points)),
        points=points,
        imports=measure_profile(),
    )
    if write:
        _save(cal)
    return cal


def _save(cal: Calibration) -> None:
    """Write the calibration file atomically (a crash leaves the old one whole)."""
    atomic_write_text(calibration_path(), json.dumps(cal.model_dump(mode="json"), indent=2) + "\n")


# The CUDA calibration run: the Llama-style calibration model at a middle shape under bf16 autocast.
_CUDA_CALIBRATION_RUN = (_CALIBRATION_RUNS[1][0], 6, 384, False, "bf16")


def calibrate_cuda() -> CudaFactors:
    """Measure this GPU's CUDA-side factors with one run of the GPU protocol (a fresh process).

    - context: device memory in use after the steps (`mem_get_info`) less NVML's reading before
      CUDA initialisation less `memory_reserved()` (the shipped figure where NVML cannot say);
    - cuBLAS workspace: half of what `max_memory_allocated()` exceeds the traced step's allocator
      replay by (the two workspaces are the only allocations the trace does not make);
    - host_bytes: host RSS growth past the fp32 parameters built on the host;
    - the analytic slacks stay the shipped ones (fitted on an H100 over larger models).
    """
    from overseer_plan._measure import measure
    from overseer_plan.estimate import EstimateConfig, trace_inputs
    from overseer_plan.models import resolve_model_config

    model, b, s, ckpt, precision = _CUDA_CALIBRATION_RUN
    real = measure({"config": dict(model), "batch_size": b, "seq_len": s, "steps": 3, "device": "cuda",
                    "gradient_checkpointing": ckpt, "precision": precision})
    settings = EstimateConfig(batch_size=b, seq_len=s, gradient_checkpointing=ckpt, precision=precision,
                              kv_cache=True)  # the protocol builds the model with its config's defaults
    traced = trace_inputs(resolve_model_config(dict(model)), settings, "cuda", cuda_workspace_bytes=0)
    workspace = max(0, int(real["max_allocated_bytes"] - traced["cuda_allocated"]) // 2)
    before = real.get("device_used_before_init_bytes")
    # Floored at 0 like the CPU constants: a noisy reading below it would make the saved file
    # fail its bounds and be ignored whole on the next load.
    context = (max(0, int(real["device_used_end_bytes"] - before - real["reserved_end_bytes"]))
               if before is not None else DEFAULTS.cuda.context_bytes)
    host = max(0, int(real["peak_delta_bytes"] - 4 * real["num_params"]))
    return DEFAULTS.cuda.model_copy(update={
        "context_bytes": context, "cublas_workspace_bytes": workspace, "host_bytes": host, "measured": True,
        "provenance": (f"measured by `overseer estimate --calibrate` on {platform.node()} ({real.get('gpu_name')}, "
                       f"CUDA {real.get('cuda_version')}, torch {real['torch_version']}): context "
                       f"{context / MiB:.1f} MiB, cuBLAS workspace {workspace / MiB:.1f} MiB, host "
                       f"{host / MiB:.0f} MiB; analytic slacks shipped"),
    })


def fit_churn_factors(points: list[tuple[float, float, float, bool]]) -> tuple[float, int, int]:
    """Least squares of measured - simulated = fraction * churn + constant (+ offset at half precision).

    `points` are (simulated, churn, measured, half). Returns (churn_fraction, constant, offset):
    the fraction is the slope within each precision (one intercept per precision), the constant the
    fp32 intercept and the offset the half-precision intercept minus it (0 without both precisions).
    The fraction and the constant are floored at 0: the replay is a lower bound by construction. When
    no precision has two distinct churn values the fraction is 0 and the intercepts are the mean
    residuals.
    """
    groups: dict[bool, list[tuple[float, float]]] = {}
    for x, c, y, half in points:
        groups.setdefault(bool(half), []).append((c, y - x))
    means = {h: (sum(c for c, _ in g) / len(g), sum(r for _, r in g) / len(g)) for h, g in groups.items()}
    scc = sum((c - means[h][0]) ** 2 for h, g in groups.items() for c, _ in g)
    scr = sum((c - means[h][0]) * (r - means[h][1]) for h, g in groups.items() for c, r in g)
    frac = max(0.0, scr / scc) if scc > 0 else 0.0
    intercept = {h: mr - frac * mc for h, (mc, mr) in means.items()}
    base = intercept.get(False, intercept.get(True, 0.0))
    offset = intercept[True] - base if len(intercept) == 2 else 0.0
    return frac, max(0, int(round(base))), int(round(offset))


def fit_replay_constant(points: list[tuple[float, float, bool]]) -> tuple[int, int] | None:
    """(constant, half-precision offset) from (replayed, measured, half) points; None without points.

    The constant is the mean of measured - replayed heap growth at fp32 (at half precision when
    there is no fp32 point), the offset the half-precision mean minus it (0 without both).
    """
    if not points:
        return None
    means = {}
    for half in (False, True):
        resid = [y - x for x, y, h in points if bool(h) == half]
        if resid:
            means[half] = sum(resid) / len(resid)
    base = means.get(False, means.get(True, 0.0))
    offset = means[True] - base if len(means) == 2 else 0.0
    return max(0, int(round(base))), int(round(offset))


def half_precision_offset(churn_offset: int, replay_offset: int | None) -> int:
    """One offset for both heap models: the mean of the two fits' (they agree within a few MiB);
    the allocator model's alone when the replay did not run."""
    return churn_offset if replay_offset is None else int(round((churn_offset + replay_offset) / 2))
