"""`overseer probe`: print or save what this machine offers a training run."""

from __future__ import annotations

from pathlib import Path

import typer

from overseer_plan.commands._common import handle_errors, print_json
from overseer_plan.hardware import Disk, Gpu, Hardware
from overseer_plan.units import fmt_bytes


@handle_errors
def probe_command(
    json_out: bool = typer.Option(False, "--json", help="Print the profile as JSON (the Hardware model)."),
    save: Path | None = typer.Option(None, "--save", metavar="FILE",
                                     help="Also write the profile to FILE (JSON, atomically) for --hardware later."),
    output_dir: Path = typer.Option(Path("."), "--output-dir", metavar="DIR",
                                    help="Where checkpoints will go; its free space is reported."),
    data_dir: Path | None = typer.Option(None, "--data-dir", metavar="DIR",
                                         help="Where the data set lives; its free space is reported too."),
) -> None:
    """Read this machine: CPU, usable cores, RAM (container-aware), GPUs, disks, temperatures.

    Examples:

        overseer probe --output-dir /data/ckpt

        overseer probe --json --save hardware.json   # then: overseer plan --hardware hardware.json
    """
    from overseer_plan._io import check_dir_option, check_output_file
    from overseer_plan.errors import UserInputError
    from overseer_plan.probe import probe

    if save is not None:
        check_output_file(save, flag="--save")
    check_dir_option(output_dir, flag="--output-dir")
    hw = probe(output_dir=output_dir, data_dir=data_dir)
    if save is not None:
        try:
            hw.save(save)
        except OSError as e:
            raise UserInputError(f"--save {save}: cannot write it ({e.strerror or e}); pick another path") from None
    if json_out:
        print_json(hw)
    else:
        typer.echo(render(hw))
        if save is not None:
            typer.echo(f"saved: {save}")


def render(hw: Hardware) -> str:
    """A compact, readable summary of a profile."""
    why = hw.unavailable
    cpu, ram = hw.cpu, hw.ram
    lines = [
        f"CPU     {cpu.model or 'unknown'} ({cpu.architecture or '?'}), {cpu.logical_cores} logical / "
        f"{cpu.physical_cores or '?'} physical cores",
        f"        usable: {cpu.usable_cores} core{'s' if cpu.usable_cores != 1 else ''} (limited by {cpu.usable_cores_source}); "
        f"flags: {' '.join(cpu.flags) or 'none of note'}",
        f"RAM     total {fmt_bytes(ram.total_bytes)}, available {fmt_bytes(ram.available_bytes)}, "
        f"limit {_limit(ram.limit_bytes, ram.limit_source)}, effective {fmt_bytes(ram.effective_bytes)}",
    ]
    if hw.gpus:
        lines += [_gpu(g) for g in hw.gpus]
    else:
        lines.append(f"GPU     none ({why.get('gpus', 'no GPU found')})")
    lines += [_disk(d) for d in hw.disks or []] or [f"Disk    unknown ({why.get('disks', 'not checked')})"]
    if hw.temperatures:
        hottest = max(hw.temperatures, key=lambda s: s.current_c)
        lines.append(f"Temp    {len(hw.temperatures)} sensors, hottest {hottest.chip} {hottest.label} "
                     f"{hottest.current_c:.0f} °C")
    else:
        lines.append(f"Temp    unavailable ({why.get('temperatures', 'unknown')})")
    sw = hw.software
    lines.append(f"Soft    python {sw.python}, torch {sw.torch or 'not installed'}"
                 f" ({'CUDA ' + sw.cuda if sw.cuda else 'ROCm ' + sw.hip if sw.hip else 'CPU build'})"
                 + (f", NVIDIA driver {sw.nvidia_driver}" if sw.nvidia_driver else "")
                 + (", in a container" if sw.in_container else "") + (", WSL" if sw.wsl else ""))
    return "\n".join(lines)


def _limit(limit: int | None, source: str | None) -> str:
    return "none" if limit is None else f"{fmt_bytes(limit)} ({source})"


def _gpu(g: Gpu) -> str:
    free = f"{fmt_bytes(g.memory_free_bytes)} free of " if g.memory_free_bytes is not None else ""
    extras = [f"cc {g.compute_capability}" if g.compute_capability else None,
              f"{g.temperature_c:.0f} °C" if g.temperature_c is not None else None,
              "MIG" if g.is_mig else None,
              f"{len(g.processes)} other process{'es' if len(g.processes) != 1 else ''}" if g.processes else None]
    tail = ", ".join(x for x in extras if x)
    return f"GPU {g.index:<3} {g.name} [{g.backend}]: {free}{fmt_bytes(g.memory_total_bytes)}" + (f"; {tail}" if tail else "")


def _disk(d: Disk) -> str:
    kind = {True: "HDD (as reported)", False: "SSD", None: "unknown kind"}[d.rotational]
    return f"Disk    {d.role}: {d.path}: {fmt_bytes(d.free_bytes)} free of {fmt_bytes(d.total_bytes)} ({d.fstype or '?'}, {kind})"
