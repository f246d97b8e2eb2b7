"""overseer doctor: every check on synthetic machines, crash isolation, and the CLI through CliRunner."""

from __future__ import annotations

import dataclasses
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from _hw import gpu, make_hw
from typer.testing import CliRunner

from overseer_plan import _cuda_drivers as cuda
from overseer_plan import doctor
from overseer_plan.cli import app
from overseer_plan.doctor import run_doctor
from overseer_plan.hardware import ProcessMemory, Sensor
from overseer_plan.rules import load_rulebook

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def book():
    return load_rulebook()


def _checks(hw, book, tmp_path=None):
    result = run_doctor(hw, book, output_dir=tmp_path or ".")
    return result, {c.id: c for c in result.checks}


# ---- requirements (rules/requirements.yaml) -------------------------------------------------

def test_one_check_per_requirement_rule_all_ok_on_a_good_machine(book):
    result, checks = _checks(make_hw(ram_gb=64, gpus=[gpu(24)], cores=8), book)
    rule_ids = [r.id for r in book.of_kind("requirement")]
    assert len(rule_ids) == 6
    for rid in rule_ids:
        assert checks[rid].status == "ok", checks[rid]
        assert book[rid].source in checks[rid].message  # cites the spec
    assert result.exit_code() == 0 and result.summary.exit_code == 0


def test_low_ram_fails_the_minimum_and_exits_1(book):
    result, checks = _checks(make_hw(ram_gb=6, gpus=[gpu(8)]), book)
    c = checks["requirement.ram.minimum"]
    assert c.status == "fail"
    assert "5.59 GiB (6.00 GB)" in c.message and "8 GB" in c.message
    assert c.fix == book["requirement.ram.minimum"].fix
    assert checks["requirement.ram.recommended"].status == "warn"
    assert result.exit_code() == 1 and result.summary.fail >= 1


def test_small_gpu_fails_the_gpu_minimum(book):
    _, checks = _checks(make_hw(ram_gb=32, gpus=[gpu(3)]), book)
    assert checks["requirement.gpu.minimum"].status == "fail"
    assert "2.79 GiB (3.00 GB)" in checks["requirement.gpu.minimum"].message
    assert "--cpu-only" in checks["requirement.gpu.minimum"].fix


def test_no_gpu_is_not_a_failure(book):
    result, checks = _checks(make_hw(ram_gb=24, gpus=[]), book)
    for rid in ("requirement.gpu.minimum", "requirement.gpu.recommended"):
        assert checks[rid].status == "skip"
        assert "CPU training is a supported mode" in checks[rid].message
    assert result.exit_code() == 0


def test_unknown_gpus_skip_with_the_reason(book):
    hw = make_hw(unavailable={"gpus": "NVML: driver not loaded"}).model_copy(update={"gpus": None})
    _, checks = _checks(hw, book)
    assert checks["requirement.gpu.minimum"].status == "skip"
    assert "could not tell" in checks["requirement.gpu.minimum"].message
    assert "NVML: driver not loaded" in checks["gpu.shared"].message


def test_little_free_disk_fails_storage(book):
    result, checks = _checks(make_hw(free_gb=5), book)
    c = checks["requirement.storage.free"]
    assert c.status == "fail" and "4.66 GiB (5.00 GB)" in c.message and "/work/out" in c.message
    assert result.exit_code() == 1


def test_a_value_just_under_the_threshold_does_not_read_as_meeting_it(book):
    _, checks = _checks(make_hw(free_gb=9.996), book)
    c = checks["requirement.storage.free"]
    assert c.status == "fail" and "(9.99 GB)" in c.message and "needs >= 10 GB" in c.message


def test_unmeasured_disk_is_skipped_not_failed(book):
    hw = make_hw(unavailable={"disks": "statvfs failed"}).model_copy(update={"disks": None})
    _, checks = _checks(hw, book)
    assert checks["requirement.storage.free"].status == "skip"
    assert "statvfs failed" in checks["requirement.storage.free"].message


