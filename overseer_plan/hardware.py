"""The hardware profile: what `probe()` reads and every later step plans from.

These models are a contract: `overseer probe --json` prints them, scripts read
the key names, and `--hardware FILE` loads them back to plan for a machine you
are not on. Every part that could not be read is `None`, with the reason kept
in `Hardware.unavailable` under the part's key (e.g. ``"gpus"``).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationError, field_validator

from overseer_plan._model import FiniteModel as _Model
from overseer_plan.errors import UserInputError

SCHEMA_VERSION = 1
"""The profile format this code reads and writes."""

# Sizes and counts below carry bounds: a saved profile may be edited by hand, and a negative size
# would otherwise come out as "RAM training can use: -7.45 GiB" or a plan for nothing.


class Cpu(_Model):
    model: str | None = None
    """CPU brand string, e.g. 'AMD EPYC 7B13'."""
    logical_cores: int = Field(ge=1)
    """Logical CPUs the OS reports (os.cpu_count())."""
    physical_cores: int | None = Field(default=None, ge=1)
    """Physical cores, when the OS tells them apart."""
    usable_cores: int = Field(ge=1)
    """Cores this process may really use: affinity mask and cgroup CPU quota intersected."""
    usable_cores_source: str = "affinity"
    """What limits `usable_cores`: 'affinity', 'cgroup cpu.max', 'cgroup cpu.cfs_quota_us', ..."""
    flags: list[str] = Field(default_factory=list)
    """Training-relevant ISA flags, normalised: avx2, fma, f16c, avx512f, avx512_bf16, amx_bf16, ..."""
    architecture: str | None = None
    """Machine architecture, e.g. 'x86_64' or 'arm64'."""

    def has_native_bf16(self) -> bool:
        """True when the CPU runs bf16 natively (AVX512-BF16 or AMX-BF16; ARM bf16)."""
        return bool({"avx512_bf16", "amx_bf16", "bf16"} & set(self.flags))


class ProcessMemory(_Model):
    pid: int = Field(ge=0)
    """Process id (host PID for NVML entries inside containers)."""
    name: str | None = None
    """Process name, when readable."""
    memory_bytes: int | None = Field(default=None, ge=0)
    """Resident memory (RAM) or device memory used (GPU), None when not reported."""


class Ram(_Model):
    total_bytes: int = Field(gt=0)
    """Host RAM as /proc/meminfo reports it (not container-aware)."""
    available_bytes: int = Field(ge=0)
    """RAM available to new allocations without swapping, container-aware."""
    limit_bytes: int | None = Field(default=None, ge=0)
    """Tightest of the cgroup memory limit and RLIMIT_AS headroom; None when unlimited."""
    limit_source: str | None = None
    """Which limit binds: e.g. 'cgroup v2 memory.max', 'cgroup v1 memory.limit_in_bytes', 'RLIMIT_AS'."""
    effective_bytes: int = Field(gt=0)
    """What training can really use: min(total, limit)."""
    used_by_others_bytes: int = Field(ge=0)
    """RAM held by everything but this process (within the effective limit)."""
    swap_total_bytes: int | None = Field(default=None, ge=0)
    """Swap size, when readable."""
    top_processes: list[ProcessMemory] = Field(default_factory=list)
    """Largest other consumers of RAM, biggest first."""


class Gpu(_Model):
    index: int = Field(ge=0)
    """Index in torch's device order (after CUDA_VISIBLE_DEVICES)."""
    name: str
    """Marketing name, e.g. 'NVIDIA GeForce RTX 3070 Laptop GPU'."""
    uuid: str | None = None
    """NVML UUID ('GPU-…' or 'MIG-…'); redacted in reports."""
    backend: Literal["cuda", "rocm", "mps"] = "cuda"
    """Which torch backend drives it."""
    memory_total_bytes: int = Field(gt=0)
    """Device memory in total (MPS: recommended maximum working set)."""
    memory_free_bytes: int | None = Field(default=None, ge=0)
    """Device memory free right now (plan from this, not 'used')."""
    memory_reserved_bytes: int | None = Field(default=None, ge=0)
    """Memory the driver reserves (NVML v2 API), None where unsupported."""
    temperature_c: float | None = None
    """Core temperature, degrees Celsius."""
    temperature_slowdown_c: float | None = None
    """Temperature at which the GPU starts throttling, when NVML reports it."""
    utilization_percent: float | None = Field(default=None, ge=0, le=100)
    """Compute utilisation over the last sample period."""
    compute_capability: str | None = None
    """CUDA compute capability, e.g. '8.6'; None for ROCm/MPS."""
    is_mig: bool = False
    """True for a MIG instance (its own device to CUDA)."""
    processes: list[ProcessMemory] = Field(default_factory=list)
    """Other processes using this GPU, with their device memory."""
    torch_usable: bool | None = None
    """Whether torch in this environment can use it; None when torch was not checked."""

    @field_validator("compute_capability")
    @classmethod
    def _major_minor(cls, v: str | None) -> str | None:
        # supports_bf16() reads it as a number; 'abc' would crash the planner far from the file.
        if v is not None and not re.fullmatch(r"\d+\.\d+", v):
            raise ValueError(f"compute capability must be MAJOR.MINOR such as '8.6' (got {v!r})")
        return v

    def supports_bf16(self) -> bool:
        """bf16 needs Ampere (8.0) or newer on CUDA; ROCm MI-series and MPS (macOS 14+) also have it."""
        if self.backend == "cuda" and self.compute_capability:
            return float(self.compute_capability) >= 8.0
        return self.backend in ("rocm", "mps")


