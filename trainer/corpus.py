"""Where training text comes from: user files and directories, or the embedded default corpus.

Documents are yielded one at a time (large text files in ~1 MiB pieces cut at line ends), so
nothing here holds more than one piece of the corpus in memory.

The embedded default corpus is text every Python installation carries: the standard library's own
top-level `.py` modules (`sysconfig.get_paths()['stdlib']`), taken in sorted name order until a
byte budget is reached. It needs no download and is the same on every machine with the same
Python version (other versions give a similar, not identical, corpus).
"""

from __future__ import annotations

import hashlib
import json
import sysconfig
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from overseer_plan._io import hash_file
from overseer_plan.errors import UserInputError

TEXT_SUFFIXES = (".txt", ".md", ".markdown", ".rst", ".text")
JSONL_SUFFIXES = (".jsonl", ".ndjson")
_PIECE_BYTES = 1 << 20  # read big text files in 1 MiB pieces to bound memory
EMBEDDED_CORPUS_BYTES = 3 * 1024 * 1024
"""Default size of the embedded corpus (3 MiB of stdlib source, ~3M byte tokens)."""


@dataclass(frozen=True)
class Source:
    """One input file (or saved HF dataset directory) and how to read it."""

    path: Path
    kind: str
    """'text', 'jsonl' or 'hf-dataset'."""

    def fingerprint(self) -> str:
        """Content hash (sha256 of the bytes; for a saved dataset, of its data files)."""
        h = hashlib.sha256()
        files = sorted(self.path.rglob("*")) if self.path.is_dir() else [self.path]
        for f in files:
            if f.is_file():
                h.update(f.name.encode())
                hash_file(f, h)
        return h.hexdigest()


def embedded_sources(max_bytes: int = EMBEDDED_CORPUS_BYTES) -> list[Source]:
    """The standard library's top-level .py files in sorted order, up to `max_bytes` in total."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    picked, total = [], 0
    for f in sorted(stdlib.glob("*.py")):
        size = f.stat().st_size
        if size == 0 or total + size > max_bytes:
            continue
        picked.append(Source(f, "text"))
        total += size
    if not picked:
        raise UserInputError(f"the embedded corpus is empty: no .py files under {stdlib}; pass --data PATH")
    return picked


def check_paths_exist(paths: list[str]) -> None:
    """Raise one UserInputError naming every path in `paths` that does not exist."""
    missing = [raw for raw in paths if not Path(raw).expanduser().exists()]
    if missing:
        raise UserInputError(f"--data {', '.join(missing)}: no such file or directory; give existing text files or "
                             "folders")


def find_sources(paths: list[str]) -> list[Source]:
    """Every readable input under `paths`, in a deterministic order.

    Raises:
        UserInputError: paths do not exist (all of them named), or nothing usable was found.
    """
    check_paths_exist(paths)
    out: list[Source] = []
    for raw in paths:
        p = Path(raw).expanduser()
        if p.is_dir() and _is_saved_dataset(p):
            out.append(Source(p, "hf-dataset"))
        elif p.is_dir():
            out.extend(_walk(p))
        elif not p.is_file():  # /dev/zero, a pipe: endless or readable once, and hashed before it is read
            raise UserInputError(f"--data {raw}: not a regular file or a directory (a device or a pipe?); give a "
                                 "text file or a directory")
        else:
            out.append(Source(p, "jsonl" if p.suffix.lower() in JSONL_SUFFIXES else "text"))
    if not out:
        raise UserInputError(f"--data {' '.join(paths)}: no text files found (looked for {', '.join(TEXT_SUFFIXES + JSONL_SUFFIXES)})")
    return out


def _walk(root: Path) -> list[Source]:
    found = []
    for f in sorted(root.rglob("*")):
        if not f.is_file() or any(part.startswith(".") for part in f.relative_to(root).parts):
            continue
        suffix = f.suffix.lower()
        if suffix in TEXT_SUFFIXES:
            found.append(Source(f, "text"))
        elif suffix in JSONL_SUFFIXES:
            found.append(Source(f, "jsonl"))
    return found


def _is_saved_dataset(p: Path) -> bool:
    # `Dataset.save_to_disk` writes these two files next to the Arrow shards.
    return (p / "dataset_info.json").is_file() and (p / "state.json").is_file()


def iter_documents(source: Source) -> Iterator[str]:
    """The documents of one source, one at a time.

    Raises:
        UserInputError: undecodable JSONL, a JSONL line without 'text', or a saved dataset without `datasets`.
    """
    if source.kind == "text":
        yield from _iter_text(source.path)
    elif source.kind == "jsonl":
        yield from _iter_jsonl(source.path)
    else:
        yield from _iter_saved_dataset(source.path)


def _iter_text(path: Path) -> Iterator[str]:
    # A file is one document; big files come in pieces cut at a newline so no piece splits a line.
    with open(path, encoding="utf-8", errors="replace") as fh:
        carry = ""
        while piece := fh.read(_PIECE_BYTES):
            piece = carry + piece
            cut = piece.rfind("\n") + 1
            if cut == 0:
                carry = piece
                continue
            carry = piece[cut:]
            yield piece[:cut]
        if carry:
            yield carry


def _iter_jsonl(path: Path) -> Iterator[str]:
    with open(path, encoding="utf-8", errors="replace") as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise UserInputError(f"--data {path}: line {n} is not valid JSON ({e.msg})") from None
            if not isinstance(row, dict) or not isinstance(row.get("text"), str):
                raise UserInputError(f"--data {path}: line {n} has no string 'text' field")
            yield row["text"]


def _iter_saved_dataset(path: Path) -> Iterator[str]:
    try:
        import datasets
    except ImportError:
        raise UserInputError(f"--data {path}: a saved HF dataset needs `pip install datasets`") from None
    ds = datasets.load_from_disk(str(path))
    if isinstance(ds, datasets.DatasetDict):
        ds = ds["train"] if "train" in ds else next(iter(ds.values()))
    if "text" not in ds.column_names:
        raise UserInputError(f"--data {path}: the dataset has no 'text' column (columns: {ds.column_names})")
    for row in ds.select_columns(["text"]):
        yield row["text"]
