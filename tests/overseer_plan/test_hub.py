"""Hub reachability: an offline machine gets its answer from the local cache in seconds, not retries."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from overseer_plan import hub

ROOT = Path(__file__).resolve().parents[2]
_PROXIES = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy")


def _closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now: a connection is refused at once
    return port


@pytest.fixture
def no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in (*_PROXIES, "HF_HUB_OFFLINE"):
        monkeypatch.delenv(var, raising=False)


@contextlib.contextmanager
def _http_server() -> Iterator[int]:
    """A real HTTP server on loopback that answers every HEAD with 404, as the Hub does for unknown paths."""

    class Handler(BaseHTTPRequestHandler):
        def do_HEAD(self) -> None:  # noqa: N802 (http.server's naming)
            self.send_response(404)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield httpd.server_address[1]
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_an_endpoint_that_answers_http_is_reachable_and_a_closed_one_is_not(monkeypatch, no_proxy):
    with _http_server() as port:
        monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
        assert hub.reachable()  # any status code is an answer
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{_closed_port()}")
    assert not hub.reachable()
    assert hub.unreachable_reason() == "cannot reach 127.0.0.1"


def test_an_open_port_that_gives_no_answer_is_not_the_hub(monkeypatch, no_proxy):
    # What a firewall filtering HTTPS by server name looks like: the TCP connection opens, then
    # nothing answers (or the connection is reset). The Hub library would sit in its retries there.
    monkeypatch.setattr(hub, "TIMEOUT_S", 0.3)
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()  # the kernel completes the handshake; nobody ever reads or writes
        port = silent.getsockname()[1]
        monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
        t0 = time.perf_counter()
        assert not hub.reachable()
        assert time.perf_counter() - t0 < 2
        assert hub.unreachable_reason() == (f"127.0.0.1:{port} accepts connections but gives no HTTP answer "
                                            "(a firewall or filtering proxy?)")
    with _http_server() as port:  # HTTPS to a server that only speaks HTTP: the TLS handshake fails
        monkeypatch.setenv("HF_ENDPOINT", f"https://127.0.0.1:{port}")
        assert not hub.reachable()
        assert "accepts connections but gives no HTTPS answer" in hub.unreachable_reason()


def test_offline_mode_and_proxies_decide_without_a_probe(monkeypatch, no_proxy):
    monkeypatch.setattr(hub, "_probe", lambda *a: pytest.fail("probed the network"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert not hub.reachable()
    assert "HF_HUB_OFFLINE" in hub.unreachable_reason()
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.invalid:3128")
    assert hub.reachable()  # the proxy is the Hub library's business
    monkeypatch.delenv("HTTPS_PROXY")
    monkeypatch.setenv("HF_ENDPOINT", "http://mirror.invalid")
    monkeypatch.setenv("HTTP_PROXY", "http://proxy.invalid:3128")
    assert hub.reachable()  # an http:// endpoint goes through HTTP_PROXY


def _env_offline(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in (*_PROXIES, "HF_HUB_OFFLINE")}
    return {**env, "HF_ENDPOINT": f"http://127.0.0.1:{_closed_port()}", "HF_HUB_CACHE": str(tmp_path / "hub"),
            "OVERSEER_CACHE_DIR": str(tmp_path / "cache")}


def test_unknown_hub_id_offline_fails_fast_with_one_line(tmp_path):
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "overseer_plan", "estimate", "--model", "someorg/some-model"],
                       capture_output=True, text=True, cwd=ROOT, env=_env_offline(tmp_path), timeout=120)
    took = time.perf_counter() - t0
    assert r.returncode == 2
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Hub was not asked: cannot reach 127.0.0.1" in lines[0], r.stderr
    assert "Retrying" not in r.stderr + r.stdout
    assert took < 20  # huggingface_hub's own retries took 25 s here


def _cache_repo(hub_cache: Path, repo: str) -> Path:
    """A Hugging Face Hub cache entry as huggingface_hub lays it out: refs/main names the snapshot."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import GPT2Config, PreTrainedTokenizerFast

    commit = "0" * 40
    folder = hub_cache / f"models--{repo.replace('/', '--')}"
    snapshot = folder / "snapshots" / commit
    words = Tokenizer(models.WordLevel({"<unk>": 0, "</s>": 1, "hello": 2, "world": 3}, unk_token="<unk>"))
    words.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=words, unk_token="<unk>", eos_token="</s>").save_pretrained(snapshot)
    GPT2Config(n_layer=1, n_embd=8, n_head=1, vocab_size=4, bos_token_id=1, eos_token_id=1).save_pretrained(snapshot)
    (folder / "refs").mkdir()
    (folder / "refs" / "main").write_text(commit)
    return snapshot


