"""Checkpoints that are either complete or absent: `checkpoint-<step>/` appears only by rename.

Layout of `checkpoint-<step>/`:
    model.safetensors, config.json    the model (AutoModelForCausalLM.from_pretrained(dir) loads it)
    tokenizer files                   so the directory is self-contained
    training_state.pt                 optimizer, scheduler, grad scaler, RNG states, data position,
                                      the config in force (incl. the OOM ladder rung); only tensors
                                      and plain containers, so torch.load(weights_only=True) reads it
    run_config.yaml                   the same config, human-readable

Writing: everything goes into `.tmp-checkpoint-<step>-<pid>/` in the same parent, each file and the
directory are fsynced, then one os.rename gives it its final name and the parent is fsynced. A crash
or a full disk at any point leaves the previous checkpoints untouched and at most a temporary
directory, which the next run removes.

Deleting (rotation, or re-saving a step) first renames the checkpoint to a temporary name, so a
deletion cut short by a signal or a crash never leaves a half-deleted `checkpoint-<step>` that a
resume would pick; the next run removes the leftover like any other temporary directory.
"""

from __future__ import annotations

import math
import os
import random
import re
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from overseer_plan._io import fsync_dir
from overseer_plan.errors import UserInputError

STATE_FILE = "training_state.pt"
_NAME = re.compile(r"^checkpoint-(\d+)$")
_TMP_PREFIX = ".tmp-checkpoint-"
PAUSE_ENV = "OVERSEER_CHECKPOINT_PAUSE_S"
"""Test hook: seconds to sleep between the files of a checkpoint (to SIGKILL a run mid-write)."""


def save_checkpoint(run_dir: Path, step: int, *, model: Any, tokenizer: Any, state: dict[str, Any],
                    config_yaml: str, keep: int) -> Path:
    """Write `checkpoint-<step>` atomically and keep the last `keep` checkpoints.

    Raises:
        OSError: writing failed (e.g. ENOSPC); the temporary directory is removed, older checkpoints stay.
    """
    run_dir.mkdir(parents=True, exist_ok=True)
    final = run_dir / f"checkpoint-{step}"
    tmp = run_dir / f"{_TMP_PREFIX}{step}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir()
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # no 'Writing model shards' bar in the middle of ours
        model.save_pretrained(tmp, safe_serialization=True)
        _pause()
        tokenizer.save_pretrained(tmp)
        torch.save(state, tmp / STATE_FILE)
        _pause()
        (tmp / "run_config.yaml").write_text(config_yaml, encoding="utf-8")
        _fsync_tree(tmp)
        if final.exists():  # re-saving a step (e.g. after a resume): swap the old one out first
            _discard(final)
        os.rename(tmp, final)
        fsync_dir(run_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _rotate(run_dir, keep)
    return final


def pause_s() -> float:
    """The test hook's delay in seconds (0 when unset).

    Raises:
        UserInputError: the variable is not a finite number >= 0 (checked when a run starts, so a typo
            never surfaces at the first checkpoint, after the training it was meant to save).
    """
    raw = os.environ.get(PAUSE_ENV, "").strip()
    try:
        delay = float(raw or 0)
    except ValueError:
        delay = math.nan
    if not 0 <= delay < math.inf:
        raise UserInputError(f"{PAUSE_ENV}={raw!r}: not a number of seconds; unset it or give e.g. 0.3")
    return delay


def _pause() -> None:
    delay = pause_s()
    if delay > 0:
        time.sleep(delay)


def _fsync_tree(d: Path) -> None:
    for f in d.iterdir():
        if f.is_file():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
    fsync_dir(d)


def list_checkpoints(run_dir: Path) -> list[tuple[int, Path]]:
    """(step, path) of every complete checkpoint, oldest first."""
    if not run_dir.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in run_dir.iterdir() if p.is_dir() and (m := _NAME.match(p.name))]
    return sorted(found)


