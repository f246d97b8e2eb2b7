"""trainer/loop.py: injected OOMs retry the same step in place; logs; monitor pressure; scale-up."""

from __future__ import annotations

import json
import random

import pytest
from _train_helpers import read_jsonl, run_trainer, tiny_config, tiny_settings

from overseer_plan.config import TrainingConfig
from trainer.loop import INJECT_ENV
from trainer.monitor import ResourceMonitor


def test_injected_ooms_keep_steps_effective_batch_and_loss(tmp_path, monkeypatch):
    base = run_trainer(tiny_config(tmp_path / "a", batch_size=8, gradient_accumulation_steps=1, save_steps=100))
    # Micro-step indices: 8 steps with micro 8 x 1 at first, more micro-batches after each step down.
    picks = sorted(random.Random(1).sample(range(0, 10), 3))
    monkeypatch.setenv(INJECT_ENV, ",".join(map(str, picks)))
    hurt = run_trainer(tiny_config(tmp_path / "b", batch_size=8, gradient_accumulation_steps=1, save_steps=100))
    assert hurt.oom_events == 3 and hurt.step_downs == 3
    assert hurt.optimizer_steps == base.optimizer_steps == 6
    assert hurt.effective_batch_size == base.effective_batch_size == 8
    assert hurt.config["batch_size"] == 1 and hurt.config["gradient_accumulation_steps"] == 8
    for a, b in zip(base.losses, hurt.losses, strict=True):
        assert abs(a - b) <= 1e-4 * abs(a)
    events = read_jsonl(tmp_path / "b" / "run" / "events.jsonl")
    downs = [e for e in events if e["event"] == "step_down"]
    assert [d["changes"]["batch_size"] for d in downs] == [[8, 4], [4, 2], [2, 1]]
    assert all(d["effective_batch_size"] == 8 and d["rule"] == "ladder.oom.batch-size" for d in downs)
    ooms = [e for e in events if e["event"] == "oom"]
    assert [o["micro_step"] for o in ooms] == picks
    assert all("before_bytes" in o and "after_bytes" in o and "host_released_bytes" in o for o in ooms)


def test_oom_at_the_floor_stops_with_doctor_advice(tmp_path, monkeypatch):
    from trainer.loop import OutOfMemoryAtFloor

    monkeypatch.setenv(INJECT_ENV, ",".join(str(i) for i in range(40)))
    with pytest.raises(OutOfMemoryAtFloor, match="overseer doctor oom") as info:
        settings = tiny_settings(tmp_path, batch_size=2, gradient_accumulation_steps=1)
        del settings["mixed_precision"]  # the preset's mixed precision, which a CPU runs as fp32
        config = TrainingConfig(**settings)
        assert config.precision() != "fp32"
        run_trainer(config)
    assert info.value.exit_code == 3
    assert "precision fp32" in str(info.value)  # what ran, not what the preset named
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["stopped"] == "oom_floor" and summary["optimizer_steps"] == 0


def test_run_directory_files_and_keys(tmp_path):
    result = run_trainer(tiny_config(tmp_path))
    run = tmp_path / "run"
    metrics = read_jsonl(run / "metrics.jsonl")
    assert [m["step"] for m in metrics] == [1, 2, 3, 4, 5, 6]
    for key in ("step", "loss", "lr", "tokens_per_s", "micro_batch_size", "gradient_accumulation_steps", "rss_bytes"):
        assert key in metrics[0], key
    summary = json.loads((run / "summary.json").read_text())
    for key in ("optimizer_steps", "effective_batch_size", "final_loss", "final_eval_loss", "oom_events",
                "time_to_first_step_s", "samples_per_s", "config", "initial_eval_loss", "eval_loss_drop"):
        assert key in summary, key
    assert summary["optimizer_steps"] == 6 and summary["effective_batch_size"] == 8
    assert summary["final_eval_loss"] < summary["initial_eval_loss"]
    assert 0 < summary["time_to_first_step_s"]
    events = read_jsonl(run / "events.jsonl")
    kinds = {e["event"] for e in events}
    assert {"process_start", "first_step", "checkpoint", "eval"} <= kinds
    assert any("training from scratch" in e.get("text", "") for e in events)  # config-only dir says so
    assert all({"time", "step", "event"} <= set(e) for e in events)
    assert read_jsonl(run / "monitor.jsonl")[0]["ram_percent"] > 0
    assert result.final_loss == metrics[-1]["loss"]


def test_data_order_does_not_depend_on_the_micro_batch_size(tmp_path):
    a = run_trainer(tiny_config(tmp_path / "a", batch_size=8, gradient_accumulation_steps=1))
    b = run_trainer(tiny_config(tmp_path / "b", batch_size=2, gradient_accumulation_steps=4))
    for x, y in zip(a.losses, b.losses, strict=True):
        assert abs(x - y) <= 1e-4 * abs(x)


