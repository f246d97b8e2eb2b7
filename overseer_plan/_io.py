"""Reading the files users hand us, and writing ours atomically.

Writes go to a temporary file, fsync, rename: a crash or a full disk leaves either the old
file or the new one, never half of one. Reads and path checks of user files raise
`UserInputError` with one line naming the file, never a bare OSError or UnicodeDecodeError.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

from overseer_plan.errors import UserInputError


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Replace `path` with `data` atomically (same-directory temp file + os.replace)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    fsync_dir(path.parent)


def atomic_write_text(path: Path, text: str) -> None:
    """Text version of `atomic_write_bytes` (UTF-8)."""
    atomic_write_bytes(path, text.encode("utf-8"))


def fsync_dir(path: Path) -> None:
    """fsync a directory so a rename inside it survives a power cut (no-op where unsupported)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def read_user_text(path: Path, *, what: str, hint: str) -> str:
    """The UTF-8 text of a file the user named; `what` names it ('--hardware hw.json'), `hint` says what to do.

    Raises:
        UserInputError: missing, a directory, unreadable, or not UTF-8 text (e.g. a binary file).
    """
    try:
        return Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise UserInputError(f"{what}: not a UTF-8 text file (undecodable byte at offset {e.start}); {hint}") from None
    except OSError as e:
        raise UserInputError(f"{what}: cannot read it ({e.strerror or e}); {hint}") from None


def check_output_file(path: Path, *, flag: str) -> None:
    """Fail before any work when `path` cannot be written as a file (atomic_write creates missing parents).

    Raises:
        UserInputError: `path` is a directory, or a file stands where one of its parent directories should be.
    """
    path = Path(path)
    if path.is_dir():  # also `-o ""`, which the shell hands over as '.'
        raise UserInputError(f"{flag} {path}: is a directory; name a file inside it, e.g. {path / 'out.yaml'}")
    _check_parents(path.parent, flag=flag, shown=path)


def check_dir_option(path: Path, *, flag: str) -> None:
    """Fail when a directory option names a file, or a path under a file (a missing directory is fine: it is created).

    Raises:
        UserInputError: naming the flag and the file in the way.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UserInputError(f"{flag} {path}: is a file, not a directory; pass a directory (a missing one is created)")
    _check_parents(path.parent, flag=flag, shown=path)


def _check_parents(parent: Path, *, flag: str, shown: Path) -> None:
    for p in (parent, *parent.parents):
        if p.exists():
            if not p.is_dir():
                raise UserInputError(f"{flag} {shown}: {p} is a file, so no directory can be made there; pick another path")
            return


def cache_root() -> Path:
    """Overseer's per-user cache: $OVERSEER_CACHE_DIR, else ~/.cache/overseer (tokens/, data/, calibration)."""
    env = os.environ.get("OVERSEER_CACHE_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "overseer"


def hash_file(path: Path, hasher: Any = None) -> Any:
    """Feed a file into `hasher` (a new sha256 by default) in 1 MiB reads, so memory stays flat."""
    import hashlib

    hasher = hasher if hasher is not None else hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            hasher.update(block)
    return hasher
