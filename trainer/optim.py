"""The optimizers the trainer runs, by the names the config and the planner use.

Its own module so the measurement protocol (overseer_plan/_measure.py) runs the same optimizers
without importing the training loop.
"""

from __future__ import annotations

from typing import Any

import torch

from overseer_plan.errors import UserInputError


def make_optimizer(name: str, groups: list[dict[str, Any]], lr: float) -> torch.optim.Optimizer:
    """The optimizer the config names (the planner falls back to a memory-lean one when AdamW cannot fit).

    Adafactor runs with an external learning rate (the schedule's), as HF recommends for fine-tuning;
    8-bit AdamW needs bitsandbytes, which is not a dependency.
    """
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.95))
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=0.9)
    if name == "adafactor":
        from transformers.optimization import Adafactor

        return Adafactor(groups, lr=lr, scale_parameter=False, relative_step=False, warmup_init=False)
    if name == "adamw8bit":
        try:
            import bitsandbytes as bnb
        except ImportError:
            raise UserInputError("optimizer adamw8bit needs bitsandbytes (pip install bitsandbytes); "
                                 "or set optimizer: adafactor, which also keeps its state small") from None
        return bnb.optim.AdamW8bit(groups, lr=lr, betas=(0.9, 0.95))
    raise UserInputError(f"unknown optimizer {name!r}; choose adamw, sgd, adafactor or adamw8bit")