_LOAD_TWO = """
import json, time
from trainer.tokenizer import load_tokenizer
t0 = time.perf_counter()
ids = load_tokenizer("someorg/tok")("hello world", add_special_tokens=False)["input_ids"]
try:
    load_tokenizer("someorg/absent")
    missing = None
except FileNotFoundError as e:
    missing = str(e)
print(json.dumps({"ids": ids, "missing": missing, "seconds": time.perf_counter() - t0}))
"""


def test_tokenizer_comes_from_the_local_cache_offline_and_a_missing_one_says_why(tmp_path):
    # A fresh process: huggingface_hub reads HF_HUB_CACHE when it is imported.
    _cache_repo(tmp_path / "hub", "someorg/tok")
    r = subprocess.run([sys.executable, "-c", _LOAD_TWO], capture_output=True, text=True, cwd=ROOT,
                       env=_env_offline(tmp_path), timeout=120)
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout.strip().splitlines()[-1])
    assert got["ids"] == [2, 3]
    assert "someorg/absent" in got["missing"] and "Hub was not asked (cannot reach 127.0.0.1)" in got["missing"]
    assert got["seconds"] < 15 and "Retrying" not in r.stderr


_CATALOGUE_FALLBACK = """
import json, types
from trainer.model import _tokenizer_for
notes = []
tok = _tokenizer_for("gpt2", None, types.SimpleNamespace(vocab_size=50257), notes)
print(json.dumps({"tokenizer": type(tok).__name__, "notes": notes}))
"""


def test_a_catalogue_model_looks_for_its_tokenizer_under_its_hub_id_and_says_why_it_fell_back(tmp_path):
    from trainer.model import _tokenizer_hub_id

    assert _tokenizer_hub_id("gpt2") == "openai-community/gpt2"
    assert _tokenizer_hub_id("someorg/tok") == "someorg/tok"
    r = subprocess.run([sys.executable, "-c", _CATALOGUE_FALLBACK], capture_output=True, text=True, cwd=ROOT,
                       env=_env_offline(tmp_path), timeout=120)
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout.strip().splitlines()[-1])
    assert got["tokenizer"] == "ByteTokenizer"
    assert got["notes"] == ["no tokenizer for openai-community/gpt2 in the local Hugging Face cache, and the Hub "
                            "was not asked (cannot reach 127.0.0.1): using the byte-level tokenizer (ids 4..259)"]


def test_describe_says_what_was_decided_and_why(monkeypatch, no_proxy):
    with _http_server() as port:
        monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
        assert hub.describe() == f"http://127.0.0.1:{port}: asked (it answers)"
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert hub.describe() == f"http://127.0.0.1:{port}: not asked, local cache only (HF_HUB_OFFLINE is set)"
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setenv("HF_ENDPOINT", "https://127.0.0.1:99999")
    assert hub.reachable() and "malformed" in hub.describe()  # the Hub library's own error is clearer


@pytest.mark.parametrize("endpoint", ["https://hub.example:99999", "hub.example"])
def test_a_malformed_endpoint_is_one_line_before_transformers_is_imported(endpoint, tmp_path):
    # huggingface_hub raises on an invalid port while it is being imported, so every verb checks first.
    env = {**_env_offline(tmp_path), "HF_ENDPOINT": endpoint}
    r = subprocess.run([sys.executable, "-m", "overseer_plan", "estimate", "--model", "gpt2"],
                       capture_output=True, text=True, cwd=ROOT, env=env, timeout=120)
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.startswith("overseer: error: HF_ENDPOINT=") and len(r.stderr.strip().splitlines()) == 1, r.stderr
