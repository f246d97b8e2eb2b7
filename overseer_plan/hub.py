"""Whether the Hugging Face Hub can be reached from here, decided in a few seconds.

Why. Offline, huggingface_hub retries each request five times with backoff: a lookup that
ends in "not in the cache" took 25 s and printed ten retry lines (`overseer estimate --model
owner/name` with no network, measured). Everything that reads from the Hub asks here first
and, when the answer is no, uses the local cache only and says why.

No: `HF_HUB_OFFLINE` is set, or the Hub's endpoint (`HF_ENDPOINT`, default
https://huggingface.co) gives no HTTP answer to one HEAD request within `TIMEOUT_S` per
network step. An open TCP port is not enough: firewalls that filter HTTPS by server name
accept the connection and then drop or reset it, and the Hub library would retry there too.
Any status code counts as an answer, and the certificate is not checked here (the Hub library
has its own CA bundle and reports a bad certificate itself). With a proxy in the environment
the direct connection says nothing about the proxy, so the Hub library is left to try. The
answer is kept for the process: one probe, however many lookups.
"""

from __future__ import annotations

import functools
import os
import threading
from urllib.parse import urlsplit

TIMEOUT_S = 3.0
_DEFAULT_ENDPOINT = "https://huggingface.co"
_PROXY_VARS = {"https": ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"),
               "http": ("HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy")}


def offline_mode() -> bool:
    """Whether the user switched the Hub off (HF_HUB_OFFLINE=1/true/yes)."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def reachable() -> bool:
    """Whether to try the Hub at all (see the module docstring)."""
    return _decide()[0]


def unreachable_reason() -> str:
    """A few words for messages: why the Hub was not asked."""
    return _decide()[1]


def describe() -> str:
    """One line for environment reports: what was decided about the endpoint, and why."""
    ask, why = _decide()
    return f"{_endpoint()}: {'asked' if ask else 'not asked, local cache only'} ({why})"


def _endpoint() -> str:
    return os.environ.get("HF_ENDPOINT") or _DEFAULT_ENDPOINT


def endpoint_problem() -> str | None:
    """What is wrong with HF_ENDPOINT, or None when it is unset or an http(s) URL with a host and valid port."""
    raw = os.environ.get("HF_ENDPOINT")
    if not raw:
        return None
    url = urlsplit(raw)
    try:
        _ = url.port  # urllib validates the port only when it is read
    except ValueError:
        return f"HF_ENDPOINT={raw!r} has an invalid port"
    if url.scheme.lower() not in _PROXY_VARS or not url.hostname:
        return f"HF_ENDPOINT={raw!r} is not an http(s) URL with a host"
    return None


def check_endpoint() -> None:
    """Raise UserInputError for a malformed HF_ENDPOINT: huggingface_hub fails on it with a traceback when
    it is imported (an invalid port), or later on every request."""
    from overseer_plan.errors import UserInputError

    if (problem := endpoint_problem()) is not None:
        raise UserInputError(f"{problem}; set it to a URL like https://huggingface.co, or unset it")


def _decide() -> tuple[bool, str]:
    """(whether to ask the Hub, why in a few words)."""
    if offline_mode():
        return False, "HF_HUB_OFFLINE is set"
    url = urlsplit(_endpoint())
    scheme = url.scheme.lower() if url.scheme.lower() in _PROXY_VARS else "https"
    if any(os.environ.get(v) for v in _PROXY_VARS[scheme]):
        return True, "a proxy is set: the Hub library is left to try"
    if endpoint_problem() is not None:
        return True, "HF_ENDPOINT is malformed: the Hub library reports it"
    why = _probe(scheme, url.hostname, url.port or (80 if scheme == "http" else 443), url.path or "/")
    return why is None, why or "it answers"


@functools.cache
def _probe(scheme: str, host: str, port: int, path: str) -> str | None:
    """None when host:port answers one HEAD request over `scheme`, else why not, in a few words."""
    # getaddrinfo has no timeout of its own, so the whole attempt runs in a thread the caller
    # stops waiting for; a daemon thread cannot keep the process alive.
    state = {"connected": False, "answered": False}

    def attempt() -> None:
        import http.client
        import socket
        import ssl

        try:
            sock = socket.create_connection((host, port), timeout=TIMEOUT_S)
        except OSError:
            return
        state["connected"] = True
        conn = http.client.HTTPConnection(host, port, timeout=TIMEOUT_S)
        try:
            if scheme == "https":
                context = ssl.create_default_context()
                context.check_hostname = False  # trust is the Hub library's call, not this probe's
                context.verify_mode = ssl.CERT_NONE
                sock = context.wrap_socket(sock, server_hostname=host)
            conn.sock = sock  # http.client sends over a socket it is given instead of opening one
            conn.request("HEAD", path, headers={"User-Agent": "overseer-hub-probe"})
            conn.getresponse()
            state["answered"] = True
        except (OSError, http.client.HTTPException):
            pass
        finally:
            conn.close()
            sock.close()

    worker = threading.Thread(target=attempt, daemon=True)
    worker.start()
    worker.join(3 * TIMEOUT_S + 0.5)  # name lookup, connection (and TLS), answer
    if state["answered"]:
        return None
    if state["connected"]:
        return f"{host}:{port} accepts connections but gives no {scheme.upper()} answer (a firewall or filtering proxy?)"
    return f"cannot reach {host}"
