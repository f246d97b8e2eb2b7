"""Fresh training data over HTTP(S): `--download-data` and continuous-learning re-checks.

Cache layout (all under `cache_dir`):

    manifest.json                      url -> ManifestEntry, written atomically
    <key>/                             key = first 16 hex of sha256(url)
        <name>.part, <name>.part.json  an interrupted download and the version it belongs to
        <sha16>/<name>                 a finished download, one directory per content version
        <sha16>/<stem>/                the archive's extracted files, when it is an archive

Nothing appears under a final name until it is complete: bytes stream into
`.part` (resumed with HTTP Range on the next call), are fsynced, checked
against `expected_sha256`, and moved in with `os.replace`; archives extract into
a temporary directory renamed into place. The manifest is written last, so an
entry always points to complete files.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import os
import re
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import unquote, urlsplit

from pydantic import Field, ValidationError

from overseer_plan._io import atomic_write_text, fsync_dir
from overseer_plan._model import StrictModel as _Model
from overseer_plan.errors import UserInputError
from overseer_plan.units import GiB
from trainer import _http
from trainer.archive import ArchiveLimits, archive_kind, archive_stem, extract_archive, list_files

try:  # POSIX advisory locks; without them (Windows) concurrent runs are not serialised
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None

DEFAULT_MAX_BYTES = 10 * GiB
Progress = Callable[[int, "int | None"], None]
"""progress(done_bytes, total_bytes or None when the server did not say)."""


class ManifestEntry(_Model):
    """One downloaded source as recorded in `cache_dir/manifest.json`."""

    url: str
    """The URL as the user gave it (before redirects)."""
    path: str
    """The file, or the extracted directory for an archive, relative to the cache directory."""
    file: str
    """The downloaded file itself, relative to the cache directory."""
    sha256: str
    """sha256 of the downloaded file (the archive itself for archives)."""
    size_bytes: int
    """Size of the downloaded file."""
    etag: str | None = None
    """The server's ETag, for conditional re-checks."""
    last_modified: str | None = None
    """The server's Last-Modified header, for conditional re-checks."""
    downloaded_at: str
    """When the download finished, ISO 8601 UTC."""
    extracted: bool = False
    """Whether `path` is an extracted archive directory."""
    files: list[str] = Field(default_factory=list)
    """Files under `path`, relative to it, when extracted."""


class _Manifest(_Model):
    version: int = 1
    entries: dict[str, ManifestEntry] = Field(default_factory=dict)


class DownloadResult(_Model):
    """What `download` returns: where the data is and which version it is."""

    url: str
    """The URL as given."""
    path: Path
    """The downloaded file, or the directory an archive was extracted into."""
    sha256: str
    """sha256 of the downloaded file (of the archive for archives)."""
    size_bytes: int
    """Bytes downloaded (the archive's size for archives)."""
    etag: str | None = None
    """The server's ETag, if it sent one."""
    last_modified: str | None = None
    """The server's Last-Modified, if it sent one."""
    extracted: bool = False
    """Whether `path` is an extracted archive directory."""
    files: list[str] = Field(default_factory=list)
    """Files under `path`, relative to it, when extracted."""
    from_cache: bool = False
    """True when no bytes were downloaded: the cached copy was reused."""

    @classmethod
    def from_entry(cls, entry: ManifestEntry, cache_dir: Path, *, from_cache: bool) -> DownloadResult:
        data = entry.model_dump(exclude={"file", "downloaded_at", "path"})
        return cls(**data, path=Path(cache_dir).resolve() / entry.path, from_cache=from_cache)


