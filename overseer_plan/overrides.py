"""Plan for a machine you are not on: replace probed resources with sizes given on the command line."""

from __future__ import annotations

from overseer_plan.hardware import Gpu, Hardware


def with_overrides(hw: Hardware, *, ram_bytes: int | None = None, gpu_mem_bytes: int | None = None,
                   gpus: int | None = None, cpu_only: bool = False) -> Hardware:
    """A copy of `hw` with RAM, GPU memory, GPU count or CPU-only set by hand.

    An overridden resource is taken as idle (nothing else holds it) and unlimited by
    containers, since the user describes the machine to plan for. An overridden GPU has an
    unknown compute capability, so the plan assumes fp16 rather than guessing bf16 support.
    """
    hw = hw.model_copy(deep=True)
    notes = list(hw.overrides)
    if ram_bytes is not None:
        hw.ram = hw.ram.model_copy(update={
            "total_bytes": ram_bytes, "available_bytes": ram_bytes, "effective_bytes": ram_bytes,
            "limit_bytes": None, "limit_source": None, "used_by_others_bytes": 0, "top_processes": [],
        })
        notes.append(f"ram={ram_bytes}")
    if cpu_only:
        hw.gpus = []
        notes.append("cpu_only")
    elif gpu_mem_bytes is not None or gpus is not None:
        hw.gpus = _gpus(hw, gpu_mem_bytes, gpus)
        notes.append(f"gpus={len(hw.gpus)}" + (f",gpu_mem={gpu_mem_bytes}" if gpu_mem_bytes else ""))
    hw.overrides = notes
    return hw


def _gpus(hw: Hardware, mem: int | None, count: int | None) -> list[Gpu]:
    template = (hw.gpus or [None])[0]
    n = count if count is not None else max(1, len(hw.gpus or []))
    if mem is None and template is None:
        from overseer_plan.errors import UserInputError

        raise UserInputError("--gpus needs --gpu-mem SIZE on a machine without a GPU (e.g. --gpus 2 --gpu-mem 24GiB)")
    out = []
    for i in range(n):
        if mem is None:
            out.append(template.model_copy(update={"index": i, "uuid": None, "processes": []}))
        else:
            out.append(Gpu(index=i, name="planned GPU (--gpu-mem)", memory_total_bytes=mem, memory_free_bytes=mem))
    return out