def test_single_core_warns(book):
    _, checks = _checks(make_hw(cores=1), book)
    assert checks["requirement.cpu.multicore"].status == "warn"
    assert "affinity" in checks["requirement.cpu.multicore"].message


# ---- machine checks -------------------------------------------------------------------------

def test_container_limit_is_named_with_both_numbers(book):
    hw = make_hw(ram_gb=64, limit_gb=8, limit_source="cgroup v2 memory.max")
    _, checks = _checks(hw, book)
    c = checks["memory.limit"]
    assert c.status == "warn"
    assert "cgroup v2 memory.max" in c.message and "7.45 GiB" in c.message and "59.60 GiB" in c.message
    assert "cgroup v2 memory.max" in checks["requirement.ram.recommended"].message
    assert checks["requirement.ram.recommended"].status == "warn"


def test_address_space_limit_suggests_ulimit(book):
    _, checks = _checks(make_hw(ram_gb=64, limit_gb=12, limit_source="RLIMIT_AS"), book)
    assert "RLIMIT_AS" in checks["memory.limit"].message
    assert "ulimit -v unlimited" in checks["memory.limit"].fix


def test_no_limit_is_ok(book):
    _, checks = _checks(make_hw(), book)
    assert checks["memory.limit"].status == "ok"


def test_other_processes_named_with_sizes(book):
    top = [ProcessMemory(pid=42, name="chrome", memory_bytes=4 * 1024**3),
           ProcessMemory(pid=43, name="slack", memory_bytes=1024**3)]
    _, checks = _checks(make_hw(ram_gb=16, others_gb=6, top=top), book)
    c = checks["memory.others"]
    assert c.status == "warn"
    assert "chrome (pid 42) 4.00 GiB" in c.message and "slack (pid 43) 1.00 GiB" in c.message
    assert "Close chrome, slack" in c.fix


@pytest.mark.parametrize(("rotational", "status"), [(True, "warn"), (False, "ok"), (None, "skip")])
def test_storage_type(book, rotational, status):
    _, checks = _checks(make_hw(rotational=rotational), book)
    assert checks["storage.type"].status == status
    if rotational:
        assert "--output" in checks["storage.type"].fix


def test_hot_sensor_warns(book):
    temps = [Sensor(chip="k10temp", label="Tctl", current_c=92.0, high_c=95.0)]
    _, checks = _checks(make_hw(temps=temps), book)
    c = checks["temperature"]
    assert c.status == "warn" and "k10temp Tctl at 92°C" in c.message and "95°C" in c.message


def test_gpu_near_slowdown_warns(book):
    _, checks = _checks(make_hw(gpus=[gpu(8, temperature_c=85.0, temperature_slowdown_c=90.0)]), book)
    assert checks["temperature"].status == "warn" and "GPU0 at 85°C" in checks["temperature"].message


def test_no_sensors_skip_with_the_reason(book):
    hw = make_hw(temps=[], unavailable={"temperatures": "no sensors exposed (VM)"})
    _, checks = _checks(hw, book)
    assert checks["temperature"].status == "skip" and "no sensors exposed (VM)" in checks["temperature"].message


def test_shared_gpu_names_the_process_and_an_idle_gpu(book):
    busy = gpu(24, processes=[ProcessMemory(pid=4242, name="python", memory_bytes=10 * 1024**3)])
    _, checks = _checks(make_hw(gpus=[busy, gpu(24, index=1)]), book)
    c = checks["gpu.shared"]
    assert c.status == "warn" and "python (pid 4242) 10.00 GiB" in c.message
    assert "CUDA_VISIBLE_DEVICES=1" in c.fix


def test_cpu_only_torch_with_a_gpu(book):
    _, checks = _checks(make_hw(gpus=[gpu(8)], software={"cuda": None, "torch": "2.5.1+cpu"}), book)
    c = checks["gpu.torch"]
    assert c.status == "warn" and "CPU-only build" in c.message
    assert "--index-url https://download.pytorch.org/whl/cu124" in c.fix  # newest wheel driver 550.54.15 runs


