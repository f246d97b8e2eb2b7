"""Traced dry run: run the real HF training step on fake tensors and log every allocation.

The real `AutoModelForCausalLM` class is built from the config inside
`FakeTensorMode` (no storage is ever allocated), and the three optimizer steps of the
measurement protocol (`overseer_plan/_measure.py`) run under a TorchDispatchMode that
records each new tensor storage and its release, in program order, with phase marks.
From that log we get the live-tensor peak, its phase and a breakdown by category; the
ordered sizes also feed the host-allocator model in `calibration.py` (what RSS shows).

Why a small dispatch logger rather than `torch.distributed._tools.mem_tracker.MemTracker`:
MemTracker reports category totals but not the allocation order and sizes the allocator
model needs, and it hooks every parameter (frozen LoRA bases crash it). The logger uses
the same storage-weakref technique; `tests/overseer_plan/test_trace.py` checks that both
report the same peak. Traps handled (see /work/shared/reference/estimators.md, Sec. 4):
- `model.to()` under fake mode fails: the model is built directly in the target dtype.
- Fake CUDA cannot run backward on a CPU-only host: we always trace on fake CPU and let
  the caller add the CUDA-side terms (512-byte rounding, context, cuBLAS workspace).
- Fake tensors make SDPA pick the math kernel (it materialises seq x seq probabilities);
  `aten._fused_sdp_choice` is answered from stride-0 real tensors of the same shape so
  the trace takes the kernel a real run would take *on CPU*.
- For device='cuda' the CPU kernels are the wrong model: CPU SDPA with dropout takes the
  math path (s x s probabilities, 80 GiB instead of 25 GiB for GPT-2 32 x 1024 fp16) and
  CPU dropout saves a full-width noise tensor. `_cuda_kernels` swaps
  `F.scaled_dot_product_attention` and `F.dropout` for stand-ins with the memory of the
  CUDA kernels (flash attention; fused dropout with a 1-byte mask); eager attention is
  untouched and materialises s x s on both devices.
- The autograd engine sums a tensor's gradients out of place on fake tensors and in place on
  plain ones; `_accumulation_windows` and `_AllocLog._is_accumulation` log the real engine's choice.
- Large models: fake ops cost time per op, not per byte, so only the layer count matters;
  above `_FULL_TRACE_MAX_LAYERS` we trace two reduced depths and callers extrapolate each
  quantity linearly in L (`TraceResult.extrapolate`).
"""

from __future__ import annotations

import contextlib
import copy
import functools
import resource
import threading
import time
import warnings
import weakref
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from transformers import PretrainedConfig

    from overseer_plan.estimate import EstimateConfig

_FULL_TRACE_MAX_LAYERS = 6
# For device='cuda' the caching-allocator replay needs the full-depth allocation order: reserved
# memory is not linear in depth (measured on an H100: Llama-3.2-1B 2 x 2048 checkpointed bf16
# reserved 29656 MiB; the full 16-layer trace's replay gave 29662, the 2- and 4-layer traces'
# extrapolation 22.3% less). A CUDA trace has no heap replay, so a full-depth trace stays cheap:
# 6 s for GPT-2 medium's 24 layers on a 2-core CPU.
_FULL_TRACE_MAX_LAYERS_CUDA = 48
# Optimizer steps traced: the measurement protocol's 3 (overseer_plan/_measure.py). The live-tensor
# peak is the same from step 2 on, but the heap replay is not in steady state after 2 steps:
# replaying the third step raised the predicted RSS of the GPT-2-style checkpointed rows by up to
# 7 points (bench/results/estimator_accuracy.md, 2026-11-24), as glibc's heap keeps growing step
# over step in the real process too (main arena 634 -> 730 -> 858 MiB after backward 1/2/3).
_STEPS = 3
_REDUCED_LAYERS = (2, 4)
_PHASES = ("forward", "backward", "optimizer")
_CATEGORIES = ("parameters", "gradients", "optimizer_states", "activations", "temporaries")


