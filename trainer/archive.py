"""Safe extraction of downloaded .tar(.gz/.bz2/.xz)/.tgz/.zip archives.

An archive from the internet is untrusted input. Every member is checked
before anything is written, and everything is written into a temporary
directory next to the destination, renamed into place only when the whole
archive extracted cleanly (removed otherwise). Refused, naming the member:

- absolute paths and any `..` component (tar "path traversal", CVE-2007-4559);
- symlinks whose target is absolute or contains `..`, and hard links to
  anything but a plain path inside the archive. Without `..` a chain of links
  can only point further down, so no chain of links can leave the directory;
- device files and FIFOs; symlinks and encrypted members in zips;
- more than `max_files` entries, more than `max_total_bytes` in all, or an
  expansion ratio above `max_ratio` (a "zip bomb").

On Python >= 3.11.4 (and 3.12+) tarfile's own `filter="data"` (PEP 706) runs
as a second line of defence; older versions rely on the checks here alone.
"""

from __future__ import annotations

import os
import shutil
import stat
import tarfile
import tempfile
import zipfile
from pathlib import Path, PurePosixPath, PureWindowsPath

from overseer_plan._io import fsync_dir
from overseer_plan._model import StrictModel
from overseer_plan.errors import UserInputError
from overseer_plan.units import GiB, MiB

# Longest suffix first, so "x.tar.gz" is not read as ".gz".
_SUFFIX_KINDS = {
    ".tar.gz": "tar", ".tar.bz2": "tar", ".tar.xz": "tar",
    ".tgz": "tar", ".tbz2": "tar", ".txz": "tar",
    ".tar": "tar", ".zip": "zip",
}
_HAS_DATA_FILTER = hasattr(tarfile, "data_filter")
_COPY_CHUNK_BYTES = 1 * MiB


class ArchiveLimits(StrictModel):
    """Caps that stop a hostile or broken archive from filling the disk."""

    max_total_bytes: int = 20 * GiB
    """Most bytes all members may expand to together."""
    max_files: int = 100_000
    """Most entries (files, directories, links) an archive may hold."""
    max_ratio: float = 100.0
    """Most the archive may expand, extracted bytes over archive bytes; text rarely exceeds 10x."""
    ratio_floor_bytes: int = 64 * MiB
    """The ratio guard only applies once this much has been extracted, so tiny archives pass."""


def archive_kind(name: str) -> str | None:
    """'tar' or 'zip' from a file name's suffix, None for a plain file."""
    lower = name.lower()
    return next((kind for suffix, kind in _SUFFIX_KINDS.items() if lower.endswith(suffix)), None)


def archive_stem(name: str) -> str:
    """The name without its archive suffix: 'corpus.tar.gz' -> 'corpus'."""
    lower = name.lower()
    suffix = next((s for s in _SUFFIX_KINDS if lower.endswith(s)), "")
    return name[: len(name) - len(suffix)] or "archive"


