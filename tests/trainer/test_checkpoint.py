"""Checkpoints: atomic writes, exact resume, corrupt checkpoints, a full disk, and kill -9 at any moment."""

from __future__ import annotations

import errno
import json
import random
import signal
import time

import pytest
from _train_helpers import cli_subprocess, read_jsonl, run_trainer, tiny_config, write_config_yaml

from overseer_plan.errors import UserInputError
from trainer import checkpoint as ckpt
from trainer.loop import CheckpointError


class _StopAt:
    """A reporter that asks the trainer to stop (as SIGINT does) once it reaches `step`."""

    def __init__(self, step: int):
        self.step, self.trainer = step, None

    def start(self, **kw):
        pass

    def update(self, step, info):
        if step == self.step:
            self.trainer._stop_signal = signal.SIGINT

    def message(self, text):
        pass

    def close(self):
        pass


def _interrupted_run(cfg, stop_at, cache):
    from trainer.loop import Trainer

    reporter = _StopAt(stop_at)
    trainer = Trainer(cfg, reporter=reporter, cache_dir=cache)
    reporter.trainer = trainer
    try:
        trainer.setup()
        return trainer.train()
    finally:
        trainer.close()


def test_resume_gives_the_same_losses_as_an_uninterrupted_run(tmp_path):
    whole = run_trainer(tiny_config(tmp_path / "a", save_steps=100))
    cfg = tiny_config(tmp_path / "b", save_steps=100)
    first = _interrupted_run(cfg, stop_at=3, cache=tmp_path / "cache")
    assert first.interrupted and first.optimizer_steps == 3
    assert [s for s, _ in ckpt.list_checkpoints(tmp_path / "b" / "run")] == [3]
    second = run_trainer(cfg, resume=True, cache_dir=tmp_path / "cache")
    assert second.resumed_from_step == 3 and second.optimizer_steps == 6
    assert first.losses + second.losses == whole.losses  # bit-identical on CPU with a fixed seed
    assert second.final_eval_loss == whole.final_eval_loss


def test_resume_keeps_the_rung_the_run_had_stepped_down_to(tmp_path, monkeypatch):
    monkeypatch.setenv("OVERSEER_INJECT_OOM", "0")
    cfg = tiny_config(tmp_path, batch_size=8, gradient_accumulation_steps=1, save_steps=100)
    first = _interrupted_run(cfg, stop_at=2, cache=tmp_path / "cache")
    assert first.config["batch_size"] == 4
    monkeypatch.delenv("OVERSEER_INJECT_OOM")
    second = run_trainer(cfg, resume=True, cache_dir=tmp_path / "cache")
    assert second.config["batch_size"] == 4 and second.config["gradient_accumulation_steps"] == 2


def test_checkpoint_is_loadable_by_transformers_and_rotated(tmp_path):
    from transformers import AutoModelForCausalLM

    from trainer.tokenizer import load_tokenizer

    run_trainer(tiny_config(tmp_path, save_total_limit=2))
    run = tmp_path / "run"
    assert [s for s, _ in ckpt.list_checkpoints(run)] == [4, 6]
    model = AutoModelForCausalLM.from_pretrained(run / "checkpoint-6")
    tok = load_tokenizer(run / "checkpoint-6")
    assert tok.decode(tok("abc")["input_ids"]) == "abc"
    assert model.config.vocab_size == 288
    state = ckpt.load_state(run / "checkpoint-6")  # weights_only=True
    assert state["step"] == 6 and state["config"]["batch_size"] == 4 and "rng" in state