class _AllocLog:
    """TorchDispatchMode recording new storages and their release (via weakref callbacks)."""

    def __init__(self, device: str = "cpu", events: list | None = None) -> None:
        from torch.utils._python_dispatch import TorchDispatchMode

        log = self
        self.device = device

        class _Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                return log._dispatch(func, args, kwargs or {})

        self.mode = _Mode()
        # A caller's list subclass can act on each event as it happens (heap_replay.py does).
        self.events: list[tuple[int, int, str]] = events if events is not None else []
        self.phase = "setup"
        self._live: dict[int, int] = {}  # id(storage object) -> key
        self._refs: dict[int, Any] = {}  # id(storage object) -> weakref
        self._holders: dict[int, int] = {}  # key -> storage objects standing for it (see `_track`)
        self._next = 1
        self.in_sdpa = False  # set by `_eager_sdpa_math` while F.scaled_dot_product_attention runs
        self.in_accumulation = False  # set by `_accumulation_windows` between a node's formula and the next
        # An engine accumulation's output and the key it may alias (see `_is_accumulation`).
        self._pending: tuple[Any, int | None] | None = None
        self.accumulations = {"in_place": 0, "new": 0}  # engine accumulations, as a real step would do them
        # Event index of the first matrix product run in forward and in backward: where a CUDA step's
        # two cuBLAS handles (one per thread) allocate their workspaces (cuda_alloc.workspaces).
        self.first_matmul: dict[str, int] = {}

    def mark(self, phase: str) -> None:
        self._settle()
        self.phase = phase
        self.events.append((0, 0, phase))

    def storage_key(self, t: Any) -> int | None:
        """The log key of a tensor's storage (None when it was never logged)."""
        return self._live.get(id(t.untyped_storage()))

    def _track(self, t: Any, same_as: int | None = None) -> None:
        """Log `t`'s storage as allocated, and as freed when the storage object dies.

        `same_as`: the key of a storage the real kernel would have written in place. The fake
        output gets a new storage object, but no bytes are logged for it, and the key is freed
        only when the last storage object standing for it dies.
        """
        st = t.untyped_storage()
        sid = id(st)
        if sid in self._live:
            return
        if same_as is None:
            key, nbytes = self._next, int(st.nbytes())
            self._next += 1
            self.events.append((key, nbytes, self.phase))
        else:
            key, nbytes = same_as, int(st.nbytes())
        self._live[sid] = key
        self._holders[key] = self._holders.get(key, 0) + 1

        def _freed(_ref: Any, sid: int = sid, key: int = key, nbytes: int = nbytes) -> None:
            if self._live.get(sid) == key:
                del self._live[sid]
            self._refs.pop(sid, None)
            self._holders[key] -= 1
            if not self._holders[key]:
                del self._holders[key]
                pending, self._pending = self._pending, None
                if pending is not None and pending[1] == key and int(pending[0].untyped_storage().nbytes()) == nbytes:
                    # The engine dropped the gradient it added into, so the real engine held its last
                    # reference and added in place: the sum keeps that buffer (no free, no new bytes).
                    self.accumulations["in_place"] += 1
                    self._track(pending[0], same_as=key)
                    return
                self._pending = pending
                self._settle()
                self.events.append((key, -nbytes, self.phase))

        self._refs[sid] = weakref.ref(st, _freed)

    def _dispatch(self, func: Any, args: tuple, kwargs: dict) -> Any:
        import torch
        from torch.utils._pytree import tree_flatten

        self._settle()
        group = self.phase.rstrip("0123456789")
        if group not in self.first_matmul and group in ("forward", "backward") and func in _matmuls():
            self.first_matmul[group] = len(self.events)
        if func is torch.ops.aten._fused_sdp_choice.default:
            return _real_sdp_choice(func, args, kwargs)
        if func is torch.ops.aten._local_scalar_dense.default:
            # `.item()` on a fake tensor has no value (e.g. Adafactor's parameter norm). Memory
            # does not depend on it; answer 1 so the step goes on.
            return True if args[0].dtype == torch.bool else 1 if not args[0].is_floating_point() else 1.0
        before, after = _kernel_scratch(func, args, kwargs) if self.device == "cpu" else ((), ())
        # Buffers the real kernel allocates and frees inside the op (invisible to dispatch), in
        # the kernel's order: `before` ones outlive the output's allocation, `after` ones follow it.
        keys = [self._scratch(nbytes) for nbytes in before]
        out = _grouped_mm_output(args, kwargs) if _meta_refuses_grouped_mm(func, args) else func(*args, **kwargs)
        if self._adds_in_place(func, args, out):
            self._track(out, same_as=self.storage_key(args[0]))
        elif self._is_accumulation(func, args, kwargs, out):
            self._pending = (out, self._in_place_key(args[0], out))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor) and (self._pending is None or t is not self._pending[0]):
                self._track(t)
        for key, nbytes in zip(keys, before, strict=True):
            self.events.append((key, -nbytes, self.phase))
        for nbytes in after:
            self.events.append((self._scratch(nbytes), -nbytes, self.phase))
        return out

    def _adds_in_place(self, func: Any, args: tuple, out: Any) -> bool:
        """Whether the real CPU kernel would add SDPA's mask into the scores in place.

        SDPA's math path (aten/src/ATen/native/transformers/attention.cpp) adds the attention
        mask with `add_` on plain tensors but out of place when any operand is tensor-subclass-
        like, which every fake tensor is: without this, the trace allocates one extra
        [b, heads, s, s] score buffer per attention call (GPT-2 8 x 512: 32 MiB) that the real
        step never has (measured: 156 vs 132 buffers of 32 MiB in 3 steps, bench/malloc_replay).
        """
        import torch

        x = args[0] if args else None
        return (self.in_sdpa and func is torch.ops.aten.add.Tensor
                and isinstance(x, torch.Tensor) and isinstance(out, torch.Tensor)
                and out.shape == x.shape and out.dtype == x.dtype and self.storage_key(x) is not None)

    def _is_accumulation(self, func: Any, args: tuple, kwargs: dict, out: Any) -> bool:
        """Whether this op is the autograd engine summing two gradients of one tensor.

        `InputBuffer::accumulate` (torch/csrc/autograd/input_buffer.cpp) computes `old + new` when
        either is tensor-subclass-like, which a fake tensor always is, but `old.add_(new)` on plain
        tensors when it holds the last reference to `old` and to its storage and `old` is dense.
        Logged as traced, every accumulation would allocate one extra gradient that a real step
        does not: every residual stream and every tensor a block uses twice (GPT-2's gelu input,
        16 MiB at 8 x 512: 24 of them and 24 of 4 MiB in 3 steps, counted against a real step with
        bench/malloc_replay). So the output is held back (`_pending`) and logged once we know.
        """
        import torch

        if not (self.in_accumulation and func is torch.ops.aten.add.Tensor and len(args) == 2 and not kwargs):
            return False
        old, new = args
        return (isinstance(old, torch.Tensor) and isinstance(new, torch.Tensor) and isinstance(out, torch.Tensor)
                and old.shape == new.shape == out.shape and old.dtype == out.dtype)

    def _in_place_key(self, old: Any, out: Any) -> int | None:
        """The key the sum may alias, or None: what is known at the add of the real engine's
        conditions holds, i.e. `old` is logged, dense and no other tensor shares its storage (it is
        no more shared than the fresh output's). The last one, that the engine held `old`'s last
        reference, shows next: `old` dies before anything else happens, and `_freed` then aliases
        the output to it."""
        key = self.storage_key(old)
        return key if key is not None and _dense(old) and _storage_use_count(old) <= _storage_use_count(out) else None

    def _settle(self) -> None:
        """Log a pending accumulation's output as a new allocation: its `old` outlived it."""
        if self._pending is not None:
            out, self._pending = self._pending[0], None
            self.accumulations["new"] += 1
            self._track(out)

    def _scratch(self, nbytes: int) -> int:
        key, self._next = self._next, self._next + 1
        self.events.append((key, nbytes, self.phase))
        return key


