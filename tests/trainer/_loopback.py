"""A real HTTP server on 127.0.0.1 for download tests: routes with configurable misbehaviour.

Every wait in a handler is bounded and wakes when the server stops, so a test
never hangs on a stalled handler.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

_DRIP_CHUNK_BYTES = 16 * 1024


@dataclass
class Route:
    """What the server does for one path."""

    body: bytes = b""
    status: int = 200
    etag: str | None = None
    last_modified: str | None = None
    location: str | None = None
    """Answer 302 to this Location instead of serving a body."""
    ranges: bool = True
    """Honour `Range: bytes=N-` with 206 (else ignore it and send 200)."""
    wrong_range_start: bool = False
    """Answer a Range request with a 206 whose Content-Range starts at 0 (a broken server)."""
    truncate_at: int | None = None
    """Announce the full Content-Length, but close after this many body bytes."""
    stall_s: float = 0.0
    """Send headers, then sleep this long (or until the server stops) before the body."""
    drip_s: float = 0.0
    """Sleep this long between 16 KiB chunks of the body."""
    send_length: bool = True
    """Send Content-Length (else the body ends when the connection closes)."""


@dataclass
class LoopbackServer:
    httpd: ThreadingHTTPServer
    routes: dict[str, Route] = field(default_factory=dict)
    requests: list[tuple[str, dict[str, str]]] = field(default_factory=list)
    stopping: threading.Event = field(default_factory=threading.Event)

    @property
    def base_url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}"

    def add(self, path: str, **route) -> str:
        """Serve `path` as described by Route(**route); return its full URL."""
        self.routes[path] = Route(**route)
        return self.base_url + path

    def headers_for(self, path: str) -> list[dict[str, str]]:
        """Request headers received for `path`, oldest first."""
        return [headers for p, headers in list(self.requests) if p == path]


class _Handler(BaseHTTPRequestHandler):
    server_version = "Loopback/1"
    protocol_version = "HTTP/1.1"

    def log_message(self, format, *args):  # keep test output clean
        pass

    def do_GET(self):
        box: LoopbackServer = self.server.box
        box.requests.append((self.path, dict(self.headers.items())))
        route = box.routes.get(self.path)
        try:
            self._serve(box, route)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (timeout, cap, kill -9): expected in these tests

    def _serve(self, box: LoopbackServer, route: Route | None) -> None:
        if route is None:
            return self._send_simple(404, b"not found")
        if route.location:
            return self._send_simple(302, b"", {"Location": route.location})
        if route.status != 200:
            return self._send_simple(route.status, b"error")
        if self._not_modified(route):
            return self._send_simple(304, None, self._validators(route))
        start = self._range_start(route)
        if start is not None and start >= len(route.body):
            return self._send_simple(416, b"", {"Content-Range": f"bytes */{len(route.body)}"})
        self._send_body(box, route, start)

    def _not_modified(self, route: Route) -> bool:
        inm, ims = self.headers.get("If-None-Match"), self.headers.get("If-Modified-Since")
        return bool((inm and inm == route.etag) or (not inm and ims and ims == route.last_modified))

    def _range_start(self, route: Route) -> int | None:
        value = self.headers.get("Range", "")
        if not route.ranges or not value.startswith("bytes=") or not value.endswith("-"):
            return None
        if_range = self.headers.get("If-Range")
        if if_range and if_range not in (route.etag, route.last_modified):
            return None  # RFC 9110: a changed representation is sent whole, with 200
        return int(value[len("bytes="):-1])

    def _validators(self, route: Route) -> dict[str, str]:
        headers = {"ETag": route.etag, "Last-Modified": route.last_modified}
        return {k: v for k, v in headers.items() if v}

    def _send_simple(self, status: int, body: bytes | None, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        if body is not None:
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if body:
            self.wfile.write(body)

    def _send_body(self, box: LoopbackServer, route: Route, start: int | None) -> None:
        total = len(route.body)
        body = route.body[start or 0:]
        self.send_response(206 if start is not None else 200)
        if start is not None:
            shown = 0 if route.wrong_range_start else start
            self.send_header("Content-Range", f"bytes {shown}-{total - 1}/{total}")
        for key, value in self._validators(route).items():
            self.send_header(key, value)
        if route.send_length:
            self.send_header("Content-Length", str(len(body)))
        else:
            self.close_connection = True
        self.end_headers()
        self.wfile.flush()
        if route.stall_s:
            box.stopping.wait(route.stall_s)
            return
        if route.truncate_at is not None:
            body = body[: route.truncate_at]
            self.close_connection = True
        self._write_chunks(box, body, route.drip_s)

    def _write_chunks(self, box: LoopbackServer, body: bytes, drip_s: float) -> None:
        for i in range(0, len(body), _DRIP_CHUNK_BYTES):
            if box.stopping.is_set():
                return
            self.wfile.write(body[i: i + _DRIP_CHUNK_BYTES])
            self.wfile.flush()
            if drip_s:
                time.sleep(drip_s)


@contextlib.contextmanager
def running_loopback_server() -> Iterator[LoopbackServer]:
    """Start a ThreadingHTTPServer on 127.0.0.1:<free port>; always shut down on exit."""
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.daemon_threads = True
    box = LoopbackServer(httpd)
    httpd.box = box
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield box
    finally:
        box.stopping.set()
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


def targz(files: dict[str, bytes]) -> bytes:
    """A .tar.gz holding `files` (name -> content), for serving archives in tests."""
    import io
    import tarfile

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def sha256_hex(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()