def _fake_memory(percent):
    total = 1000
    return lambda: {"ram_total_bytes": total, "ram_used_bytes": int(total * percent[0] / 100), "rss_bytes": 1}


def test_memory_pressure_steps_down_at_the_next_step_boundary(tmp_path):
    percent = [95.0]  # above threshold 80 + half the gap (90): critical, so an emergency checkpoint too
    monitor = ResourceMonitor(interval_s=0.01, ram_percent=80, gpu_percent=90, path=None, read=_fake_memory(percent))
    result = run_trainer(tiny_config(tmp_path, save_steps=100), monitor=monitor)
    events = read_jsonl(tmp_path / "run" / "events.jsonl")
    crossed = [e for e in events if e["event"] == "threshold_crossed"]
    assert crossed[0]["to"] == "critical" and crossed[0]["percent"] == 95.0 and crossed[0]["threshold_percent"] == 80
    downs = [e for e in events if e["event"] == "step_down"]
    assert downs and downs[0]["reason"].startswith("memory pressure: ram at 95.0%")
    assert any(e["event"] == "emergency_checkpoint" for e in events)
    assert result.optimizer_steps == 6 and result.effective_batch_size == 8


def test_scale_up_climbs_along_divisors_when_stable_with_headroom(tmp_path, monkeypatch):
    import trainer.loop as loop

    monkeypatch.setattr(loop, "SCALE_UP_AFTER_STEPS", 2)
    monitor = ResourceMonitor(interval_s=0.05, ram_percent=80, gpu_percent=90, path=None, read=_fake_memory([10.0]))
    result = run_trainer(tiny_config(tmp_path, batch_size=2, gradient_accumulation_steps=4, scale_up=True,
                                     max_steps=8), monitor=monitor)
    ups = [e for e in read_jsonl(tmp_path / "run" / "events.jsonl") if e["event"] == "step_up"]
    assert [u["changes"]["batch_size"] for u in ups] == [[2, 4], [4, 8]]
    assert result.config["batch_size"] == 8 and result.effective_batch_size == 8


def test_scale_up_never_returns_to_a_rung_that_hit_an_oom(tmp_path, monkeypatch):
    import trainer.loop as loop

    monkeypatch.setattr(loop, "SCALE_UP_AFTER_STEPS", 2)
    monkeypatch.setenv(INJECT_ENV, "0")  # micro 8 fails once: 8 -> 4
    monitor = ResourceMonitor(interval_s=0.05, ram_percent=80, gpu_percent=90, path=None, read=_fake_memory([10.0]))
    result = run_trainer(tiny_config(tmp_path, batch_size=8, gradient_accumulation_steps=1, scale_up=True,
                                     max_steps=8), monitor=monitor)
    assert result.step_ups == 0 and result.config["batch_size"] == 4


def test_no_scale_up_without_headroom(tmp_path, monkeypatch):
    import trainer.loop as loop

    monkeypatch.setattr(loop, "SCALE_UP_AFTER_STEPS", 2)
    monitor = ResourceMonitor(interval_s=0.05, ram_percent=80, gpu_percent=90, path=None, read=_fake_memory([50.0]))
    result = run_trainer(tiny_config(tmp_path, batch_size=2, gradient_accumulation_steps=4, scale_up=True,
                                     max_steps=6), monitor=monitor)
    assert result.step_ups == 0  # peak 50% x 2 >= 80% threshold


@pytest.mark.parametrize("name", ["sgd", "adafactor"])
def test_the_configured_optimizer_is_the_one_that_trains(tmp_path, name):
    # The planner falls back to Adafactor when AdamW's states cannot fit; the trainer must follow it.
    import torch

    result = run_trainer(tiny_config(tmp_path, optimizer=name, learning_rate=1e-2))
    assert result.optimizer_steps == 6 and result.config["optimizer"] == name
    state = torch.load(sorted((tmp_path / "run").glob("checkpoint-*"))[-1] / "training_state.pt", weights_only=True)
    per_param = next(iter(state["optimizer"]["state"].values()))
    expected = {"sgd": {"momentum_buffer"}, "adafactor": {"step", "exp_avg_sq_row", "exp_avg_sq_col", "RMS"}}[name]
    assert expected <= set(per_param) and "exp_avg" not in per_param


def test_adamw8bit_without_bitsandbytes_is_a_clear_error(tmp_path):
    try:
        import bitsandbytes  # noqa: F401
        pytest.skip("bitsandbytes is installed here")
    except ImportError:
        pass
    from overseer_plan.errors import UserInputError

    with pytest.raises(UserInputError, match="needs bitsandbytes"):
        run_trainer(tiny_config(tmp_path, optimizer="adamw8bit"))