def extract_archive(archive: Path, dest: Path, *, limits: ArchiveLimits | None = None) -> list[str]:
    """Extract `archive` into the new directory `dest`; return its files as sorted relative paths.

    Raises:
        UserInputError: the archive is unreadable or a member breaks a rule above.
            Nothing is left at `dest` or anywhere else.
    """
    archive, dest = Path(archive), Path(dest)
    kind = archive_kind(archive.name)
    if kind is None:
        raise UserInputError(f"{archive.name}: not an archive; expected one of {', '.join(_SUFFIX_KINDS)}")
    assert not dest.exists(), f"extraction target {dest} already exists"
    dest.parent.mkdir(parents=True, exist_ok=True)
    budget = _Budget(limits or ArchiveLimits(), archive.name, archive.stat().st_size)
    tmp = Path(tempfile.mkdtemp(prefix=".extract-", dir=dest.parent))
    try:
        (_extract_tar if kind == "tar" else _extract_zip)(archive, tmp, budget)
        files = list_files(tmp)
        os.rename(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    fsync_dir(dest.parent)
    return files


def list_files(root: Path) -> list[str]:
    """Every non-directory under `root`, as sorted relative POSIX paths."""
    return sorted(Path(d, f).relative_to(root).as_posix() for d, _, names in os.walk(root) for f in names)


class _Budget:
    """Running totals checked before each member is written."""

    def __init__(self, limits: ArchiveLimits, archive_name: str, archive_bytes: int):
        self.limits, self.archive_name, self.archive_bytes = limits, archive_name, max(archive_bytes, 1)
        self.entries = 0
        self.total_bytes = 0

    def add(self, member: str, size_bytes: int) -> None:
        lim, where = self.limits, f"archive {self.archive_name}, member {member!r}"
        self.entries += 1
        self.total_bytes += size_bytes
        if self.entries > lim.max_files:
            raise UserInputError(f"{where}: more than {lim.max_files} entries; raise max_files if expected")
        if self.total_bytes > lim.max_total_bytes:
            raise UserInputError(f"{where}: expands past {lim.max_total_bytes} bytes; raise max_total_bytes")
        ratio = self.total_bytes / self.archive_bytes
        if self.total_bytes > lim.ratio_floor_bytes and ratio > lim.max_ratio:
            raise UserInputError(f"{where}: expands {ratio:.0f}x its packed size (zip bomb?); max {lim.max_ratio:g}x")


def _safe_name(name: str, archive_name: str, *, what: str = "member") -> str:
    """The member path as a clean relative POSIX path, or UserInputError if it could escape."""
    where = f"archive {archive_name}: {what} {name!r}"
    if not name or "\x00" in name:
        raise UserInputError(f"{where}: empty or NUL in the name")
    if name.startswith(("/", "\\")) or PureWindowsPath(name).drive:
        raise UserInputError(f"{where}: absolute path; refusing to extract")
    parts = [p for p in name.replace("\\", "/").split("/") if p not in ("", ".")]
    if ".." in parts:
        raise UserInputError(f"{where}: '..' in the path would write outside the extraction directory")
    if not parts:
        raise UserInputError(f"{where}: names the extraction directory itself")
    return PurePosixPath(*parts).as_posix()


def _check_tar_member(member: tarfile.TarInfo, budget: _Budget) -> None:
    arch = budget.archive_name
    name = _safe_name(member.name, arch)
    if member.issym():
        target = member.linkname
        if not target or target.startswith(("/", "\\")) or ".." in target.replace("\\", "/").split("/"):
            raise UserInputError(
                f"archive {arch}: symlink {name!r} -> {target!r} may point outside the archive; "
                f"only relative links without '..' are allowed"
            )
    elif member.islnk():
        _safe_name(member.linkname, arch, what=f"hard link {name!r} to")
    elif not (member.isreg() or member.isdir()):
        raise UserInputError(f"archive {arch}: member {name!r} is a device file or FIFO; refusing to extract")
    budget.add(name, member.size if member.isreg() else 0)


def _extract_tar(archive: Path, dest: Path, budget: _Budget) -> None:
    try:
        with tarfile.open(archive, "r:*") as tar:
            for member in tar:  # one pass: each member is checked, then written
                _check_tar_member(member, budget)
                if _HAS_DATA_FILTER:
                    tar.extract(member, dest, filter="data")
                else:  # Python < 3.11.4: our checks above are the whole defence
                    tar.extract(member, dest, set_attrs=False)
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise UserInputError(f"archive {archive.name}: cannot extract: {exc}") from exc


def _check_zip_member(info: zipfile.ZipInfo, budget: _Budget) -> str:
    arch = budget.archive_name
    name = _safe_name(info.filename, arch)
    mode = info.external_attr >> 16  # Unix mode bits, when the zip was made on Unix
    if stat.S_ISLNK(mode):
        raise UserInputError(f"archive {arch}: member {name!r} is a symlink; zips with links are not supported")
    if stat.S_IFMT(mode) not in (0, stat.S_IFREG, stat.S_IFDIR):
        raise UserInputError(f"archive {arch}: member {name!r} is a device file or FIFO; refusing to extract")
    if info.flag_bits & 0x1:
        raise UserInputError(f"archive {arch}: member {name!r} is encrypted")
    budget.add(name, 0 if info.is_dir() else info.file_size)
    return name


def _extract_zip(archive: Path, dest: Path, budget: _Budget) -> None:
    try:
        with zipfile.ZipFile(archive) as zf:
            for info in zf.infolist():
                name = _check_zip_member(info, budget)
                target = dest / name
                if info.is_dir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                # zipfile stops at the declared file_size and checks the CRC, so the
                # budget above (from declared sizes) bounds what is really written.
                with zf.open(info) as src, open(target, "wb") as out:
                    shutil.copyfileobj(src, out, _COPY_CHUNK_BYTES)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, OSError) as exc:
        raise UserInputError(f"archive {archive.name}: cannot extract: {exc}") from exc
