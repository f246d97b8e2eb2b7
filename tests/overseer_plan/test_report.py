"""overseer doctor --report: the Markdown environment report, its defensive fields and its redaction."""

from __future__ import annotations

import socket

import pytest
from _hw import gpu, make_hw
from typer.testing import CliRunner

from overseer_plan import report
from overseer_plan.cli import app
from overseer_plan.doctor import run_doctor
from overseer_plan.hardware import Disk
from overseer_plan.report import NOT_COLLECTED, redact, render_report
from overseer_plan.rules import load_rulebook

UUID = "GPU-6f1b2c3d-4e5f-6789-abcd-ef0123456789"
HOST = "alice-workstation.corp.example"


@pytest.fixture
def alice(monkeypatch):
    """Pretend to be user 'alice' on host HOST with home /home/alice."""
    monkeypatch.setenv("HOME", "/home/alice")
    monkeypatch.setenv("USER", "alice")
    monkeypatch.setenv("LOGNAME", "alice")
    monkeypatch.setattr(socket, "gethostname", lambda: HOST)
    monkeypatch.setattr(report.platform, "node", lambda: HOST)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", UUID)
    monkeypatch.setenv("HF_HOME", "/home/alice/.cache/huggingface")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # the report's Hub line must not touch the network here
    monkeypatch.delenv("HF_ENDPOINT", raising=False)


def _personal_hw():
    hw = make_hw(gpus=[gpu(8, uuid=UUID)], unavailable={"temperatures": f"no sensors on {HOST} for alice"})
    disks = [Disk(path="/home/alice/runs", role="output", free_bytes=50 * 10**9, total_bytes=500 * 10**9),
             Disk(path="/home/bob/data", role="data", free_bytes=50 * 10**9, total_bytes=500 * 10**9)]
    return hw.model_copy(update={"disks": disks})


def _render(hw):
    return render_report(hw, run_doctor(hw, load_rulebook()))


def test_report_redacts_uuid_home_user_and_host(alice):
    text = _render(_personal_hw())
    for secret in (UUID, "/home/alice", "alice", "alice-workstation", "corp.example", "/home/bob"):
        assert secret not in text
    assert "~/runs" in text and "~/.cache/huggingface" in text
    assert "<gpu-uuid>" in text and "<host>" in text and "/home/<user>/data" in text


def test_redact_keeps_words_that_merely_contain_the_user_name(alice):
    assert redact("alice, malice, alice@x, /srv/alice/x") == "<user>, malice, <user>@x, /srv/<user>/x"


def test_report_has_every_section_and_fill_in_slots(alice):
    text = _render(_personal_hw())
    for heading in ("Versions", "System", "Memory", "GPUs", "Disks and temperatures", "Doctor findings",
                    "Environment variables", "What happened"):
        assert f"### {heading}" in text
    for field in ("- Overseer:", "- Python: 3.11.7", "- PyTorch: 2.5.1 (CUDA 12.4", "- transformers: 4.46.0",
                  "- accelerate: 1.1.0", "- nvidia-ml-py: 12.560.30", "- NVIDIA driver: 550.54.15",
                  "- GPU0: NVIDIA Test GPU", "compute capability 8.6", "- CPU cores: 2 usable (limited by affinity)",
                  "- RAM limit: none", "- PYTORCH_CUDA_ALLOC_CONF: (unset)", "- OMP_NUM_THREADS: (unset)",
                  "- Hugging Face Hub: https://huggingface.co: not asked, local cache only (HF_HUB_OFFLINE is set)",
                  "- HF_HUB_OFFLINE: 1"):
        assert field in text, field
    assert text.count("<fill in>") == 3
    assert "[ok] requirement.ram.minimum" in text and "- Summary:" in text


def test_container_limit_and_source_in_report(alice):
    hw = make_hw(ram_gb=64, limit_gb=8, limit_source="cgroup v1 memory.limit_in_bytes")
    assert "- RAM limit: 7.45 GiB (cgroup v1 memory.limit_in_bytes)" in _render(hw)


def test_unreadable_fields_say_could_not_collect(alice, monkeypatch):
    hw = make_hw(unavailable={"gpus": "NVML: driver not loaded"}).model_copy(update={"gpus": None})

    def broken(_n):
        raise RuntimeError("no")

    monkeypatch.setattr(report, "fmt_bytes", broken)
    text = _render(hw)
    assert f"- RAM (host): {NOT_COLLECTED}" in text
    assert f"- GPUs: {NOT_COLLECTED} (NVML: driver not loaded)" in text
    assert "- Laptop: " + NOT_COLLECTED in text


def test_cli_report(tmp_path, alice):
    path = tmp_path / "hw.json"
    _personal_hw().save(path)
    r = CliRunner().invoke(app, ["doctor", "--report", "--hardware", str(path)])
    assert r.exit_code == 0, r.output
    assert r.stdout.startswith("<!-- Copy-and-paste") and "alice" not in r.stdout and UUID not in r.stdout
