"""A run's training data as local files with content hashes: `--data` paths and `--download-data` sources.

    config.data          local text/Markdown files or directories, JSONL with 'text', saved HF datasets
    config.data_sources  http(s) URLs of files or archives (.tar.gz/.zip/..., extracted), fetched into the
                         data cache by `trainer.download`; Hugging Face dataset ids, fetched with
                         `datasets.load_dataset` and saved to disk in the same cache

`download=False` never touches the network: URLs and dataset ids resolve to what an earlier
`--download-data` left in the data cache, and a source that is not there is a one-line error.

Every file carries the sha256 of its bytes (a saved dataset: `Source.fingerprint`), so continuous
learning recognises data it has trained on whatever its path, and identical files count once.
Nothing half-written is ever returned: downloads, extractions and saved datasets appear under their
final names only when complete.
"""

from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from overseer_plan._io import hash_file
from overseer_plan.errors import UserInputError
from trainer.corpus import Source, find_sources

_HF_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
DATA_CACHE_ENV = "OVERSEER_DATA_DIR"


@dataclass(frozen=True)
class ResolvedSource:
    """One training input on local disk, and where it came from."""

    path: Path
    kind: str
    """'text', 'jsonl' or 'hf-dataset' (as `trainer.corpus.Source`)."""
    sha256: str
    """Content hash: sha256 of the file's bytes; for a saved dataset, `Source.fingerprint()`."""
    size_bytes: int
    origin: str
    """The entry the user gave: a local path, a URL or a dataset id."""

    def to_source(self) -> Source:
        return Source(self.path, self.kind)


def default_data_cache_dir() -> Path:
    """$OVERSEER_DATA_DIR, else data/ under Overseer's cache ($OVERSEER_CACHE_DIR or ~/.cache/overseer)."""
    from overseer_plan._io import cache_root

    env = os.environ.get(DATA_CACHE_ENV)
    path = Path(env).expanduser() if env else cache_root() / "data"
    # The nearest existing folder on the path must be a folder, or every later mkdir fails with a traceback.
    existing = next((p for p in (path, *path.parents) if p.exists()), None)
    if existing is not None and not existing.is_dir():
        var = DATA_CACHE_ENV if env else "OVERSEER_CACHE_DIR"
        raise UserInputError(f"{var}: {existing} is not a directory; point {var} at a directory or unset it")
    return path


class ContentHasher:
    """sha256 of inputs, remembered by (path, size, mtime) so polling a directory rereads only changed files."""

    def __init__(self) -> None:
        self._memo: dict[tuple[str, int, int], str] = {}

    def hash(self, source: Source) -> tuple[str, int]:
        """(sha256, size in bytes) of one input."""
        if source.kind == "hf-dataset":
            files = [f for f in source.path.rglob("*") if f.is_file()]
            return source.fingerprint(), sum(f.stat().st_size for f in files)
        st = source.path.stat()
        key = (str(source.path.resolve()), st.st_size, st.st_mtime_ns)
        if key not in self._memo:
            self._memo[key] = hash_file(source.path).hexdigest()
        return self._memo[key], st.st_size


def resolve_sources(config, *, download: bool, cache_dir: Path | None = None, refresh: bool = True,
                    hasher: ContentHasher | None = None) -> list[ResolvedSource]:
    """Every input of `config` as local files with content hashes, in a deterministic order.

    Args:
        config: a TrainingConfig; its `data` and `data_sources` are read.
        download: fetch `data_sources` (else use the data cache only).
        cache_dir: the data cache (default `default_data_cache_dir()`).
        refresh: with `download`, ask the server whether a cached copy is current (a conditional GET)
            instead of reusing it unasked.
        hasher: reuse its memo of content hashes (continuous learning polls with one).

    Returns:
        One entry per file (a saved dataset is one entry), duplicates by content dropped; empty when
        the config names no data at all (the embedded default corpus).

    Raises:
        UserInputError: a missing path, no text files, a bad URL, a network/HTTP failure, or a source
            that is not in the cache while `download` is off.
    """
    hasher = hasher or ContentHasher()
    out: list[ResolvedSource] = []
    for origin, path in local_paths(config, download=download, cache_dir=cache_dir, refresh=refresh):
        out.extend(_hashed(path, origin, hasher))
    seen: set[str] = set()
    unique = []
    for r in out:
        if r.sha256 not in seen:
            seen.add(r.sha256)
            unique.append(r)
    return unique


