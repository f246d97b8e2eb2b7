"""The run directory's logs: metrics.jsonl, events.jsonl (append-only, one JSON object a line) and summary.json."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

from overseer_plan._io import atomic_write_text
from overseer_plan.errors import UserInputError


def make_run_dir(run_dir: Path) -> None:
    """Create the run directory (and its parents).

    Raises:
        UserInputError: the path is a file or a device, or cannot be created (read-only, /proc, ...).
    """
    if run_dir.exists() and not run_dir.is_dir():
        raise UserInputError(f"--output {run_dir}: exists and is not a directory; choose a directory path")
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserInputError(f"--output {run_dir}: cannot create the run directory ({e.strerror or e}); choose a "
                             "writable path") from None


class RunLog:
    """Appends metric rows and events; thread-safe (the monitor thread writes events too)."""

    def __init__(self, run_dir: Path):
        make_run_dir(run_dir)
        self.run_dir = run_dir
        self._lock = threading.Lock()
        try:  # append: a resumed run continues the same files
            self._metrics = open(run_dir / "metrics.jsonl", "a", encoding="utf-8")
            self._events = open(run_dir / "events.jsonl", "a", encoding="utf-8")
        except OSError as e:
            raise UserInputError(f"--output {run_dir}: cannot write the run's logs there ({e.strerror or e}); choose "
                                 "a writable directory") from None
        self.step = 0
        self.counts: dict[str, int] = {}

    def metric(self, row: dict[str, Any]) -> None:
        with self._lock:
            self._metrics.write(json.dumps(row) + "\n")
            self._metrics.flush()

    def event(self, kind: str, **data: Any) -> dict[str, Any]:
        row = {"time": round(time.time(), 3), "step": self.step, "event": kind, **data}
        with self._lock:
            self.counts[kind] = self.counts.get(kind, 0) + 1
            self._events.write(json.dumps(row, default=str) + "\n")
            self._events.flush()
        return row

    def write_summary(self, summary: dict[str, Any]) -> None:
        atomic_write_text(self.run_dir / "summary.json", json.dumps(summary, indent=2, default=str) + "\n")

    def close(self) -> None:
        with self._lock:
            self._metrics.close()
            self._events.close()
