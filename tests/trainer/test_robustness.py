"""Bad input and hostile conditions: one-line errors (exit 2), nothing saved lost, a graceful stop on SIGTERM."""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest
from _train_helpers import (
    TINY_LLAMA,
    MessageLog,
    cli_subprocess,
    read_jsonl,
    run_trainer,
    tiny_config,
    write_config_yaml,
)
from typer.testing import CliRunner

from overseer_plan.cli import app
from overseer_plan.errors import UserInputError
from trainer import checkpoint as ckpt
from trainer._http import check_url, looks_like_web_page
from trainer.download import download
from trainer.monitor import ResourceMonitor

TINY_GPT2 = {"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"], "vocab_size": 288, "n_embd": 32,
             "n_layer": 2, "n_head": 2, "n_positions": 128, "bos_token_id": 1, "eos_token_id": 2, "use_cache": False}


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished 3-step run with checkpoint-1..3, and the config file that made it."""
    root = tmp_path_factory.mktemp("finished")
    settings = {"max_steps": 3, "save_steps": 1, "eval_steps": 3, "save_total_limit": 5}
    write_config_yaml(root, **settings)
    run_trainer(tiny_config(root, **settings))
    return root


def _copy_run(finished: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(finished / "run", tmp_path / "run"))


def _snapshot(d: Path) -> dict[str, bytes]:
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


def _invoke(args, tmp_path, monkeypatch):
    monkeypatch.setenv("OVERSEER_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("OVERSEER_DATA_DIR", str(tmp_path / "data-cache"))
    return CliRunner().invoke(app, ["train", *args])


def _one_line_error(result, *needles):
    assert result.exit_code == 2, result.output
    lines = [ln for ln in result.output.splitlines() if ln.startswith("overseer: error:")]
    assert len(lines) == 1 and "Traceback" not in result.output, result.output
    for needle in needles:
        assert needle in lines[0], lines[0]


# --- the run directory ----------------------------------------------------------------------

def test_training_into_a_run_with_checkpoints_without_resume_is_refused_before_touching_it(finished, tmp_path,
                                                                                         monkeypatch):
    run = _copy_run(finished, tmp_path)
    before = _snapshot(run)
    r = _invoke(["--config", str(finished / "cfg.yaml"), "--max-steps", "1", "--output", str(run)], tmp_path,
                monkeypatch)
    _one_line_error(r, f"--output {run} already holds checkpoints", "checkpoint-3", "--resume")
    assert _snapshot(run) == before


@pytest.mark.parametrize("where", ["a-file", "a-file/below", "/dev/null"])
def test_an_output_that_cannot_be_a_directory_is_one_line(finished, tmp_path, monkeypatch, where):
    (tmp_path / "a-file").write_text("keep me\n")
    out = where if where.startswith("/") else str(tmp_path / where)
    r = _invoke(["--config", str(finished / "cfg.yaml"), "--max-steps", "1", "--output", out], tmp_path, monkeypatch)
    _one_line_error(r, f"--output {out}")
    assert (tmp_path / "a-file").read_text() == "keep me\n"


def test_resume_below_the_checkpoint_step_is_refused_and_the_summary_kept(finished, tmp_path, monkeypatch):
    run = _copy_run(finished, tmp_path)
    summary = (run / "summary.json").read_bytes()
    r = _invoke(["--config", str(finished / "cfg.yaml"), "--resume", "--max-steps", "2", "--output", str(run)],
                tmp_path, monkeypatch)
    _one_line_error(r, "checkpoint-3 is already at step 3", "--max-steps above 3")
    assert (run / "summary.json").read_bytes() == summary


def test_resume_at_the_checkpoint_step_has_nothing_to_do_and_keeps_the_summary(finished, tmp_path, monkeypatch):
    run = _copy_run(finished, tmp_path)
    summary = (run / "summary.json").read_bytes()
    r = _invoke(["--config", str(finished / "cfg.yaml"), "--resume", "--max-steps", "3", "--output", str(run)],
                tmp_path, monkeypatch)
    assert r.exit_code == 0, r.output
    assert "nothing to train" in r.output
    assert (run / "summary.json").read_bytes() == summary
    assert [s for s, _ in ckpt.list_checkpoints(run)] == [1, 2, 3]


# --- checkpoints ----------------------------------------------------------------------------

def test_a_deletion_cut_short_never_leaves_a_half_deleted_checkpoint(tmp_path, monkeypatch):
    run = tmp_path / "run"
    for step in (1, 2, 3):
        (run / f"checkpoint-{step}").mkdir(parents=True)
        for name in ("model.safetensors", ckpt.STATE_FILE, "config.json"):
            (run / f"checkpoint-{step}" / name).write_bytes(b"x")
    real_rmtree = shutil.rmtree

    def interrupted(path, *args, **kwargs):  # as a signal handler raising mid-deletion did
        next(Path(path).iterdir()).unlink()
        raise RuntimeError("DataLoader worker is killed by signal: Terminated.")

    monkeypatch.setattr(ckpt.shutil, "rmtree", interrupted)
    with pytest.raises(RuntimeError):
        ckpt._rotate(run, keep=2)
    monkeypatch.setattr(ckpt.shutil, "rmtree", real_rmtree)
    assert [s for s, _ in ckpt.list_checkpoints(run)] == [2, 3]
    assert all(len(list(p.iterdir())) == 3 for _, p in ckpt.list_checkpoints(run))
    leftovers = ckpt.remove_partial(run)  # what the next run does first
    assert len(leftovers) == 1 and leftovers[0].startswith(".tmp-checkpoint-1")
    assert sorted(p.name for p in run.iterdir()) == ["checkpoint-2", "checkpoint-3"]


@pytest.mark.parametrize("damage", ["empty state", "truncated weights"])
def test_a_damaged_latest_checkpoint_falls_back_to_the_previous_one(finished, tmp_path, damage):
    run = _copy_run(finished, tmp_path)
    if damage == "empty state":
        (run / "checkpoint-3" / ckpt.STATE_FILE).write_bytes(b"")
    else:
        weights = run / "checkpoint-3" / "model.safetensors"
        weights.write_bytes(weights.read_bytes()[:1000])
    cfg = tiny_config(finished, max_steps=3, save_steps=1, eval_steps=3, output_dir=str(run))
    result = run_trainer(cfg, resume=True, cache_dir=finished / "cache")
    assert result.resumed_from_step == 2 and result.optimizer_steps == 3
    skipped = [e for e in read_jsonl(run / "events.jsonl") if e["event"] == "checkpoint_skipped"]
    assert skipped and skipped[-1]["fallback"] == "checkpoint-2"
    ckpt.load_state(run / "checkpoint-3")  # written again, whole


def test_resume_with_another_model_is_one_line(finished, tmp_path, monkeypatch):
    run = _copy_run(finished, tmp_path)
    other = tmp_path / "gpt2-tiny"
    other.mkdir()
    (other / "config.json").write_text(json.dumps(TINY_GPT2))
    r = _invoke(["--config", str(finished / "cfg.yaml"), "--resume", "--max-steps", "4", "--model", str(other),
                 "--output", str(run)], tmp_path, monkeypatch)
    _one_line_error(r, "checkpoint-3 was written by another model", "--model")


@pytest.mark.slow
def test_sigterm_to_the_process_group_stops_after_a_complete_checkpoint(finished, tmp_path):
    run = _copy_run(finished, tmp_path)
    cfg = write_config_yaml(tmp_path, max_steps=5000, save_steps=1, eval_steps=1000, save_total_limit=2,
                            num_workers=1, output_dir=str(run))
    # As `docker stop` or `timeout` do: the signal goes to every process of the group, DataLoader workers too.
    proc = cli_subprocess(["train", "--config", str(cfg), "--resume"], cache=finished / "cache",
                          start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.time() + 60
        while time.time() < deadline and proc.poll() is None:
            if any(e["event"] == "checkpoint" and e["step"] >= 6 for e in _events(run)):  # rotating, workers up
                break
            time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 130, out
    assert "Traceback" not in out
    steps = [s for s, _ in ckpt.list_checkpoints(run)]
    assert len(steps) == 2 and json.loads((run / "summary.json").read_text())["optimizer_steps"] == steps[-1]
    for _, path in ckpt.list_checkpoints(run):
        ckpt.load_state(path)
    assert not [p for p in run.iterdir() if p.name.startswith(".tmp-checkpoint-")]


def _events(run: Path) -> list[dict]:
    try:
        return read_jsonl(run / "events.jsonl")
    except (FileNotFoundError, json.JSONDecodeError):
        return []


# --- the monitor ----------------------------------------------------------------------------

def _reading() -> dict:
    return {"ram_total_bytes": 100, "ram_used_bytes": 10, "rss_bytes": 1}


def test_monitor_with_an_infinite_interval_keeps_running():
    monitor = ResourceMonitor(interval_s=math.inf, ram_percent=90, gpu_percent=90, path=None, read=_reading)
    monitor.start()
    time.sleep(0.2)
    assert monitor._thread.is_alive() and monitor.failure is None
    monitor.stop()
    assert not monitor._thread.is_alive()


class _BrokenWait(threading.Event):
    def wait(self, timeout=None):
        raise OverflowError("timeout value is too large")


def test_a_monitor_thread_that_dies_is_reported(tmp_path):
    monitor = ResourceMonitor(interval_s=0.1, ram_percent=90, gpu_percent=90, path=None, read=_reading)
    monitor._stop = _BrokenWait()
    reporter = MessageLog()
    result = run_trainer(tiny_config(tmp_path, max_steps=2, save_steps=100), monitor=monitor, reporter=reporter)
    assert result.optimizer_steps == 2
    assert any("resource monitor stopped (OverflowError" in line for line in reporter.lines), reporter.lines
    assert any(e["event"] == "monitor_stopped" for e in read_jsonl(tmp_path / "run" / "events.jsonl"))


# --- models ---------------------------------------------------------------------------------

def _model_dir(tmp_path: Path, config: dict, weights: dict[str, bytes] | None = None) -> Path:
    d = tmp_path / "model"
    d.mkdir()
    (d / "config.json").write_text(json.dumps(config))
    for name, data in (weights or {}).items():
        (d / name).write_bytes(data)
    return d


@pytest.mark.parametrize("weights", ["model.safetensors", "pytorch_model.bin"])
def test_a_model_folder_with_corrupt_weights_is_one_line(finished, tmp_path, monkeypatch, weights):
    d = _model_dir(tmp_path, TINY_LLAMA, {weights: b"not weights at all\n" * 40})
    r = _invoke(["--config", str(finished / "cfg.yaml"), "--model", str(d), "--output", str(tmp_path / "out")],
                tmp_path, monkeypatch)
    _one_line_error(r, f"--model {d}", weights)


def test_a_config_that_cannot_build_a_model_is_one_line(finished, tmp_path, monkeypatch):
    d = _model_dir(tmp_path, {**TINY_GPT2, "n_inner": -5})
    r = _invoke(["--config", str(finished / "cfg.yaml"), "--model", str(d), "--output", str(tmp_path / "out")],
                tmp_path, monkeypatch)
    _one_line_error(r, f"--model {d}", "config.json")


def test_weights_of_another_architecture_are_refused(finished, tmp_path, monkeypatch):
    from transformers import AutoConfig, AutoModelForCausalLM

    d = _model_dir(tmp_path, TINY_GPT2)
    AutoModelForCausalLM.from_config(AutoConfig.for_model(**TINY_LLAMA)).save_pretrained(tmp_path / "llama")
    shutil.copy(tmp_path / "llama" / "model.safetensors", d / "model.safetensors")
    r = _invoke(["--config", str(finished / "cfg.yaml"), "--model", str(d), "--output", str(tmp_path / "out")],
                tmp_path, monkeypatch)
    _one_line_error(r, "no weight in", "model.safetensors")


# --- environment variables, URLs, data ------------------------------------------------------

@pytest.mark.parametrize("var, value", [("OVERSEER_CHECKPOINT_PAUSE_S", "abc"), ("OVERSEER_CHECKPOINT_PAUSE_S", "inf"),
                                        ("OVERSEER_INJECT_OOM", "sticky:abc"), ("OVERSEER_INJECT_OOM", "opt:x")])
def test_a_bad_test_hook_variable_is_one_line_before_anything_is_written(finished, tmp_path, monkeypatch, var, value):
    monkeypatch.setenv(var, value)
    out = tmp_path / "out"
    r = _invoke(["--config", str(finished / "cfg.yaml"), "--output", str(out)], tmp_path, monkeypatch)
    _one_line_error(r, var)
    assert not out.exists()


def test_a_cache_dir_that_is_a_file_is_one_line(finished, tmp_path, monkeypatch):
    (tmp_path / "a-file").write_text("")
    monkeypatch.delenv("OVERSEER_DATA_DIR", raising=False)
    monkeypatch.setenv("OVERSEER_CACHE_DIR", str(tmp_path / "a-file"))
    r = CliRunner().invoke(app, ["train", "--config", str(finished / "cfg.yaml"), "--output", str(tmp_path / "out")])
    _one_line_error(r, "OVERSEER_CACHE_DIR")


@pytest.mark.parametrize("url", ["https://[::1", "http://example.org:port/x.txt"])
def test_a_malformed_url_is_one_line(tmp_path, monkeypatch, url, finished):
    with pytest.raises(UserInputError, match="not a valid URL"):
        check_url(url)
    r = _invoke(["--config", str(finished / "cfg.yaml"), "--output", str(tmp_path / "out"), "--download-data",
                 "--download-from", url],
                tmp_path, monkeypatch)
    _one_line_error(r, url)


def test_a_url_that_returns_a_web_page_is_refused(loopback_server, tmp_path):
    url = loopback_server.add("/login", body=b"\n<!DOCTYPE html>\n<html><body>Please sign in</body></html>\n")
    with pytest.raises(UserInputError, match="returned a web page"):
        download(url, tmp_path / "cache")
    assert not (tmp_path / "cache" / "manifest.json").exists()
    assert not [p for p in (tmp_path / "cache").rglob("*") if p.is_file() and p.name != ".lock"]
    assert looks_like_web_page("text/html; charset=utf-8")
    assert not looks_like_web_page("text/plain", b"plain text about <html> tags")


def test_data_that_is_a_device_is_one_line(finished, tmp_path, monkeypatch):
    r = _invoke(["--config", str(finished / "cfg.yaml"), "--output", str(tmp_path / "out"), "--data", "/dev/zero"],
                tmp_path, monkeypatch)
    _one_line_error(r, "--data /dev/zero", "not a regular file")
