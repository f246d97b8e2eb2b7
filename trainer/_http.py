"""HTTP transfer for `trainer.download`: open a URL, follow redirects by hand, resume into a `.part` file.

stdlib only (urllib + http.client). Redirects are followed here rather than by
urllib so that a redirect to a non-http(s) scheme, a loop and an over-long chain
are each refused with a one-line message. Every network failure becomes a
`UserInputError` naming the host and what to try.
"""

from __future__ import annotations

import hashlib
import http.client
import socket
import ssl
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urljoin, urlsplit

from pydantic import BaseModel, ConfigDict

from overseer_plan._io import atomic_write_text, hash_file
from overseer_plan.errors import UserInputError

ALLOWED_SCHEMES = ("http", "https")
_REDIRECT_STATUSES = (301, 302, 303, 307, 308)
_CHUNK_BYTES = 256 * 1024
_USER_AGENT = "overseer-download/1"


class SizeCapExceeded(UserInputError):
    """The remote file is larger than the caller's byte cap; the partial file is useless."""


def check_url(url: str, *, what: str = "data source") -> None:
    """Refuse anything but an http(s) URL with a host (file://, ftp://, bare paths, ...)."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - parsed lazily: raises ValueError for a port that is not a number
    except ValueError as e:  # e.g. "Invalid IPv6 URL" for 'https://[::1'
        raise UserInputError(f"{what} {url!r}: not a valid URL ({e}); check the address") from None
    if parts.scheme.lower() not in ALLOWED_SCHEMES or not parts.netloc:
        raise UserInputError(
            f"{what} {url!r}: only http:// and https:// URLs can be downloaded "
            f"(Hugging Face dataset ids are given without a scheme)"
        )


class _NoErrorProcessing(urllib.request.HTTPErrorProcessor):
    """Hand every status back to the caller: no automatic redirects, no HTTPError for 304/404."""

    def http_response(self, request, response):
        return response

    https_response = http_response


def looks_like_web_page(content_type: str | None, head: bytes = b"") -> bool:
    """Whether a response is an HTML page (a login, error or landing page) rather than data.

    Judged by the Content-Type header or by the first bytes of the body, since many servers send
    pages as application/octet-stream or text/plain.
    """
    if content_type and content_type.split(";")[0].strip().lower() in ("text/html", "application/xhtml+xml"):
        return True
    start = head.lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    return start.startswith((b"<!doctype html", b"<html"))


def web_page_error(url: str) -> UserInputError:
    return UserInputError(f"{url} returned a web page (HTML), not data: check the URL (a login page or a link to a "
                          "page about the file rather than the file itself?)")


def describe_network_error(url: str, exc: BaseException, *, timeout_s: float) -> str:
    """One line saying what went wrong talking to `url` and what to try."""
    host = urlsplit(url).netloc
    reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
    if isinstance(reason, socket.gaierror):
        return f"cannot resolve host {host!r} ({reason.strerror}); are you offline, or is the URL mistyped?"
    if isinstance(reason, ConnectionRefusedError):
        return f"connection refused by {host}; is the server up and the URL right?"
    if isinstance(reason, TimeoutError) or "timed out" in str(reason):
        return f"no data from {host} for {timeout_s:g}s (server slow or stalled); try again or raise the timeout"
    if isinstance(reason, ssl.SSLError):
        return f"TLS error talking to {host}: {reason}"
    if isinstance(reason, http.client.IncompleteRead):
        return f"connection to {host} closed mid-transfer"
    if isinstance(reason, (http.client.HTTPException, OSError)):
        return f"network error talking to {host}: {type(reason).__name__}: {reason}".rstrip(": ")
    return f"error talking to {host}: {reason}"


def describe_status(url: str, status: int, reason: str) -> str:
    """One line for an HTTP error (or unexpected) status, with a hint for the common ones."""
    if status < 400:
        return f"unexpected HTTP {status} {reason} for {url}"
    hint = {404: "check the URL", 401: "the URL needs credentials", 403: "access is denied"}.get(status)
    if hint is None:
        hint = "server error; try again later" if status >= 500 else "the server refused the request"
    return f"HTTP {status} {reason} for {url}: {hint}".replace("  ", " ")


def _resolve_within(url: str, timeout_s: float) -> None:
    """Resolve the URL's host in a helper thread, giving up after `timeout_s`.

    The socket timeout urllib takes does not cover the name lookup: getaddrinfo blocks for as long
    as the system resolver likes (tens of seconds to minutes with a dead DNS server). Skipped when a
    proxy serves the URL (the proxy resolves the name, and this machine may not be able to).
    """
    import threading

    parts = urlsplit(url)
    host = parts.hostname
    if not host or urllib.request.getproxies().get(parts.scheme) and not urllib.request.proxy_bypass(host):
        return
    outcome: list[BaseException | None] = []

    def lookup() -> None:
        try:
            socket.getaddrinfo(host, parts.port or (443 if parts.scheme == "https" else 80), type=socket.SOCK_STREAM)
            outcome.append(None)
        except OSError as exc:
            outcome.append(exc)

    worker = threading.Thread(target=lookup, name="overseer-dns", daemon=True)
    worker.start()
    worker.join(timeout_s)
    if not outcome:
        raise UserInputError(f"no answer from DNS for host {host!r} within {timeout_s:g}s; check the network "
                             "connection or the DNS settings, or raise the timeout")
    if outcome[0] is not None:
        raise UserInputError(describe_network_error(url, outcome[0], timeout_s=timeout_s)) from outcome[0]


def _open_once(url: str, headers: dict[str, str], timeout_s: float) -> http.client.HTTPResponse:
    _resolve_within(url, timeout_s)
    request = urllib.request.Request(url, headers={"User-Agent": _USER_AGENT, **headers})
    try:
        # A fresh opener per request so proxy settings are read from the environment now.
        return urllib.request.build_opener(_NoErrorProcessing).open(request, timeout=timeout_s)
    except (urllib.error.URLError, http.client.HTTPException, OSError) as exc:
        raise UserInputError(describe_network_error(url, exc, timeout_s=timeout_s)) from exc


def open_url(
    url: str, *, headers: dict[str, str] | None = None, timeout_s: float, max_redirects: int
) -> http.client.HTTPResponse:
    """GET `url`, following at most `max_redirects` http(s) redirects; return the final response.

    The caller closes the response. Status codes other than redirects are returned as they are.
    """
    check_url(url)
    start, seen = url, {url}
    for _ in range(max_redirects + 1):
        response = _open_once(url, headers or {}, timeout_s)
        if response.status not in _REDIRECT_STATUSES:
            return response
        location = response.headers.get("Location")
        response.close()
        if not location:
            raise UserInputError(f"HTTP {response.status} redirect from {url} has no Location header")
        url = urljoin(url, location)
        check_url(url, what=f"redirect target from {start}")
        if url in seen:
            raise UserInputError(f"redirect loop: {url} redirects back to itself (starting at {start})")
        seen.add(url)
    raise UserInputError(f"too many redirects (more than {max_redirects}) starting at {start}")


@dataclass
class Validators:
    """What identifies one version of a remote file: its ETag and Last-Modified headers."""

    etag: str | None = None
    last_modified: str | None = None

    @classmethod
    def of(cls, response: http.client.HTTPResponse) -> Validators:
        return cls(response.headers.get("ETag"), response.headers.get("Last-Modified"))

    def conditional_headers(self) -> dict[str, str]:
        """If-None-Match / If-Modified-Since, so an unchanged file costs a 304 and no body."""
        headers = {"If-None-Match": self.etag, "If-Modified-Since": self.last_modified}
        return {k: v for k, v in headers.items() if v}

    def if_range(self) -> str | None:
        """The If-Range value: a strong ETag, else Last-Modified (RFC 9110 §13.1.5)."""
        if self.etag and not self.etag.startswith("W/"):
            return self.etag
        return self.last_modified


def content_range_start_total(value: str | None) -> tuple[int, int | None] | None:
    """Parse 'bytes 100-199/200' into (100, 200); total None for '*'; None if unreadable."""
    if not value or not value.startswith("bytes "):
        return None
    span, _, total = value[6:].partition("/")
    start, _, _ = span.partition("-")
    if not start.strip().isdigit():
        return None
    return int(start), (int(total) if total.strip().isdigit() else None)


def stream_to_file(
    response: http.client.HTTPResponse,
    part: Path,
    *,
    offset: int,
    expected_total: int | None,
    max_bytes: int,
    timeout_s: float,
    on_chunk: Callable[[bytes, int], None],
) -> int:
    """Append the response body to `part` (already `offset` bytes long); return the new length.

    Raises UserInputError when the body passes `max_bytes` or ends before `expected_total`.
    Bytes already written stay in `part` so the next attempt can resume.
    """
    done = offset
    url = response.geturl()
    with open(part, "ab") as out:
        while True:
            try:
                # read1: return what has arrived instead of waiting for a full chunk,
                # so progress and the `.part` file advance steadily on a slow link.
                chunk = response.read1(_CHUNK_BYTES)
            except (http.client.HTTPException, OSError) as exc:
                msg = describe_network_error(url, exc, timeout_s=timeout_s)
                raise UserInputError(f"{msg} ({done} bytes kept; run again to resume)") from exc
            if not chunk:
                break
            done += len(chunk)
            if done > max_bytes:
                raise SizeCapExceeded(f"{url} is larger than the {max_bytes}-byte download cap; raise max_bytes")
            out.write(chunk)
            on_chunk(chunk, done)
    if expected_total is not None and done != expected_total:
        raise UserInputError(
            f"connection to {urlsplit(url).netloc} closed after {done} of {expected_total} bytes; "
            f"run again to resume"
        )
    return done


@dataclass
class Fetched:
    """A complete `.part` file: its digest, size and the version it is."""

    sha256: str
    size_bytes: int
    etag: str | None
    last_modified: str | None


class _PartMeta(BaseModel):
    """Sidecar of a `.part` file: the remote version its bytes belong to."""

    model_config = ConfigDict(extra="forbid")
    url: str
    etag: str | None = None
    last_modified: str | None = None
    total_bytes: int | None = None


class Transfer:
    """One URL's download into `<target>.part`, resuming whatever an earlier run left there.

    A `.part` is trusted only with its `.part.json` sidecar, written before the first byte;
    resuming sends Range plus If-Range, so bytes of two remote versions are never mixed.
    """

    def __init__(self, url: str, target: Path, *, max_bytes: int, timeout_s: float, max_redirects: int,
                 progress: Callable[[int, int | None], None] | None = None):
        self.url, self.target = url, target
        self.part = target.with_name(target.name + ".part")
        self.meta_path = target.with_name(target.name + ".part.json")
        self.max_bytes, self.timeout_s, self.max_redirects = max_bytes, timeout_s, max_redirects
        self.progress = progress

    def run(self, *, conditional: Validators | None = None) -> Fetched | None:
        """Fetch the whole file into `.part`; None when the `conditional` request got 304."""
        meta = self._resume_meta()
        for _ in range(2):  # a second request only after the server would not resume
            offset = self.part.stat().st_size if meta else 0
            if offset and meta:
                validator = Validators(meta.etag, meta.last_modified).if_range()
                headers = {"Range": f"bytes={offset}-", **({"If-Range": validator} if validator else {})}
            else:
                headers = conditional.conditional_headers() if conditional else {}
            with open_url(self.url, headers=headers, timeout_s=self.timeout_s,
                          max_redirects=self.max_redirects) as resp:
                if resp.status == 304 and conditional is not None and not offset:
                    return None
                start = self._body_start(resp, offset, meta)
                if start is not None:
                    return self._receive(resp, start, meta)
            self.discard()
            meta = None
        raise UserInputError(f"{self.url}: the server twice refused to resume; delete {self.part} and retry")

    def discard(self) -> None:
        """Forget the partial download."""
        self.part.unlink(missing_ok=True)
        self.meta_path.unlink(missing_ok=True)

    def _resume_meta(self) -> _PartMeta | None:
        """The sidecar of a `.part` worth resuming, else None (a stray `.part` is removed)."""
        try:
            meta = _PartMeta.model_validate_json(self.meta_path.read_bytes())
        except (OSError, ValueError):
            meta = None
        if meta is None or meta.url != self.url or not self.part.is_file():
            self.discard()
            return None
        return meta

    def _body_start(self, resp, offset: int, meta: _PartMeta | None) -> int | None:
        """Where the response body goes in the file; None to start over from byte 0."""
        if resp.status == 200:  # also how a server without Range support answers a Range request
            return 0
        if resp.status == 416 and offset:
            return None  # the remote file shrank or changed
        if resp.status == 206 and offset and meta is not None:
            span = content_range_start_total(resp.headers.get("Content-Range"))
            ok = span is not None and span[0] == offset and span[1] in (None, meta.total_bytes)
            return offset if ok else None
        raise UserInputError(describe_status(self.url, resp.status, resp.reason))

    def _receive(self, resp, start: int, meta: _PartMeta | None) -> Fetched:
        if looks_like_web_page(resp.headers.get("Content-Type")):
            self.discard()
            raise web_page_error(self.url)
        total = _total_bytes(resp, start)
        if total is not None and total > self.max_bytes:
            self.discard()
            raise SizeCapExceeded(f"{self.url} is {total} bytes, over the {self.max_bytes}-byte cap; raise max_bytes")
        if start == 0 or meta is None:  # drop old bytes before the new sidecar names their version
            self.discard()
            v = Validators.of(resp)
            meta = _PartMeta(url=self.url, etag=v.etag, last_modified=v.last_modified, total_bytes=total)
            atomic_write_text(self.meta_path, meta.model_dump_json())
        hasher = hash_file(self.part) if start else hashlib.sha256()

        def on_chunk(chunk: bytes, done: int) -> None:
            hasher.update(chunk)
            if self.progress is not None:
                self.progress(done, total)

        try:
            size = stream_to_file(resp, self.part, offset=start, expected_total=total, max_bytes=self.max_bytes,
                                  timeout_s=self.timeout_s, on_chunk=on_chunk)
        except SizeCapExceeded:
            self.discard()
            raise
        return Fetched(hasher.hexdigest(), size, meta.etag, meta.last_modified)


def _total_bytes(resp, start: int) -> int | None:
    """The whole file's size from Content-Range (206) or Content-Length (200), if the server said."""
    span = content_range_start_total(resp.headers.get("Content-Range"))
    if resp.status == 206 and span is not None and span[1] is not None:
        return span[1]
    length = resp.headers.get("Content-Length", "")
    return start + int(length) if length.isdigit() else None


