"""Whether the Hugging Face Hub can be reached from here, decided in a few seconds.

Why. Offline, huggingface_hub retries each request five times with backoff: a lookup that
ends in "not in the cache" took 25 s and printed ten retry lines (`overseer estimate --model
owner/name` with no network, measured). Everything that reads from the Hub asks here first
and, when the answer is no, uses the local cache only and says why.

No: `HF_HUB_OFFLINE` is set, or a TCP connection to the Hub's host (`HF_ENDPOINT`, default
huggingface.co, port 443 or the URL's) cannot be opened within `TIMEOUT_S`. With a proxy in
the environment the direct connection says nothing about the proxy, so the Hub library is left
to try. The answer is kept for the process: one probe, however many lookups.
"""

from __future__ import annotations

import functools
import os
import socket
import threading
from urllib.parse import urlsplit

TIMEOUT_S = 3.0
_DEFAULT_ENDPOINT = "https://huggingface.co"
_PROXY_VARS = ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")


def offline_mode() -> bool:
    """Whether the user switched the Hub off (HF_HUB_OFFLINE=1/true/yes)."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def reachable() -> bool:
    """Whether to try the Hub at all (see the module docstring)."""
    if offline_mode():
        return False
    if any(os.environ.get(v) for v in _PROXY_VARS):
        return True
    url = urlsplit(os.environ.get("HF_ENDPOINT") or _DEFAULT_ENDPOINT)
    if not url.hostname:
        return True  # a malformed endpoint: let the Hub library report it
    return _connects(url.hostname, url.port or (80 if url.scheme == "http" else 443))


@functools.cache
def _connects(host: str, port: int) -> bool:
    # getaddrinfo has no timeout of its own, so the whole attempt runs in a thread the caller
    # stops waiting for; a daemon thread cannot keep the process alive.
    ok: list[bool] = []

    def attempt() -> None:
        try:
            with socket.create_connection((host, port), timeout=TIMEOUT_S):
                ok.append(True)
        except OSError:
            pass

    worker = threading.Thread(target=attempt, daemon=True)
    worker.start()
    worker.join(TIMEOUT_S + 0.5)
    return bool(ok)


def unreachable_reason() -> str:
    """A few words for messages: why the Hub was not asked."""
    if offline_mode():
        return "HF_HUB_OFFLINE is set"
    return f"cannot reach {urlsplit(os.environ.get('HF_ENDPOINT') or _DEFAULT_ENDPOINT).hostname}"
