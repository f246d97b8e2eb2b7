"""Fixtures for trainer tests. The loopback HTTP server lives in `_loopback.py`."""

from __future__ import annotations

import pytest
from _loopback import LoopbackServer, running_loopback_server


@pytest.fixture
def loopback_server(monkeypatch) -> LoopbackServer:
    """A real HTTP server on 127.0.0.1 (free port), shut down after the test.

    Proxy variables are cleared so urllib talks to the loopback address directly.
    """
    for var in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    with running_loopback_server() as server:
        yield server
