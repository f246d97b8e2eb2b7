"""The round manifest of continuous learning: run_dir/continuous_manifest.json and what it reports.

The manifest records each round - its files by content hash, the replay sample, the step range - as
"started" before the round trains, and "complete" only after the round's checkpoint exists and its
token file and split are stored (`trainer.replay.store_round`). Every write is atomic (a temporary
file, fsync, rename), so a kill -9 leaves the previous manifest or the new one, never half of one:
a restart finds a started round and either redoes it with exactly its recorded files or, when those
files changed meanwhile, marks it "abandoned" so that its files count as new data.

A complete round is also published: a line in metrics.jsonl, the whole list in rounds.json, and a
"rounds" key in summary.json (when the run wrote one).
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from overseer_plan._io import atomic_write_text
from overseer_plan._model import StrictModel as _Model
from overseer_plan.errors import UserInputError
from trainer.sources import ResolvedSource

MANIFEST_NAME = "continuous_manifest.json"
ROUNDS_NAME = "rounds.json"


class RoundFile(_Model):
    """One input file a round trained on."""

    path: str
    sha256: str
    """Content hash (see `trainer.sources.ResolvedSource.sha256`)."""
    kind: str
    size_bytes: int
    origin: str
    """The --data path, URL or dataset id it came from."""

    @classmethod
    def of(cls, r: ResolvedSource) -> RoundFile:
        return cls(path=str(r.path), sha256=r.sha256, kind=r.kind, size_bytes=r.size_bytes, origin=r.origin)


class RoundRecord(_Model):
    """One round of continuous learning, as the manifest records it."""

    round: int
    status: Literal["started", "complete", "abandoned"] = "started"
    files: list[RoundFile]
    """The NEW data of the round (replay excluded)."""
    step_start: int
    step_end: int | None = None
    """Optimizer step the round ends at (None while an epoch-sized round 0 has not finished)."""
    replay_blocks: int = 0
    replay_tokens: int = 0
    replay_sha256: str | None = None
    n_tokens: int | None = None
    """Tokens of the round's token file (replay + new)."""
    block_len: int | None = None
    dtype: str | None = None
    eval_loss_earlier_before: float | None = None
    eval_loss_new_before: float | None = None
    eval_loss_earlier: float | None = None
    eval_loss_new: float | None = None
    checkpoint: str | None = None
    started_at: str
    finished_at: str | None = None

    @classmethod
    def new(cls, number: int, files: list[ResolvedSource], *, step_start: int) -> RoundRecord:
        return cls(round=number, files=[RoundFile.of(f) for f in files], step_start=step_start, started_at=_now())

    def mark_complete(self, *, step: int, checkpoint: str) -> None:
        self.step_end, self.checkpoint = step, checkpoint
        self.status, self.finished_at = "complete", _now()

    def metrics_row(self) -> dict[str, Any]:
        """The round's line in metrics.jsonl and rounds.json."""
        before, after = self.eval_loss_earlier_before, self.eval_loss_earlier
        share = self.replay_tokens / self.n_tokens if self.n_tokens else None
        return {"round": self.round, "step": self.step_end, "eval_loss_earlier": after, "eval_loss_new": self.eval_loss_new,
                "eval_loss_earlier_before": before, "eval_loss_new_before": self.eval_loss_new_before,
                "forgetting": None if before is None or after is None else after - before,
                "step_start": self.step_start, "new_files": len(self.files),
                "tokens_new": None if self.n_tokens is None else self.n_tokens - self.replay_tokens,
                "tokens_replay": self.replay_tokens, "replay_share": None if share is None else round(share, 4)}


class ContinuousManifest(_Model):
    """run_dir/continuous_manifest.json: every round, in order."""

    version: int = 1
    rounds: list[RoundRecord] = Field(default_factory=list)

    def complete(self) -> list[RoundRecord]:
        return [r for r in self.rounds if r.status == "complete"]

    def pending(self) -> RoundRecord | None:
        return next((r for r in self.rounds if r.status == "started"), None)

    def seen(self) -> set[str]:
        """Content hashes already trained on (or being trained on by a started round)."""
        return {f.sha256 for r in self.rounds if r.status != "abandoned" for f in r.files}

    def tokens_per_byte(self) -> float:
        """Tokens per byte of input measured on complete rounds (1.0, the byte tokenizer's, before any)."""
        measured = [r for r in self.complete() if r.n_tokens]
        tokens = sum(r.n_tokens - r.replay_tokens for r in measured)
        size = sum(f.size_bytes for r in measured for f in r.files)
        return tokens / size if tokens and size else 1.0

    def save(self, run_dir: Path) -> None:
        atomic_write_text(Path(run_dir) / MANIFEST_NAME, self.model_dump_json(indent=2) + "\n")


def load_manifest(run_dir: Path) -> ContinuousManifest:
    """The run directory's manifest; an empty one when there is none yet.

    Raises:
        UserInputError: the file exists but does not parse.
    """
    path = Path(run_dir) / MANIFEST_NAME
    if not path.is_file():
        return ContinuousManifest()
    try:
        return ContinuousManifest.model_validate_json(path.read_bytes())
    except ValueError:
        raise UserInputError(f"{path}: unreadable continuous-learning manifest; restore it or use a new --output") from None


def publish_round(run_dir: Path, manifest: ContinuousManifest, record: RoundRecord) -> dict[str, Any]:
    """Append `record` to metrics.jsonl, rewrite rounds.json and summary.json's "rounds"; its metrics row."""
    row = record.metrics_row()
    with open(run_dir / "metrics.jsonl", "a", encoding="utf-8") as fh:
        fh.write(json.dumps(row) + "\n")
    rows = [r.metrics_row() for r in manifest.complete()]
    atomic_write_text(run_dir / ROUNDS_NAME, json.dumps({"rounds": rows}, indent=2) + "\n")
    summary = run_dir / "summary.json"
    if summary.is_file():
        data = json.loads(summary.read_text(encoding="utf-8"))
        data["rounds"] = rows
        atomic_write_text(summary, json.dumps(data, indent=2, default=str) + "\n")
    return row


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
