"""`overseer plan` and `overseer doctor oom|slow|overwhelmed` through the real CLI."""

from __future__ import annotations

import json
from pathlib import Path

from _hw import gpu, make_hw
from typer.testing import CliRunner

from overseer_plan.cli import app
from overseer_plan.config import TrainingConfig

runner = CliRunner()


def _hw_file(tmp_path: Path, **kw) -> Path:
    path = tmp_path / "hw.json"
    make_hw(**kw).save(path)
    return path


def test_plan_json_has_the_contract_keys(tmp_path: Path) -> None:
    hw = _hw_file(tmp_path)
    r = runner.invoke(app, ["plan", "--model", "gpt2", "--hardware", str(hw), "--ram", "8GiB", "--gpu-mem", "4GiB",
                            "--json", "--no-validate"])
    assert r.exit_code == 0, r.output
    data = json.loads(r.stdout)
    assert data["mode"] == "resource-efficient"
    assert {"mode", "config", "decisions", "estimate", "budget_bytes"} <= set(data)
    assert data["estimate"]["peak_bytes"] <= 0.75 * 4 * 1024**3
    assert all({"setting", "value", "rule", "why"} <= set(d) for d in data["decisions"])
    TrainingConfig.from_dict(data["config"])  # the config section is a valid TrainingConfig


def test_plan_writes_a_file_train_accepts(tmp_path: Path) -> None:
    out = tmp_path / "plan.yaml"
    r = runner.invoke(app, ["plan", "--model", "overseer-tiny", "--hardware", str(_hw_file(tmp_path)),
                            "-o", str(out), "--explain"])
    assert r.exit_code == 0, r.output
    assert "Candidates (best first)" in r.stdout and "chosen" in r.stdout
    cfg = TrainingConfig.load(out)
    assert cfg.effective_batch_size() == 64 and cfg.max_sequence_length == 512


def test_plan_standard_on_a_big_machine(tmp_path: Path) -> None:
    hw = _hw_file(tmp_path, ram_gb=128, gpus=[gpu(80)])
    r = runner.invoke(app, ["plan", "--model", "gpt2", "--hardware", str(hw), "--json", "--no-validate"])
    data = json.loads(r.stdout)
    assert data["mode"] == "standard"
    assert data["config"]["learning_rate"] == 1e-4 and data["config"]["gradient_checkpointing"] is False
    # The preset's split fits: kept, although the (unmeasured) GPU model scores 32 x 2 slightly higher.
    assert (data["config"]["batch_size"], data["config"]["gradient_accumulation_steps"]) == (16, 4)
    assert data["config"]["max_sequence_length"] == 1024 and data["config"]["save_steps"] == 500
    assert any("preset's micro-batch is kept" in c["rejected"] for c in data["candidates"] if c.get("rejected"))


def test_gpu_fit_leaves_the_preset_split_when_it_does_not_fit(tmp_path: Path) -> None:
    hw = _hw_file(tmp_path, ram_gb=128, gpus=[gpu(24)])
    r = runner.invoke(app, ["plan", "--model", "gpt2", "--hardware", str(hw), "--standard", "--json", "--no-validate"])
    data = json.loads(r.stdout)
    cfg = data["config"]
    assert cfg["batch_size"] * cfg["gradient_accumulation_steps"] == 64
    assert data["estimate"]["peak_bytes"] <= data["budget_bytes"]
    assert cfg["batch_size"] < 16 or cfg["gradient_checkpointing"] is True


def test_plan_bad_input_is_one_line_and_exit_2(tmp_path: Path) -> None:
    hw = str(_hw_file(tmp_path))
    cases = [
        ["plan", "--hardware", hw, "--ram", "lots"],
        ["plan", "--hardware", hw, "--model", "no-such-model-anywhere"],
        ["plan", "--hardware", str(tmp_path / "missing.json")],
        ["plan", "--hardware", hw, "--standard", "--resource-efficient"],
        ["plan", "--hardware", hw, "--rules", str(tmp_path / "nope")],
        ["plan", "--hardware", hw, "--purpose", "prod"],
    ]
    for args in cases:
        r = runner.invoke(app, args)
        assert r.exit_code == 2, (args, r.output)
        assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.output, (args, r.stderr)


def test_plan_reports_when_nothing_fits(tmp_path: Path) -> None:
    r = runner.invoke(app, ["plan", "--model", "gpt2-large", "--hardware", str(_hw_file(tmp_path)), "--ram", "1GiB",
                            "--cpu-only", "--no-validate"])
    assert r.exit_code == 1 and "doctor oom" in r.stdout


def test_doctor_oom_walks_the_ladder_from_a_plan_file(tmp_path: Path) -> None:
    hw = str(_hw_file(tmp_path))
    plan = tmp_path / "plan.yaml"
    assert runner.invoke(app, ["plan", "--model", "gpt2", "--hardware", hw, "--ram", "8GiB", "--gpu-mem", "4GiB",
                               "-o", str(plan), "--no-validate"]).exit_code == 0
    r = runner.invoke(app, ["doctor", "oom", "--config", str(plan), "--model", "gpt2", "--hardware", hw,
                            "--gpu-mem", "4GiB", "--json"])
    assert r.exit_code == 0, r.output
    report = json.loads(r.stdout)
    assert [x["step"] for x in report["rungs"]] == [1, 2, 3, 4, 5]
    assert all(x["verdict"] in ("helps", "no effect", "does not help", "advice") for x in report["rungs"])


def test_doctor_slow_and_overwhelmed_print_every_rung(tmp_path: Path) -> None:
    hw = str(_hw_file(tmp_path))
    for symptom, n in (("slow", 3), ("overwhelmed", 4)):
        r = runner.invoke(app, ["doctor", symptom, "--hardware", hw])
        assert r.exit_code == 0, r.output
        assert sum(line.lstrip().startswith("[") for line in r.stdout.splitlines()) == n


def test_plan_purpose_picks_the_mode_and_reaches_the_plan_file(tmp_path: Path) -> None:
    hw, out = str(_hw_file(tmp_path, ram_gb=24, gpus=[])), tmp_path / "plan.yaml"
    r = runner.invoke(app, ["plan", "--model", "overseer-tiny", "--hardware", hw, "--purpose", "development",
                            "--no-validate", "-o", str(out)])
    assert r.exit_code == 0, r.output
    assert "because mode.resource-efficient.development" in r.stdout
    assert TrainingConfig.load(out).purpose == "development"


def test_plan_file_names_a_local_model_by_absolute_path(tmp_path: Path, monkeypatch) -> None:
    from overseer_plan.models import list_catalogue

    model = tmp_path / "mine"
    model.mkdir()
    tiny = next(e for e in list_catalogue() if e.name == "overseer-tiny")
    (model / "config.json").write_text(json.dumps(tiny.config))
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "plan.yaml"
    r = runner.invoke(app, ["plan", "--model", "mine", "--hardware", str(_hw_file(tmp_path)), "--no-validate",
                            "-o", str(out)])
    assert r.exit_code == 0, r.output
    assert TrainingConfig.load(out).model == str(model.resolve())