def _meta_refuses_grouped_mm(func: Any, args: tuple) -> bool:
    """Whether this is `aten._grouped_mm` in a dtype other than bf16 (see `_grouped_mm_output`)."""
    import torch

    grouped = getattr(torch.ops.aten, "_grouped_mm", None)
    return grouped is not None and func is grouped.default and args[0].dtype != torch.bfloat16


def _grouped_mm_output(args: tuple, kwargs: dict) -> Any:
    """The output of `aten._grouped_mm` for a dtype its meta function refuses.

    The meta function enforces the CUDA kernel's bf16-only rule, but the CPU kernel takes fp32,
    and transformers' MoE experts call it in the parameters' dtype (Mixtral or Qwen2-MoE in fp32
    or under autocast). The output is shaped as the meta function would shape it.
    """
    from torch._meta_registrations import _create_grouped_mm_output_tensor

    offs = args[2] if len(args) > 2 else kwargs.get("offs")
    return _create_grouped_mm_output_tensor(args[0], args[1], offs, kwargs.get("out_dtype"))


@functools.cache
def _matmuls() -> frozenset:
    """The aten ops that run on cuBLAS in an HF training step."""
    import torch

    aten = torch.ops.aten
    return frozenset((aten.mm.default, aten.addmm.default, aten.bmm.default, aten.baddbmm.default,
                      aten.addbmm.default, aten.addmv.default, aten.mv.default))


def _dense(t: Any) -> bool:
    """Whether `t` covers its elements exactly once in some dimension order (ATen's
    `is_non_overlapping_and_dense`): contiguous up to a permutation of its dimensions."""
    expected = 1
    for stride, size in sorted((int(st), int(n)) for n, st in zip(t.shape, t.stride(), strict=True) if n != 1):
        if stride != expected:
            return False
        expected *= size
    return True


def _storage_use_count(t: Any) -> int:
    """References to `t`'s storage: one per tensor sharing it, plus what fake mode itself holds."""
    import torch

    return int(torch._C._storage_Use_Count(t.untyped_storage()._cdata))


@contextlib.contextmanager
def _accumulation_windows(log: _AllocLog, root: Any) -> Any:
    """Flag `log` while the autograd engine adds gradients into the next nodes' input buffers.

    The engine runs each node's formula, its post hooks, then the accumulation into the input
    buffers of the nodes it feeds, then the next node's pre hooks: a post hook opens the window
    and a pre hook closes it. Hooks go on every node reachable from `root` (a loss's grad_fn);
    a post hook makes the engine keep the node's inputs until after it, but no op runs in between,
    so the log is otherwise unchanged (`test_accumulation_hooks_change_nothing_else` checks it).
    """
    handles, seen, stack = [], set(), [root]

    def opened(*_: Any) -> None:
        log.in_accumulation = True

    def closed(*_: Any) -> None:
        log.in_accumulation = False

    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        handles.append(node.register_prehook(closed))
        if node.next_functions:
            handles.append(node.register_hook(opened))
        stack.extend(fn for fn, _ in node.next_functions)
    try:
        yield
    finally:
        log.in_accumulation = False
        for h in handles:
            h.remove()