def _rotate(run_dir: Path, keep: int) -> None:
    for _step, path in list_checkpoints(run_dir)[:-keep]:
        try:
            _discard(path)
        except OSError:  # an old checkpoint that cannot be removed stays whole; the new one is written
            pass


def _discard(path: Path) -> None:
    """Delete a checkpoint: one atomic rename (made durable) takes it out of `list_checkpoints`, then the files go."""
    step = path.name.removeprefix("checkpoint-")
    doomed = path.with_name(f"{_TMP_PREFIX}{step}-old-{os.getpid()}-{time.monotonic_ns()}")
    os.rename(path, doomed)
    fsync_dir(path.parent)
    shutil.rmtree(doomed, ignore_errors=True)


def remove_partial(run_dir: Path) -> list[str]:
    """Delete temporary directories a killed run left behind; their names."""
    if not run_dir.is_dir():
        return []
    gone = [p for p in run_dir.iterdir() if p.name.startswith(_TMP_PREFIX)]
    for p in gone:
        shutil.rmtree(p, ignore_errors=True)
    return [p.name for p in gone]


def load_state(path: Path, *, mmap: bool = False) -> dict[str, Any]:
    """The training state of one checkpoint, read with weights_only=True; the one test of "loadable".

    `mmap`: map the file instead of reading it, for callers that need only the step and config
    (the optimizer state is most of the file).

    Raises:
        ValueError: missing or unreadable files (the caller falls back to an older checkpoint).
    """
    if not any((path / n).is_file() for n in ("model.safetensors", "model.safetensors.index.json")):
        raise ValueError(f"{path.name}: no model.safetensors")
    _check_weights(path)
    try:
        state = torch.load(path / STATE_FILE, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as e:  # torch raises many types for a truncated or foreign file
        raise ValueError(f"{path.name}: {STATE_FILE} is unreadable ({_first_line(e)})") from None
    if not isinstance(state, dict) or "step" not in state:
        raise ValueError(f"{path.name}: {STATE_FILE} has no training state")
    return state


def _check_weights(path: Path) -> None:
    """Raise ValueError when a weight file's header does not describe the bytes on disk.

    safe_open reads only the header and checks that its tensors end exactly at the end of the
    file, so a truncated file fails here (cheaply) instead of inside the resume.
    """
    from safetensors import safe_open

    for f in sorted(path.glob("*.safetensors")):
        try:
            with safe_open(f, framework="pt") as fh:
                fh.keys()
        except Exception as e:  # SafetensorError, OSError, ...: all mean the file cannot be used
            raise ValueError(f"{path.name}: {f.name} is unreadable ({_first_line(e)})") from None


def _first_line(e: BaseException) -> str:
    """'Type: first line of the message', also for exceptions with an empty message."""
    first = (str(e).strip().splitlines() or [""])[0][:120]
    return f"{type(e).__name__}: {first}" if first else type(e).__name__


def latest_loadable(run_dir: Path) -> tuple[Path, dict[str, Any], list[str]] | None:
    """The newest checkpoint whose state loads, plus a note for each newer one that did not.

    Raises:
        UserInputError: checkpoints exist but none of them loads.
    """
    skipped: list[str] = []
    for _step, path in reversed(list_checkpoints(run_dir)):
        try:
            return path, load_state(path), skipped
        except ValueError as e:
            skipped.append(str(e))
    if skipped:
        raise UserInputError(f"--resume: no usable checkpoint in {run_dir}: {'; '.join(skipped)}")
    return None


# ---- RNG states as plain tensors/containers (weights_only=True cannot load numpy objects) ----

def rng_state() -> dict[str, Any]:
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"python": random.getstate(), "torch": torch.get_rng_state(),
             "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                       "has_gauss": int(has_gauss), "cached": float(cached)}}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(_to_tuple(state["python"]))
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _to_tuple(x: Any) -> Any:
    # random.setstate wants tuples all the way down; torch.load may give lists back.
    return tuple(_to_tuple(v) for v in x) if isinstance(x, (list, tuple)) else x