def test_oom_in_the_optimizer_step_before_it_changed_anything_is_retried_in_place(tmp_path, monkeypatch):
    base = run_trainer(tiny_config(tmp_path / "a"))
    monkeypatch.setenv(INJECT_ENV, "opt:0,opt:4")  # the first step (states not yet created) and a later one
    hurt = run_trainer(tiny_config(tmp_path / "b"))
    assert hurt.optimizer_steps == base.optimizer_steps == 6
    assert hurt.losses == base.losses  # the same gradients applied once: bit-identical
    events = read_jsonl(tmp_path / "b" / "run" / "events.jsonl")
    ooms = [e for e in events if e["event"] == "oom"]
    assert [(o["phase"], o["changed_model"]) for o in ooms] == [("optimizer_step", False)] * 2
    assert sum(e["event"] == "retry_same_config" for e in events) == 2


def test_oom_in_the_optimizer_step_twice_stops_with_the_checkpoint_intact(tmp_path, monkeypatch):
    from trainer.loop import OutOfMemoryAtFloor

    monkeypatch.setenv(INJECT_ENV, "opt:2,opt:3")  # step 3's call and its retry
    with pytest.raises(OutOfMemoryAtFloor, match="changed nothing") as info:
        run_trainer(tiny_config(tmp_path))
    assert info.value.exit_code == 3 and "checkpoint-2" in str(info.value)
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["stopped"] == "oom_optimizer_step" and summary["optimizer_steps"] == 2


def test_oom_after_the_optimizer_changed_the_model_stops_and_resume_finishes_exactly(tmp_path, monkeypatch):
    from trainer.loop import OutOfMemoryAtFloor

    base = run_trainer(tiny_config(tmp_path / "a"))
    monkeypatch.setenv(INJECT_ENV, "optpost:2")  # step 3, after the update: a retry would apply it twice
    with pytest.raises(OutOfMemoryAtFloor, match="cannot be retried exactly"):
        run_trainer(tiny_config(tmp_path / "b"))
    monkeypatch.delenv(INJECT_ENV)
    resumed = run_trainer(tiny_config(tmp_path / "b"), resume=True)
    assert resumed.optimizer_steps == 6
    assert resumed.losses == base.losses[2:]  # from checkpoint-2, nothing of the half-applied step survived


def test_resume_with_another_optimizer_is_a_clear_error(tmp_path):
    from overseer_plan.errors import UserInputError

    run_trainer(tiny_config(tmp_path, optimizer="sgd", max_steps=2))
    with pytest.raises(UserInputError, match="trained with optimizer sgd, this run asks for adamw"):
        run_trainer(tiny_config(tmp_path, max_steps=4), resume=True)
    resumed = run_trainer(tiny_config(tmp_path, optimizer="sgd", max_steps=4), resume=True)
    assert resumed.optimizer_steps == 4


def test_a_sticky_device_error_restarts_the_cli_in_a_fresh_process_that_resumes(tmp_path):
    from _train_helpers import cli_subprocess, write_config_yaml

    whole = run_trainer(tiny_config(tmp_path / "whole"))
    cfg = write_config_yaml(tmp_path / "cli")
    # Micro-step 9 is step 5's second micro-batch: checkpoint-4 exists, steps 5 and 6 are redone.
    proc = cli_subprocess(["train", "--config", str(cfg)], env={INJECT_ENV: "sticky:9"}, cache=tmp_path / "cache",
                          stdout=-1, stderr=-1, text=True)
    out, err = proc.communicate(timeout=180)
    assert proc.returncode == 0, err[-2000:]
    assert "illegal memory access" in err and "restart 1 of 3" in err
    run = tmp_path / "cli" / "run"
    events = read_jsonl(run / "events.jsonl")
    assert [e["checkpoint"] for e in events if e["event"] == "resume"] == ["checkpoint-4"]
    assert json.loads((run / "summary.json").read_text())["optimizer_steps"] == 6
    losses = {m["step"]: m["loss"] for m in read_jsonl(run / "metrics.jsonl")}
    assert [losses[i] for i in range(1, 7)] == pytest.approx(whole.losses, rel=1e-6)


def test_a_run_stopped_before_its_first_eval_claims_no_eval_loss_drop(tmp_path, capsys):
    import signal
    from pathlib import Path

    from overseer_plan.commands.train import _print_summary
    from trainer.loop import Trainer

    config = tiny_config(tmp_path)
    trainer = Trainer(config, cache_dir=Path(config.output_dir).parent / "cache")
    try:
        trainer.setup()
        trainer._stop_signal = signal.SIGTERM  # as the handler leaves it: stop after this step
        result = trainer.train()
    finally:
        trainer.close()
    assert result.interrupted and result.optimizer_steps == 1
    assert result.final_eval_step == 0 and result.final_eval_loss == result.initial_eval_loss
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["eval_loss_drop"] is None
    _print_summary(result)
    line = [ln for ln in capsys.readouterr().out.splitlines() if "eval loss" in ln][0]
    assert "below the start" not in line
    assert f"(before training; the first eval comes at step {config.eval_steps})" in line
    finished = run_trainer(tiny_config(tmp_path / "b"))
    assert finished.final_eval_step == finished.optimizer_steps
