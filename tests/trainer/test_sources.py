"""trainer/sources.py: local data and downloadable sources resolved to local files with content hashes."""

from __future__ import annotations

import json
import socket
import sys

import pytest
from _loopback import sha256_hex as _sha
from _loopback import targz as _targz

from overseer_plan.config import TrainingConfig
from overseer_plan.errors import UserInputError
from trainer.corpus import Source
from trainer.sources import ContentHasher, hf_dataset_dir, local_paths, resolve_sources


def _config(tmp_path, **kw) -> TrainingConfig:
    return TrainingConfig(output_dir=str(tmp_path / "run"), **kw)






def test_local_files_dirs_and_jsonl_resolve_with_content_hashes_and_duplicates_count_once(tmp_path):
    d = tmp_path / "notes"
    (d / "sub").mkdir(parents=True)
    (d / "a.md").write_text("# a\nbody\n")
    (d / "sub" / "b.txt").write_text("bee\n")
    (d / "copy-of-a.md").write_text("# a\nbody\n")  # same bytes as a.md: trained once
    (d / "skip.py").write_text("print()\n")
    rows = tmp_path / "rows.jsonl"
    rows.write_text(json.dumps({"text": "row"}) + "\n")
    got = resolve_sources(_config(tmp_path, data=[str(d), str(rows)]), download=False, cache_dir=tmp_path / "c")
    assert [(r.path.name, r.kind) for r in got] == [("a.md", "text"), ("b.txt", "text"), ("rows.jsonl", "jsonl")]
    assert got[0].sha256 == _sha(b"# a\nbody\n") and got[0].size_bytes == 9 and got[0].origin == str(d)
    assert got[2].origin == str(rows)


def test_no_data_at_all_resolves_to_nothing_for_the_embedded_default(tmp_path):
    assert resolve_sources(_config(tmp_path), download=False, cache_dir=tmp_path / "c") == []


def test_missing_local_path_is_a_one_line_error(tmp_path):
    with pytest.raises(UserInputError, match="no such file or directory"):
        resolve_sources(_config(tmp_path, data=[str(tmp_path / "nope")]), download=False)


def test_hasher_sees_a_changed_file_and_a_saved_dataset_is_one_input(tmp_path):
    f = tmp_path / "a.txt"
    f.write_text("one\n")
    hasher = ContentHasher()
    first, _ = hasher.hash(Source(f, "text"))
    f.write_text("two two\n")
    assert hasher.hash(Source(f, "text")) == (_sha(b"two two\n"), 8)
    assert first == _sha(b"one\n")
    saved = tmp_path / "saved"
    saved.mkdir()
    for name in ("dataset_info.json", "state.json", "data-00000-of-00001.arrow"):
        (saved / name).write_text(name)
    (got,) = resolve_sources(_config(tmp_path, data=[str(saved)]), download=False)
    assert got.kind == "hf-dataset" and got.sha256 == Source(saved, "hf-dataset").fingerprint()


def test_url_file_and_archive_download_into_the_cache(loopback_server, tmp_path):
    text = b"downloaded line\n" * 50
    file_url = loopback_server.add("/corpus.txt", body=text, etag='"f1"')
    tar_url = loopback_server.add("/bundle.tar.gz", body=_targz({"x/a.txt": b"aaa\n", "x/b.md": b"bbb\n"}), etag='"t1"')
    cfg = _config(tmp_path, data_sources=[file_url, tar_url])
    got = resolve_sources(cfg, download=True, cache_dir=tmp_path / "cache")
    assert [(r.path.name, r.sha256, r.origin) for r in got] == [
        ("corpus.txt", _sha(text), file_url), ("a.txt", _sha(b"aaa\n"), tar_url), ("b.md", _sha(b"bbb\n"), tar_url)]
    assert all(r.path.is_relative_to((tmp_path / "cache").resolve()) for r in got)
    # Without --download-data the same sources come from the cache, with no request at all.
    before = len(loopback_server.requests)
    again = resolve_sources(cfg, download=False, cache_dir=tmp_path / "cache")
    assert again == got and len(loopback_server.requests) == before


def test_refresh_asks_the_server_with_a_conditional_request(loopback_server, tmp_path):
    url = loopback_server.add("/corpus.txt", body=b"v1 text\n", etag='"v1"')
    cfg = _config(tmp_path, data_sources=[url])
    resolve_sources(cfg, download=True, cache_dir=tmp_path / "cache")
    (got,) = resolve_sources(cfg, download=True, cache_dir=tmp_path / "cache")
    assert loopback_server.headers_for("/corpus.txt")[-1].get("If-None-Match") == '"v1"'
    assert got.sha256 == _sha(b"v1 text\n")
    pairs = local_paths(cfg, download=True, cache_dir=tmp_path / "cache", refresh=False)
    assert pairs[0][0] == url and pairs[0][1].endswith("corpus.txt")


def test_uncached_url_without_download_says_to_pass_download_data(tmp_path):
    cfg = _config(tmp_path, data_sources=["http://127.0.0.1:9/never.txt"])
    with pytest.raises(UserInputError, match="--download-data"):
        resolve_sources(cfg, download=False, cache_dir=tmp_path / "cache")


def test_offline_and_http_errors_are_one_line_user_errors(loopback_server, tmp_path):
    with socket.socket() as sock:  # a port with no listener
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(UserInputError, match="connection refused") as refused:
        resolve_sources(_config(tmp_path, data_sources=[f"http://127.0.0.1:{port}/a.txt"]), download=True,
                        cache_dir=tmp_path / "cache")
    url = loopback_server.add("/gone.txt", status=404)
    with pytest.raises(UserInputError, match="404") as missing:
        resolve_sources(_config(tmp_path, data_sources=[url]), download=True, cache_dir=tmp_path / "cache")
    for err in (refused, missing):
        assert "\n" not in str(err.value)


@pytest.mark.parametrize("entry", ["ftp://example.org/a.txt", "not a source!"])
def test_unsupported_entries_are_refused(tmp_path, entry):
    with pytest.raises(UserInputError, match="data source"):
        resolve_sources(_config(tmp_path, data_sources=[entry]), download=True, cache_dir=tmp_path / "cache")


def test_hf_dataset_id_without_datasets_explains_the_offline_route(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # import datasets -> ImportError
    cfg = _config(tmp_path, data_sources=["someone/corpus"])
    with pytest.raises(UserInputError, match=r"pip install datasets.*save_to_disk.*--data") as err:
        resolve_sources(cfg, download=True, cache_dir=tmp_path / "cache")
    assert "\n" not in str(err.value)
    with pytest.raises(UserInputError, match="--download-data"):
        resolve_sources(cfg, download=False, cache_dir=tmp_path / "cache")


def test_hf_dataset_id_saved_by_an_earlier_download_is_used_offline(tmp_path):
    saved = hf_dataset_dir("someone/corpus", tmp_path / "cache")
    saved.mkdir(parents=True)
    for name in ("dataset_info.json", "state.json"):
        (saved / name).write_text("{}")
    (got,) = resolve_sources(_config(tmp_path, data_sources=["someone/corpus"]), download=False,
                             cache_dir=tmp_path / "cache")
    assert (got.path, got.kind, got.origin) == (saved, "hf-dataset", "someone/corpus")
