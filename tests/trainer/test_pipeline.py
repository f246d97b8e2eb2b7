"""trainer/pipeline.py: the spec's `--download-data --continuous-learning` pipeline end to end on loopback HTTP."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from _loopback import sha256_hex as _sha
from _loopback import targz as _targz
from _train_helpers import MessageLog
from test_continuous import REPO_ROOT, corpus_text, statuses, tiny_config, wait_for

from overseer_plan.errors import UserInputError
from trainer.continuous import load_manifest
from trainer.pipeline import run_pipeline


def _caches(tmp_path: Path) -> dict:
    return {"data_cache_dir": tmp_path / "data-cache", "token_cache_dir": tmp_path / "tokens"}


@pytest.mark.parametrize(("kwargs", "words"), [
    ({"rounds": 2}, "--rounds: only with --continuous-learning"),
    ({"watch_interval_s": 5.0}, "--watch-interval: only with --continuous-learning"),
    ({"continuous": True, "rounds": 0}, "--rounds 0"),
    ({"continuous": True, "watch_interval_s": 0.0}, "--watch-interval 0"),
    ({"download_source": " "}, "--download-data: the source is empty"),
])
def test_inconsistent_flags_are_one_line_errors(tmp_path, kwargs, words):
    with pytest.raises(UserInputError, match=words) as err:
        run_pipeline(tiny_config(tmp_path), **kwargs, **_caches(tmp_path))
    assert err.value.exit_code == 2 and "\n" not in str(err.value)


def test_bare_download_data_beside_the_users_own_files_is_a_one_line_error(tmp_path):
    data = tmp_path / "notes.txt"
    data.write_text(corpus_text(1, 40))
    with pytest.raises(UserInputError, match="--download-data: nothing to download") as err:
        run_pipeline(tiny_config(tmp_path, data=[str(data)]), download_source=True, **_caches(tmp_path))
    assert err.value.exit_code == 2 and "\n" not in str(err.value)


def test_bare_download_data_with_nothing_configured_fetches_the_default_corpus(loopback_server, tmp_path, monkeypatch):
    from trainer.pipeline import DEFAULT_SOURCE_ENV

    body = corpus_text(4, 40).encode()
    url = loopback_server.add("/default.txt", body=body)
    monkeypatch.setenv(DEFAULT_SOURCE_ENV, url)  # the shipped default is on the internet; tests stay on loopback
    notes = MessageLog()
    result = run_pipeline(tiny_config(tmp_path), download_source=True, use_monitor=False, reporter=notes,
                          **_caches(tmp_path))
    (path,) = result.data
    assert Path(path).read_bytes() == body and result.result.optimizer_steps == 2
    assert any("no data_sources configured: fetching the default corpus from " + url in n for n in notes.lines)


def test_continuous_learning_with_no_data_waits_on_a_watch_folder_then_trains(tmp_path):
    from trainer.pipeline import WATCH_FOLDER

    folder = tmp_path / WATCH_FOLDER  # beside the run directory, tmp_path / "run"
    run, notes = tmp_path / "run", MessageLog()

    def drop_a_file() -> None:
        wait_for(lambda: any("waiting for data" in n for n in notes.lines), 60, "the wait note")
        (folder / "new.txt").write_text(corpus_text(5, 60))

    threading.Thread(target=drop_a_file, daemon=True).start()
    result = run_pipeline(tiny_config(tmp_path), continuous=True, rounds=1, watch_interval_s=0.05, use_monitor=False,
                          reporter=notes, **_caches(tmp_path))
    assert (result.continuous.stopped, result.continuous.trained_rounds) == ("rounds", 1)
    assert [f.path for f in load_manifest(run).rounds[0].files] == [str(folder / "new.txt")]
    assert any(f"watching {folder}" in n for n in notes.lines)


def test_download_data_then_one_training_run(loopback_server, tmp_path):
    body = corpus_text(3, 40).encode()
    url = loopback_server.add("/fresh.txt", body=body, etag='"f1"')
    result = run_pipeline(tiny_config(tmp_path, data_sources=[url]), download_source=True, use_monitor=False,
                          **_caches(tmp_path))
    assert result.result.optimizer_steps == 2 and not result.interrupted and result.continuous is None
    (path,) = result.data
    assert Path(path).read_bytes() == body and result.result.config["data"] == [path]


def test_an_unreachable_source_stops_the_pipeline_with_one_line(loopback_server, tmp_path):
    url = loopback_server.add("/missing.tar.gz", status=404)
    with pytest.raises(UserInputError, match="404") as err:
        run_pipeline(tiny_config(tmp_path), download_source=url, continuous=True, rounds=1, **_caches(tmp_path))
    assert "\n" not in str(err.value)


def test_complete_pipeline_downloads_trains_then_trains_again_on_a_new_archive_member(loopback_server, tmp_path):
    a, b = corpus_text(1, 60).encode(), corpus_text(2, 30).encode()
    url = loopback_server.add("/corpus.tar.gz", body=_targz({"corpus/a.txt": a}), etag='"v1"')
    run = tmp_path / "run"

    def publish_new_member() -> None:  # the served archive gains b.txt once round 0 is done
        wait_for(lambda: statuses(run) == ["complete"], 120, "round 0")
        loopback_server.add("/corpus.tar.gz", body=_targz({"corpus/a.txt": a, "corpus/b.txt": b}), etag='"v2"')

    threading.Thread(target=publish_new_member, daemon=True).start()
    result = run_pipeline(tiny_config(tmp_path), download_source=url, continuous=True, rounds=2, watch_interval_s=0.05,
                          use_monitor=False, **_caches(tmp_path))

    assert (result.continuous.stopped, result.continuous.trained_rounds) == ("rounds", 2)
    r0, r1 = load_manifest(run).rounds
    assert [(f.sha256, f.origin) for f in r0.files] == [(_sha(a), url)]
    assert [(f.sha256, f.origin) for f in r1.files] == [(_sha(b), url)]  # a.txt is not trained twice
    assert (r1.step_start, r1.step_end) == (2, 4) and r1.replay_blocks > 0
    assert any(h.get("If-None-Match") == '"v1"' for h in loopback_server.headers_for("/corpus.tar.gz"))
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    per_round = [r for r in rows if "round" in r]
    assert [(r["round"], r["step"]) for r in per_round] == [(0, 2), (1, 4)]
    assert per_round[0]["eval_loss_earlier"] is None and per_round[0]["eval_loss_new"] > 0
    assert per_round[1]["eval_loss_earlier"] > 0 and per_round[1]["eval_loss_new"] > 0
    assert per_round[1]["forgetting"] == pytest.approx(per_round[1]["eval_loss_earlier"]
                                                       - per_round[1]["eval_loss_earlier_before"])
    assert json.loads((run / "rounds.json").read_text())["rounds"] == per_round
    assert json.loads((run / "summary.json").read_text())["rounds"] == per_round


_CHILD = """
import json, sys
from pathlib import Path
from overseer_plan.config import TrainingConfig
from trainer.pipeline import run_pipeline
cfg = TrainingConfig.from_dict(json.loads(sys.argv[1]))
run_pipeline(cfg, download_source=sys.argv[2], continuous=True, rounds=1, use_monitor=False,
             data_cache_dir=Path(sys.argv[3]), token_cache_dir=Path(sys.argv[4]))