def local_paths(config, *, download: bool, cache_dir: Path | None = None,
                refresh: bool = True) -> list[tuple[str, str]]:
    """(origin, local path) for `config.data` as given and each of `config.data_sources` once local.

    A downloaded archive gives its extracted directory. Raises as `resolve_sources`.
    """
    cache_dir = Path(cache_dir or default_data_cache_dir())
    pairs = [(raw, raw) for raw in config.data]
    for raw in config.data_sources:
        pairs.append((raw, str(_localise(raw, download=download, cache_dir=cache_dir, refresh=refresh))))
    return pairs


def _hashed(path: str, origin: str, hasher: ContentHasher) -> list[ResolvedSource]:
    found = []
    for source in find_sources([path]):
        sha, size = hasher.hash(source)
        found.append(ResolvedSource(source.path.absolute(), source.kind, sha, size, origin))
    return found


def is_url(entry: str) -> bool:
    return "://" in entry


def _localise(entry: str, *, download: bool, cache_dir: Path, refresh: bool) -> Path:
    """Where one `data_sources` entry lives on local disk (fetching it when `download`)."""
    if is_url(entry):
        return _localise_url(entry, download=download, cache_dir=cache_dir, refresh=refresh)
    if Path(entry).expanduser().exists():
        return Path(entry).expanduser()
    if _HF_ID.match(entry):
        return _localise_hf(entry, download=download, cache_dir=cache_dir)
    raise UserInputError(f"data source {entry!r}: not an http(s) URL, an existing path or a Hugging Face dataset "
                         "id like 'owner/name'")


def _localise_url(url: str, *, download: bool, cache_dir: Path, refresh: bool) -> Path:
    from trainer import download as dl
    from trainer._http import check_url

    check_url(url)
    if download:
        return dl.download(url, cache_dir, refresh=refresh).path
    cached = dl._usable_entry(cache_dir, url, None)
    if cached is None:
        raise UserInputError(f"data source {url} is not in the data cache {cache_dir}: run with --download-data "
                             "to fetch it")
    return cache_dir.resolve() / cached.path


def hf_dataset_dir(dataset_id: str, cache_dir: Path) -> Path:
    """Where `--download-data` saves a Hugging Face dataset id (`Dataset.save_to_disk` layout)."""
    return Path(cache_dir) / "hf" / dataset_id.replace("/", "--")


def _localise_hf(dataset_id: str, *, download: bool, cache_dir: Path) -> Path:
    target = hf_dataset_dir(dataset_id, cache_dir)
    if (target / "state.json").is_file() or (target / "dataset_dict.json").is_file():
        return target  # saved by an earlier --download-data: renamed in only when complete
    offline_hint = (f"on a connected machine run datasets.load_dataset({dataset_id!r}, split='train')"
                    ".save_to_disk(DIR), copy DIR here and pass --data DIR")
    if not download:
        raise UserInputError(f"data source {dataset_id} is not in the data cache: run with --download-data, or "
                             f"{offline_hint}")
    try:
        import datasets
    except ImportError:
        raise UserInputError(f"data source {dataset_id}: a Hugging Face dataset id needs `pip install datasets` "
                             f"and the network; offline, {offline_hint}") from None
    from overseer_plan import hub

    if os.environ.get("HF_DATASETS_OFFLINE") == "1" or hub.offline_mode():
        raise UserInputError(f"data source {dataset_id}: Hugging Face offline mode is on; {offline_hint}")
    if not hub.reachable():
        raise UserInputError(f"data source {dataset_id}: {hub.unreachable_reason()}; {offline_hint}")
    return _save_hf(datasets, dataset_id, target, offline_hint)


def _save_hf(datasets, dataset_id: str, target: Path, offline_hint: str) -> Path:
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        ds = datasets.load_dataset(dataset_id, split="train")
        ds.save_to_disk(str(tmp))
        os.replace(tmp, target)
    except Exception as e:  # datasets raises many types (ConnectionError, FileNotFoundError, ValueError, ...)
        first = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
        raise UserInputError(f"data source {dataset_id}: cannot load it ({first}); {offline_hint}") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target
