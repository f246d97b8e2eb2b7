"""trainer/download.py against a real HTTP server on 127.0.0.1 (see `_loopback.py`)."""

from __future__ import annotations

import hashlib
import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
from _loopback import targz as _targz

from overseer_plan.errors import UserInputError
from trainer._http import describe_network_error
from trainer.download import check_for_update, download

REPO_ROOT = Path(__file__).resolve().parents[2]
BODY = b"".join(b'{"text": "line %d of the fresh corpus"}\n' % i for i in range(4000))  # ~160 KB
BODY_SHA = hashlib.sha256(BODY).hexdigest()


def _manifest(cache: Path) -> dict:
    path = cache / "manifest.json"
    return json.loads(path.read_text())["entries"] if path.exists() else {}


def _parts(cache: Path) -> list[Path]:
    return sorted(cache.rglob("*.part"))


def _finished_files(cache: Path, name: str) -> list[Path]:
    return [p for p in cache.rglob(name) if p.is_file()]




# --- good files and archives ------------------------------------------------------------


def test_plain_file_is_downloaded_recorded_and_then_reused(loopback_server, tmp_path):
    url = loopback_server.add("/data/corpus.jsonl", body=BODY, etag='"v1"')
    seen = []
    result = download(url, tmp_path, expected_sha256=BODY_SHA, progress=lambda d, t: seen.append((d, t)))
    assert result.path.read_bytes() == BODY
    assert (result.sha256, result.size_bytes, result.etag) == (BODY_SHA, len(BODY), '"v1"')
    assert not result.from_cache and not result.extracted
    assert seen[-1] == (len(BODY), len(BODY))
    entry = _manifest(tmp_path)[url]
    assert entry["sha256"] == BODY_SHA and entry["size_bytes"] == len(BODY) and entry["downloaded_at"]
    assert _parts(tmp_path) == []

    again = download(url, tmp_path)
    assert again.from_cache and again.path == result.path
    assert len(loopback_server.headers_for("/data/corpus.jsonl")) == 1, "a cached copy must not be re-fetched"


def test_sha_mismatch_is_refused_and_nothing_is_promoted(loopback_server, tmp_path):
    url = loopback_server.add("/corpus.txt", body=BODY)
    with pytest.raises(UserInputError, match="sha256 mismatch") as err:
        download(url, tmp_path, expected_sha256="0" * 64)
    assert BODY_SHA in str(err.value)
    assert _finished_files(tmp_path, "corpus.txt") == [] and _parts(tmp_path) == []
    assert url not in _manifest(tmp_path)


def test_tar_gz_archive_is_extracted(loopback_server, tmp_path):
    payload = _targz({"train/a.txt": b"alpha", "train/b.jsonl": b'{"text": "b"}\n'})
    url = loopback_server.add("/sets/corpus.tar.gz", body=payload)
    result = download(url, tmp_path)
    assert result.extracted and result.path.is_dir() and result.path.name == "corpus"
    assert result.files == ["train/a.txt", "train/b.jsonl"]
    assert (result.path / "train" / "a.txt").read_bytes() == b"alpha"
    assert result.sha256 == hashlib.sha256(payload).hexdigest()
    assert download(url, tmp_path).from_cache


def test_zip_archive_is_extracted(loopback_server, tmp_path):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("notes.md", "# notes")
        zf.writestr("d/data.json", "[1, 2]")
    url = loopback_server.add("/corpus.zip", body=buf.getvalue())
    result = download(url, tmp_path)
    assert result.files == ["d/data.json", "notes.md"]
    assert (result.path / "notes.md").read_text() == "# notes"


def test_malicious_archive_is_refused_and_not_recorded(loopback_server, tmp_path):
    url = loopback_server.add("/evil.tar.gz", body=_targz({"../evil.txt": b"pwned"}))
    with pytest.raises(UserInputError, match=r"'\.\./evil\.txt'"):
        download(url, tmp_path / "cache")
    assert not list(tmp_path.rglob("evil.txt"))
    assert _finished_files(tmp_path, "evil.tar.gz") == []
    assert url not in _manifest(tmp_path / "cache")


# --- interrupted transfers and resume -----------------------------------------------------


