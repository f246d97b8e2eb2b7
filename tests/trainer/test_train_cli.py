"""`overseer train` through typer's CliRunner: bad input is one line and exit 2; a small run end to end."""

from __future__ import annotations

import json

import pytest
from _train_helpers import (
    read_jsonl,
    run_trainer,
    tiny_config,
    tiny_corpus,
    tiny_model_dir,
    write_config_yaml,
)
from typer.testing import CliRunner

from overseer_plan.cli import app


def _invoke(args, tmp_path, monkeypatch):
    monkeypatch.setenv("OVERSEER_CACHE_DIR", str(tmp_path / "cache"))
    return CliRunner().invoke(app, ["train", *args])


def _one_line_error(result, *needles):
    assert result.exit_code == 2, result.output
    lines = [ln for ln in result.output.splitlines() if ln.startswith("overseer: error:")]
    assert len(lines) == 1, result.output
    for needle in needles:
        assert needle in lines[0]


def test_missing_data_path(tmp_path, monkeypatch):
    cfg = write_config_yaml(tmp_path)
    r = _invoke(["--config", str(cfg), "--data", str(tmp_path / "nope")], tmp_path, monkeypatch)
    _one_line_error(r, "--data", "no such file or directory")


def test_every_missing_data_path_is_named_before_the_model_loads(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    r = _invoke(["--model", "gpt2", "--data", str(tmp_path / "a"), "--data", str(tmp_path / "b")], tmp_path, monkeypatch)
    _one_line_error(r, str(tmp_path / "a"), str(tmp_path / "b"), "no such file or directory")
    # Only the error: no "no weights ... random initialisation" or tokenizer fallback notes first.
    assert r.output.strip().splitlines() == [ln for ln in r.output.strip().splitlines() if ln.startswith("overseer: error:")]


def test_empty_corpus(tmp_path, monkeypatch):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "a.txt").write_text("", encoding="utf-8")
    r = _invoke(["--config", str(write_config_yaml(tmp_path, data=[str(empty)]))], tmp_path, monkeypatch)
    _one_line_error(r, "corpus is empty")


def test_config_file_with_wrong_types(tmp_path, monkeypatch):
    bad = tmp_path / "bad.yaml"
    bad.write_text("batch_size: many\nlearning_rate: -1\nnot_a_setting: 3\n", encoding="utf-8")
    r = _invoke(["--config", str(bad)], tmp_path, monkeypatch)
    _one_line_error(r, "batch_size", "learning_rate", "not_a_setting")


