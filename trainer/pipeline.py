"""The one entry `overseer train` calls: resolve (and download) the data, then train once or continuously.

    overseer train --resource-efficient --download-data                        # fetch config.data_sources, train
    overseer train --download-data https://example.org/corpus.tar.gz           # fetch that, train
    overseer train --data notes/ --continuous-learning --watch-interval 300    # retrain as notes/ grows
    overseer train --download-data --continuous-learning                       # the spec's complete pipeline

Flag semantics (see `run_pipeline`): `--download-data` alone fetches `data_sources` (none configured and
no --data: a default public-domain corpus, `DEFAULT_DOWNLOAD_SOURCE`); with a SOURCE it fetches that
instead. `--continuous-learning` with no data at all watches `WATCH_FOLDER` beside the run directory.
Without `--download-data`, `data_sources` come from the data cache only (no network). `--rounds` and
`--watch-interval` need `--continuous-learning`.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field
from pathlib import Path

from overseer_plan.config import TrainingConfig
from overseer_plan.errors import UserInputError
from trainer.continuous import ContinuousResult, run_continuous
from trainer.corpus import check_paths_exist
from trainer.loop import Reporter, TrainResult
from trainer.sources import local_paths


@dataclass
class PipelineResult:
    """What `run_pipeline` did."""

    result: TrainResult | None
    """The last training run (None when continuous learning trained nothing in this call)."""
    continuous: ContinuousResult | None = None
    """Set in continuous-learning mode."""
    data: list[str] = field(default_factory=list)
    """Local paths a single run trained on (empty for the embedded default and in continuous mode)."""

    @property
    def interrupted(self) -> bool:
        """Stopped by Ctrl-C/SIGTERM after saving a checkpoint (CLI exit 130; resumable)."""
        if self.continuous is not None:
            return self.continuous.interrupted
        return bool(self.result and self.result.interrupted)


def run_pipeline(config: TrainingConfig, *, auto: bool = False, mode: str | None = None, resume: bool = False,
                 download_source: str | list[str] | bool | None = None, continuous: bool = False,
                 rounds: int | None = None, watch_interval_s: float | None = None, reporter: Reporter | None = None,
                 explicit: set[str] | None = None, stop_event: threading.Event | None = None,
                 data_cache_dir: Path | None = None, token_cache_dir: Path | None = None,
                 use_monitor: bool = True) -> PipelineResult:
    """Resolve the data (downloading with `download_source`), then one `train()` or `run_continuous()`.

    Args:
        config: the run's settings (`data`, `data_sources`, `output_dir`, ...).
        auto, mode, resume, reporter, explicit: as `trainer.run.train`. In continuous mode an existing
            manifest is always continued; `resume` lets round 0 start from checkpoints without one.
        download_source: None/False: no `--download-data` (data_sources from the cache only);
            True: `--download-data` without a value (fetch `config.data_sources`);
            a string or a list of them: `--download-data SOURCE` (fetch those URLs or dataset ids
            instead of `config.data_sources`).
        continuous: `--continuous-learning`: keep watching the sources and train on new data.
        rounds: `--rounds N`: stop after N complete rounds (round 0 included).
        watch_interval_s: `--watch-interval S`: seconds between polls (default config.watch_interval_s).
        stop_event: set it to stop continuous learning after the current round or poll.
        data_cache_dir, token_cache_dir: download cache and token cache (their defaults otherwise).

    Raises:
        UserInputError (exit 2): inconsistent flags, nothing to download, bad or unreachable sources;
        and whatever `train` raises.
    """
    _check_flags(continuous=continuous, rounds=rounds, watch_interval_s=watch_interval_s)
    # Every missing --data path at once, before the model and tokenizer load.
    check_paths_exist(list(config.data))
    config, download, note = _with_download_source(config, download_source)
    if note and reporter is not None:
        reporter.message(note)
    if continuous:
        config, waiting = _with_watch_folder(config, reporter)
        done = run_continuous(config, auto=auto, mode=mode, rounds=rounds, watch_interval_s=watch_interval_s,
                              download=download, stop_event=stop_event, reporter=reporter, resume=resume,
                              explicit=explicit, data_cache_dir=data_cache_dir, token_cache_dir=token_cache_dir,
                              use_monitor=use_monitor, wait_for_data=waiting)
        return PipelineResult(done.last_result, continuous=done)
    from trainer.run import train

    explicit = set(explicit if explicit is not None else config.explicit_fields())
    # A resumed run keeps the cached copy: it must see the same data it started on.
    paths = [path for _origin, path in local_paths(config, download=download, cache_dir=data_cache_dir,
                                                   refresh=not resume)]
    if paths and paths != list(config.data):
        config = config.with_changes(data=paths)
        config.mark_explicit({"data"})
        explicit.add("data")
    result = train(config, auto=auto, mode=mode, resume=resume, reporter=reporter, use_monitor=use_monitor,
                   cache_dir=token_cache_dir, explicit=explicit)
    return PipelineResult(result, data=paths)


def _check_flags(*, continuous: bool, rounds: int | None, watch_interval_s: float | None) -> None:
    if not continuous:
        given = [flag for flag, value in (("--rounds", rounds), ("--watch-interval", watch_interval_s)) if value is not None]
        if given:
            raise UserInputError(f"{' and '.join(given)}: only with --continuous-learning")
    if rounds is not None and rounds < 1:
        raise UserInputError(f"--rounds {rounds}: give at least 1")
    # `not 0 < w`, not `w <= 0`: NaN must fail too (it made the watch loop spin); inf overflows the wait.
    if watch_interval_s is not None and not 0 < watch_interval_s <= MAX_WATCH_INTERVAL_S:
        raise UserInputError(f"--watch-interval {watch_interval_s:g}: give a number of seconds above 0 and at most "
                             f"{MAX_WATCH_INTERVAL_S} (a day)")


# Fetched by a bare `--download-data` when nothing else is configured (the spec's "Training with Fresh
# Data" example names no source): ~1.1 MB of public-domain plain text, stable at this address since 2015.
# A mirror (or an air-gapped copy) can stand in for it: OVERSEER_DEFAULT_DATA_SOURCE.
DEFAULT_DOWNLOAD_SOURCE = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
DEFAULT_SOURCE_ENV = "OVERSEER_DEFAULT_DATA_SOURCE"
MAX_WATCH_INTERVAL_S = 86400
WATCH_FOLDER = "incoming"
"""Continuous learning with no data configured watches this folder beside the run directory."""


def _with_watch_folder(config: TrainingConfig, reporter: Reporter | None) -> tuple[TrainingConfig, bool]:
    """(config, whether to wait for data): with nothing to watch, a folder beside the run directory.

    Not inside it: a run directory's own files are never data.
    """
    if config.data or config.data_sources:
        return config, False
    folder = Path(config.output_dir).absolute().parent / WATCH_FOLDER
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserInputError(f"--continuous-learning: cannot create the watch folder {folder} ({e.strerror or e}); "
                             "give --data PATH") from None
    if reporter is not None:
        reporter.message(f"continuous: no data configured: watching {folder} (give --data PATH or data_sources "
                         "to watch something else)")
    config = config.with_changes(data=[str(folder)])
    config.mark_explicit({"data"})
    return config, True


def _with_download_source(config: TrainingConfig,
                          download_source: str | list[str] | bool | None) -> tuple[TrainingConfig, bool, str | None]:
    """(config whose data_sources are what to fetch, whether to download, a note for the user)."""
    if download_source is None or download_source is False:
        return config, False, None
    if isinstance(download_source, (str, list, tuple)):
        sources = [download_source] if isinstance(download_source, str) else list(download_source)
        if not sources or not all(s.strip() for s in sources):
            raise UserInputError("--download-data: the source is empty; give a URL or a dataset id")
        config = config.with_changes(data_sources=sources)
        config.mark_explicit({"data_sources"})
        return config, True, None
    if config.data_sources:
        return config, True, None
    if config.data:  # the user's own files are the data; a default corpus would silently dilute them
        raise UserInputError("--download-data: nothing to download; give a source (--download-data URL) or list "
                             "data_sources in training_config.py or the --config file")
    source = os.environ.get(DEFAULT_SOURCE_ENV, "").strip() or DEFAULT_DOWNLOAD_SOURCE
    config = config.with_changes(data_sources=[source])
    config.mark_explicit({"data_sources"})
    return config, True, (f"--download-data: no data_sources configured: fetching the default corpus from {source}; "
                          "set data_sources in training_config.py or give --download-data URL")