def test_truncated_transfer_fails_then_resumes_with_range(loopback_server, tmp_path):
    url = loopback_server.add("/big.jsonl", body=BODY, etag='"v1"', truncate_at=len(BODY) // 2)
    with pytest.raises(UserInputError, match=f"closed after {len(BODY) // 2} of {len(BODY)} bytes"):
        download(url, tmp_path)
    assert _finished_files(tmp_path, "big.jsonl") == [] and url not in _manifest(tmp_path)
    assert [p.stat().st_size for p in _parts(tmp_path)] == [len(BODY) // 2]

    loopback_server.routes["/big.jsonl"].truncate_at = None
    result = download(url, tmp_path, expected_sha256=BODY_SHA)
    assert result.sha256 == BODY_SHA and result.path.read_bytes() == BODY
    last = loopback_server.headers_for("/big.jsonl")[-1]
    assert last["Range"] == f"bytes={len(BODY) // 2}-" and last["If-Range"] == '"v1"'
    assert _parts(tmp_path) == []


@pytest.mark.parametrize(
    "misbehaviour",
    [{"ranges": False}, {"wrong_range_start": True}],
    ids=["server-ignores-range", "content-range-start-mismatch"],
)
def test_resume_restarts_from_zero_when_the_server_will_not_resume(loopback_server, tmp_path, misbehaviour):
    url = loopback_server.add("/r.txt", body=BODY, etag='"v1"', truncate_at=1000)
    with pytest.raises(UserInputError, match="closed after"):
        download(url, tmp_path)
    route = loopback_server.routes["/r.txt"]
    route.truncate_at = None
    for key, value in misbehaviour.items():
        setattr(route, key, value)
    assert download(url, tmp_path, expected_sha256=BODY_SHA).sha256 == BODY_SHA


def test_resume_after_remote_change_takes_the_new_version_whole(loopback_server, tmp_path):
    url = loopback_server.add("/c.txt", body=BODY, etag='"v1"', truncate_at=1000)
    with pytest.raises(UserInputError):
        download(url, tmp_path)
    new_body = BODY.replace(b"fresh", b"newer")
    loopback_server.add("/c.txt", body=new_body, etag='"v2"')  # If-Range no longer matches -> 200
    result = download(url, tmp_path)
    assert result.sha256 == hashlib.sha256(new_body).hexdigest() and result.etag == '"v2"'


def test_kill_9_mid_download_leaves_no_final_file_and_a_rerun_resumes(loopback_server, tmp_path):
    body = os.urandom(2 * 1024 * 1024)
    url = loopback_server.add("/slow.bin.txt", body=body, etag='"k1"', drip_s=0.02)  # ~2.6 s to send
    cache = tmp_path / "cache"
    code = f"from pathlib import Path; from trainer.download import download; download({url!r}, Path({str(cache)!r}))"
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=REPO_ROOT, env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})
    try:
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and sum(p.stat().st_size for p in _parts(cache)) < 64 * 1024:
            assert proc.poll() is None, "the download finished or died before it could be killed"
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait(timeout=10)
    kept = sum(p.stat().st_size for p in _parts(cache))
    assert 0 < kept < len(body)
    assert _finished_files(cache, "slow.bin.txt") == [] and url not in _manifest(cache)

    loopback_server.routes["/slow.bin.txt"].drip_s = 0
    result = download(url, cache, expected_sha256=hashlib.sha256(body).hexdigest())
    assert result.path.read_bytes() == body and not result.from_cache
    assert loopback_server.headers_for("/slow.bin.txt")[-1]["Range"].startswith("bytes=")
    assert url in _manifest(cache) and _parts(cache) == []


# --- errors ------------------------------------------------------------------------------


@pytest.mark.parametrize(("status", "words"), [(404, "HTTP 404 Not Found"), (500, "HTTP 500 Internal Server Error")])
def test_http_error_status_is_named(loopback_server, tmp_path, status, words):
    url = loopback_server.add("/x.txt", status=status) if status != 404 else loopback_server.base_url + "/nope.txt"
    with pytest.raises(UserInputError, match=words) as err:
        download(url, tmp_path)
    assert "\n" not in str(err.value)
    assert _manifest(tmp_path) == {}


def test_redirect_is_followed(loopback_server, tmp_path):
    target = loopback_server.add("/real.txt", body=b"moved here")
    url = loopback_server.add("/old.txt", location=target)
    assert download(url, tmp_path).path.read_bytes() == b"moved here"


def test_redirect_loop_and_too_many_redirects_are_refused(loopback_server, tmp_path):
    loopback_server.add("/a.txt", location="/b.txt")
    url = loopback_server.add("/b.txt", location="/a.txt")
    with pytest.raises(UserInputError, match="redirect loop"):
        download(url, tmp_path)
    for i in range(5):
        loopback_server.add(f"/hop{i}.txt", location=f"/hop{i + 1}.txt")
    with pytest.raises(UserInputError, match="too many redirects"):
        download(loopback_server.base_url + "/hop0.txt", tmp_path, max_redirects=3)


