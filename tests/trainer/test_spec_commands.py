"""The spec's ways to start, run as a user would: real processes, real CLI parsing, loopback data."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from _loopback import targz
from test_continuous import corpus_text

from overseer_plan.commands.train import expand_download_value

ROOT = Path(__file__).resolve().parents[2]


def test_download_data_takes_an_optional_value() -> None:
    assert expand_download_value(["--download-data", "http://x/a.txt", "--max-steps", "2"]) == [
        "--download-data", "--download-from", "http://x/a.txt", "--max-steps", "2"]
    assert expand_download_value(["--download-data=http://x/a"]) == ["--download-data", "--download-from", "http://x/a"]
    assert expand_download_value(["--download-data", "--continuous-learning"]) == ["--download-data", "--continuous-learning"]


def _env(tmp_path: Path) -> dict[str, str]:
    env = dict(os.environ, OVERSEER_CACHE_DIR=str(tmp_path / "cache"), PYTHONPATH=str(ROOT))
    for var in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        env.pop(var, None)
    return env


def test_method_1_with_fresh_data_from_a_url(loopback_server, tmp_path: Path) -> None:
    # The spec: python main_training.py --resource-efficient --download-data
    url = loopback_server.add("/corpus.tar.gz", body=targz({"corpus/a.txt": corpus_text(1, 80).encode()}), etag='"v1"')
    run = tmp_path / "run"
    p = subprocess.run(
        [sys.executable, str(ROOT / "main_training.py"), "--resource-efficient", "--download-data", url,
         "--max-steps", "2", "--batch-size", "2", "--gradient-accumulation-steps", "2", "--max-sequence-length", "128",
         "--output", str(run)],
        capture_output=True, text=True, env=_env(tmp_path), timeout=300, cwd=tmp_path,
    )
    assert p.returncode == 0, p.stderr[-2000:]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["optimizer_steps"] == 2
    assert summary["config"]["resource_efficient_mode"] is True
    assert summary["config"]["learning_rate"] == 5e-5  # the preset filled what the flags did not set
    assert any("a.txt" in d or "corpus" in d for d in summary["config"]["data"])


def test_method_2_convenience_script_rejects_bad_flags_in_one_line(tmp_path: Path) -> None:
    p = subprocess.run([sys.executable, str(ROOT / "run_resource_efficient_training.py"), "--rounds", "2"],
                       capture_output=True, text=True, env=_env(tmp_path), timeout=120, cwd=tmp_path)
    assert p.returncode == 2, p.stderr
    assert "Traceback" not in p.stderr and len(p.stderr.strip().splitlines()) == 1


_SPEC_SNIPPET = """
from overseer_plan import TrainingConfig