def test_unknown_model(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    r = _invoke(["--config", str(write_config_yaml(tmp_path)), "--model", "no-such-model-xyz"], tmp_path, monkeypatch)
    _one_line_error(r, "no-such-model-xyz")


def test_jsonl_without_text_field(tmp_path, monkeypatch):
    bad = tmp_path / "rows.jsonl"
    bad.write_text('{"content": "hello"}\n', encoding="utf-8")
    r = _invoke(["--config", str(write_config_yaml(tmp_path, data=[str(bad)]))], tmp_path, monkeypatch)
    _one_line_error(r, "rows.jsonl", "line 1", "'text'")


def test_corrupt_checkpoint_on_resume(tmp_path, monkeypatch):
    run_trainer(tiny_config(tmp_path, max_steps=2, save_total_limit=1))
    (tmp_path / "run" / "checkpoint-2" / "model.safetensors").unlink()
    r = _invoke(["--config", str(write_config_yaml(tmp_path, max_steps=2)), "--resume"], tmp_path, monkeypatch)
    _one_line_error(r, "--resume", "no usable checkpoint")


def test_two_modes_at_once(tmp_path, monkeypatch):
    r = _invoke(["--standard", "--resource-efficient"], tmp_path, monkeypatch)
    _one_line_error(r, "--standard", "--resource-efficient")


def test_flags_win_over_the_config_file_and_summary_is_printed(tmp_path, monkeypatch):
    cfg = write_config_yaml(tmp_path, max_steps=5)
    r = _invoke(["--config", str(cfg), "--max-steps", "3", "--batch-size", "2", "--seed", "11"], tmp_path, monkeypatch)
    assert r.exit_code == 0, r.output
    assert "done: 3 steps" in r.output
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["optimizer_steps"] == 3 and summary["config"]["batch_size"] == 2 and summary["config"]["seed"] == 11
    assert summary["config"]["gradient_accumulation_steps"] == 2  # from the file


@pytest.mark.parametrize("mode_flag", ["--resource-efficient", "--standard"])
def test_mode_presets_fill_what_the_flags_leave(tmp_path, monkeypatch, mode_flag):
    model, data = tiny_model_dir(tmp_path), tiny_corpus(tmp_path)
    r = _invoke([mode_flag, "--model", str(model), "--data", str(data), "--output", str(tmp_path / "run"),
                 "--max-steps", "2", "--batch-size", "2", "--gradient-accumulation-steps", "2",
                 "--max-sequence-length", "64", "--cpu-only"], tmp_path, monkeypatch)
    assert r.exit_code == 0, r.output
    cfg = json.loads((tmp_path / "run" / "summary.json").read_text())["config"]
    assert cfg["resource_efficient_mode"] is (mode_flag == "--resource-efficient")
    assert cfg["gradient_checkpointing"] is (mode_flag == "--resource-efficient")
    assert cfg["learning_rate"] == (5e-5 if mode_flag == "--resource-efficient" else 1e-4)
    assert (cfg["batch_size"], cfg["max_sequence_length"]) == (2, 64)


def test_auto_keeps_the_requested_effective_batch(tmp_path, monkeypatch):
    model, data = tiny_model_dir(tmp_path), tiny_corpus(tmp_path)
    r = _invoke(["--auto", "--model", str(model), "--data", str(data), "--output", str(tmp_path / "run"),
                 "--max-steps", "2", "--batch-size", "4", "--gradient-accumulation-steps", "2",
                 "--max-sequence-length", "64", "--cpu-only"], tmp_path, monkeypatch)
    assert r.exit_code == 0, r.output
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["effective_batch_size"] == 8 and summary["device"] == "cpu"
    assert any(e["event"] == "note" and e["text"].startswith(("plan:", "planner")) for e in
               read_jsonl(tmp_path / "run" / "events.jsonl"))


def test_auto_with_a_development_purpose_plans_resource_efficient(tmp_path, monkeypatch):
    model, data = tiny_model_dir(tmp_path), tiny_corpus(tmp_path)
    r = _invoke(["--auto", "--purpose", "development", "--model", str(model), "--data", str(data), "--output",
                 str(tmp_path / "run"), "--max-steps", "1", "--max-sequence-length", "64", "--cpu-only"],
                tmp_path, monkeypatch)
    assert r.exit_code == 0, r.output
    notes = [e["text"] for e in read_jsonl(tmp_path / "run" / "events.jsonl") if e["event"] == "note"]
    assert any(t.startswith("plan: resource-efficient mode") for t in notes), notes


def test_auto_on_the_embedded_default_logs_what_the_demo_changed(tmp_path, monkeypatch):
    # The planner's notes come after the demo's note; they once replaced it.
    r = _invoke(["--auto", "--max-steps", "1", "--output", str(tmp_path / "run"), "--cpu-only"], tmp_path, monkeypatch)
    assert r.exit_code == 0, r.output
    notes = [e["text"] for e in read_jsonl(tmp_path / "run" / "events.jsonl") if e["event"] == "note"]
    assert any(t.startswith("embedded default (overseer-tiny") for t in notes), notes
    assert any(t.startswith("plan: ") for t in notes), notes


def test_a_second_run_without_output_never_lands_on_the_first(tmp_path, monkeypatch):
    model, data = tiny_model_dir(tmp_path), tiny_corpus(tmp_path)
    monkeypatch.chdir(tmp_path)  # the default --output, overseer-runs/run, is relative
    args = ["--resource-efficient", "--model", str(model), "--data", str(data), "--max-steps", "1", "--batch-size", "2",
            "--gradient-accumulation-steps", "1", "--max-sequence-length", "64", "--cpu-only"]
    first = _invoke(args, tmp_path, monkeypatch)
    assert first.exit_code == 0, first.output
    before = sorted(p.name for p in (tmp_path / "overseer-runs" / "run").iterdir())
    second = _invoke(args, tmp_path, monkeypatch)
    assert second.exit_code == 0, second.output
    assert "holds an earlier run; this one goes to overseer-runs/run-2" in second.output
    assert json.loads((tmp_path / "overseer-runs" / "run-2" / "summary.json").read_text())["optimizer_steps"] == 1
    assert sorted(p.name for p in (tmp_path / "overseer-runs" / "run").iterdir()) == before  # untouched
    # A named --output holding checkpoints is refused instead, with nothing in it changed.
    named = _invoke([*args, "--output", "overseer-runs/run"], tmp_path, monkeypatch)
    _one_line_error(named, "already holds checkpoints", "--resume")


@pytest.mark.parametrize("args", [["--data", ""], ["--output", ""], ["--model", ""]])
def test_an_empty_path_is_refused_not_read_as_the_current_directory(tmp_path, monkeypatch, args):
    _one_line_error(_invoke(args, tmp_path, monkeypatch), args[0], "empty value")
