"""The trainer's front door: `train(config, ...)` plans (with --auto), builds the Trainer, runs it, closes it.

    from overseer_plan import TrainingConfig
    from trainer import train
    result = train(TrainingConfig(max_steps=20), auto=True)

The embedded default (no model, no data) trains overseer-tiny on the standard library's source with
a byte-level tokenizer; `EMBEDDED_DEFAULTS` sets a short schedule for it, so `overseer train --auto`
shows a real learning curve on a laptop CPU in under three minutes. Settings the user gives win.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from overseer_plan.config import TrainingConfig
from trainer.loop import RESTART_ENV, Reporter, Trainer, TrainResult
from trainer.oom import OomPolicy

EMBEDDED_DEFAULTS: dict[str, Any] = {
    # 40 steps x 16 sequences x 512 bytes = 0.33M tokens: about a minute of compute on 2 idle CPU cores,
    # and the eval loss ends ~50% below its start (bench/results/trainer.md). A smaller effective
    # batch than the presets' 64 gives more optimizer steps per second, which is what a short demo needs.
    "max_steps": 40,
    "batch_size": 16,
    "gradient_accumulation_steps": 1,
    # A 0.8M-parameter model from random init needs a larger step than the presets' 1e-4, which suits
    # pretrained models of 100M+ parameters (cf. the GPT-3 paper's table 2.1: smaller models, higher LR).
    "learning_rate": 3e-3,
    "eval_steps": 20,
    "eval_max_batches": 4,
    "logging_steps": 4,
    "save_steps": 20,
}
MAX_RESTARTS = 3


def is_embedded_default(config: TrainingConfig) -> bool:
    return config.model is None and not config.data


def with_embedded_defaults(config: TrainingConfig, explicit: set[str]) -> TrainingConfig:
    """`config` with the embedded default's short schedule, for every setting the user did not give.

    They are marked explicit so the planner treats them as the request (it still re-splits the batch).
    """
    if not is_embedded_default(config):
        return config
    changes = {k: v for k, v in EMBEDDED_DEFAULTS.items() if k not in explicit}
    if "epochs" in explicit:
        changes.pop("max_steps", None)
    if {"batch_size", "gradient_accumulation_steps"} & explicit:  # the user's batch request stands whole
        changes.pop("batch_size", None)
        changes.pop("gradient_accumulation_steps", None)
    elif "resource_efficient_mode" in explicit:
        # A mode the user chose keeps its preset's micro-batch, the memory it promises; the demo's
        # effective batch (and so its schedule) stays, as more accumulation steps.
        micro = min(config.batch_size, EMBEDDED_DEFAULTS["batch_size"])
        changes["batch_size"] = micro
        changes["gradient_accumulation_steps"] = max(1, EMBEDDED_DEFAULTS["batch_size"] // micro)
    out = config.with_changes(**changes)
    out.mark_explicit(set(changes))
    return out


def embedded_note(before: TrainingConfig, after: TrainingConfig) -> str | None:
    """What the embedded default's demo schedule changed from the mode's preset, for the log."""
    changed = [f"{k} {getattr(before, k)} -> {getattr(after, k)}" for k in EMBEDDED_DEFAULTS
               if getattr(before, k) != getattr(after, k)]
    if not changed:
        return None
    return (f"embedded default (overseer-tiny, {after.mode} mode): a short demo schedule instead of the preset's: "
            f"{', '.join(changed)}; give --model/--data (or set them in training_config.py) to train with the preset")


def plan_config(config: TrainingConfig, *, mode: str | None, num_processes: int = 1,
                hardware: Any = None) -> tuple[TrainingConfig, list[str], Callable[[TrainingConfig], bool] | None]:
    """Fit `config` to this machine with the planner: (config, notes for the log, estimator check for rungs).

    The user's effective batch (batch x accumulation) is kept; the planner chooses the split.
    Without the planner module (or the probe), the config is used as given and the OOM ladder fits it.
    """
    try:
        from overseer_plan.plan import Workload, make_plan
        from overseer_plan.probe import probe
    except ImportError as e:
        return config, [f"planner unavailable ({e}); training as configured, the OOM ladder will fit it"], None
    hw = hardware or probe(output_dir=config.output_dir)
    workload = Workload(model=config.model, config=config, mode=mode, num_processes=num_processes, resplit_batch=True)
    plan = make_plan(hw, workload)
    planned = plan.config.with_changes(model=config.model, data=list(config.data), output_dir=config.output_dir,
                                       use_gpu=plan.device != "cpu" and config.use_gpu)
    planned.mark_explicit({"mixed_precision", "mixed_precision_dtype"})  # the fit chose what the hardware runs
    notes = [f"plan: {plan.mode} mode on {plan.device}: micro-batch {planned.batch_size} x accumulation "
             f"{planned.gradient_accumulation_steps}, sequence {planned.max_sequence_length}, checkpointing "
             f"{'on' if planned.gradient_checkpointing else 'off'}, precision {planned.precision()}"]
    if not plan.feasible:
        notes.append("plan: no candidate fits the estimate; starting from the preset and letting the OOM ladder step down")
    return planned, notes, rung_check(hw, config.model, plan.device)


def rung_check(hardware: Any, model: str | None, device: str) -> Callable[[TrainingConfig], bool] | None:
    """`plan.fits` bound to this machine: validates each OOM-ladder rung with the estimator."""
    try:
        from overseer_plan.plan import fits
    except ImportError:
        return None

    def check(cfg: TrainingConfig) -> bool:
        try:
            return bool(fits(cfg, hardware, model, device=device))
        except Exception:  # an estimator that cannot size this model must not stop the retry
            return True

    return check


def _machine_check(config: TrainingConfig) -> Callable[[TrainingConfig], bool] | None:
    """`rung_check` for this machine and the device `config` trains on (None without the probe)."""
    try:
        import torch

        from overseer_plan.probe import probe
    except ImportError:
        return None
    device = "cuda" if config.use_gpu and torch.cuda.is_available() else "cpu"
    return rung_check(probe(output_dir=config.output_dir), config.model, device)


def train(config: TrainingConfig, *, auto: bool = False, mode: str | None = None, resume: bool = False,
          reporter: Reporter | None = None, use_monitor: bool = True, cache_dir: Path | None = None,
          explicit: set[str] | None = None) -> TrainResult:
    """Run one training job to the end (or to a signal) and return what it did.

    Args:
        config: the settings; with `auto`, only its explicit fields bind the planner.
        auto: fit the config to this machine with the planner first.
        mode: 'standard' or 'resource-efficient' to force a mode under `auto`.
        resume: continue from the last complete checkpoint in config.output_dir.
        explicit: the settings the user gave (defaults to config.explicit_fields()).

    Raises:
        UserInputError (exit 2), CheckpointError (1), OutOfMemoryAtFloor (3), RestartRequired (75).
    """
    explicit = set(explicit if explicit is not None else config.explicit_fields())
    notes: list[str] = []
    fits = None
    preset = config
    config = with_embedded_defaults(config, explicit)
    demo = embedded_note(preset, config)
    if demo:
        notes.append(demo)
    if auto:
        config, plan_notes, fits = plan_config(config, mode=mode)
        notes += plan_notes
    else:
        # Settings as given, but each OOM rung is still checked against the estimate (as with --auto):
        # mixed precision off is only taken where the estimate says it saves memory.
        fits = _machine_check(config)
    trainer = Trainer(config, policy=OomPolicy.default(fits), reporter=reporter, resume=resume,
                      use_monitor=use_monitor, cache_dir=cache_dir)
    try:
        trainer.setup()
        for note in notes:
            trainer._say(note)
        return trainer.train()
    finally:
        trainer.close()


def restart_count() -> int:
    """Re-executions so far after sticky device errors (read from the environment)."""
    try:
        return int(os.environ.get(RESTART_ENV, "0"))
    except ValueError:
        return 0