# Custom resource-efficient settings (the spec's snippet, verbatim)
config = TrainingConfig()
config.resource_efficient_mode = True
config.batch_size = 2  # Even smaller batch size
config.max_sequence_length = 512  # Even shorter sequences
config.max_ram_percent = 60.0  # Even lower memory threshold
# shrunk for a test
config.max_steps = 2
config.gradient_accumulation_steps = 2
config.max_sequence_length = 64
"""


def test_the_specs_training_config_py_customises_method_1_and_flags_win(tmp_path: Path) -> None:
    settings = tmp_path / "training_config.py"
    settings.write_text(_SPEC_SNIPPET)
    data = tmp_path / "notes.txt"
    data.write_text(corpus_text(3, 80))
    run = tmp_path / "run"
    p = subprocess.run(
        [sys.executable, str(ROOT / "main_training.py"), "--training-config", str(settings), "--data", str(data),
         "--max-steps", "1", "--output", str(run)],
        capture_output=True, text=True, env=_env(tmp_path), timeout=300, cwd=tmp_path,
    )
    assert p.returncode == 0, p.stderr[-2000:]
    config = json.loads((run / "summary.json").read_text())["config"]
    assert config["resource_efficient_mode"] is True and config["max_ram_percent"] == 60.0
    assert config["max_steps"] == 1  # the flag won over the file
    assert config["learning_rate"] == 5e-5 and config["save_steps"] == 200  # the preset filled the rest


def test_method_2_takes_a_config_file_on_top_of_its_mode(tmp_path: Path) -> None:
    data = tmp_path / "notes.txt"
    data.write_text(corpus_text(2, 80))
    cfg = tmp_path / "mine.yaml"
    cfg.write_text(f"data: [{data}]\nmax_steps: 1\nbatch_size: 2\ngradient_accumulation_steps: 1\n"
                   "max_sequence_length: 64\nlearning_rate: 0.001\n")
    run = tmp_path / "run"
    p = subprocess.run([sys.executable, str(ROOT / "run_resource_efficient_training.py"), "--config", str(cfg),
                        "--output", str(run)],
                       capture_output=True, text=True, env=_env(tmp_path), timeout=300, cwd=tmp_path)
    assert p.returncode == 0, p.stderr[-2000:]
    config = json.loads((run / "summary.json").read_text())["config"]
    assert config["resource_efficient_mode"] is True and config["learning_rate"] == 0.001
    assert config["memory_check_interval"] == 15  # the resource-efficient preset under the file's settings


def test_the_shipped_training_config_py_changes_nothing_until_edited() -> None:
    from overseer_plan.commands.train import load_training_config_py

    assert load_training_config_py(ROOT / "training_config.py").explicit_fields() == set()


def _main_training_with_settings(tmp_path: Path, body: str) -> subprocess.CompletedProcess:
    settings = tmp_path / "training_config.py"
    settings.write_text(body)
    return subprocess.run([sys.executable, str(ROOT / "main_training.py"), "--training-config", str(settings)],
                          capture_output=True, text=True, env=_env(tmp_path), timeout=120, cwd=tmp_path)


def test_a_broken_training_config_py_is_one_line(tmp_path: Path) -> None:
    for body, words in (("config = 3\n", "must set `config = TrainingConfig()`"),
                        ("raise RuntimeError('boom')\n", "RuntimeError: boom"),
                        ("from overseer_plan import TrainingConfig\nconfig = TrainingConfig()\nconfig.batch_size = 0\n",
                         "batch_size")):
        p = _main_training_with_settings(tmp_path, body)
        assert p.returncode == 2, p.stderr
        assert words in p.stderr and "Traceback" not in p.stderr and len(p.stderr.strip().splitlines()) == 1


def test_the_embedded_demo_keeps_a_chosen_modes_micro_batch_and_says_what_it_changed() -> None:
    from overseer_plan.config import TrainingConfig
    from trainer.run import EMBEDDED_DEFAULTS, embedded_note, with_embedded_defaults

    chosen = TrainingConfig(resource_efficient_mode=True)
    demo = with_embedded_defaults(chosen, chosen.explicit_fields())
    assert demo.batch_size == 4  # the resource-efficient preset's micro-batch
    assert demo.effective_batch_size() == EMBEDDED_DEFAULTS["batch_size"]  # the demo's schedule
    note = embedded_note(chosen, demo)
    assert "learning_rate 5e-05 -> 0.003" in note and "gradient_accumulation_steps 16 -> 4" in note
    auto = TrainingConfig()  # `overseer train --auto`: the planner splits the demo's batch
    assert with_embedded_defaults(auto, set()).batch_size == EMBEDDED_DEFAULTS["batch_size"]


def test_rungs_are_checked_against_the_estimate_without_auto_too() -> None:
    from overseer_plan.config import TrainingConfig
    from trainer.run import _machine_check

    config = TrainingConfig(resource_efficient_mode=True, model="overseer-tiny", use_gpu=False)
    check = _machine_check(config)
    assert check is not None and check(config.with_changes(batch_size=1, max_sequence_length=64))
    assert not check(config.with_changes(batch_size=4096, max_sequence_length=512))  # terabytes of activations


def test_method_1_with_a_python_that_lacks_overseer_uses_setups_venv(tmp_path: Path) -> None:
    import pytest

    base = Path(sys.base_prefix) / "bin" / "python3"
    venv = ROOT / ".venv" / "bin" / "python"
    env = {k: v for k, v in _env(tmp_path).items() if k != "PYTHONPATH"}
    if not (base.is_file() and venv.is_file()) or subprocess.run(
            [str(base), "-c", "import typer"], capture_output=True, env=env).returncode == 0:
        pytest.skip("needs setup.sh's .venv and a base python without Overseer's dependencies")
    p = subprocess.run([str(base), str(ROOT / "main_training.py"), "--max-steps", "0"],
                       capture_output=True, text=True, env=env, timeout=120, cwd=tmp_path)
    # The venv's overseer parsed the flags: its one-line usage error, not an ImportError.
    assert p.returncode == 2 and "--max-steps" in p.stderr and "Traceback" not in p.stderr, p.stderr


def test_sigterm_while_continuous_learning_waits_for_data_stops_like_ctrl_c(tmp_path: Path) -> None:
    import signal
    import time

    p = subprocess.Popen([sys.executable, "-m", "overseer_plan", "train", "--continuous-learning", "--watch-interval",
                          "1", "--max-steps", "1", "--cpu-only"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(tmp_path), cwd=tmp_path)
    deadline = time.monotonic() + 120
    while not (tmp_path / "overseer-runs" / "incoming").is_dir():  # the watch folder exists: it is waiting
        assert p.poll() is None and time.monotonic() < deadline, "the command never started waiting"
        time.sleep(0.1)
    time.sleep(1.0)
    p.send_signal(signal.SIGTERM)
    _out, err = p.communicate(timeout=60)
    assert p.returncode == 130, err[-2000:]
    assert "stopped by signal" in err and "Traceback" not in err


def test_settings_files_cannot_end_the_run_silently_or_name_empty_paths(tmp_path: Path) -> None:
    for body, words in (("import sys\nsys.exit(0)\n", "sys.exit(0)"),
                        ("from overseer_plan import TrainingConfig\nconfig = TrainingConfig()\nconfig.output_dir = ''\n",
                         "output_dir")):
        p = _main_training_with_settings(tmp_path, body)
        assert p.returncode == 2, p.stderr
        assert words in p.stderr and len(p.stderr.strip().splitlines()) == 1


def test_a_training_config_py_that_picks_the_mode_means_what_the_flag_means(tmp_path: Path) -> None:
    settings = tmp_path / "training_config.py"
    settings.write_text("from overseer_plan import TrainingConfig\nconfig = TrainingConfig()\n"
                        "config.resource_efficient_mode = True\nconfig.max_steps = 1\nconfig.batch_size = 2\n"
                        "config.gradient_accumulation_steps = 1\nconfig.max_sequence_length = 64\n")
    data = tmp_path / "notes.txt"
    data.write_text(corpus_text(3, 80))
    p = subprocess.run([sys.executable, str(ROOT / "main_training.py"), "--training-config", str(settings), "--data",
                        str(data), "--output", str(tmp_path / "run")],
                       capture_output=True, text=True, env=_env(tmp_path), timeout=300, cwd=tmp_path)
    assert p.returncode == 0, p.stderr[-2000:]
    config = json.loads((tmp_path / "run" / "summary.json").read_text())["config"]
    assert config["gradient_checkpointing"] is True  # the preset, as with --resource-efficient, not a planner fit
