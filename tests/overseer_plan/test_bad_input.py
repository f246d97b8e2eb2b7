"""Bad input of every kind is one line on stderr and exit code 2, and never costs a saved file."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from _hw import make_hw
from typer.testing import CliRunner

from overseer_plan import calibration, cli
from overseer_plan.calibration import DEFAULTS, load_calibration
from overseer_plan.cli import app
from overseer_plan.config import TrainingConfig
from overseer_plan.errors import ConfigErrors, UserInputError
from overseer_plan.rules import load_rulebook

runner = CliRunner()
NOT_UTF8 = bytes(range(0x80, 0x100)) * 2  # no valid UTF-8 start byte among them


@pytest.fixture(autouse=True)
def _own_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A cache of our own: no test here reads or writes the user's calibration or model index."""
    monkeypatch.setenv("OVERSEER_CACHE_DIR", str(tmp_path / "cache"))


def _hw_file(tmp_path: Path) -> Path:
    path = tmp_path / "hw.json"
    make_hw().save(path)
    return path


def _one_line_exit_2(args: list[str]) -> str:
    """Run the CLI; assert one line on stderr, exit 2, no traceback; return the line."""
    r = runner.invoke(app, args)
    assert r.exit_code == 2, (args, r.output, r.exception)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.output, (args, r.stderr)
    return lines[0]


# ---- 1. a failed plan keeps the saved one; a size without a unit is refused -----------------

def test_a_plan_that_fits_nothing_leaves_the_saved_plan_as_it_was(tmp_path: Path) -> None:
    hw, out = str(_hw_file(tmp_path)), tmp_path / "plan.yaml"
    assert runner.invoke(app, ["plan", "--hardware", hw, "--no-validate", "-o", str(out)]).exit_code == 0
    before = out.read_bytes()
    r = runner.invoke(app, ["plan", "--model", "gpt2-large", "--hardware", hw, "--ram", "1GiB", "--cpu-only",
                            "--no-validate", "-o", str(out)])
    assert r.exit_code == 1
    assert "no plan was written" in r.stderr and "left as it was" in r.stderr
    assert out.read_bytes() == before


@pytest.mark.parametrize("flag", ["--ram", "--gpu-mem"])
def test_a_memory_override_below_what_torch_needs_is_refused(tmp_path: Path, flag: str) -> None:
    line = _one_line_exit_2(["plan", "--hardware", str(_hw_file(tmp_path)), flag, "1", "--no-validate"])
    assert flag in line and "8GiB" in line


# ---- 2. files that are not UTF-8 text -------------------------------------------------------

def test_binary_files_are_one_line_wherever_they_are_read(tmp_path: Path) -> None:
    junk = tmp_path / "junk"
    junk.write_bytes(NOT_UTF8)
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "junk.yaml").write_bytes(NOT_UTF8)
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_bytes(NOT_UTF8)
    hw = str(_hw_file(tmp_path))
    for args in (["doctor", "--hardware", str(junk)],
                 ["doctor", "oom", "--hardware", hw, "--config", str(junk)],
                 ["doctor", "--hardware", hw, "--rules", str(rules)],
                 ["estimate", "--model", str(model)]):
        assert "UTF-8" in _one_line_exit_2(args), args


# ---- 3. model config.json with wrong types ---------------------------------------------------

@pytest.mark.parametrize(("value", "field"), [("NaN", "n_embd"), ('"two"', "n_layer"), ("-64", "n_embd"),
                                              ("0", "n_head")])
def test_a_bad_model_config_value_is_one_line_naming_the_field(tmp_path: Path, value: str, field: str) -> None:
    sizes = {"n_embd": "64", "n_layer": "2", "n_head": "2"} | {field: value}
    (tmp_path / "config.json").write_text('{"model_type": "gpt2", ' + ", ".join(f'"{k}": {v}' for k, v in sizes.items()) + "}")
    assert field in _one_line_exit_2(["estimate", "--model", str(tmp_path)])