def test_disk_full_keeps_the_previous_checkpoint_and_says_so(tmp_path, monkeypatch):
    real = ckpt.torch.save
    calls = {"n": 0}

    def full_disk(obj, path, *a, **kw):
        calls["n"] += 1
        if calls["n"] == 2:  # the second checkpoint: write half a file, then ENOSPC
            with open(path, "wb") as fh:
                fh.write(b"partial")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(obj, path, *a, **kw)

    monkeypatch.setattr(ckpt.torch, "save", full_disk)
    with pytest.raises(CheckpointError, match="No space left on device.*previous checkpoint kept: checkpoint-2") as info:
        run_trainer(tiny_config(tmp_path))
    assert info.value.exit_code == 1
    run = tmp_path / "run"
    assert [p.name for p in run.iterdir() if "checkpoint" in p.name] == ["checkpoint-2"]
    assert ckpt.load_state(run / "checkpoint-2")["step"] == 2
    assert any(e["event"] == "checkpoint_failed" for e in read_jsonl(run / "events.jsonl"))


def test_corrupt_latest_checkpoint_falls_back_to_the_previous_one(tmp_path):
    run_trainer(tiny_config(tmp_path))
    run = tmp_path / "run"
    (run / "checkpoint-6" / ckpt.STATE_FILE).write_bytes(b"garbage")
    result = run_trainer(tiny_config(tmp_path), resume=True)
    assert result.resumed_from_step == 4 and result.optimizer_steps == 6
    assert any(e["event"] == "checkpoint_skipped" for e in read_jsonl(run / "events.jsonl"))


def test_only_corrupt_checkpoints_is_a_one_line_user_error(tmp_path):
    run_trainer(tiny_config(tmp_path, save_total_limit=1))
    (tmp_path / "run" / "checkpoint-6" / ckpt.STATE_FILE).write_bytes(b"garbage")
    with pytest.raises(UserInputError, match="no usable checkpoint"):
        run_trainer(tiny_config(tmp_path), resume=True)


def _checkpoints_are_complete(run):
    for _step, path in ckpt.list_checkpoints(run):
        ckpt.load_state(path)  # raises if any file under a final name is partial
        assert (path / "model.safetensors").is_file() and (path / "run_config.yaml").is_file()


@pytest.mark.slow
def test_kill_9_at_random_moments_then_resume_matches_an_uninterrupted_run(tmp_path):
    cache = tmp_path / "cache"
    settings = {"max_steps": 12, "save_steps": 2, "save_total_limit": 2}
    whole = run_trainer(tiny_config(tmp_path / "ref", **settings), cache_dir=cache)
    cfg = write_config_yaml(tmp_path, **settings)
    run = tmp_path / "run"
    rng = random.Random(3)
    env = {"OVERSEER_CHECKPOINT_PAUSE_S": "0.3"}  # widen the checkpoint-writing window
    kills = 0
    for attempt in range(3):
        args = ["train", "--config", str(cfg)] + (["--resume"] if attempt else [])
        proc = cli_subprocess(args, env=env, cache=cache, stdout=-3, stderr=-3)
        if attempt == 0:  # kill inside a checkpoint write: wait for the temporary directory
            _wait_for(lambda: any(p.name.startswith(".tmp-checkpoint-") for p in run.iterdir()) if run.exists() else False)
        else:  # kill at a random moment after the first new step
            _wait_for(lambda: run.exists() and len(read_jsonl(run / "events.jsonl")) > 0)
            time.sleep(rng.uniform(0.5, 2.0))
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.wait(timeout=30)
        _checkpoints_are_complete(run)
    assert kills >= 2
    final = cli_subprocess(["train", "--config", str(cfg), "--resume"], cache=cache, stdout=-3, stderr=-3)
    assert final.wait(timeout=120) == 0
    assert not any(p.name.startswith(".tmp-checkpoint-") for p in run.iterdir())
    _checkpoints_are_complete(run)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["optimizer_steps"] == 12
    last = {m["step"]: m["loss"] for m in read_jsonl(run / "metrics.jsonl")}
    assert abs(last[12] - whole.losses[-1]) <= 1e-6 * abs(whole.losses[-1])


def _wait_for(predicate, timeout=60.0):
    end = time.time() + timeout
    while time.time() < end:
        try:
            if predicate():
                return
        except (FileNotFoundError, json.JSONDecodeError):
            pass
        time.sleep(0.02)
    raise AssertionError("timed out waiting for the child run")