"""


def test_kill_9_during_the_download_then_restart_resumes_it_and_trains_once(loopback_server, tmp_path):
    text = corpus_text(4, 60).encode()
    noise = os.urandom(600 * 1024)  # incompressible and not a text suffix: slows the transfer, never trained
    url = loopback_server.add("/big.tar.gz", body=_targz({"d/a.txt": text, "d/noise.bin": noise}), etag='"n1"',
                              drip_s=0.05)
    cfg = tiny_config(tmp_path)
    caches = _caches(tmp_path)
    child_cfg = json.dumps({k: getattr(cfg, k) for k in cfg.explicit_fields()})
    argv = [sys.executable, "-c", _CHILD, child_cfg, url, str(caches["data_cache_dir"]), str(caches["token_cache_dir"])]
    proc = subprocess.Popen(argv, cwd=REPO_ROOT, env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    parts = lambda: list(caches["data_cache_dir"].rglob("*.part"))  # noqa: E731
    try:
        wait_for(lambda: any(p.stat().st_size > 64 * 1024 for p in parts()), 60, "a partial download", proc)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait(timeout=30)
    assert not (tmp_path / "run" / "continuous_manifest.json").exists()  # nothing half-downloaded was trained on

    loopback_server.routes["/big.tar.gz"].drip_s = 0
    result = run_pipeline(cfg, download_source=url, continuous=True, rounds=1, use_monitor=False, **caches)
    assert loopback_server.headers_for("/big.tar.gz")[-1]["Range"].startswith("bytes=")
    (r0,) = load_manifest(tmp_path / "run").rounds
    assert r0.status == "complete" and [f.sha256 for f in r0.files] == [_sha(text)]
    assert result.result.optimizer_steps == 2 and parts() == []
