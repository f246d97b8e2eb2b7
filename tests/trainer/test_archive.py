"""trainer/archive.py: good archives extract; hostile ones are refused with nothing written."""

from __future__ import annotations

import io
import tarfile
import zipfile
from pathlib import Path

import pytest

from overseer_plan.errors import UserInputError
from trainer.archive import ArchiveLimits, archive_kind, archive_stem, extract_archive


def _tar_bytes(members: list[tuple[tarfile.TarInfo, bytes | None]], mode: str = "w:gz") -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=mode) as tar:
        for info, data in members:
            if data is not None:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def _file(name: str, data: bytes) -> tuple[tarfile.TarInfo, bytes]:
    return tarfile.TarInfo(name), data


def _link(name: str, target: str, kind: bytes) -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, target
    return info, None


def _zip_bytes(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return buf.getvalue()


def _write(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / "in" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def _assert_nothing_written(tmp_path: Path, dest: Path) -> None:
    assert not dest.exists()
    assert not list(dest.parent.glob(".extract-*"))
    assert not list(tmp_path.rglob("evil*")), "a member escaped the extraction directory"


def test_good_tar_gz_extracts_with_a_downward_symlink(tmp_path):
    data = _tar_bytes([
        _file("corpus/a.txt", b"hello"),
        _file("corpus/sub/b.jsonl", b'{"text": "x"}\n'),
        _link("corpus/latest.txt", "a.txt", tarfile.SYMTYPE),
    ])
    dest = tmp_path / "out" / "corpus"
    files = extract_archive(_write(tmp_path, "c.tar.gz", data), dest)
    assert files == ["corpus/a.txt", "corpus/latest.txt", "corpus/sub/b.jsonl"]
    assert (dest / "corpus" / "latest.txt").read_bytes() == b"hello"
    assert not list(dest.parent.glob(".extract-*"))


def test_good_zip_extracts(tmp_path):
    archive = _write(tmp_path, "c.zip", _zip_bytes({"d/a.txt": b"one", "b.md": b"# two"}))
    dest = tmp_path / "out" / "c"
    assert extract_archive(archive, dest) == ["b.md", "d/a.txt"]
    assert (dest / "d" / "a.txt").read_bytes() == b"one"


@pytest.mark.parametrize(
    ("member", "why"),
    [
        (_file("../evil.txt", b"x"), "'..'"),
        (_file("ok/../../evil.txt", b"x"), "'..'"),
        (_file("/tmp/evil_abs.txt", b"x"), "absolute path"),
        (_link("evil_link", "/etc", tarfile.SYMTYPE), "symlink"),
        (_link("evil_link", "../../outside", tarfile.SYMTYPE), "symlink"),
        (_link("s/evil_link", "../x", tarfile.SYMTYPE), "symlink"),
        (_link("evil_hard", "../../outside.txt", tarfile.LNKTYPE), "'..'"),
        (_link("evil_hard", "/etc/passwd", tarfile.LNKTYPE), "absolute path"),
        (_link("evil_dev", "", tarfile.CHRTYPE), "device file"),
        (_link("evil_fifo", "", tarfile.FIFOTYPE), "device file"),
    ],
    ids=["dotdot", "inner-dotdot", "absolute", "symlink-abs", "symlink-up", "symlink-chain",
         "hardlink-up", "hardlink-abs", "char-device", "fifo"],
)
def test_hostile_tar_member_is_refused_and_nothing_is_written(tmp_path, member, why):
    data = _tar_bytes([_file("good.txt", b"fine"), member])
    dest = tmp_path / "out" / "x"
    with pytest.raises(UserInputError, match=why) as err:
        extract_archive(_write(tmp_path, "x.tar.gz", data), dest)
    assert repr(member[0].name) in str(err.value)
    assert "\n" not in str(err.value)
    _assert_nothing_written(tmp_path, dest)


def test_hostile_zip_member_is_refused(tmp_path):
    archive = _write(tmp_path, "z.zip", _zip_bytes({"ok.txt": b"a", "../evil.txt": b"b"}))
    dest = tmp_path / "out" / "z"
    with pytest.raises(UserInputError, match=r"'\.\./evil\.txt'"):
        extract_archive(archive, dest)
    _assert_nothing_written(tmp_path, dest)


def test_zip_symlink_is_refused(tmp_path):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        info = zipfile.ZipInfo("evil_link")
        info.external_attr = (0o120777 << 16)  # S_IFLNK
        zf.writestr(info, "/etc/passwd")
    dest = tmp_path / "out" / "z"
    with pytest.raises(UserInputError, match="symlink"):
        extract_archive(_write(tmp_path, "z.zip", buf.getvalue()), dest)
    _assert_nothing_written(tmp_path, dest)


def test_too_many_files_is_refused(tmp_path):
    data = _tar_bytes([_file(f"f{i}.txt", b"x") for i in range(6)], mode="w")
    dest = tmp_path / "out" / "many"
    with pytest.raises(UserInputError, match="more than 5 entries"):
        extract_archive(_write(tmp_path, "m.tar", data), dest, limits=ArchiveLimits(max_files=5))
    _assert_nothing_written(tmp_path, dest)


def test_too_large_total_is_refused(tmp_path):
    archive = _write(tmp_path, "big.zip", _zip_bytes({"a.txt": b"a" * 600, "b.txt": b"b" * 600}))
    dest = tmp_path / "out" / "big"
    with pytest.raises(UserInputError, match="'b.txt'.*1000 bytes"):
        extract_archive(archive, dest, limits=ArchiveLimits(max_total_bytes=1000))
    _assert_nothing_written(tmp_path, dest)


def test_zip_bomb_ratio_is_refused(tmp_path):
    archive = _write(tmp_path, "bomb.zip", _zip_bytes({"zeros.txt": bytes(4 * 1024 * 1024)}))
    dest = tmp_path / "out" / "bomb"
    with pytest.raises(UserInputError, match="zip bomb"):
        extract_archive(archive, dest, limits=ArchiveLimits(ratio_floor_bytes=1024 * 1024))
    _assert_nothing_written(tmp_path, dest)


def test_corrupt_archive_is_a_user_error(tmp_path):
    dest = tmp_path / "out" / "bad"
    with pytest.raises(UserInputError, match="cannot extract"):
        extract_archive(_write(tmp_path, "bad.tar.gz", b"\x1f\x8b not really gzip"), dest)
    _assert_nothing_written(tmp_path, dest)


@pytest.mark.parametrize(
    ("name", "kind", "stem"),
    [("c.tar.gz", "tar", "c"), ("C.TGZ", "tar", "C"), ("d.tar", "tar", "d"), ("e.zip", "zip", "e"),
     ("f.tar.xz", "tar", "f"), ("g.jsonl", None, "g.jsonl"), ("h.gz", None, "h.gz")],
)
def test_archive_kind_and_stem(name, kind, stem):
    assert archive_kind(name) == kind
    assert archive_stem(name) == stem