def test_redirect_to_another_scheme_is_refused(loopback_server, tmp_path):
    url = loopback_server.add("/sneaky.txt", location="file:///etc/passwd")
    with pytest.raises(UserInputError, match="only http:// and https://"):
        download(url, tmp_path)


@pytest.mark.parametrize("source", ["file:///etc/passwd", "ftp://example.com/x.txt", "/local/path.txt"])
def test_other_schemes_are_refused(tmp_path, source):
    with pytest.raises(UserInputError, match="only http:// and https://"):
        download(source, tmp_path)


def test_stalled_server_times_out_quickly(loopback_server, tmp_path):
    url = loopback_server.add("/stall.txt", body=BODY, stall_s=20)
    started = time.monotonic()
    with pytest.raises(UserInputError, match="no data from .* for 1s"):
        download(url, tmp_path, timeout_s=1)
    assert time.monotonic() - started < 5
    assert _finished_files(tmp_path, "stall.txt") == []


def test_connection_refused_is_a_clear_error(tmp_path):
    with socket.socket() as sock:  # a port that was free a moment ago and has no listener now
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(UserInputError, match="connection refused"):
        download(f"http://127.0.0.1:{port}/x.txt", tmp_path, timeout_s=2)


def test_dns_failure_message_says_offline_or_mistyped():
    exc = socket.gaierror(socket.EAI_NONAME, "Name or service not known")
    message = describe_network_error("https://no-such-host.invalid/x.txt", exc, timeout_s=30)
    assert "cannot resolve host 'no-such-host.invalid'" in message and "offline" in message


def test_a_dns_lookup_that_never_answers_is_cut_off_by_the_timeout(tmp_path, monkeypatch):
    # No network here, so the resolver that hangs (a dead DNS server) is stood in for by one that sleeps.
    real = socket.getaddrinfo

    def stuck(host, *args, **kwargs):
        if host == "slow-dns.example":
            time.sleep(30)
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", stuck)
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    started = time.monotonic()
    with pytest.raises(UserInputError, match="no answer from DNS for host 'slow-dns.example' within 1s"):
        download("http://slow-dns.example/x.txt", tmp_path, timeout_s=1)
    assert time.monotonic() - started < 5
    assert _finished_files(tmp_path, "x.txt") == [] and _parts(tmp_path) == []


def test_size_cap_from_content_length_refuses_before_downloading(loopback_server, tmp_path):
    url = loopback_server.add("/huge.txt", body=BODY)
    with pytest.raises(UserInputError, match="over the 1000-byte cap"):
        download(url, tmp_path, max_bytes=1000)
    assert _parts(tmp_path) == [] and _finished_files(tmp_path, "huge.txt") == []


def test_size_cap_while_streaming_aborts(loopback_server, tmp_path):
    url = loopback_server.add("/nolength.txt", body=BODY, send_length=False)
    with pytest.raises(UserInputError, match="larger than the 50000-byte download cap"):
        download(url, tmp_path, max_bytes=50_000)
    assert _parts(tmp_path) == [] and _finished_files(tmp_path, "nolength.txt") == []


# --- continuous learning: conditional re-checks --------------------------------------------


def test_check_for_update_uses_etag_and_refresh_fetches_only_changes(loopback_server, tmp_path):
    url = loopback_server.add("/live.txt", body=BODY, etag='"v1"', last_modified="Mon, 01 Jan 2024 00:00:00 GMT")
    first = download(url, tmp_path)
    assert check_for_update(url, tmp_path, timeout_s=2) is False
    assert loopback_server.headers_for("/live.txt")[-1]["If-None-Match"] == '"v1"'
    assert download(url, tmp_path, refresh=True).from_cache  # answered by a 304

    loopback_server.add("/live.txt", body=BODY + b"more\n", etag='"v2"')
    assert check_for_update(first, tmp_path, timeout_s=2) is True
    second = download(url, tmp_path, refresh=True)
    assert not second.from_cache and second.etag == '"v2"' and second.path.read_bytes().endswith(b"more\n")
    assert not first.path.exists(), "the superseded version is removed"
    assert check_for_update(url, tmp_path, timeout_s=2) is False


def test_check_for_update_is_true_when_nothing_is_cached(loopback_server, tmp_path):
    url = loopback_server.add("/never.txt", body=b"x")
    assert check_for_update(url, tmp_path, timeout_s=2) is True