class Disk(_Model):
    path: str
    """The directory checked (output or data directory)."""
    role: str = "output"
    """What goes there: 'output' (checkpoints) or 'data'."""
    free_bytes: int = Field(ge=0)
    """Free space for this user."""
    total_bytes: int = Field(ge=0)
    """Size of the filesystem."""
    rotational: bool | None = None
    """True for a spinning disk, False for SSD/NVMe, None when it cannot be told."""
    fstype: str | None = None
    """Filesystem type, e.g. 'ext4', 'nfs', 'overlay'."""


class Sensor(_Model):
    chip: str
    """Sensor chip, e.g. 'coretemp', 'k10temp'."""
    label: str = ""
    """Sensor label, e.g. 'Package id 0'."""
    current_c: float
    """Current reading, degrees Celsius."""
    high_c: float | None = None
    """Vendor 'high' threshold."""
    critical_c: float | None = None
    """Vendor 'critical' threshold."""


class Software(_Model):
    os: str | None = None
    """platform.platform()."""
    python: str | None = None
    """Python version."""
    torch: str | None = None
    """Installed torch version (read from package metadata, torch not imported)."""
    cuda: str | None = None
    """CUDA runtime torch was built with; None for CPU builds."""
    hip: str | None = None
    """ROCm/HIP version torch was built with, if any."""
    transformers: str | None = None
    """Installed transformers version."""
    accelerate: str | None = None
    """Installed accelerate version."""
    nvidia_ml_py: str | None = None
    """Installed nvidia-ml-py version (provides `import pynvml`)."""
    pynvml_distribution: str | None = None
    """Version of the deprecated `pynvml` distribution if installed (it clashes)."""
    nvidia_driver: str | None = None
    """NVIDIA driver version from NVML."""
    in_container: bool = False
    """Running inside a container (docker, podman, kubernetes)."""
    wsl: bool = False
    """Running under Windows Subsystem for Linux."""


class Machine(_Model):
    is_laptop: bool | None = None
    """True when a battery or a laptop chassis type is found; None when unknown."""
    laptop_evidence: str | None = None
    """Why it is thought to be a laptop (battery, DMI chassis type)."""


class Hardware(_Model):
    """Everything Overseer knows about the machine."""

    schema_version: int = SCHEMA_VERSION
    """Version of this format."""
    cpu: Cpu
    """The CPU."""
    ram: Ram
    """Host memory, container-aware."""
    gpus: list[Gpu] | None = None
    """Devices training could use; [] when none, None when it could not be told."""
    disks: list[Disk] | None = None
    """Free space where outputs and data go."""
    temperatures: list[Sensor] | None = None
    """Temperature sensors; None when the OS exposes none (reason in `unavailable`)."""
    software: Software = Field(default_factory=Software)
    """Versions and environment."""
    machine: Machine = Field(default_factory=Machine)
    """Form factor hints."""
    unavailable: dict[str, str] = Field(default_factory=dict)
    """Part -> reason it could not be read (e.g. 'gpus': 'NVML: driver not loaded')."""
    overrides: list[str] = Field(default_factory=list)
    """What was set by hand (--ram, --gpu-mem, ...) rather than probed."""

    @field_validator("schema_version")
    @classmethod
    def _known_version(cls, v: int) -> int:
        if v != SCHEMA_VERSION:
            raise ValueError(f"unknown schema version {v} (this overseer reads {SCHEMA_VERSION})")
        return v

    # ---- derived values, computed in one place ----
    def smallest_gpu_bytes(self) -> int | None:
        """The smallest device memory among usable GPUs (what a data-parallel plan must fit)."""
        if not self.gpus:
            return None
        return min(g.memory_total_bytes for g in self.gpus)

    # ---- persistence ----
    def save(self, path: str | Path) -> None:
        """Write the profile as JSON, atomically."""
        from overseer_plan._io import atomic_write_text

        atomic_write_text(Path(path), self.model_dump_json(indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> Hardware:
        """Read a profile saved by `overseer probe --save`.

        Raises:
            UserInputError: unreadable, not JSON, or not a hardware profile (every bad value named:
                negative sizes, NaN, an unknown schema version, ...).
        """
        from overseer_plan._io import read_user_text

        p = Path(path)
        hint = f"save one with `overseer probe --save {p.name}`"
        text = read_user_text(p, what=f"--hardware {p}", hint=hint)
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise UserInputError(f"--hardware {p}: not valid JSON (line {e.lineno}: {e.msg}); {hint}") from None
        try:
            return cls.model_validate(data)
        except ValidationError as e:
            problems = [f"{'.'.join(str(x) for x in err['loc']) or '(top level)'}: {err['msg'].removeprefix('Value error, ')}"
                        for err in e.errors()]
            n = len(problems)  # every problem at once, so one edit fixes the file
            raise UserInputError(f"--hardware {p}: not a valid hardware profile ({n} problem{'s' if n > 1 else ''}): "
                                 f"{'; '.join(problems)}; {hint}") from None