def download(
    source: str,
    cache_dir: Path,
    *,
    expected_sha256: str | None = None,
    max_bytes: int = DEFAULT_MAX_BYTES,
    timeout_s: float = 30.0,
    max_redirects: int = 5,
    progress: Progress | None = None,
    refresh: bool = False,
    archive_limits: ArchiveLimits | None = None,
) -> DownloadResult:
    """Download `source` (an http(s) URL of a file or archive) into `cache_dir`, or reuse the cached copy.

    Args:
        source: http:// or https:// URL; .tar.gz/.tgz/.tar/.zip (and .tar.bz2/.tar.xz) are extracted.
        cache_dir: the data cache; created if missing.
        expected_sha256: hex digest the downloaded file must have; a mismatch discards it.
        max_bytes: refuse files larger than this (checked against Content-Length and while streaming).
        timeout_s: connect timeout, and the longest the server may send nothing mid-transfer.
        max_redirects: most HTTP redirects to follow.
        progress: called as progress(done_bytes, total_bytes_or_None) after each chunk.
        refresh: ask the server whether the cached copy is current (If-None-Match/If-Modified-Since)
            instead of reusing it unasked.
        archive_limits: caps for archive extraction (defaults: 20 GiB, 100k entries, 100x ratio).

    Raises:
        UserInputError: bad URL, network or HTTP failure, size cap, sha256 mismatch or unsafe archive.
    """
    _http.check_url(source)
    if expected_sha256 is not None and not re.fullmatch(r"[0-9a-fA-F]{64}", expected_sha256):
        raise UserInputError(f"expected sha256 {expected_sha256!r} is not 64 hex digits")
    expected = expected_sha256.lower() if expected_sha256 else None
    cache_dir = Path(cache_dir)
    key_dir = cache_dir / hashlib.sha256(source.encode()).hexdigest()[:16]
    key_dir.mkdir(parents=True, exist_ok=True)
    with _locked(key_dir / ".lock"):
        cached = _usable_entry(cache_dir, source, expected)
        if cached is not None and not refresh:
            return DownloadResult.from_entry(cached, cache_dir, from_cache=True)
        fetch = _http.Transfer(
            source, key_dir / _file_name(source), max_bytes=max_bytes, timeout_s=timeout_s,
            max_redirects=max_redirects, progress=progress,
        )
        got = fetch.run(conditional=_http.Validators(cached.etag, cached.last_modified) if cached else None)
        if got is None:  # 304 Not Modified
            return DownloadResult.from_entry(cached, cache_dir, from_cache=True)
        entry = _promote(fetch, got, cache_dir, expected, archive_limits)
        return DownloadResult.from_entry(entry, cache_dir, from_cache=False)


def check_for_update(
    entry_or_url: str | ManifestEntry | DownloadResult,
    cache_dir: Path,
    timeout_s: float = 30.0,
    *,
    max_redirects: int = 5,
) -> bool:
    """Whether the server has a newer version than the cached one, asked with a conditional GET.

    True when nothing is cached, when the server answers 200 with different validators, or
    when the cached copy has no ETag/Last-Modified to ask with (it cannot be shown current).
    False on 304 Not Modified, or on 200 with the same ETag (a server ignoring conditionals).
    """
    entry = entry_or_url
    if isinstance(entry_or_url, str):
        _http.check_url(entry_or_url)
        entry = _read_manifest(Path(cache_dir)).entries.get(entry_or_url)
    if entry is None or not (entry.etag or entry.last_modified):
        return True
    headers = _http.Validators(entry.etag, entry.last_modified).conditional_headers()
    with _http.open_url(entry.url, headers=headers, timeout_s=timeout_s, max_redirects=max_redirects) as resp:
        if resp.status == 304:
            return False
        if resp.status >= 400:
            raise UserInputError(_http.describe_status(entry.url, resp.status, resp.reason))
        now = _http.Validators.of(resp)
    if entry.etag and now.etag:
        return now.etag != entry.etag
    return now.last_modified is None or now.last_modified != entry.last_modified


def _file_name(url: str) -> str:
    """A safe local file name from the URL's last path segment."""
    raw = unquote(urlsplit(url).path.rstrip("/").rpartition("/")[2])
    name = re.sub(r"[^A-Za-z0-9._-]", "_", raw).lstrip(".")[-120:]
    return name or "download"