def _kernel_scratch(func: Any, args: tuple, kwargs: dict) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Bytes a CPU kernel allocates and frees inside this op, invisible to a dispatch mode:
    (allocated before the op's outputs, allocated after them).

    Measured on torch 2.13 CPU by logging every malloc of the real op (bench/malloc_replay/mlog.c):
    - `native_dropout` (training): mask, output, then a sample buffer of the input's size and
      dtype (8M fp32 elements: 8 + 32 MiB kept, 32 MiB scratch; bf16: 16 MiB scratch). CUDA draws
      Philox randoms in registers (aten/src/ATen/native/cuda/Dropout.cu), so none there.
      `bernoulli_` into a float tensor (F.dropout's CPU path) allocates nothing beyond its input.
    - `_safe_softmax` (SDPA's math path): output, then a bool `self == -inf` mask of the input's
      size; with a `dtype`, first a converted copy of the input, freed once the output exists
      (aten/src/ATen/native/SoftMax.cpp).
    """
    import torch

    x = args[0] if args else None
    if not isinstance(x, torch.Tensor):
        return (), ()
    n = int(x.numel())
    if func is torch.ops.aten.native_dropout.default and (args[2] if len(args) > 2 else kwargs.get("train")):
        return (), (n * x.element_size(),)
    if func is torch.ops.aten._safe_softmax.default:
        dtype = args[2] if len(args) > 2 else kwargs.get("dtype")
        cast = (n * torch.empty((), dtype=dtype).element_size(),) if dtype is not None and dtype != x.dtype else ()
        return cast, (n,)
    return (), ()


@contextlib.contextmanager
def quiet_transformers() -> Any:
    """Silence transformers' logger (warnings such as "`loss_type=None` was set in the config but
    it is unrecognized") while we build and run models, so `--json` output stays clean."""
    from transformers.utils import logging as hf_logging

    before = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(before)


# One lock for every module attribute a trace swaps: a trace in another thread waits, and no swap
# is ever restored over another's. Re-entrant, since one trace nests several swaps.
_PATCH_LOCK = threading.RLock()


@contextlib.contextmanager
def _swapped(target: Any, **values: Any) -> Any:
    """Set attributes of `target` (a module) for the duration of the block, then restore them."""
    with _PATCH_LOCK:
        saved = {name: getattr(target, name) for name in values}
        for name, value in values.items():
            setattr(target, name, value)
        try:
            yield
        finally:
            for name, value in saved.items():
                setattr(target, name, value)


@contextlib.contextmanager
def _unseen_fakes() -> Any:
    """Let transformers take the code paths of a real run on our fake tensors.

    transformers treats a FakeTensor as graph tracing (`utils.import_utils.is_tracing`) and then
    avoids reading tensor values: `masking_utils._ignore_causal_mask_sdpa` no longer checks that
    the padding mask is all ones and materialises a [b, 1, s, s] causal mask, which the real step
    skips (SDPA gets `is_causal=True`). For GPT-2 8 x 512 that is an extra 8 MiB float mask per
    attention call, and a different attention path. Value reads are answered by `_AllocLog`
    (`_local_scalar_dense`: 1 / True, i.e. no padding, as in the benchmark protocol), so the check
    is switched off for the trace; a lock serialises traces while the module global is swapped.
    """
    from transformers.utils import import_utils

    with _swapped(import_utils, is_fake_tensor=lambda x: False):
        yield


@contextlib.contextmanager
def _eager_sdpa_math(log: _AllocLog) -> Any:
    """Flag `log` while `torch.nn.functional.scaled_dot_product_attention` runs (see `_AllocLog._adds_in_place`).

    transformers looks the function up at call time, so a wrapper sees every attention call; a
    lock serialises traces while the module attribute is swapped.
    """
    import torch.nn.functional as F

    original = F.scaled_dot_product_attention

    @functools.wraps(original)
    def marked(*args: Any, **kwargs: Any) -> Any:
        log.in_sdpa = True
        try:
            return original(*args, **kwargs)
        finally:
            log.in_sdpa = False

    with _swapped(F, scaled_dot_product_attention=marked):
        yield


@contextlib.contextmanager
def _cuda_kernels(log: _AllocLog) -> Any:
    """Give attention and dropout the memory of their CUDA kernels while tracing.

    The trace runs on fake CPU tensors (fake CUDA cannot run backward without a GPU), but on
    CUDA two ops keep very different tensors than their CPU kernels:

    - `F.scaled_dot_product_attention`: with fp16/bf16 inputs, head_dim <= 256 and no mask,
      torch picks FlashAttention-2 (also with dropout: the mask is regenerated from the
      Philox seed in backward); otherwise usually the memory-efficient kernel. Both save only
      the output and a logsumexp of [b, h, s] fp32 (torch `_scaled_dot_product_flash_attention`
      / `_efficient_attention_forward`; Dao 2023, arXiv 2307.08691). Their backward returns
      dq, dk, dv and allocates scratch: flash-attn's `mha_bwd` (csrc/flash_attn/flash_api.cpp)
      takes `softmax_d` [b, h, s] fp32 and `dq_accum` (q-shaped, fp32), and with GQA the
      expanded dk/dv of q's head count before summing them down. The CPU math path instead
      materialises b x h x s x s probabilities (and dropout masks of that size).
    - `F.dropout`: CUDA runs the fused `native_dropout` kernel (output + 1-byte bool mask;
      Korthikanti et al. 2022, arXiv 2205.05198, count 1 byte per element); CPU runs
      `_dropout_impl`, which saves a noise tensor in the input's dtype.

    Mechanism: the two `torch.nn.functional` attributes are swapped for stand-ins for the
    duration of the trace (HF code looks them up at call time: `nn.Dropout.forward`,
    transformers/integrations/sdpa_attention.py) and restored afterwards; a lock serialises
    traces. A TorchFunctionMode would be thread-local, but a mode is switched off while its
    handler runs, so `loss.backward()` (intercepted like any torch function) would recompute
    checkpointed blocks without it. Eager attention calls neither function for its s x s
    product, so it keeps materialising s x s probabilities here, as it does on a GPU.
    Exception: fp32 inputs with grouped key/value heads (`enable_gqa`, which transformers passes on
    CUDA when there is no mask) take the math kernel, as on a GPU (neither flash, which needs 16
    bits, nor the memory-efficient kernel takes `enable_gqa`): s x s scores and probabilities
    per head (measured on an H100, torch 2.11: the Llama-style 4 x 256 GQA model at 8 x 512 fp32
    allocated 332 MiB more than the efficient-kernel model predicted).

    Autocast: the trace runs CPU autocast, whose fp32 list differs from CUDA's (`_cuda_autocast`).
    """
    import torch

    def sdpa(query: Any, key: Any, value: Any, attn_mask: Any = None, dropout_p: float = 0.0,
             is_causal: bool = False, scale: float | None = None, enable_gqa: bool = False) -> Any:
        return _cuda_sdpa(log, query, key, value, attn_mask, dropout_p, is_causal, scale, enable_gqa)

    with _swapped(torch.nn.functional, scaled_dot_product_attention=sdpa, dropout=_cuda_dropout), _cuda_autocast():
        yield


# CUDA autocast's fp32 list (aten/src/ATen/autocast_mode.cpp, "CUDA Ops that can autocast to float32" in
# the AMP docs) less the ops CPU autocast already lists: run in fp32, 16-bit inputs cast first.
_CUDA_FP32_OPS = (
    "pow.Tensor_Scalar", "pow.Tensor_Tensor", "pow.Scalar", "exp", "expm1", "log", "log10", "log2", "log1p",
    "reciprocal", "rsqrt", "sinh", "cosh", "tan", "acos", "asin", "erfinv", "softplus", "layer_norm",
    "group_norm", "logsumexp", "renorm", "dist",
)
# ...and the ones CUDA runs with an fp32 output dtype when none is given (no input copy).
_CUDA_FP32_DTYPE_OPS = ("softmax.int", "log_softmax.int", "sum", "sum.dim_IntList", "cumsum", "cumprod",
                        "prod", "prod.dim_int")


@contextlib.contextmanager
def _cuda_autocast() -> Any:
    """Give CPU autocast CUDA's fp32 policy for the duration of a trace.

    The trace runs on fake CPU tensors under `torch.autocast("cpu")`, but a CUDA step runs CUDA
    autocast, which also runs pow, exp, rsqrt, layer_norm, softmax, sum and others in fp32. That
    changes memory: GPT-2's tanh GeLU (`torch.pow(x, 3.0)`) turns its whole MLP chain fp32 on CUDA
    (measured on an H100: GPT-2 8 x 1024 bf16 allocated 1.9 GiB more than the CPU-policy trace).
    Python kernels are registered at the AutocastCPU dispatch key for those ops (only where CPU
    autocast has none) and removed afterwards; the trace lock serialises them.
    """
    import torch

    low = (torch.float16, torch.bfloat16)
    excluded = torch._C.DispatchKeySet(torch._C.DispatchKey.AutocastCPU)

    def cast(x: Any) -> Any:
        return x.float() if isinstance(x, torch.Tensor) and x.dtype in low else x

    def fp32(op: Any) -> Any:
        def kernel(*args: Any, **kwargs: Any) -> Any:
            with torch._C._ExcludeDispatchKeyGuard(excluded):
                return op(*[cast(a) for a in args], **{k: cast(v) for k, v in kwargs.items()})
        return kernel

    def fp32_dtype(op: Any) -> Any:
        names = [a.name for a in op._schema.arguments]
        at = names.index("dtype")

        def kernel(*args: Any, **kwargs: Any) -> Any:
            with torch._C._ExcludeDispatchKeyGuard(excluded):
                given = args[at] if len(args) > at else kwargs.get("dtype")
                if given is None and isinstance(args[0], torch.Tensor) and args[0].dtype in low:
                    args, kwargs = args[:at], {**kwargs, "dtype": torch.float32}
                return op(*args, **kwargs)
        return kernel

    lib = torch.library.Library("aten", "IMPL")
    try:
        for names, make in ((_CUDA_FP32_OPS, fp32), (_CUDA_FP32_DTYPE_OPS, fp32_dtype)):
            for name in names:
                packet, _, overload = name.partition(".")
                try:
                    op = getattr(getattr(torch.ops.aten, packet), overload or "default")
                except AttributeError:  # not in this torch version
                    continue
                if not torch._C._dispatch_has_kernel_for_dispatch_key(op.name(), "AutocastCPU"):
                    lib.impl(name, make(op), "AutocastCPU")
        yield
    finally:
        lib._destroy()


def _cuda_sdpa(log: _AllocLog, query: Any, key: Any, value: Any, attn_mask: Any, dropout_p: float,
               is_causal: bool, scale: float | None, enable_gqa: bool) -> Any:
    """Memory stand-in for CUDA's SDPA kernels (see `_cuda_kernels`)."""
    import torch

    if torch.is_autocast_enabled("cpu"):
        # Autocast lists SDPA as a lower-precision op on CUDA (aten/src/ATen/autocast_mode.cpp):
        # fp32 inputs (e.g. rotary outputs) are cast, as the dispatcher would.
        low = torch.get_autocast_dtype("cpu")
        query, key, value = (x.to(low) if x.dtype == torch.float32 else x for x in (query, key, value))
    with torch.autocast("cpu", enabled=False):
        if query.dtype == torch.float32 and enable_gqa and key.shape[-3] != query.shape[-3]:
            log.in_sdpa = True  # the math kernel adds its causal mask in place (`_adds_in_place`)
            try:
                return torch.ops.aten._scaled_dot_product_attention_math(
                    query, key, value, attn_mask, dropout_p, is_causal, scale=scale, enable_gqa=True)[0]
            finally:
                log.in_sdpa = False
        return _FlashAttention.apply(query, key, value)


def _cuda_dropout(input: Any, p: float = 0.5, training: bool = True, inplace: bool = False) -> Any:
    """CUDA's dropout: the fused `native_dropout` kernel (output + 1-byte mask) when it applies."""
    import torch

    if training and 0.0 < p < 1.0 and input.numel() > 0:
        return torch.native_dropout(input, p, True)[0]
    return input if not training or p == 0.0 else torch.zeros_like(input)


def _flash_attention_function() -> Any:
    import torch

    class FlashAttention(torch.autograd.Function):
        @staticmethod
        def forward(ctx: Any, q: Any, k: Any, v: Any) -> Any:
            out = q.new_empty((*q.shape[:-1], v.shape[-1]))
            lse = q.new_empty(q.shape[:-1], dtype=torch.float32)
            ctx.save_for_backward(q, k, v, out, lse)
            return out

        @staticmethod
        def backward(ctx: Any, dout: Any) -> Any:
            q, k, v, out, lse = ctx.saved_tensors
            softmax_d = torch.empty_like(lse)
            dq_accum = torch.empty_like(q, dtype=torch.float32)
            grouped = k.shape[1] != q.shape[1]
            dk_exp = q.new_empty((*q.shape[:-1], k.shape[-1])) if grouped else None
            dv_exp = q.new_empty((*q.shape[:-1], v.shape[-1])) if grouped else None
            dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
            del softmax_d, dq_accum, dk_exp, dv_exp
            return dq, dk, dv

    return FlashAttention


class _LazyFunction:
    """Build the autograd.Function on first use (keeps `import torch` out of module import)."""

    def __init__(self, factory: Any) -> None:
        self._factory, self._fn = factory, None

    def apply(self, *args: Any) -> Any:
        if self._fn is None:
            self._fn = self._factory()
        return self._fn.apply(*args)


_FlashAttention = _LazyFunction(_flash_attention_function)


def _real_sdp_choice(func: Any, args: tuple, kwargs: dict) -> Any:
    """Ask the real CPU kernel selector, on stride-0 stand-ins of the fake inputs (no memory)."""
    import torch
    from torch.utils._python_dispatch import _disable_current_modes

    with _disable_current_modes():

        def stand_in(x: Any) -> Any:
            if not isinstance(x, torch.Tensor):
                return x
            base = torch.empty((1,) * (x.dim() - 1) + (x.shape[-1],), dtype=x.dtype, device="cpu")
            return base.expand(x.shape)

        return func(*[stand_in(a) for a in args], **{k: stand_in(v) for k, v in kwargs.items()})


def _apply_lora(model: Any, rank: int, targets: list[str] | None, dropout: float = 0.0) -> None:
    """Freeze the base and wrap each target linear with a LoRA adapter, as peft's `lora.Linear` runs.

    Not peft itself: under fake mode peft's move of each new adapter to its base layer's device
    and dtype (`Module.to`) must swap the parameter, which fails on a tensor that the allocation log
    holds a weak reference to. The forward below is peft's (`result + B(A(dropout(x))) * scaling`,
    adapters in the base's dtype), so the tensors are the same; bench/estimator_heldout.py --rows lora
    measures real peft against it.
    """
    import torch

    from overseer_plan._analytic import linear_features

    targets = targets or _default_lora_targets(model)

    class _LoRALinear(torch.nn.Module):
        # y = W x + B(A drop(x)) * alpha/r with W frozen (Hu et al. 2021, arXiv 2106.09685), alpha = 2r.
        def __init__(self, base: Any) -> None:
            super().__init__()
            self.base = base
            dtype = base.weight.dtype
            fan_in, fan_out = linear_features(base)
            self.lora_A = torch.nn.Linear(fan_in, rank, bias=False, dtype=dtype)
            self.lora_B = torch.nn.Linear(rank, fan_out, bias=False, dtype=dtype)
            torch.nn.init.zeros_(self.lora_B.weight)

        def forward(self, x: Any) -> Any:
            result = self.base(x)
            out_dtype = result.dtype
            x = x.to(self.lora_A.weight.dtype)  # peft's _cast_input_dtype: a copy under autocast for 16-bit inputs
            dropped = torch.nn.functional.dropout(x, dropout, self.training) if dropout > 0 else x
            return (result + self.lora_B(self.lora_A(dropped)) * 2.0).to(out_dtype)

    for p in model.parameters():
        p.requires_grad_(False)
    for mod in list(model.modules()):
        for child_name, child in list(mod.named_children()):
            if linear_features(child) is not None and child_name in targets:
                setattr(mod, child_name, _LoRALinear(child))


def _default_lora_targets(model: Any) -> list[str]:
    """peft's usual default among the model's linear layers (`_analytic.lora_targets_among`)."""
    from overseer_plan._analytic import linear_features, lora_targets_among

    return lora_targets_among({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if linear_features(m) is not None})


def _make_optimizer(name: str, params: list, device: str) -> Any:
    import torch

    # On CUDA, AdamW/SGD default to the foreach path (one param-sized temporary list);
    # on CPU they default to the per-tensor loop (temporaries of one parameter at a time).
    foreach = device == "cuda"
    if name == "adamw":
        return torch.optim.AdamW(params, lr=1e-4, foreach=foreach)
    if name == "sgd":
        return torch.optim.SGD(params, lr=1e-4, momentum=0.9, foreach=foreach)
    if name == "adafactor":
        return torch.optim.Adafactor(params, lr=1e-2, foreach=False)
    if name == "adamw8bit":
        return _EightBitAdamStandIn(params, device)
    raise ValueError(f"unknown optimizer {name!r}")


def _EightBitAdamStandIn(params: list, device: str = "cuda") -> Any:
    """bitsandbytes AdamW8bit's memory, without bitsandbytes (Dettmers et al. 2021, arXiv 2110.02861).

    States: two uint8 per element plus one fp32 absmax per 256-element block each; tensors under
    4096 elements keep two fp32 states. The update: on CUDA one fused kernel (nothing allocated);
    on CPU bitsandbytes 0.50 (backends/cpu/ops.py) works in fp32 per tensor: it dequantizes both
    states, scales a copy of the gradient, divides by sqrt(v) / correction (two temporaries), then
    re-quantizes each state through a uint8 buffer. Measured before this was modelled: GPT-2 124M
    at 2 x 256 with 8-bit AdamW grew 2930 MiB on CPU against 2278 predicted (the embedding's
    temporaries are 5 x 154 MiB)."""
    import torch

    from overseer_plan._analytic import BNB_BLOCK, BNB_MIN_8BIT_SIZE

    class EightBit(torch.optim.Optimizer):
        def __init__(self, params: list) -> None:
            super().__init__(params, {"lr": 1e-4})

        @torch.no_grad()
        def step(self, closure: Any = None) -> None:
            for group in self.param_groups:
                for p in group["params"]:
                    if p.grad is None:
                        continue
                    st = self.state[p]
                    small = p.numel() < BNB_MIN_8BIT_SIZE
                    if not st:
                        if small:
                            st["state1"] = torch.zeros_like(p, dtype=torch.float32)
                            st["state2"] = torch.zeros_like(p, dtype=torch.float32)
                        else:
                            st["state1"] = torch.zeros_like(p, dtype=torch.uint8)
                            st["state2"] = torch.zeros_like(p, dtype=torch.uint8)
                            blocks = (p.numel() + BNB_BLOCK - 1) // BNB_BLOCK
                            st["absmax1"] = torch.zeros(blocks, dtype=torch.float32)
                            st["absmax2"] = torch.zeros(blocks, dtype=torch.float32)
                    if device == "cpu":
                        _bnb_cpu_update(p, st, small, group["lr"])
                    else:
                        p.add_(p.grad, alpha=-group["lr"])

    return EightBit(params)


def _bnb_cpu_update(p: Any, st: dict, small: bool, lr: float) -> None:
    """The allocations of bitsandbytes' CPU update for one tensor (see `_EightBitAdamStandIn`)."""
    import torch

    from overseer_plan._analytic import BNB_BLOCK

    if small:  # _optimizer_update_32bit_cpu: states in place, update = m / (sqrt(v) + eps)
        g = p.grad.float() * 1.0
        p_fp32 = p.data.float()
        denom = st["state2"].sqrt() + 1e-8
        update = st["state1"] / denom
        del denom
        p_fp32.add_(update, alpha=-lr)
        del update
        p.data.copy_(p_fp32)
        return
    m = torch.empty_like(p, dtype=torch.float32)  # dequantize_blockwise of each state
    v = torch.empty_like(p, dtype=torch.float32)
    g = p.grad.float() * 1.0  # grad = g.float() * gnorm_scale
    p_fp32 = p.data.float()
    denom = v.sqrt() / 0.999  # (state2.sqrt() / correction2).add_(eps)
    denom.add_(1e-8)
    p_fp32.addcdiv_(m, denom, value=-lr)
    p.data.copy_(p_fp32)
    for state in (m, v):  # quantize_blockwise: a uint8 copy and the absmax, copied into the state
        out = torch.empty_like(state, dtype=torch.uint8)
        absmax = torch.empty(((state.numel() + BNB_BLOCK - 1) // BNB_BLOCK,), dtype=torch.float32)
        del out, absmax
    del m, v, g, denom


def _run(config: PretrainedConfig, cfg: EstimateConfig, device: str, num_layers: int,
         events: list | None = None) -> tuple[_AllocLog, dict]:
    """Build the model on fake tensors and run `_STEPS` optimizer steps under the allocation log."""
    import torch
    import transformers
    from torch._subclasses.fake_tensor import FakeTensorMode

    config = copy.deepcopy(config)
    _set_num_layers(config, num_layers)
    config.use_cache = cfg.kv_cache  # the trainer's default: off
    log = _AllocLog(device, events)
    info: dict[str, Any] = {"param_keys": set(), "grad_keys": set(), "opt_keys": set()}
    dtype = torch.bfloat16 if cfg.precision == "bf16-pure" else torch.float32
    amp = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg.precision)
    amp_device = "cpu"  # traced on fake CPU (see module docstring)
    b, s, ga, vocab = cfg.batch_size, cfg.seq_len, cfg.grad_accum, int(config.vocab_size)
    kernels = _cuda_kernels(log) if device == "cuda" else _eager_sdpa_math(log)
    with quiet_transformers(), _unseen_fakes(), FakeTensorMode(allow_non_fake_inputs=True), log.mode, kernels:
        model = transformers.AutoModelForCausalLM.from_config(
            config, attn_implementation=cfg.attention, dtype=dtype
        )
        if cfg.lora is not None:
            _apply_lora(model, cfg.lora.rank, cfg.lora.targets, cfg.lora.dropout)
        if cfg.gradient_checkpointing:
            with warnings.catch_warnings():  # renamed activation_checkpointing_enable in transformers 5.2x
                warnings.simplefilter("ignore", FutureWarning)
                model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.train()
        trainable = [p for p in model.parameters() if p.requires_grad]
        info["param_keys"] = {log.storage_key(p) for p in model.parameters()}
        opt = _make_optimizer(cfg.optimizer, trainable, device)
        for it in range(_STEPS):
            for _ in range(ga):
                log.mark(f"forward{it}")
                ids = torch.randint(0, vocab, (b, s))
                if amp is not None:
                    with torch.autocast(amp_device, dtype=amp):
                        loss = model(input_ids=ids, labels=ids).loss
                else:
                    loss = model(input_ids=ids, labels=ids).loss
                log.mark(f"backward{it}")
                scaled = loss / ga
                with _accumulation_windows(log, scaled.grad_fn):
                    scaled.backward()
                del loss, scaled, ids
            log.mark(f"optimizer{it}")
            info["grad_keys"] |= {log.storage_key(p.grad) for p in trainable if p.grad is not None}
            opt.step()
            info["opt_keys"] |= {
                log.storage_key(v) for st in opt.state.values() for v in st.values() if isinstance(v, torch.Tensor)
            }
            opt.zero_grad(set_to_none=True)
        log.mark("done")
        del opt, model, trainable
    return log, info


def _set_num_layers(config: Any, n: int) -> None:
    """Set the depth of a config (and truncate per-layer lists such as Qwen2's layer_types)."""
    full = int(config.num_hidden_layers)
    config.num_hidden_layers = n
    for attr in ("layer_types",):
        val = getattr(config, attr, None)
        if isinstance(val, list) and len(val) == full:
            setattr(config, attr, val[:n])
    if getattr(config, "max_window_layers", None) is not None:
        config.max_window_layers = min(int(config.max_window_layers), n)


def _analyse(log: _AllocLog, info: dict) -> dict[str, dict[str, Any]]:
    """Per phase (forward, backward, optimizer): the live peak and the category breakdown then.

    Kept per phase because reduced-depth traces are extrapolated: the phases grow at different
    rates with depth (the optimizer step's peak by a layer's parameters, states and foreach
    temporaries, backward's by its saved activations), so the phase that peaks at 2 or 4 layers
    need not be the one that peaks at full depth (measured on an H100: Llama-3.2-1B at 2 x 2048,
    checkpointed, peaks in AdamW's step, 23.6 GiB; extrapolating the overall peak of the 2- and
    4-layer traces, which peak in backward, gave 21.2 GiB).
    """
    live: dict[int, tuple[int, str]] = {}
    cur = 0
    best: dict[str, tuple[int, dict[int, tuple[int, str]]]] = {}
    phase = group = "setup"
    for key, nbytes, ph in log.events:
        if nbytes == 0:
            phase, group = ph, ph.rstrip("0123456789")
            continue
        if nbytes > 0:
            live[key] = (nbytes, phase)
            cur += nbytes
            if group in _PHASES and cur > best.get(group, (0,))[0]:
                best[group] = (cur, dict(live))
        elif key in live:
            cur -= live.pop(key)[0]
    out = {}
    for group, (peak, peak_live) in best.items():
        breakdown = dict.fromkeys(_CATEGORIES, 0)
        for key, (nbytes, ph) in peak_live.items():
            if key in info["param_keys"]:
                cat = "parameters"
            elif key in info["grad_keys"]:
                cat = "gradients"
            elif key in info["opt_keys"]:
                cat = "optimizer_states"
            elif ph.startswith("forward") and group != "optimizer":
                cat = "activations"
            else:
                cat = "temporaries"
            breakdown[cat] += nbytes
        out[group] = {"live": peak, "parts": breakdown}
    return out


def peak_of_phases(depths: list[int], phases: list[dict[str, dict[str, Any]]],
                   num_layers: int) -> tuple[int, str, dict[str, int]]:
    """The full-depth live peak, its phase and breakdown from per-depth phase peaks (`_analyse`):
    each phase's peak and parts extrapolated linearly in depth, then the largest phase."""
    common = [g for g in _PHASES if all(g in p for p in phases)]
    best = None
    for group in common:
        live = extrapolate_depths(depths, [p[group]["live"] for p in phases], num_layers)
        if best is None or live > best[0]:
            parts = {k: int(round(extrapolate_depths(depths, [p[group]["parts"][k] for p in phases], num_layers)))
                     for k in phases[-1][group]["parts"]}
            best = (live, group, parts)
    assert best is not None, "a traced step has forward, backward and optimizer phases"
    return int(round(best[0])), best[1], best[2]


@dataclass
class TraceRun:
    """One traced depth: the live-storage analysis per phase and the raw allocation log."""

    num_layers: int
    phases: dict[str, dict[str, Any]]
    """Per phase group: {"live": peak bytes, "parts": breakdown at that peak} (`_analyse`)."""
    events: list[tuple[int, int, str]] = field(repr=False)
    first_matmul: dict[str, int] = field(default_factory=dict)
    """Event index of the first matrix product in forward and in backward (`_AllocLog.first_matmul`)."""

    @property
    def live_peak_bytes(self) -> int:
        return max(p["live"] for p in self.phases.values())

    @property
    def peak_phase(self) -> str:
        return max(self.phases, key=lambda g: self.phases[g]["live"])

    @property
    def breakdown(self) -> dict[str, int]:
        return dict(self.phases[self.peak_phase]["parts"])


@dataclass
class TraceResult:
    """What a traced dry run found, in bytes of live tensor storage (see `trace_peak`)."""

    num_layers: int
    runs: list[TraceRun]
    wall_s: float
    tracer_maxrss_bytes: int

    def extrapolate(self, per_run: list[float]) -> float:
        """A quantity measured on each run, at the model's full depth (linear in L)."""
        return extrapolate_depths([r.num_layers for r in self.runs], per_run, self.num_layers)

    def _peak(self) -> tuple[int, str, dict[str, int]]:
        return peak_of_phases([r.num_layers for r in self.runs], [r.phases for r in self.runs], self.num_layers)

    @property
    def live_peak_bytes(self) -> int:
        return self._peak()[0]

    @property
    def peak_phase(self) -> str:
        return self._peak()[1]

    @property
    def breakdown(self) -> dict[str, int]:
        return self._peak()[2]


def extrapolate_depths(depths: list[int], values: list[float], num_layers: int) -> float:
    """A per-depth quantity at the model's full depth: linear in the layer count (see `trace_peak`)."""
    if len(depths) == 1:
        return float(values[0])
    (l1, v1), (l2, v2) = zip(depths, values, strict=True)
    return v1 + (v2 - v1) * (num_layers - l1) / (l2 - l1)


def trace_depths(config: PretrainedConfig, device: str = "cpu") -> list[int]:
    """The layer counts `trace_peak` traces: the model's own, or two reduced ones for deep models."""
    n_layers = int(config.num_hidden_layers)
    limit = _FULL_TRACE_MAX_LAYERS_CUDA if device == "cuda" else _FULL_TRACE_MAX_LAYERS
    return [n_layers] if n_layers <= limit else list(_REDUCED_LAYERS)


def trace_peak(config: PretrainedConfig, cfg: EstimateConfig, *, device: str = "cpu",
               depths: list[int] | None = None, events: Any = None) -> TraceResult:
    """Dry-run the protocol's training steps of `config` under `cfg` on fake tensors and log their memory.

    Models deeper than `_FULL_TRACE_MAX_LAYERS` are traced at two reduced depths; callers
    extrapolate any per-run quantity linearly in the layer count (`TraceResult.extrapolate`):
    parameters, gradients, states and saved activations all grow by one layer's worth per
    layer (Korthikanti et al. 2022, arXiv 2205.05198, Sec. 4), and fake ops cost time per op,
    not per byte, so depth is the only thing that makes a trace slow.

    `depths` overrides which layer counts are traced; `events`, a factory of list-likes, gets
    each run's events as they happen (`heap_replay.py` allocates them for real).
    """
    t0 = time.perf_counter()
    n_layers = int(config.num_hidden_layers)
    runs = []
    for depth in depths or trace_depths(config, device):
        log, info = _run(config, cfg, device, depth, events() if events else None)
        runs.append(TraceRun(depth, _analyse(log, info), log.events, dict(log.first_matmul)))
    return TraceResult(
        num_layers=n_layers,
        runs=runs,
        wall_s=time.perf_counter() - t0,
        tracer_maxrss_bytes=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
    )