def test_an_unknown_model_type_names_a_few_close_ones(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text('{"model_type": "lama", "hidden_size": 64}')
    line = _one_line_exit_2(["estimate", "--model", str(tmp_path)])
    assert "'lama'" in line and "llama" in line and len(line) < 300


# ---- 4. output paths -------------------------------------------------------------------------

def test_output_paths_that_cannot_be_written_are_refused_before_work(tmp_path: Path) -> None:
    hw = str(_hw_file(tmp_path))
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    a_dir = tmp_path / "a-dir"
    a_dir.mkdir()
    for args in (["plan", "--hardware", hw, "--no-validate", "-o", str(a_dir)],
                 ["plan", "--hardware", hw, "--no-validate", "-o", str(a_file / "plan.yaml")],
                 ["plan", "--hardware", hw, "--no-validate", "-o", ""],
                 ["plan", "--hardware", hw, "--no-validate", "--output-dir", str(a_file)],
                 ["probe", "--save", str(a_dir)],
                 ["probe", "--output-dir", str(a_file)],
                 ["doctor", "--hardware", hw, "--output-dir", str(a_file / "sub")]):
        _one_line_exit_2(args)
    assert a_file.read_text() == "x" and list(a_dir.iterdir()) == []


# ---- 5. hardware profiles with nonsense values -----------------------------------------------

def test_a_hardware_profile_with_nonsense_values_names_every_one(tmp_path: Path) -> None:
    data = make_hw().model_dump(mode="json")
    data["schema_version"] = 99
    data["ram"]["effective_bytes"] = -8 * 1024**3
    data["cpu"]["usable_cores"] = -4
    data["disks"][0]["free_bytes"] = -1
    data["temperatures"][0]["current_c"] = float("nan")
    data["gpus"] = [{"index": 0, "name": "x", "memory_total_bytes": 8 * 1024**3, "compute_capability": "abc"}]
    path = tmp_path / "hw.json"
    path.write_text(json.dumps(data))  # json writes NaN, as a hand edit or another tool might
    for args in (["plan", "--hardware", str(path), "--no-validate"], ["doctor", "--hardware", str(path)],
                 ["doctor", "oom", "--hardware", str(path)]):
        line = _one_line_exit_2(args)
        for where in ("schema_version", "ram.effective_bytes", "cpu.usable_cores", "disks.0.free_bytes",
                      "temperatures.0.current_c", "gpus.0.compute_capability"):
            assert where in line, (where, line)


# ---- 6. rules whose values TrainingConfig would refuse ---------------------------------------

BAD_RULES = """
rules:
  - {id: t.preset, kind: preset, source: t, why: t, mode: standard, set: {batch_size: -4, learning_rate: abc}}
  - {id: t.ladder, kind: ladder, source: t, why: t, symptom: oom, step: 9,
     change: {set: {batch_size: 0}, at_least: {learning_rate: 5}}}
  - {id: t.check, kind: requirement, source: t, why: t, severity: warn, fix: t,
     check: {fact: ram.total_bytes, lt: [1, 2]}}
"""


def test_rule_values_are_checked_against_training_config_when_loaded(tmp_path: Path) -> None:
    (tmp_path / "bad.yaml").write_text(BAD_RULES)
    with pytest.raises(ConfigErrors) as e:
        load_rulebook([tmp_path])
    problems = "\n".join(e.value.problems)
    assert len(e.value.problems) == 5, problems
    for needle in ("rule t.preset: set.batch_size", "rule t.preset: set.learning_rate",
                   "rule t.ladder: change.set.batch_size", "rule t.ladder: change.at_least.learning_rate",
                   "rule t.check: check: condition on 'ram.total_bytes': lt needs a number"):
        assert needle in problems, needle
    _one_line_exit_2(["doctor", "--hardware", str(_hw_file(tmp_path)), "--rules", str(tmp_path)])


# ---- 7. calibration files with NaN, infinity or negative factors -----------------------------

@pytest.mark.parametrize(("part", "key", "value"), [("cpu", "scale", "NaN"), ("cpu", "scale", "Infinity"),
                                                    ("cpu", "constant_bytes", "-1000000000000"),
                                                    ("cuda", "reserved_slack", "-0.5")])
def test_a_calibration_file_with_nonsense_factors_is_ignored_with_a_warning(part: str, key: str, value: str) -> None:
    data = DEFAULTS.model_dump(mode="json")
    data[part][key] = "@"
    path = calibration.calibration_path()
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(data).replace('"@"', value))
    with pytest.warns(UserWarning, match=f"{part}.{key}"):
        cal, notes = load_calibration()
    assert cal is DEFAULTS and "ignored" in notes[0]


