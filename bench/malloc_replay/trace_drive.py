"""The traced dry run of one benchmark row under mlog.c, with its fake tensors logged inline (op 5).

Replaying that log puts the tracer's own small allocations (it builds the same autograd graph on
fake tensors) between the traced tensor blocks, which the tensor-only allocator model lacks.
    python trace_drive.py FAMILY BATCH SEQ on|off fp32|bf16 [eager|sdpa]      (under LD_PRELOAD=mlog.so)
"""

import ctypes
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
lib = ctypes.CDLL(None)
mark, tensor = lib.mlog_mark, lib.mlog_tensor
mark.argtypes, tensor.argtypes = [ctypes.c_uint64], [ctypes.c_uint64, ctypes.c_int64]
os.environ["OVERSEER_CACHE_DIR"] = tempfile.mkdtemp(prefix="overseer-mlog-")

import transformers  # noqa: E402
from estimator_accuracy import FAMILIES  # noqa: E402

from overseer_plan import trace  # noqa: E402
from overseer_plan.estimate import EstimateConfig  # noqa: E402
from overseer_plan.models import resolve_model_config  # noqa: E402


class _Logged(list):
    def append(self, event: tuple[int, int, str]) -> None:
        super().append(event)
        if event[1]:
            tensor(event[0], event[1])


def main(fam: str, b: int, s: int, ckpt: bool, precision: str, attention: str = "sdpa") -> None:
    transformers.logging.set_verbosity_error()
    plain_init = trace._AllocLog.__init__

    def init(self, *args, **kwargs) -> None:
        plain_init(self, *args, **kwargs)
        self.events = _Logged()

    trace._AllocLog.__init__ = init
    config = resolve_model_config(dict(FAMILIES[fam]))
    mark(1)
    trace.trace_peak(config, EstimateConfig(batch_size=b, seq_len=s, gradient_checkpointing=ckpt, precision=precision,
                                            attention=attention))
    mark(2)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4] == "on", sys.argv[5], *sys.argv[6:7])
