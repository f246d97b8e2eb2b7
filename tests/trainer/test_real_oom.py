"""A real CPU allocation failure (RLIMIT_AS in a child process): the run steps down and completes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from _train_helpers import REPO, read_jsonl


@pytest.mark.skipif(sys.platform != "linux", reason="RLIMIT_AS semantics are Linux's")
def test_rlimit_as_oom_steps_down_and_finishes(tmp_path):
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{Path(__file__).parent}", "MALLOC_ARENA_MAX": "1"}
    child = Path(__file__).with_name("_oom_child.py")
    done = subprocess.run([sys.executable, str(child), str(tmp_path), "40"], env=env, capture_output=True,
                          text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-2000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["steps"] == 3 and out["ooms"] >= 1
    cfg = out["config"]
    assert cfg["batch_size"] < 64 and cfg["batch_size"] * cfg["gradient_accumulation_steps"] == 64
    ooms = [e for e in read_jsonl(tmp_path / "run" / "events.jsonl") if e["event"] == "oom"]
    assert all("DefaultCPUAllocator: can't allocate memory" in e["message"] for e in ooms)