# ---- 8. TrainingConfig: finite floats, seed range, file shape --------------------------------

@pytest.mark.parametrize(("settings", "expected"), [
    ({"memory_check_interval": float("inf")}, "memory_check_interval: Input should be a finite number"),
    ({"learning_rate": float("nan")}, "learning_rate: Input should be a finite number"),
    ({"seed": 99999999999999999999999}, "seed: Input should be less than or equal to 4294967295"),
    ({"seed": -1}, "seed: Input should be greater than or equal to 0"),
])
def test_training_config_refuses_non_finite_floats_and_out_of_range_seeds(settings: dict, expected: str) -> None:
    with pytest.raises(ConfigErrors, match=expected):
        TrainingConfig.from_dict(settings)


def test_a_config_file_whose_config_section_is_not_a_mapping_says_so(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("config: [1, 2]\n")
    with pytest.raises(UserInputError, match="'config:' section must be a mapping"):
        TrainingConfig.load(path)


# ---- 9. estimate --calibrate checks the model before minutes of measuring --------------------

def test_calibrate_checks_the_model_first(monkeypatch: pytest.MonkeyPatch) -> None:
    def calibrate_must_not_run(**_kw: object) -> None:
        raise AssertionError("calibrated before checking --model")

    monkeypatch.setattr(calibration, "calibrate", calibrate_must_not_run)
    assert "nosuch-model-zz" in _one_line_exit_2(["estimate", "--calibrate", "--model", "nosuch-model-zz"])
    assert not calibration.calibration_path().exists()


# ---- 10. conflicting flags -------------------------------------------------------------------

@pytest.mark.parametrize("flags", [["--gpus", "3", "--cpu-only"], ["--gpus", "0", "--gpu-mem", "4GiB"],
                                   ["--cpu-only", "--gpu-mem", "4GiB"], ["--ram", ""]])
def test_conflicting_or_empty_machine_flags_are_refused(tmp_path: Path, flags: list[str]) -> None:
    _one_line_exit_2(["plan", "--hardware", str(_hw_file(tmp_path)), "--no-validate", *flags])


# ---- 11. usage errors through the console entry point ----------------------------------------

def _main(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    monkeypatch.setattr(sys, "argv", ["overseer", *args])
    with pytest.raises(SystemExit) as e:
        cli.main()
    out = capsys.readouterr()
    return e.value.code, out.out, out.err


@pytest.mark.parametrize(("args", "verb"), [(["plan", "--bogus"], "overseer plan"),
                                            (["plan", "--batch-size", "abc"], "overseer plan"),
                                            (["train", "--max-steps", "0"], "overseer train"),
                                            (["doctor", "oom", "--bogus"], "overseer doctor oom")])
def test_usage_errors_are_one_line(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
                                   args: list[str], verb: str) -> None:
    code, out, err = _main(monkeypatch, capsys, *args)
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and err.startswith(f"{verb}: ") and f"see {verb} --help" in err


def test_help_still_prints_and_exits_0(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _main(monkeypatch, capsys, "plan", "--help")
    assert code == 0 and "Usage: overseer plan" in out