@contextlib.contextmanager
def _locked(lock_path: Path) -> Iterator[None]:
    """Hold an exclusive advisory lock, so two ranks never write the same `.part` (released on kill -9)."""
    with open(lock_path, "a+b") as handle:
        if fcntl is not None:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        yield


def _read_manifest(cache_dir: Path) -> _Manifest:
    path = cache_dir / "manifest.json"
    if not path.exists():
        return _Manifest()
    try:
        return _Manifest.model_validate_json(path.read_bytes())
    except (ValidationError, ValueError) as exc:
        raise UserInputError(f"{path}: unreadable data-cache manifest; delete it to rebuild the cache") from exc


def _write_entry(cache_dir: Path, entry: ManifestEntry) -> None:
    with _locked(cache_dir / ".manifest.lock"):
        manifest = _read_manifest(cache_dir)
        manifest.entries[entry.url] = entry
        atomic_write_text(cache_dir / "manifest.json", manifest.model_dump_json(indent=2) + "\n")


def _usable_entry(cache_dir: Path, url: str, expected_sha256: str | None) -> ManifestEntry | None:
    """The manifest entry for `url` if its files are still there (and match `expected_sha256`)."""
    entry = _read_manifest(cache_dir).entries.get(url)
    if entry is None or (expected_sha256 and entry.sha256 != expected_sha256):
        return None
    file = cache_dir / entry.file
    if not file.is_file() or file.stat().st_size != entry.size_bytes:
        return None
    if entry.extracted and not (cache_dir / entry.path).is_dir():
        return None
    return entry


def _promote(
    fetch: _http.Transfer, got: _http.Fetched, cache_dir: Path, expected: str | None, limits: ArchiveLimits | None
) -> ManifestEntry:
    """Move a finished `.part` to its version directory, extract it if an archive, record it."""
    if expected and got.sha256 != expected:
        fetch.discard()
        raise UserInputError(
            f"sha256 mismatch for {fetch.url}: expected {expected}, got {got.sha256}; the download was discarded"
        )
    with open(fetch.part, "rb") as f:
        if _http.looks_like_web_page(None, f.read(512)):
            fetch.discard()
            raise _http.web_page_error(fetch.url)
    key_dir, name = fetch.target.parent, fetch.target.name
    version_dir = key_dir / got.sha256[:16]
    version_dir.mkdir(exist_ok=True)
    final = version_dir / name
    with open(fetch.part, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(fetch.part, final)
    fsync_dir(version_dir)
    fetch.meta_path.unlink(missing_ok=True)
    path, files = final, []
    if archive_kind(name):
        path = version_dir / archive_stem(name)
        files = _extract_once(final, path, limits)
    entry = ManifestEntry(
        url=fetch.url, path=_rel(path, cache_dir), file=_rel(final, cache_dir), sha256=got.sha256,
        size_bytes=got.size_bytes, etag=got.etag, last_modified=got.last_modified,
        downloaded_at=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        extracted=bool(archive_kind(name)), files=files,
    )
    _write_entry(cache_dir, entry)
    for old in key_dir.iterdir():  # older versions of this URL, now unreferenced
        if old.is_dir() and old != version_dir and re.fullmatch(r"[0-9a-f]{16}", old.name):
            shutil.rmtree(old, ignore_errors=True)
    return entry


def _extract_once(archive: Path, dest: Path, limits: ArchiveLimits | None) -> list[str]:
    """Extract unless this version was already extracted; on refusal drop the whole version."""
    for stale in archive.parent.glob(".extract-*"):  # left by a run killed mid-extraction
        shutil.rmtree(stale, ignore_errors=True)
    if dest.is_dir():  # renamed in only when complete, so it is whole
        return list_files(dest)
    try:
        return extract_archive(archive, dest, limits=limits)
    except UserInputError:
        shutil.rmtree(archive.parent, ignore_errors=True)
        raise


def _rel(path: Path, cache_dir: Path) -> str:
    return path.relative_to(cache_dir).as_posix()
