"""Which large buffers does the real step allocate that the traced dry run does not, op by op?

    python bench/malloc_replay/opdiff.py [FAMILY BATCH SEQ on|off fp32|bf16 [eager|sdpa]]   (default: gpt2-4x256 8 512 on fp32)

Runs the benchmark protocol's 3 steps of one row for real, under mlog.c (LD_PRELOAD) and a
TorchDispatchMode that marks each aten op, so every malloc of at least 256 KiB is attributed to the op
whose kernel made it (kernel scratch included, which no dispatch mode sees); then the traced dry run
(overseer_plan/trace.py) of the same row, its logged storages attributed the same way. Prints, per op,
the buffers only one side allocates, and the op-count differences. Needs gcc and Linux.

Caveat: any active TorchDispatchMode makes every tensor "subclass-like" to ATen
(ATen/TensorSubclassLikeUtils.h checks `dispatch_mode_enabled()`), so under the real side's marking
mode the autograd engine sums gradients out of place (`InputBuffer::accumulate`) and SDPA's math path
adds its mask out of place. Extra `aten.add.Tensor` buffers of gradient size on the real side are that,
not something the protocol run allocates (the trace models the unmarked run's in-place sums).
"""

from __future__ import annotations

import ctypes
import json
import os
import subprocess
import sys
import tempfile
from collections import Counter, defaultdict
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE.parents[1]))
_LARGE = 1 << 18
_REC = [("op", "u1"), ("tid", "u1"), ("pad", "u2"), ("pad2", "u4"), ("ptr", "u8"), ("size", "u8"), ("aux", "u8")]
_OFF = 10**9  # mark value: outside any op


def _real(row: list[str], log_path: str) -> list[tuple[str, list[int]]]:
    import numpy as np
    from drive import protocol
    from torch.utils._python_dispatch import TorchDispatchMode

    mark = ctypes.CDLL(None).mlog_mark
    mark.argtypes = [ctypes.c_uint64]
    ops: list[str] = []

    class Marks(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            ops.append(str(func))
            mark(len(ops))
            out = func(*args, **(kwargs or {}))
            mark(_OFF)
            return out

    protocol(row[0], int(row[1]), int(row[2]), row[3] == "on", row[4], during_steps=Marks(),
             attention=row[5] if len(row) > 5 else None)
    ctypes.CDLL(None).mlog_flush()
    per: dict[int, list[int]] = defaultdict(list)
    cur = None
    for rec in np.fromfile(log_path, np.dtype(_REC)):
        if rec["op"] == 9:
            cur = int(rec["aux"]) if rec["aux"] < _OFF else None
        elif rec["op"] in (1, 3) and rec["size"] >= _LARGE and cur is not None:
            per[cur].append(int(rec["size"]))
    return [(name, per.get(i + 1, [])) for i, name in enumerate(ops)]


def _traced(row: list[str]) -> list[tuple[str, list[int]]]:
    from estimator_accuracy import FAMILIES

    from overseer_plan import trace
    from overseer_plan.estimate import EstimateConfig
    from overseer_plan.models import resolve_model_config

    ops: list[tuple[str, list[int]]] = []
    cur: list = [None]
    plain = trace._AllocLog._dispatch

    def dispatch(self, func, args, kwargs):
        ops.append((str(func), []))
        cur[0] = ops[-1][1]
        try:
            return plain(self, func, args, kwargs)
        finally:
            cur[0] = None

    class Events(list):
        def append(self, event):
            super().append(event)
            if event[1] >= _LARGE and cur[0] is not None:
                cur[0].append(event[1])

    trace._AllocLog._dispatch = dispatch
    config = resolve_model_config(dict(FAMILIES[row[0]]))
    cfg = EstimateConfig(batch_size=int(row[1]), seq_len=int(row[2]), gradient_checkpointing=row[3] == "on",
                         precision=row[4], **({"attention": row[5]} if len(row) > 5 else {}))
    trace.trace_peak(config, cfg, device="cpu", depths=[int(config.num_hidden_layers)], events=Events)
    return ops


def _compare(real: list, traced: list) -> None:
    def by_op(seq: list) -> tuple[dict[str, Counter], Counter]:
        sizes: dict[str, Counter] = defaultdict(Counter)
        for name, allocs in seq:
            sizes[name].update(allocs)
        return sizes, Counter(name for name, _ in seq)

    (rs, rn), (ts, tn) = by_op(real), by_op(traced)
    print("ops called a different number of times (the trace also builds and initialises the model):")
    for name in sorted(set(rn) | set(tn), key=lambda n: -abs(rn[n] - tn[n])):
        if rn[name] != tn[name]:
            print(f"  {name:55} real {rn[name]:6} traced {tn[name]:6}")
    print(f"buffers >= {_LARGE >> 10} KiB only one side allocates, by op (MiB x count):")
    for name in sorted(set(rs) | set(ts)):
        only_real, only_traced = rs[name] - ts[name], ts[name] - rs[name]
        if only_real or only_traced:
            fmt = lambda c: sorted((round(k / 2**20, 3), n) for k, n in c.items())  # noqa: E731
            print(f"  {name:55} real only {fmt(only_real)}  traced only {fmt(only_traced)}")


def main() -> None:
    if sys.argv[1:2] == ["--real"]:
        print(json.dumps(_real(sys.argv[3:], sys.argv[2])))
        return
    row = sys.argv[1:] or ["gpt2-4x256", "8", "512", "on", "fp32"]
    import transformers

    transformers.logging.set_verbosity_error()
    with tempfile.TemporaryDirectory() as work:
        lib, log = os.path.join(work, "mlog.so"), os.path.join(work, "log.bin")
        subprocess.run(["gcc", "-O2", "-shared", "-fPIC", "-o", lib, str(HERE / "mlog.c"), "-ldl", "-lpthread"],
                       check=True)
        env = dict(os.environ, MLOG_FILE=log, LD_PRELOAD=lib)
        out = subprocess.run([sys.executable, __file__, "--real", log, *row], env=env, check=True,
                             capture_output=True, text=True)
        real = json.loads(out.stdout.strip().splitlines()[-1])
    _compare(real, _traced(row))


if __name__ == "__main__":
    main()
