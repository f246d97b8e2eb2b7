"""The estimator benchmark's protocol for one row, marked for mlog.c: run under LD_PRELOAD=mlog.so.

    python drive.py FAMILY BATCH SEQ on|off fp32|bf16 [eager|sdpa]
"""

import contextlib
import ctypes
import json
import resource
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import torch  # noqa: E402
import transformers  # noqa: E402
from estimator_accuracy import FAMILIES  # noqa: E402


def rss() -> int:
    return int(open("/proc/self/statm").read().split()[1]) * 4096


def protocol(fam: str, b: int, s: int, ckpt: bool, precision: str, during_steps: Any = None,
             attention: str | None = None) -> None:
    """Build the row's model and run the protocol's 3 AdamW steps (`during_steps`: a context around them;
    `attention`: None for the model's default)."""
    cfg = dict(FAMILIES[fam])
    model_type = cfg.pop("model_type")
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(transformers.AutoConfig.for_model(model_type, **cfg),
                                                         attn_implementation=attention)
    if ckpt:
        model.gradient_checkpointing_enable()
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    amp = {"bf16": torch.bfloat16}.get(precision)
    with during_steps or contextlib.nullcontext():
        for _ in range(3):
            ids = torch.randint(0, int(cfg["vocab_size"]), (b, s))
            with torch.autocast("cpu", dtype=amp) if amp else contextlib.nullcontext():
                loss = model(input_ids=ids, labels=ids).loss
            loss.backward()
            del loss, ids
            opt.step()
            opt.zero_grad(set_to_none=True)


def main(fam: str, b: int, s: int, ckpt: bool, precision: str, attention: str | None = None) -> None:
    mark = ctypes.CDLL(None).mlog_mark  # looked up here so that protocol() imports without the shim
    mark.argtypes = [ctypes.c_uint64]
    base = rss()
    mark(1)
    protocol(fam, b, s, ckpt, precision, attention=attention)
    print(json.dumps({"measured_growth_mib": round((resource.getrusage(0).ru_maxrss * 1024 - base) / 2**20)}))


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4] == "on", sys.argv[5], *sys.argv[6:7])
