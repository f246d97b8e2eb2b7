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
