"""Continuous learning: train, keep watching the data sources, and train again on what is new.

Round 0 trains on everything the sources hold. Then, every `watch_interval_s`, the sources are
polled: local files and directories for new or changed files (by content hash, so a changed file's
new version is new data), URLs with a conditional GET (`check_for_update`, then a refreshing
`download`). When new files appear, round N:

1. resumes from the latest checkpoint with `max_steps` extended by the round's steps (the config's
   `max_steps`, else `epochs` passes over the round's training blocks), through `trainer.run.train`,
   so the plan, the monitor and the OOM retry-down apply as in any run. The cosine schedule is
   stretched over the new total, so the learning rate resumes from the longer curve (a warm restart).
2. trains on the NEW files plus `replay.jsonl`: a seeded sample of earlier rounds' *training* blocks
   (never their held-out blocks), decoded back to text, sized so that replay is `replay_fraction`
   (f) of the round's tokens: round(f / (1 - f) x est_new_tokens / block_len) blocks, where
   est_new_tokens = the new files' bytes x the tokens per byte measured on earlier rounds (exact for
   the byte tokenizer). The share achieved is recorded as `replay_share` (`trainer.replay`).
3. evaluates the checkpoint before and after the round on held-out blocks of the earlier rounds' new
   data and of this round's new data (at most `eval_max_batches` micro-batches each, the earlier
   sample fixed per round, so `forgetting` = after - before compares the same blocks), appends
   {"round", "step", "eval_loss_earlier", "eval_loss_new", ...} to metrics.jsonl, and rewrites
   rounds.json and a "rounds" key of summary.json (`trainer.rounds.publish_round`).

Crash safety: run_dir/continuous_manifest.json (`trainer.rounds`, written atomically) records each
round as "started" before training, and "complete" only after the round's checkpoint exists and its
token file and split are stored. A restart redoes a started round with exactly its recorded files
from the latest checkpoint (the loop's data order depends only on seed and step, so nothing is
trained twice or skipped); files of started or complete rounds are never trained again. A started
round whose files changed meanwhile is marked "abandoned" and its files count as new.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from overseer_plan.config import TrainingConfig
from overseer_plan.errors import UserInputError
from trainer import checkpoint as ckpt
from trainer.corpus import Source, find_sources
from trainer.loop import Reporter, SilentReporter, TrainResult

# Re-exported (`x as x`) because tests/trainer/test_continuous.py imports these replay pieces from here.
from trainer.replay import _Blocks as _Blocks
from trainer.replay import _decoded as _decoded
from trainer.replay import _sample as _sample
from trainer.replay import _write_jsonl as _write_jsonl
from trainer.replay import (
    evaluate,
    replay_block_count,
    replay_path,
    sha256_file,
    store_round,
    stored_blocks,
    write_replay,
)
from trainer.rounds import (
    MANIFEST_NAME,
    ContinuousManifest,
    RoundFile,
    RoundRecord,
    load_manifest,
    publish_round,
)
from trainer.sources import ContentHasher, ResolvedSource, default_data_cache_dir, is_url, resolve_sources

__all__ = ["MANIFEST_NAME", "ContinuousManifest", "ContinuousResult", "RoundFile", "RoundRecord", "load_manifest",
           "run_continuous"]


@dataclass
class ContinuousResult:
    """What `run_continuous` did."""

    rounds: list[RoundRecord]
    """Every complete round in the manifest (earlier sessions' too)."""
    trained_rounds: int
    """Rounds this call trained or redid."""
    last_result: TrainResult | None
    stopped: str
    """'rounds' (the count was reached), 'stop_event', or 'interrupted' (Ctrl-C/SIGTERM; resumable)."""
    manifest_path: Path

    @property
    def interrupted(self) -> bool:
        return self.stopped == "interrupted"


def run_continuous(config: TrainingConfig, *, auto: bool = False, mode: str | None = None, rounds: int | None = None,
                   watch_interval_s: float | None = None, download: bool = False,
                   stop_event: threading.Event | None = None, reporter: Reporter | None = None, resume: bool = False,
                   explicit: set[str] | None = None, data_cache_dir: Path | None = None, wait_for_data: bool = False,
                   token_cache_dir: Path | None = None, use_monitor: bool = True) -> ContinuousResult:
    """Train on the sources, then keep training on new data as it appears (see the module docstring).

    Args:
        config: the run's settings; `data` (local paths) and `data_sources` (URLs, dataset ids) are watched.
        auto, mode: as `trainer.run.train`, applied to every round.
        rounds: stop once this many rounds are complete (round 0 included; earlier sessions count);
            None watches until `stop_event` or Ctrl-C.
        watch_interval_s: seconds between polls (default `config.watch_interval_s`).
        download: fetch `data_sources` and re-check URLs each poll; off, they come from the data cache.
        stop_event: set it to stop after the current round or poll.
        resume: no manifest yet but checkpoints in the run directory: start round 0 from the latest.
        explicit: the settings the user gave (default `config.explicit_fields()`).
        data_cache_dir, token_cache_dir: the download cache and the token cache (their defaults otherwise).
        wait_for_data: no data yet is not an error: wait for files to appear (the default watch folder).

    Raises:
        UserInputError: no data to watch, an unusable first download, a run directory with checkpoints
            but no manifest (without `resume`); and whatever `train` raises.
    """
    if rounds is not None and rounds < 1:
        raise UserInputError(f"--rounds {rounds}: give at least 1")
    session = _Session(config, auto=auto, mode=mode, download=download, stop_event=stop_event, reporter=reporter,
                       resume=resume, explicit=explicit, data_cache_dir=data_cache_dir,
                       token_cache_dir=token_cache_dir, use_monitor=use_monitor, wait_for_data=wait_for_data,
                       interval_s=watch_interval_s if watch_interval_s is not None else config.watch_interval_s)
    return session.run(rounds)


class _Session:
    """One call of `run_continuous`: the manifest, the watch loop and the rounds."""

    def __init__(self, config: TrainingConfig, *, auto: bool, mode: str | None, download: bool, interval_s: float,
                 stop_event: threading.Event | None, reporter: Reporter | None, resume: bool,
                 explicit: set[str] | None, data_cache_dir: Path | None, token_cache_dir: Path | None,
                 use_monitor: bool, wait_for_data: bool = False):
        from trainer.data import default_cache_dir

        self.config, self.auto, self.mode, self.download, self.interval_s = config, auto, mode, download, interval_s
        self.stop = stop_event or threading.Event()
        self.reporter = reporter or SilentReporter()
        self.resume, self.use_monitor, self.wait_for_data = resume, use_monitor, wait_for_data
        self.explicit = set(explicit if explicit is not None else config.explicit_fields())
        self.data_cache = Path(data_cache_dir or default_data_cache_dir())
        self.token_cache = Path(token_cache_dir or default_cache_dir())
        self.run_dir = Path(config.output_dir)
        self.manifest = load_manifest(self.run_dir)
        self.hasher = ContentHasher()
        self.trained = 0
        self.last: TrainResult | None = None
        self._last_note = ""

    # ---------------------------------------------------------------- the watch loop
    def run(self, rounds: int | None) -> ContinuousResult:
        self._check_start()
        try:
            stopped = self._loop(rounds)
        except KeyboardInterrupt:  # Ctrl-C while polling or waiting: the manifest is consistent as it is
            stopped = "interrupted"
        return ContinuousResult(self.manifest.complete(), self.trained, self.last, stopped,
                                self.run_dir / MANIFEST_NAME)

    def _loop(self, rounds: int | None) -> str:
        pending = self.manifest.pending()
        if pending is not None and self._redo(pending) == "interrupted":
            return "interrupted"
        while rounds is None or len(self.manifest.complete()) < rounds:
            if self.stop.is_set():
                return "stop_event"
            new = self._poll()
            if new:
                outcome = self._new_round(new)
                if outcome == "interrupted":
                    return "interrupted"
                if outcome == "trained":
                    continue  # poll again at once: data may have arrived while training
            if self.stop.wait(self.interval_s):
                return "stop_event"
        return "rounds"

    def _check_start(self) -> None:
        from trainer.runlog import make_run_dir

        make_run_dir(self.run_dir)  # an --output that cannot be a directory: one line, before the manifest is written
        found = ckpt.list_checkpoints(self.run_dir)
        if not self.manifest.rounds and found and not self.resume:
            raise UserInputError(f"--output {self.run_dir} holds {found[-1][1].name} but no {MANIFEST_NAME}: pass "
                                 "--resume to start continuous learning from it, or choose a new --output")
        if self.manifest.complete() and not found:
            raise UserInputError(f"{self.run_dir}: the continuous manifest lists complete rounds but no checkpoint is "
                                 "left; restore the checkpoints or use a new --output")

    def _poll(self) -> list[ResolvedSource]:
        """New input files (content not in any started or complete round)."""
        first = not self.manifest.rounds
        try:
            if first:
                found = resolve_sources(self.config, download=self.download, cache_dir=self.data_cache,
                                        hasher=self.hasher)
            else:
                if self.download:
                    self._refresh_urls()
                found = resolve_sources(self.config, download=False, cache_dir=self.data_cache, hasher=self.hasher)
        except UserInputError as e:
            if first and not self.wait_for_data:
                raise
            if first:  # the watch folder is still empty
                return self._waiting()
            self._note(f"continuous: checking the sources failed ({e}); trying again in {self.interval_s:g}s")
            return []
        if first and not found and self.wait_for_data:
            return self._waiting()
        if first and not found:
            raise UserInputError("--continuous-learning: no data to watch; give --data PATH or data_sources "
                                 "(URLs, with --download-data)")
        seen, own = self.manifest.seen(), self.run_dir.absolute()
        # The run directory's own files (replay.jsonl, metrics.jsonl) are never data, even inside a watched dir.
        return [r for r in found if r.sha256 not in seen and not r.path.is_relative_to(own)]

    def _waiting(self) -> list[ResolvedSource]:
        folders = ", ".join(str(Path(d).absolute()) for d in self.config.data)
        self._note(f"continuous: waiting for data: put .txt, .md or .jsonl files into {folders} "
                   f"(checked every {self.interval_s:g}s; Ctrl-C stops)")
        return []

    def _refresh_urls(self) -> None:
        from trainer.download import check_for_update, download

        for url in (s for s in self.config.data_sources if is_url(s)):
            if check_for_update(url, self.data_cache):  # a conditional GET: 304 costs no body
                got = download(url, self.data_cache, refresh=True)
                if not got.from_cache:
                    self.reporter.message(f"continuous: {url} changed: downloaded {got.size_bytes} bytes")

    def _note(self, text: str) -> None:
        if text != self._last_note:  # a poll that keeps failing says so once
            self.reporter.message(text)
            self._last_note = text

    # ---------------------------------------------------------------- rounds
    def _new_round(self, files: list[ResolvedSource]) -> str:
        """'trained', 'waiting' (too little new data yet) or 'interrupted'."""
        record = self._plan(len(self.manifest.rounds), files)
        if record is None:
            return "waiting"
        return self._train_and_finish(record)

    def _redo(self, record: RoundRecord) -> str:
        problem = self._changed_inputs(record)
        if problem:
            record.status = "abandoned"
            self.manifest.save(self.run_dir)
            self.reporter.message(f"continuous: round {record.round} was interrupted and {problem}: abandoned; "
                                  "its files count as new data")
            return "abandoned"
        self.reporter.message(f"continuous: redoing round {record.round} (interrupted before it completed) from the "
                              "latest checkpoint with the same files")
        return self._train_and_finish(record)

    def _changed_inputs(self, record: RoundRecord) -> str | None:
        for f in record.files:
            p = Path(f.path)
            if not p.exists() or self.hasher.hash(Source(p, f.kind))[0] != f.sha256:
                return f"{f.path} changed or is gone"
        replay = replay_path(self.run_dir, record.round)
        if record.replay_blocks and (not replay.is_file() or sha256_file(replay) != record.replay_sha256):
            return f"{replay} changed or is gone"
        return None

    def _plan(self, number: int, files: list[ResolvedSource]) -> RoundRecord | None:
        cp = _latest_checkpoint(self.run_dir)
        record = RoundRecord.new(number, files, step_start=cp.step if cp else 0)
        if cp is not None:
            if not self._size_round(record, cp):
                return None
        elif self.config.max_steps:
            record.step_end = self.config.max_steps
        self.manifest.rounds.append(record)
        self.manifest.save(self.run_dir)
        return record

    def _size_round(self, record: RoundRecord, cp: _Checkpoint) -> bool:
        """Write the replay sample, tokenise the round, fix its steps, evaluate before it; False: too little data."""
        cfg, complete = self.config, self.manifest.complete()
        est_new = sum(f.size_bytes for f in record.files) * self.manifest.tokens_per_byte()
        if est_new < 2 * cp.block_len:
            self._note(f"continuous: {len(record.files)} new file(s), ~{est_new:.0f} tokens: waiting for at least "
                       f"{2 * cp.block_len} tokens of new data")
            return False
        if complete and cfg.replay_fraction > 0:
            pool = [stored_blocks(self.run_dir, r, "train") for r in complete]
            record.replay_blocks = replay_block_count(sum(len(b.ids) for b in pool), fraction=cfg.replay_fraction,
                                                      est_new_tokens=est_new, block_len=cp.block_len)
            record.replay_tokens, record.replay_sha256 = write_replay(
                replay_path(self.run_dir, record.round), pool, record.replay_blocks, cp.encoder,
                seed=cfg.seed, number=record.round)
        data = self._prepare(record, cp)
        steps = cfg.max_steps or math.ceil((cfg.epochs or 1.0) * len(data.train_ids) / cp.blocks_per_step)
        record.step_end = record.step_start + steps
        if complete:
            record.eval_loss_earlier_before, record.eval_loss_new_before = self._evaluate(cp, data, record)
        return True

    def _train_and_finish(self, record: RoundRecord) -> str:
        from trainer.run import train

        changes: dict[str, Any] = {"data": self._data_list(record)}
        if record.step_end is not None:
            changes["max_steps"] = record.step_end
        cfg = self.config.with_changes(**changes)
        cfg.mark_explicit(set(changes))  # the planner must keep the round's data and step count
        self.reporter.message(f"continuous: round {record.round}: {len(record.files)} new file(s), "
                              f"{record.replay_blocks} replayed block(s), steps {record.step_start} -> "
                              f"{record.step_end if record.step_end is not None else 'end of epoch'}")
        result = train(cfg, auto=self.auto, mode=self.mode, resume=bool(ckpt.list_checkpoints(self.run_dir)),
                       reporter=self.reporter, use_monitor=self.use_monitor, cache_dir=self.token_cache,
                       explicit=self.explicit | set(changes))
        self.last, self.trained = result, self.trained + 1
        if result.interrupted:
            return "interrupted"
        self._finish(record, result)
        self._give_back_memory()
        return "trained"

    def _give_back_memory(self) -> None:
        """The round's model and data are gone and the process may wait for hours now: return what they held.

        Without this the freed pages stay in glibc's heap (and CUDA's cache) for as long as no new data
        comes, out of reach of the other applications on the machine.
        """
        import torch

        from trainer.oom import free_memory

        reserved = torch.cuda.memory_reserved() if torch.cuda.is_initialized() else 0
        got = free_memory("cuda" if reserved else "cpu")
        gpu = reserved - (torch.cuda.memory_reserved() if reserved else 0)
        if got["host_released_bytes"] or gpu:
            from overseer_plan.units import fmt_bytes

            self.reporter.message(f"continuous: gave back {fmt_bytes(got['host_released_bytes'])} of freed RAM"
                                  + (f" and {fmt_bytes(gpu)} of cached GPU memory" if gpu else "")
                                  + " to the system between rounds")

    def _finish(self, record: RoundRecord, result: TrainResult) -> None:
        cp = _latest_checkpoint(self.run_dir)
        assert cp is not None and cp.step == result.optimizer_steps, "the loop saves a checkpoint at the end of a run"
        data = self._prepare(record, cp)  # the loop's cache entry
        store_round(self.run_dir, record, data)
        record.eval_loss_earlier, record.eval_loss_new = self._evaluate(cp, data, record)
        record.mark_complete(step=cp.step, checkpoint=cp.path.name)
        self.manifest.save(self.run_dir)
        row = publish_round(self.run_dir, self.manifest, record)
        self.reporter.message(f"continuous: round {record.round} complete at step {record.step_end}: eval loss on "
                              f"earlier data {_fmt(row['eval_loss_earlier'])}, on new data {_fmt(row['eval_loss_new'])}")

    # ---------------------------------------------------------------- data of a round
    def _data_list(self, record: RoundRecord) -> list[str]:
        replay = [str(replay_path(self.run_dir, record.round))] if record.replay_blocks else []
        return replay + [f.path for f in record.files]

    def _prepare(self, record: RoundRecord, cp: _Checkpoint) -> Any:
        """The round's token data, as the loop tokenises it for this config (so the same cache entry)."""
        from trainer.data import prepare_data

        return prepare_data(find_sources(self._data_list(record)), cp.encoder, block_len=cp.block_len,
                            seed=self.config.seed, eval_fraction=self.config.eval_fraction, cache_dir=self.token_cache)

    def _evaluate(self, cp: _Checkpoint, data: Any, record: RoundRecord) -> tuple[float | None, float | None]:
        """(earlier, new) mean eval loss of checkpoint `cp`; None for a set that is empty."""
        earlier = [stored_blocks(self.run_dir, r, "eval") for r in self.manifest.complete() if r.round != record.round]
        return evaluate(cp.path, earlier, data, replay_tokens=record.replay_tokens, seed=self.config.seed,
                        number=record.round, max_batches=self.config.eval_max_batches, batch_size=cp.batch_size,
                        seq_len=cp.seq_len, use_gpu=self.config.use_gpu)


# -------------------------------------------------------------------- helpers
@dataclass
class _Checkpoint:
    """What a round needs from the latest checkpoint."""

    path: Path
    step: int
    block_len: int
    seq_len: int
    batch_size: int
    blocks_per_step: int
    encoder: Any


def _latest_checkpoint(run_dir: Path) -> _Checkpoint | None:
    """The newest checkpoint whose state loads (as the loop's resume picks it), or None."""
    from trainer.tokenizer import encoder_for, load_tokenizer

    for _step, path in reversed(ckpt.list_checkpoints(run_dir)):
        try:  # mmap: reading the step and config must not pull the optimizer state into RAM
            state = ckpt.load_state(path, mmap=True)
        except ValueError:  # the checks the loop's resume makes: it skips this one too
            continue
        cfg, block_len = state["config"], int(state["block_len"])
        seq = int(cfg["max_sequence_length"])
        per_step = int(cfg["batch_size"]) * int(cfg["gradient_accumulation_steps"]) * seq // block_len
        return _Checkpoint(path, int(state["step"]), block_len, seq, int(cfg["batch_size"]), max(1, per_step),
                           encoder_for(load_tokenizer(path)))
    return None


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.4f}"