def test_driver_too_old_for_torch_cuda(book):
    hw = make_hw(gpus=[gpu(8)], software={"cuda": "12.4", "nvidia_driver": "470.182.03"})
    _, checks = _checks(hw, book)
    c = checks["gpu.torch"]
    assert c.status == "warn" and "470.182.03" in c.message and "525.60.13" in c.message
    assert "550.54.14" in c.fix


def test_good_driver_is_ok(book):
    _, checks = _checks(make_hw(gpus=[gpu(8)]), book)
    assert checks["gpu.torch"].status == "ok"


def test_pynvml_clash_warns(book):
    _, checks = _checks(make_hw(software={"pynvml_distribution": "13.0.1"}), book)
    assert checks["software.pynvml"].status == "warn"
    assert checks["software.pynvml"].fix.startswith("pip uninstall pynvml")


def test_cuda_driver_table():
    assert cuda.driver_need("12.4").minimum == "525.60.13" and cuda.driver_need("12.4").toolkit == "550.54.14"
    assert cuda.driver_need("11.8").minimum == "450.80.02" and cuda.driver_need("11.8").toolkit == "520.61.05"
    assert cuda.driver_need("12.1", windows=True).minimum == "527.41"
    assert cuda.driver_too_old("470.82", cuda.driver_need("12.1"))
    assert not cuda.driver_too_old("535.104.05", cuda.driver_need("12.1"))
    assert cuda.best_torch_wheel("535.104.05") == "cu121"
    assert cuda.best_torch_wheel("440.33") is None


# ---- mode, practices, crash isolation -------------------------------------------------------

def test_mode_check_lists_every_reason(book):
    result, checks = _checks(make_hw(ram_gb=8, gpus=[gpu(4)]), book)
    assert result.summary.mode == "resource-efficient"
    assert "--resource-efficient" in checks["mode"].message
    assert set(checks["mode"].details) == {"mode.resource-efficient.limited-ram", "mode.resource-efficient.limited-gpu"}


def test_start_small_only_before_the_first_run(book, tmp_path):
    _, checks = _checks(make_hw(), book, tmp_path)
    assert checks["practice.start-small"].status == "info"  # advice, not a check that passed
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "metrics.jsonl").write_text("{}\n")
    _, checks = _checks(make_hw(), book, tmp_path)
    assert "practice.start-small" not in checks


def test_a_crashing_check_fails_alone(book, monkeypatch):
    def boom(ctx):
        raise RuntimeError("sensor exploded")

    patched = [dataclasses.replace(s, fn=boom) if s.id == "temperature" else s for s in doctor.CHECKS]
    monkeypatch.setattr(doctor, "CHECKS", patched)
    result, checks = _checks(make_hw(), book)
    c = checks["temperature"]
    assert c.status == "fail"
    assert c.message == "check crashed: RuntimeError: sensor exploded — please report"
    assert "sensor exploded" in c.details["traceback"]
    assert checks["storage.type"].status == "ok" and checks["requirement.ram.minimum"].status == "ok"
    assert result.exit_code() == 1


def test_a_crashing_requirement_interpreter_keeps_the_rest(book, monkeypatch):
    monkeypatch.setattr(doctor, "_requirement_finding", lambda ctx, rule: 1 / 0)
    _, checks = _checks(make_hw(), book)
    assert all(checks[r.id].status == "fail" for r in book.of_kind("requirement"))
    assert checks["memory.limit"].status == "ok" and checks["mode"].status == "info"


def test_doctor_is_fast(book):
    start = time.perf_counter()
    run_doctor(make_hw(gpus=[gpu(8)]), book)
    assert time.perf_counter() - start < 0.5


# ---- CLI ------------------------------------------------------------------------------------

def _profile(tmp_path, **kw) -> str:
    path = tmp_path / "hw.json"
    make_hw(**kw).save(path)
    return str(path)


def _run(*args):
    return CliRunner().invoke(app, ["doctor", *args])


