"""trainer/continuous.py: rounds on new data with replay, per-round evaluation, and a manifest that survives kill -9."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from _train_helpers import MessageLog

from overseer_plan.config import TrainingConfig
from overseer_plan.errors import UserInputError
from trainer.continuous import (
    MANIFEST_NAME,
    ContinuousManifest,
    RoundFile,
    RoundRecord,
    _Blocks,
    _decoded,
    _sample,
    _write_jsonl,
    load_manifest,
    run_continuous,
)
from trainer.corpus import Source
from trainer.data import prepare_data
from trainer.tokenizer import ByteTokenizer, encoder_for

REPO_ROOT = Path(__file__).resolve().parents[2]
WORDS = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron".split()


def corpus_text(seed: int, lines: int) -> str:
    rnd = random.Random(seed)
    return "".join(" ".join(rnd.choice(WORDS) for _ in range(8)) + "\n" for _ in range(lines))


def tiny_config(tmp_path: Path, **kw) -> TrainingConfig:
    """The resource-efficient preset, shrunk to a few CPU steps of overseer-tiny."""
    settings = dict(resource_efficient_mode=True, output_dir=str(tmp_path / "run"), max_steps=2, batch_size=2,
                    gradient_accumulation_steps=1, max_sequence_length=32, learning_rate=3e-3, use_gpu=False,
                    gradient_checkpointing=False, save_steps=100, eval_steps=100, logging_steps=1, num_workers=0,
                    eval_fraction=0.2, eval_max_batches=2)
    return TrainingConfig(**{**settings, **kw})


def wait_for(predicate, timeout_s: float, what: str, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert proc is None or proc.poll() is None, f"the run exited before {what}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def statuses(run_dir: Path) -> list[str]:
    try:
        return [r.status for r in load_manifest(run_dir).rounds]
    except UserInputError:  # read between two atomic writes never happens; a missing file reads as empty
        return []


# --- pieces -----------------------------------------------------------------------------------


def test_replay_blocks_decode_to_text_that_tokenises_to_the_counted_tokens(tmp_path):
    src = tmp_path / "a.txt"
    src.write_text(corpus_text(1, 80) + "caf\u00e9 \u00fcber na\u00efve\n")
    enc = encoder_for(ByteTokenizer())
    data = prepare_data([Source(src, "text")], enc, block_len=32, seed=0, eval_fraction=0.2, cache_dir=tmp_path / "tok")
    blocks = _Blocks(np.memmap(data.path, dtype=data.dtype, mode="r"), 32, data.train_ids)
    picks = [b.tolist() for b in _sample([blocks], 6, np.random.default_rng(7))]
    assert picks == [b.tolist() for b in _sample([blocks], 6, np.random.default_rng(7))]  # seeded: same sample
    assert len({tuple(p) for p in picks}) == 6
    tokens, sha = _write_jsonl(tmp_path / "replay.jsonl", _decoded(_sample([blocks], 6, np.random.default_rng(7)), enc), enc)
    again = prepare_data([Source(tmp_path / "replay.jsonl", "jsonl")], enc, block_len=32, seed=0, eval_fraction=0.2,
                         cache_dir=tmp_path / "tok")
    assert tokens == again.n_tokens and len(sha) == 64


def test_checkpoints_without_a_manifest_need_resume_and_reached_rounds_return_at_once(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "a.txt").write_text(corpus_text(1, 20))
    cfg = tiny_config(tmp_path, data=[str(data)])
    (tmp_path / "run" / "checkpoint-3").mkdir(parents=True)
    with pytest.raises(UserInputError, match="--resume"):
        run_continuous(cfg, rounds=1, use_monitor=False)
    done = RoundRecord(round=0, status="complete", files=[], step_start=0, step_end=3, started_at="t")
    (tmp_path / "run" / MANIFEST_NAME).write_text(ContinuousManifest(rounds=[done]).model_dump_json())
    result = run_continuous(cfg, rounds=1, use_monitor=False)
    assert (result.stopped, result.trained_rounds, result.last_result) == ("rounds", 0, None)


def test_a_started_round_whose_files_changed_is_abandoned_and_its_files_count_as_new(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "a.txt").write_text(corpus_text(1, 20))
    gone = RoundFile(path=str(data / "old.txt"), sha256="0" * 64, kind="text", size_bytes=5, origin=str(data))
    started = RoundRecord(round=0, files=[gone], step_start=0, step_end=2, started_at="t")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / MANIFEST_NAME).write_text(ContinuousManifest(rounds=[started]).model_dump_json())
    stop = threading.Event()
    stop.set()
    result = run_continuous(tiny_config(tmp_path, data=[str(data)]), stop_event=stop, use_monitor=False)
    assert result.stopped == "stop_event" and result.trained_rounds == 0
    manifest = load_manifest(tmp_path / "run")
    assert [r.status for r in manifest.rounds] == ["abandoned"] and manifest.seen() == set()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc_trim")
def test_a_finished_round_gives_its_freed_memory_back_before_waiting(tmp_path):
    from trainer import memory

    data = tmp_path / "data"
    data.mkdir()
    (data / "a.txt").write_text(corpus_text(1, 30))
    said = MessageLog()
    result = run_continuous(tiny_config(tmp_path, data=[str(data)]), rounds=1, use_monitor=False, reporter=said,
                            token_cache_dir=tmp_path / "tok")
    assert result.trained_rounds == 1
    gave = [m for m in said.lines if "to the system between rounds" in m]
    assert len(gave) == (1 if memory.available() else 0), said.lines
    if gave:
        assert said.lines.index(gave[0]) > next(i for i, m in enumerate(said.lines) if "round 0 complete" in m)


def test_rounds_below_one_are_refused(tmp_path):
    with pytest.raises(UserInputError, match="--rounds 0"):
        run_continuous(tiny_config(tmp_path), rounds=0)


# --- kill -9 in the middle of a round --------------------------------------------------------

_CHILD = """
import json, sys
from pathlib import Path
from overseer_plan.config import TrainingConfig
from trainer.continuous import run_continuous
cfg = TrainingConfig.from_dict(json.loads(sys.argv[1]))
run_continuous(cfg, rounds=2, watch_interval_s=0.05, token_cache_dir=Path(sys.argv[2]), use_monitor=False)
"""


def test_kill_9_during_a_round_then_restart_finishes_it_from_its_checkpoint_with_the_same_files(tmp_path):
    data, run = tmp_path / "data", tmp_path / "run"
    data.mkdir()
    (data / "a.txt").write_text(corpus_text(1, 60))
    cfg = tiny_config(tmp_path, data=[str(data)], max_steps=4, save_steps=2)
    child_cfg = {k: getattr(cfg, k) for k in cfg.explicit_fields()}
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OVERSEER_CHECKPOINT_PAUSE_S": "0.4"}  # a wider kill window
    proc = subprocess.Popen([sys.executable, "-c", _CHILD, json.dumps(child_cfg), str(tmp_path / "tok")],
                            cwd=REPO_ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: statuses(run) == ["complete"], 180, "round 0", proc)
        b_text = corpus_text(2, 30)
        (data / "b.txt").write_text(b_text)
        wait_for(lambda: (run / "checkpoint-6").is_dir(), 120, "round 1's mid-round checkpoint", proc)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait(timeout=30)
    assert statuses(run) == ["complete", "started"], "killed after round 1 finished: the test window was missed"

    stop = threading.Event()
    threading.Thread(target=lambda: (wait_for(lambda: statuses(run) == ["complete"] * 2, 120, "round 1"), stop.set()),
                     daemon=True).start()
    result = run_continuous(cfg, watch_interval_s=0.05, stop_event=stop, token_cache_dir=tmp_path / "tok",
                            use_monitor=False)
    assert (result.stopped, result.trained_rounds, result.last_result.optimizer_steps) == ("stop_event", 1, 8)
    assert result.last_result.resumed_from_step == 6  # continued mid-round: steps 7-8 only, none skipped
    r0, r1 = load_manifest(run).rounds
    assert [f.path for f in r0.files] == [str(data / "a.txt")] and [f.path for f in r1.files] == [str(data / "b.txt")]
    assert (r0.step_start, r0.step_end, r1.step_start, r1.step_end) == (0, 4, 4, 8)
    assert r1.metrics_row()["tokens_new"] == len(b_text.encode()) + 1  # one document + end-of-sequence
    assert r1.metrics_row()["replay_share"] == pytest.approx(0.2, abs=0.1)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    round_rows = [r for r in rows if "round" in r]
    assert [r["round"] for r in round_rows] == [0, 1]
    assert round_rows[1]["eval_loss_earlier"] is not None and round_rows[1]["eval_loss_new"] is not None
