"""Synthetic hardware profiles for tests: a quiet 2-core Linux box unless told otherwise."""

from __future__ import annotations

from typing import Any

from overseer_plan.hardware import Cpu, Disk, Gpu, Hardware, ProcessMemory, Ram, Sensor, Software

GB = 1000**3
GiB = 1024**3


def gpu(memory_gb: float, *, index: int = 0, name: str = "NVIDIA Test GPU", **kw: Any) -> Gpu:
    """A CUDA GPU with `memory_gb` decimal gigabytes, idle and cool unless overridden."""
    fields: dict[str, Any] = dict(index=index, name=name, uuid=f"GPU-{index:08d}-1111-2222-3333-444455556666",
                                  memory_total_bytes=int(memory_gb * GB), memory_free_bytes=int(memory_gb * GB),
                                  compute_capability="8.6", temperature_c=45.0, temperature_slowdown_c=90.0)
    fields.update(kw)
    return Gpu(**fields)


def make_hw(
    *,
    ram_gb: float = 16.0,
    limit_gb: float | None = None,
    limit_source: str | None = None,
    others_gb: float = 1.0,
    top: list[ProcessMemory] | None = None,
    gpus: list[Gpu] | None = None,
    cores: int = 2,
    free_gb: float = 100.0,
    rotational: bool | None = False,
    temps: list[Sensor] | None = None,
    software: dict[str, Any] | None = None,
    **kw: Any,
) -> Hardware:
    """A Hardware profile; sizes in decimal GB as the spec writes them."""
    total = int(ram_gb * GB)
    limit = int(limit_gb * GB) if limit_gb is not None else None
    effective = min(total, limit) if limit is not None else total
    ram = Ram(total_bytes=total, available_bytes=effective - int(others_gb * GB), limit_bytes=limit,
              limit_source=limit_source if limit is not None else None, effective_bytes=effective,
              used_by_others_bytes=int(others_gb * GB), top_processes=top or [])
    sw = dict(os="Linux-6.1-x86_64-with-glibc2.36", python="3.11.7", torch="2.5.1", cuda="12.4",
              transformers="4.46.0", accelerate="1.1.0", nvidia_ml_py="12.560.30", nvidia_driver="550.54.15")
    sw.update(software or {})
    return Hardware(
        cpu=Cpu(model="Test CPU", logical_cores=cores, usable_cores=cores, flags=["avx2", "fma"], architecture="x86_64"),
        ram=ram,
        gpus=[] if gpus is None else gpus,
        disks=[Disk(path="/work/out", role="output", free_bytes=int(free_gb * GB), total_bytes=int(500 * GB),
                    rotational=rotational, fstype="ext4")],
        temperatures=temps if temps is not None else [Sensor(chip="coretemp", label="Package id 0", current_c=50.0,
                                                             high_c=100.0, critical_c=105.0)],
        software=Software(**sw),
        **kw,
    )