def test_cli_ok_machine_exits_0(tmp_path):
    r = _run("--hardware", _profile(tmp_path, ram_gb=64, gpus=[gpu(24)]), "--output-dir", str(tmp_path))
    assert r.exit_code == 0, r.output
    assert "[✓] RAM: 8GB minimum" in r.stdout
    last = r.stdout.rstrip().splitlines()[-1]
    assert re.fullmatch(r"\d+ ok, 0 warnings, 0 failed, 0 skipped, \d+ advice\. Mode: standard\. Exit code 0\.", last), last


def test_cli_failing_requirement_exits_1(tmp_path):
    r = _run("--hardware", _profile(tmp_path, ram_gb=6), "-v")
    assert r.exit_code == 1
    assert "[✗] RAM: 8GB minimum" in r.stdout and "Fix: " in r.stdout
    assert "rule: requirement.ram.minimum" in r.stdout  # --verbose details


def test_cli_json_shape_lists_every_requirement(tmp_path, book):
    r = _run("--json", "--hardware", _profile(tmp_path, ram_gb=6, gpus=[gpu(3)], free_gb=5))
    assert r.exit_code == 1
    data = json.loads(r.stdout)
    assert set(data) == {"checks", "summary"}
    assert set(data["summary"]) == {"ok", "warn", "fail", "skip", "info", "mode", "exit_code"}
    assert data["summary"]["exit_code"] == 1 and data["summary"]["mode"] == "resource-efficient"
    statuses = {c["id"]: c["status"] for c in data["checks"]}
    for c in data["checks"]:
        assert {"id", "status", "message", "fix"} <= set(c) and c["status"] in ("ok", "warn", "fail", "skip", "info")
    spec_table = {"RAM: 8GB minimum", "RAM: 16GB recommended", "GPU Memory: 4GB minimum", "GPU Memory: 8GB recommended",
                  "CPU: Any modern multi-core processor", "Storage: 10GB free space"}
    sources = {book[c["id"]].source.split("> ")[-1] for c in data["checks"] if c["id"].startswith("requirement.")}
    assert sources == spec_table
    assert statuses["requirement.gpu.minimum"] == "fail" and statuses["requirement.storage.free"] == "fail"


@pytest.mark.parametrize("content", [None, "not json", '{"cpu": 1}'])
def test_cli_bad_hardware_file_is_one_line_exit_2(tmp_path, content):
    path = tmp_path / "bad.json"
    if content is not None:
        path.write_text(content)
    r = _run("--hardware", str(path))
    assert r.exit_code == 2
    assert r.stdout == ""
    assert len(r.stderr.strip().splitlines()) == 1 and r.stderr.startswith("overseer: error: --hardware")


def test_cli_json_and_report_together_is_bad_usage(tmp_path):
    r = _run("--json", "--report", "--hardware", _profile(tmp_path))
    assert r.exit_code == 2 and "pick one" in r.stderr


def test_cli_bad_rules_dir_exit_2(tmp_path):
    r = _run("--rules", str(tmp_path / "missing"), "--hardware", _profile(tmp_path))
    assert r.exit_code == 2 and "not a directory" in r.stderr


def test_cli_ascii_fallback(tmp_path, monkeypatch):
    from overseer_plan.commands import doctor as cmd

    monkeypatch.setattr(cmd, "_encodable", lambda text: text.isascii())
    r = _run("--hardware", _profile(tmp_path, ram_gb=6))
    assert "[x] RAM: 8GB minimum" in r.stdout and "[ok] CPU" in r.stdout
    assert r.stdout.isascii()


def test_doctor_does_not_import_torch(tmp_path):
    code = ("import sys\nfrom typer.testing import CliRunner\nfrom overseer_plan.cli import app\n"
            f"r = CliRunner().invoke(app, ['doctor', '--hardware', {_profile(tmp_path)!r}])\n"
            "assert r.exit_code == 0, r.output\nassert 'torch' not in sys.modules\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
