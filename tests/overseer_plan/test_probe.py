"""probe(): cgroups, /proc/cpuinfo, NVML (faked from recorded values), RLIMIT_AS, the CLI, speed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import types
from pathlib import Path

import pytest
from typer.testing import CliRunner

from overseer_plan import _cgroup, _cpu, _nvml
from overseer_plan._cgroup import _Sys
from overseer_plan.errors import UserInputError
from overseer_plan.hardware import Cpu, Gpu, Hardware
from overseer_plan.probe import _assigned, _with_torch, probe, rotational, torch_build

ASSETS = Path(__file__).resolve().parents[1] / "assets" / "probe"
REPO = Path(__file__).resolve().parents[2]
GiB = 1024**3


def _affinity() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


# ---------------------------------------------------------------- cgroups
def test_cgroup_v2_takes_the_tightest_ancestor_and_rounds_the_quota_up():
    fs = _Sys(ASSETS / "cgroup_v2")
    mem = _cgroup.memory_limit(fs)
    assert mem is not None
    # The container scope says 'max'; its pod slice (two levels up the tree) limits to 2 GiB.
    assert (mem.limit_bytes, mem.source) == (2 * GiB, "cgroup v2 memory.max")
    assert (mem.usage_bytes, mem.inactive_file_bytes) == (1610612736, 536870912)
    assert _cgroup.cpu_quota(fs) == (2, "cgroup cpu.max")  # 150000/100000 = 1.5 -> 2
    assert _cgroup.in_container(fs, {}) is True  # kubepods in the cgroup path


def test_cgroup_v1_with_sentinels_in_ancestors_and_a_joint_cpu_cpuacct_mount():
    fs = _Sys(ASSETS / "cgroup_v1")
    mem = _cgroup.memory_limit(fs)
    assert mem is not None
    assert (mem.limit_bytes, mem.source) == (GiB, "cgroup v1 memory.limit_in_bytes")
    assert mem.inactive_file_bytes == 268435456  # hierarchical total_inactive_file wins
    assert _cgroup.cpu_quota(fs) == (1, "cgroup cpu.cfs_quota_us")
    assert _cgroup.in_container(fs, {}) is True  # /.dockerenv


@pytest.mark.parametrize("tree", ["cgroup_v1_unlimited", "cgroup_v2_unlimited"])
def test_unlimited_sentinels_and_max_mean_no_limit(tree):
    fs = _Sys(ASSETS / tree)
    assert _cgroup.memory_limit(fs) is None
    assert _cgroup.cpu_quota(fs) is None
    assert _cgroup.in_container(fs, {}) is False
    assert _cgroup.in_container(fs, {"KUBERNETES_SERVICE_HOST": "10.0.0.1"}) is True


def test_cgroup_v2_without_mountinfo_uses_the_conventional_mount():
    members = _cgroup.memberships(_Sys(ASSETS / "cgroup_v2_unlimited"))
    assert [m.dirs for m in members] == [(
        "/sys/fs/cgroup/user.slice/user-1000.slice/session-3.scope",
        "/sys/fs/cgroup/user.slice/user-1000.slice",
        "/sys/fs/cgroup/user.slice",
        "/sys/fs/cgroup",
    )]


def _tree(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return root


def test_cgroup_v1_mount_rooted_at_the_container_cgroup(tmp_path):
    # Docker without a cgroup namespace: /proc/self/cgroup names /docker/<id>, and the container's
    # own cgroup is what is mounted at /sys/fs/cgroup/memory (mount root /docker/<id>).
    fs = _Sys(_tree(tmp_path, {
        "proc/self/cgroup": "5:memory:/docker/ab12\n3:cpu:/docker/ab12\n",
        "proc/self/mountinfo": ("40 30 0:33 /docker/ab12 /sys/fs/cgroup/memory ro - cgroup cgroup rw,memory\n"
                                "41 30 0:34 /docker/ab12 /sys/fs/cgroup/cpu ro - cgroup cgroup rw,cpu\n"),
        "sys/fs/cgroup/memory/memory.limit_in_bytes": "536870912\n",
        "sys/fs/cgroup/cpu/cpu.cfs_quota_us": "250000\n",
        "sys/fs/cgroup/cpu/cpu.cfs_period_us": "100000\n",
    }))
    assert _cgroup.memory_limit(fs).limit_bytes == 512 * 1024**2
    assert _cgroup.cpu_quota(fs) == (3, "cgroup cpu.cfs_quota_us")


def test_garbage_and_missing_cgroup_files_mean_no_limit(tmp_path):
    fs = _Sys(_tree(tmp_path, {"proc/self/cgroup": "0::/a\nnonsense\n", "sys/fs/cgroup/cgroup.controllers": "",
                               "sys/fs/cgroup/a/memory.max": "lots\n", "sys/fs/cgroup/a/cpu.max": "1 2 3\n"}))
    assert _cgroup.memory_limit(fs) is None and _cgroup.cpu_quota(fs) is None
    assert _cgroup.memory_limit(_Sys(tmp_path / "nothing")) is None


# ---------------------------------------------------------------- CPU
@pytest.mark.parametrize("sample, model, physical, flags", [
    ("intel_sapphire_rapids.txt", "Intel(R) Xeon(R) Platinum 8488C", 2,
     ["avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512_bf16", "avx512_vnni",
      "avx_vnni", "amx_bf16", "amx_tile", "amx_int8"]),
    ("amd_epyc_7b13.txt", "AMD EPYC 7B13", 2, ["avx2", "fma", "f16c"]),
    ("intel_haswell_avx2.txt", "Intel(R) Xeon(R) CPU E5-2680 v3 @ 2.50GHz", 4, ["avx2", "fma", "f16c"]),
    ("aarch64_graviton3.txt", "ARM implementer 0x41 part 0xd40", None, ["bf16", "i8mm", "sve"]),
])
def test_proc_cpuinfo_samples(sample, model, physical, flags):
    info = _cpu.parse_proc_cpuinfo((ASSETS / "cpuinfo" / sample).read_text())
    assert info == {"model": model, "physical_cores": physical, "flags": flags}


def test_flag_spellings_are_normalised():
    raw = ["AVX512BF16", "avx512vnni", "avxvnni", "amxbf16", "amx_tile", "sse2", "bf16"]
    assert _cpu.normalise_flags(raw) == ["avx512_bf16", "avx512_vnni", "avx_vnni", "amx_bf16", "amx_tile", "bf16"]


def test_usable_cores_intersects_affinity_with_the_quota():
    assert _cpu.usable_cores(_Sys(ASSETS / "cgroup_v1"), 64) == (
        (1, "cgroup cpu.cfs_quota_us") if _affinity() > 1 else (1, "affinity"))
    assert _cpu.usable_cores(_Sys(ASSETS / "cgroup_v2_unlimited"), 64) == (_affinity(), "affinity")


def test_py_cpuinfo_runs_only_without_proc_and_is_cached_per_boot(tmp_path, monkeypatch):
    calls = []
    fake = types.SimpleNamespace(get_cpu_info=lambda: calls.append(1) or {
        "brand_raw": "Apple M2 Pro", "flags": ["avx512bf16"]})
    monkeypatch.setitem(sys.modules, "cpuinfo", fake)
    monkeypatch.setattr(_cpu, "_LINUX", False)  # as on macOS or Windows
    for _ in range(2):
        cpu = _cpu.probe_cpu(_Sys(tmp_path / "no-proc"), {}, cache_dir=tmp_path / "cache")
        assert (cpu.model, cpu.flags) == ("Apple M2 Pro", ["avx512_bf16"])
    assert len(calls) == 1 and len(list((tmp_path / "cache").glob("cpuinfo-*.json"))) == 1


def test_py_cpuinfo_that_hangs_is_abandoned():
    assert _cpu.run_with_timeout(lambda: time.sleep(5), 0.05) == "timed out after 0.05 s"
    assert _cpu.run_with_timeout(lambda: 1 / 0, 1) == "ZeroDivisionError: division by zero"


# ---------------------------------------------------------------- NVML, faked from recorded values
_MESSAGES = {"LibraryNotFound": "NVML Shared Library Not Found", "DriverNotLoaded": "Driver Not Loaded",
             "Unknown": "Unknown Error", "NotSupported": "Not Supported", "NoPermission": "Insufficient Permissions",
             "FunctionNotFound": "Function Not Found", "NotFound": "Not Found", "GpuIsLost": "GPU is lost"}


def fake_nvml(fixture: str | None, *, init_error: str | None = None, fail: dict[str, str] | None = None,
              as_bytes: bool = False, v2_memory: bool = True) -> types.SimpleNamespace:
    """A stand-in for the pynvml module that answers from a JSON fixture.

    fail: 'function:handle' -> error name, e.g. {'nvmlDeviceGetMemoryInfo:0': 'Unknown'};
    handles are '0' for board 0 and '0/1' for its MIG slot 1.
    """
    spec = json.loads((ASSETS / "nvml" / f"{fixture}.json").read_text()) if fixture else {"boards": []}
    fail = fail or {}
    m = types.SimpleNamespace(shutdown_calls=0, nvmlMemory_v2=0x02000028, NVML_TEMPERATURE_GPU=0,
                              NVML_TEMPERATURE_THRESHOLD_SLOWDOWN=1, NVML_DEVICE_MIG_ENABLE=1)

    class NVMLError(Exception):
        def __str__(self) -> str:
            return _MESSAGES[type(self).__name__.removeprefix("NVMLError_")]

    m.NVMLError = NVMLError
    m.NVMLLibraryMismatchError = type("NVMLLibraryMismatchError", (Exception,), {})
    for name in _MESSAGES:
        setattr(m, f"NVMLError_{name}", type(f"NVMLError_{name}", (NVMLError,), {}))

    def s(v):
        return v.encode() if as_bytes else v

    def dev(h):
        b = spec["boards"][int(h.split("/")[0])]
        return next(x for x in b["mig"] if x["slot"] == int(h.split("/")[1])) if "/" in h else b

    def api(fn):
        def call(*args, **kwargs):
            key = f"{fn.__name__}:{args[0]}" if args and isinstance(args[0], str) else fn.__name__
            if key in fail:
                raise getattr(m, f"NVMLError_{fail[key]}")()
            return fn(*args, **kwargs)
        setattr(m, fn.__name__, call)

    def init():
        if init_error:
            raise getattr(m, f"NVMLError_{init_error}")()

    def shutdown():
        m.shutdown_calls += 1

    m.nvmlInit, m.nvmlShutdown = init, shutdown

    @api
    def nvmlSystemGetDriverVersion():
        return s(spec["driver"])

    @api
    def nvmlDeviceGetCount():
        return len(spec["boards"])

    @api
    def nvmlDeviceGetHandleByIndex(i):
        return str(i)

    @api
    def nvmlDeviceGetMigMode(h):
        if "mig_mode" not in dev(h):
            raise m.NVMLError_NotSupported()
        return dev(h)["mig_mode"]

    @api
    def nvmlDeviceGetMaxMigDeviceCount(h):
        return dev(h)["mig_slots"]

    @api
    def nvmlDeviceGetMigDeviceHandleByIndex(h, j):
        if not any(x["slot"] == j for x in dev(h)["mig"]):
            raise m.NVMLError_NotFound()
        return f"{h}/{j}"

    @api
    def nvmlDeviceGetName(h):
        return s(dev(h)["name"])

    @api
    def nvmlDeviceGetUUID(h):
        return s(dev(h)["uuid"])

    @api
    def nvmlDeviceGetMemoryInfo(h, version=None):
        if version is not None and not v2_memory:
            raise m.NVMLError_FunctionNotFound()
        mem = dev(h)["memory"]
        fields = mem if version else {k: mem[k] for k in ("total", "free")} | {"used": mem["used"] + mem["reserved"]}
        return types.SimpleNamespace(**fields)

    def board_metric(key, wrap=lambda v: v):
        def read(h, *_):
            if "/" in h or key not in dev(h):
                raise m.NVMLError_NotSupported()  # MIG handles: these live on the board
            return wrap(dev(h)[key])
        return read

    for name, key, wrap in [("nvmlDeviceGetTemperatureV", "temperature", None),
                            ("nvmlDeviceGetTemperatureThreshold", "slowdown", None),
                            ("nvmlDeviceGetUtilizationRates", "utilization", lambda v: types.SimpleNamespace(gpu=v, memory=0)),
                            ("nvmlDeviceGetCudaComputeCapability", "cc", tuple)]:
        fn = board_metric(key, wrap or (lambda v: v))
        fn.__name__ = name
        api(fn)

    @api
    def nvmlDeviceGetComputeRunningProcesses(h):
        return [types.SimpleNamespace(**p) for p in dev(h).get("processes", [])]

    return m


def test_no_driver_is_a_normal_machine():
    for error in ("LibraryNotFound", "DriverNotLoaded", "Unknown"):
        r = _nvml.probe_nvml(fake_nvml(None, init_error=error), env={})
        assert r.gpus == [] and r.driver is None
        assert r.reasons["gpus"].startswith("no NVIDIA driver (NVML: ")


def test_other_init_failures_and_a_missing_module_leave_gpus_unknown(monkeypatch):
    r = _nvml.probe_nvml(fake_nvml(None, init_error="NoPermission"), env={})
    assert r.gpus is None and "NVML init failed" in r.reasons["gpus"]
    monkeypatch.setitem(sys.modules, "pynvml", None)  # makes `import pynvml` raise ImportError
    r = _nvml.probe_nvml(env={})
    assert r.gpus is None and "nvidia-ml-py" in r.reasons["gpus"]


@pytest.mark.parametrize("as_bytes", [False, True])
def test_one_gpu(as_bytes, monkeypatch):
    nv = fake_nvml("rtx3090", as_bytes=as_bytes)
    (g,) = _nvml.probe_nvml(nv, env={}).gpus
    assert g.name == "NVIDIA GeForce RTX 3090" and g.uuid == "GPU-5d1a0c6e-3f7b-2a4e-9c1d-8e0f6b2a7c31"
    assert (g.index, g.backend, g.is_mig, g.compute_capability) == (0, "cuda", False, "8.6")
    assert (g.memory_total_bytes, g.memory_free_bytes, g.memory_reserved_bytes) == (25769803776, 22836936704, 325058560)
    assert (g.temperature_c, g.temperature_slowdown_c, g.utilization_percent) == (47.0, 95.0, 31.0)
    assert [(p.pid, p.memory_bytes) for p in g.processes] == [(41872, 2583691264), (2217, None)]
    assert g.supports_bf16() and g.torch_usable is None
    assert _nvml.probe_nvml(nv, env={}).driver == "535.183.01" and nv.shutdown_calls == 2


def test_memory_falls_back_to_the_v1_struct_without_reserved():
    (g,) = _nvml.probe_nvml(fake_nvml("rtx3090", v2_memory=False), env={}).gpus
    assert (g.memory_total_bytes, g.memory_free_bytes, g.memory_reserved_bytes) == (25769803776, 22836936704, None)


def test_mig_instances_are_devices_read_through_their_own_handles():
    r = _nvml.probe_nvml(fake_nvml("a100_mig"), env={})
    assert [(g.index, g.name.rsplit(" ", 1)[1], g.memory_total_bytes, g.is_mig) for g in r.gpus] == [
        (0, "3g.20gb", 20937965568, True), (1, "2g.10gb", 10468982784, True), (2, "1g.5gb", 5100273664, True)]
    g = r.gpus[0]
    assert (g.compute_capability, g.temperature_c, g.temperature_slowdown_c) == ("8.0", 34.0, 92.0)  # from the board
    assert g.utilization_percent is None and "Not Supported" in r.reasons["gpus[0].utilization_percent"]
    assert g.processes[0].memory_bytes == 9437184000 and "gpus.mig" in r.reasons


def test_an_error_on_one_device_keeps_the_others():
    nv = fake_nvml("workstation_3090_a6000", fail={"nvmlDeviceGetMemoryInfo:0": "Unknown",
                                                    "nvmlDeviceGetTemperatureV:1": "GpuIsLost"})
    r = _nvml.probe_nvml(nv, env={"CUDA_DEVICE_ORDER": "PCI_BUS_ID"})
    (g,) = r.gpus
    assert (g.index, g.name, g.temperature_c) == (1, "NVIDIA GeForce RTX 3090", None)  # still torch's index 1
    assert r.reasons["gpus[0]"].startswith("left out") and "Unknown Error" in r.reasons["gpus[0].memory"]
    assert "GPU is lost" in r.reasons["gpus[1].temperature_c"] and nv.shutdown_calls == 1


def test_a_board_that_cannot_be_opened_is_skipped():
    r = _nvml.probe_nvml(fake_nvml("workstation_3090_a6000", fail={"nvmlDeviceGetHandleByIndex": "NoPermission"}),
                         env={})
    assert r.gpus == [] and "Insufficient Permissions" in r.reasons["gpus.nvml0"]


A6000, RTX3090 = "GPU-a83e11f0-6c2d-8b47-1f5e-0d9c2b7a4e68", "GPU-5d1a0c6e-3f7b-2a4e-9c1d-8e0f6b2a7c31"


@pytest.mark.parametrize("cvd, uuids, note", [
    (None, [A6000, RTX3090], None),
    ("1,0", [RTX3090, A6000], None),
    ("GPU-5d1a0c6e", [RTX3090], None),  # unique UUID prefixes are allowed
    (f" {RTX3090} , {A6000}", [RTX3090, A6000], None),
    ("0,abc,1", [A6000], "gpus.cuda_visible_devices"),  # CUDA stops at the first bad entry
    ("1,1", [RTX3090], "gpus.cuda_visible_devices"),
    ("7", [], "gpus.cuda_visible_devices"),
    ("", [], "gpus"),
])
def test_cuda_visible_devices(cvd, uuids, note):
    env = {"CUDA_DEVICE_ORDER": "PCI_BUS_ID"} | ({} if cvd is None else {"CUDA_VISIBLE_DEVICES": cvd})
    r = _nvml.probe_nvml(fake_nvml("workstation_3090_a6000"), env=env)
    assert [g.uuid for g in r.gpus] == uuids and [g.index for g in r.gpus] == list(range(len(uuids)))
    assert (note in r.reasons) if note else not r.reasons


def test_mig_uuid_selects_one_instance_and_mixed_models_warn_about_order():
    r = _nvml.probe_nvml(fake_nvml("a100_mig"), env={"CUDA_VISIBLE_DEVICES": "MIG-3a9d0e7b-6c1f-5e4a-8d2b-7f0c3a1e9d45"})
    assert [(g.index, g.memory_total_bytes) for g in r.gpus] == [(0, 10468982784)] and "gpus.mig" not in r.reasons
    r = _nvml.probe_nvml(fake_nvml("a100_mig"), env={"CUDA_VISIBLE_DEVICES": "GPU-0e4f7a42"})
    assert len(r.gpus) == 3  # the board's UUID names all its instances
    assert "gpus.order" in _nvml.probe_nvml(fake_nvml("workstation_3090_a6000"), env={}).reasons


def test_reorder_by_torch_uuids():
    gpus = [Gpu(index=0, name="a", uuid=A6000, memory_total_bytes=1), Gpu(index=1, name="b", uuid=RTX3090, memory_total_bytes=2)]
    out = _nvml.reorder_by_uuids(gpus, [RTX3090[4:], A6000[4:]])
    assert [(g.index, g.name) for g in out] == [(0, "b"), (1, "a")]
    assert _nvml.reorder_by_uuids(gpus, [RTX3090]) == gpus  # different devices: unchanged


# ---------------------------------------------------------------- disks, software, form factor
def test_rotational_follows_partitions_and_device_mapper_slaves(tmp_path):
    _tree(tmp_path, {"sys/devices/pci0/ata1/block/sda/queue/rotational": "1\n",
                     "sys/devices/pci0/ata1/block/sda/sda1/partition": "1\n",
                     "sys/devices/pci0/nvme/block/nvme0n1/queue/rotational": "0\n",
                     "sys/devices/pci0/nvme/block/nvme0n1/nvme0n1p2/partition": "2\n",
                     "sys/devices/virtual/block/dm-0/queue/rotational": "1\n"})
    (tmp_path / "sys/dev/block").mkdir(parents=True)
    (tmp_path / "sys/devices/virtual/block/dm-0/slaves").mkdir()
    (tmp_path / "sys/devices/virtual/block/dm-0/slaves/nvme0n1p2").symlink_to("../../../../pci0/nvme/block/nvme0n1/nvme0n1p2")
    (tmp_path / "sys/dev/block/8:1").symlink_to("../../devices/pci0/ata1/block/sda/sda1")
    (tmp_path / "sys/dev/block/253:0").symlink_to("../../devices/virtual/block/dm-0")
    fs = _Sys(tmp_path)
    assert rotational(fs, os.makedev(8, 1)) is True
    assert rotational(fs, os.makedev(253, 0)) is False  # dm-0's own flag is ignored: its member is an SSD
    assert rotational(fs, os.makedev(0, 51)) is None  # overlay/tmpfs/nfs
    assert rotational(fs, os.makedev(9, 9)) is None


@pytest.mark.parametrize("text, cuda, hip", [
    ("__version__ = '2.5.1+cu124'\ndebug = False\ncuda: Optional[str] = '12.4'\nhip: Optional[str] = None\n", "12.4", None),
    ("__version__ = '2.4.0+rocm6.1'\ncuda: Optional[str] = None\nhip: Optional[str] = '6.1.40091-a8dbc0c19'\n",
     None, "6.1.40091-a8dbc0c19"),
    ("__version__ = '1.13.1+cu117'\ndebug = False\ncuda = '11.7'\ngit_version = 'abc'\nhip = None\n", "11.7", None),
])
def test_torch_build_versions_are_read_from_version_py_text(text, cuda, hip):
    assert (_assigned(text, "cuda"), _assigned(text, "hip")) == (cuda, hip)


def test_torch_build_does_not_import_torch():
    was = "torch" in sys.modules
    assert set(torch_build()) == {"cuda", "hip"}
    assert ("torch" in sys.modules) == was


def _fake_torch(*, cuda=None, hip=None, count=0, mps_bytes=None):
    mps = types.SimpleNamespace(is_available=lambda: mps_bytes is not None)
    props = types.SimpleNamespace(name="AMD Instinct MI300X", total_memory=205822885888)
    return types.SimpleNamespace(
        version=types.SimpleNamespace(cuda=cuda, hip=hip),
        cuda=types.SimpleNamespace(device_count=lambda: count, is_initialized=lambda: False,
                                   is_available=lambda: count > 0, get_device_properties=lambda i: props),
        backends=types.SimpleNamespace(mps=mps),
        mps=types.SimpleNamespace(recommended_max_memory=lambda: mps_bytes),
    )


def test_torch_marks_nvml_gpus_usable_and_adds_mps(monkeypatch):
    cpu = Cpu(model="Apple M2 Pro", logical_cores=12, usable_cores=12)
    nvml_gpus = _nvml.probe_nvml(fake_nvml("workstation_3090_a6000"), env={"CUDA_VISIBLE_DEVICES": "1"}).gpus
    monkeypatch.setitem(sys.modules, "torch", _fake_torch(cuda="12.4", count=1))
    assert [g.torch_usable for g in _with_torch(nvml_gpus, cpu, {})] == [True]
    monkeypatch.setitem(sys.modules, "torch", _fake_torch(cuda=None, count=0))  # a CPU build beside a GPU
    assert [g.torch_usable for g in _with_torch(nvml_gpus, cpu, {})] == [False]
    monkeypatch.setitem(sys.modules, "torch", _fake_torch(mps_bytes=22906503168))
    unavailable = {"gpus": "no NVIDIA driver (NVML: NVML Shared Library Not Found)"}
    (g,) = _with_torch([], cpu, unavailable)
    assert (g.backend, g.name, g.memory_total_bytes, g.torch_usable) == ("mps", "Apple M2 Pro GPU", 22906503168, True)
    assert "gpus" not in unavailable
    monkeypatch.setitem(sys.modules, "torch", _fake_torch(hip="6.2.41133", count=2))
    rocm = _with_torch([], cpu, {})
    assert [(g.index, g.backend, g.memory_total_bytes, g.compute_capability) for g in rocm] == [
        (0, "rocm", 205822885888, None), (1, "rocm", 205822885888, None)]


def test_use_torch_on_this_machine_finds_no_accelerator():
    code = ("import json\nfrom overseer_plan.probe import probe\nh = probe(use_torch=True)\n"
            "print(json.dumps([h.model_dump(mode='json')['gpus'], 'torch' in h.unavailable]))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    gpus, torch_failed = json.loads(out.stdout)
    assert not torch_failed and all(g["torch_usable"] is not None for g in gpus or [])


def test_probe_on_fixture_trees(monkeypatch):
    hw = probe(root=ASSETS / "cgroup_v2", output_dir=REPO)
    assert (hw.ram.limit_bytes, hw.ram.limit_source, hw.ram.effective_bytes) == (2 * GiB, "cgroup v2 memory.max", 2 * GiB)
    assert hw.ram.available_bytes <= GiB  # limit - (usage - inactive_file)
    assert hw.cpu.model == "Intel(R) Xeon(R) Platinum 8488C" and hw.cpu.has_native_bf16()
    assert hw.cpu.usable_cores == min(_affinity(), 2, os.cpu_count())
    assert hw.software.in_container and hw.machine.is_laptop is False
    assert "Rack Mount" in hw.machine.laptop_evidence
    v1 = probe(root=ASSETS / "cgroup_v1")
    assert (v1.ram.limit_bytes, v1.machine.is_laptop) == (GiB, True)  # the mouse battery does not count
    assert "Notebook" in v1.machine.laptop_evidence
    assert probe(root=ASSETS / "cgroup_v1_unlimited").machine.laptop_evidence == "a system battery is present"


def test_probe_never_raises_on_an_empty_tree(tmp_path):
    hw = probe(root=tmp_path, output_dir=tmp_path / "not" / "yet")
    assert hw.cpu.model is None and "cpu.flags" in hw.unavailable
    assert hw.disks[0].path == str(tmp_path / "not" / "yet") and hw.disks[0].free_bytes > 0


# ---------------------------------------------------------------- the real machine
def test_real_probe_is_fast_and_agrees_with_the_os():
    probe()  # first call pays for imports
    start = time.perf_counter()
    hw = probe(output_dir=REPO)
    assert time.perf_counter() - start < 1.0
    meminfo = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines())
    total = int(meminfo["MemTotal"].split()[0]) * 1024
    assert abs(hw.ram.total_bytes - total) <= 0.01 * total
    assert hw.cpu.logical_cores == os.cpu_count()
    st = os.statvfs(REPO)
    assert abs(hw.disks[0].free_bytes - st.f_bavail * st.f_frsize) <= 0.02 * st.f_blocks * st.f_frsize
    assert Hardware.model_validate_json(hw.model_dump_json()) == hw


def test_rlimit_as_is_reported_against_the_current_virtual_size():
    limit = 3 * GiB
    code = ("import resource, json\n"
            f"resource.setrlimit(resource.RLIMIT_AS, ({limit}, resource.getrlimit(resource.RLIMIT_AS)[1]))\n"
            "from overseer_plan.probe import probe\n"
            "r = probe().ram\n"
            "print(json.dumps([r.limit_bytes, r.limit_source, r.effective_bytes, r.total_bytes]))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    got, source, effective, total = json.loads(out.stdout)
    if total <= limit:
        pytest.skip("this machine has less RAM than the test's address-space limit")
    assert source == "RLIMIT_AS" and limit - GiB < got < limit and effective == got


# ---------------------------------------------------------------- CLI
def test_cli_json_and_save_round_trip(tmp_path):
    from overseer_plan.cli import app

    runner = CliRunner()
    res = runner.invoke(app, ["probe", "--json", "--output-dir", str(tmp_path), "--save", str(tmp_path / "hw.json")])
    assert res.exit_code == 0, res.output
    printed = Hardware.model_validate(json.loads(res.stdout))
    saved = Hardware.load(tmp_path / "hw.json")
    assert saved.cpu == printed.cpu and saved.disks[0].path == str(tmp_path)
    human = runner.invoke(app, ["probe", "--data-dir", str(tmp_path)])
    assert human.exit_code == 0 and "usable:" in human.stdout and "Disk    data:" in human.stdout


def test_bad_hardware_files_raise_one_line(tmp_path):
    (tmp_path / "notjson.json").write_text("{oops")
    (tmp_path / "shape.json").write_text(json.dumps({"cpu": {"logical_cores": "many"}}))
    for name in ("missing.json", "notjson.json", "shape.json"):
        with pytest.raises(UserInputError) as e:
            Hardware.load(tmp_path / name)
        assert "\n" not in str(e.value) and "--hardware" in str(e.value)


def test_probe_and_the_cli_do_not_import_torch():
    code = ("import sys\n"
            "import overseer_plan.probe\n"
            "from overseer_plan.cli import app\n"
            "try:\n    app(['probe', '--json'])\nexcept SystemExit:\n    pass\n"
            "print('TORCH_IMPORTED', 'torch' in sys.modules, file=sys.stderr)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert "TORCH_IMPORTED False" in out.stderr and json.loads(out.stdout)["cpu"]["logical_cores"] >= 1
    # The real entry point, as a user runs it: -X importtime lists every module imported.
    out = subprocess.run([sys.executable, "-X", "importtime", "-m", "overseer_plan", "probe", "--json"],
                         capture_output=True, text=True, cwd=REPO, check=True)
    imported = {line.rsplit("|", 1)[-1].strip() for line in out.stderr.splitlines() if line.startswith("import time:")}
    assert "overseer_plan.probe" in imported and "torch" not in imported


def test_human_summary_lists_each_gpu_and_disk_kind():
    from overseer_plan.commands.probe import render

    gpus = _nvml.probe_nvml(fake_nvml("a100_mig"), env={}).gpus
    hw = probe(root=ASSETS / "cgroup_v2", output_dir=REPO).model_copy(update={"gpus": gpus})
    text = render(hw)
    assert "GPU 0   NVIDIA A100-SXM4-40GB MIG 3g.20gb [cuda]: 19.49 GiB free of 19.50 GiB; cc 8.0, 34 °C, MIG" in text
    assert "limit 2.00 GiB (cgroup v2 memory.max), effective 2.00 GiB" in text
    assert text.count("\nGPU ") == 3 and "Disk    output:" in text
