"""`overseer plan`: the fastest config that fits, with the reason for every setting."""

from __future__ import annotations

from pathlib import Path

import typer

from overseer_plan.commands._common import handle_errors, print_json
from overseer_plan.errors import UserInputError

# The smallest --ram / --gpu-mem taken as meant: importing torch alone takes ~240 MiB of RAM
# (calibration.DEFAULTS.import_rss_bytes) and a CUDA context ~290 MiB of device memory
# (DEFAULTS.cuda.context_bytes), so less cannot train anything; it is nearly always a missing
# unit (`--ram 8` is 8 bytes).
_MIN_OVERRIDE_BYTES = 256 * 1024**2


def _size(text: str | None, flag: str) -> int | None:
    from overseer_plan.units import parse_size

    if text is None:
        return None
    n = parse_size(text, what=flag)  # '' is an error too, not "no override"
    if n < _MIN_OVERRIDE_BYTES:
        raise UserInputError(f"{flag} {text!r} is only {n:,} bytes; give a unit, e.g. {flag} 8GiB (at least 256MiB)")
    return n


def _hardware(hardware: Path | None, ram: str | None, gpu_mem: str | None, gpus: int | None,
              cpu_only: bool, output_dir: Path):
    """The machine to plan for: probed, or loaded, with command-line overrides applied."""
    from overseer_plan.hardware import Hardware
    from overseer_plan.overrides import with_overrides

    if cpu_only and gpus:
        raise UserInputError(f"--gpus {gpus} and --cpu-only contradict each other; drop one")
    if gpu_mem is not None and (cpu_only or gpus == 0):
        flag = "--cpu-only" if cpu_only else "--gpus 0"
        raise UserInputError(f"--gpu-mem has no GPU to apply to with {flag}; drop one of them")
    ram_bytes, gpu_mem_bytes = _size(ram, "--ram"), _size(gpu_mem, "--gpu-mem")
    if hardware is not None:
        hw = Hardware.load(hardware)
    else:
        from overseer_plan.probe import probe

        hw = probe(output_dir=str(output_dir))
    return with_overrides(hw, ram_bytes=ram_bytes, gpu_mem_bytes=gpu_mem_bytes, gpus=gpus, cpu_only=cpu_only)


def user_config(*, resource_efficient: bool, standard: bool, **settings):
    """A TrainingConfig holding only what the user set on the command line."""
    from overseer_plan.config import TrainingConfig

    if resource_efficient and standard:
        raise UserInputError("--standard and --resource-efficient exclude each other; pick one")
    given = {k: v for k, v in settings.items() if v is not None}
    mode = "resource-efficient" if resource_efficient else "standard" if standard else None
    if mode:
        given["resource_efficient_mode"] = mode == "resource-efficient"
    return TrainingConfig.from_dict(given, what="the command line"), mode


@handle_errors
def plan_command(
    model: str = typer.Option(None, "--model", "-m", help="Catalogue name, HF hub id or local directory (default: overseer-tiny)."),
    standard: bool = typer.Option(False, "--standard", help="Use the standard preset."),
    resource_efficient: bool = typer.Option(False, "--resource-efficient", help="Use the resource-efficient preset."),
    purpose: str = typer.Option(None, "--purpose", help="development | production | speed: what the run is for "
                                                          "(the spec's When to Use lists)."),
    hardware: Path = typer.Option(None, "--hardware", help="Plan for a profile saved by `overseer probe --save`."),
    ram: str = typer.Option(None, "--ram", help="Plan for this much RAM, e.g. 8GiB."),
    gpu_mem: str = typer.Option(None, "--gpu-mem", help="Plan for GPUs with this much memory, e.g. 4GiB."),
    gpus: int = typer.Option(None, "--gpus", min=0, help="Plan for this many GPUs (one process each)."),
    cpu_only: bool = typer.Option(False, "--cpu-only", help="Plan CPU-only training."),
    batch_size: int = typer.Option(None, "--batch-size", min=1, help="Micro-batch size (fixed unless the fit may re-split)."),
    gradient_accumulation_steps: int = typer.Option(None, "--gradient-accumulation-steps", min=1),
    max_sequence_length: int = typer.Option(None, "--max-sequence-length", min=8),
    allow_sequence_reduction: bool = typer.Option(False, "--allow-sequence-reduction",
                                                  help="Let the fit shorten sequences (changes what is learned)."),
    rules: list[Path] = typer.Option([], "--rules", help="Extra rules directory; overrides shipped rules by id."),
    output: Path = typer.Option(None, "-o", "--output", help="Write the plan as YAML for `overseer train --config`."),
    output_dir: Path = typer.Option(Path("."), "--output-dir", help="Where checkpoints will go (disk check)."),
    validate: bool = typer.Option(True, "--validate/--no-validate", help="Confirm the winner with the traced dry run."),
    explain: bool = typer.Option(False, "--explain", help="Show every candidate tried and why it lost."),
    as_json: bool = typer.Option(False, "--json", help="Print the plan as JSON."),
) -> None:
    """Pick the mode and the fastest settings that fit this machine, and explain each one.

    Examples:

        overseer plan --model gpt2 --ram 8GiB --gpu-mem 4GiB

        overseer plan --model ./my-model --explain -o plan.yaml && overseer train --config plan.yaml
    """
    from overseer_plan._io import check_dir_option, check_output_file
    from overseer_plan.plan import Workload, make_plan
    from overseer_plan.rules import load_rulebook

    # Paths first: a bad -o must not cost a plan (a validated one takes seconds).
    if output is not None:
        check_output_file(output, flag="-o")
    check_dir_option(output_dir, flag="--output-dir")
    book = load_rulebook(rules)
    cfg, mode = user_config(resource_efficient=resource_efficient, standard=standard, model=model,
                            batch_size=batch_size, gradient_accumulation_steps=gradient_accumulation_steps,
                            max_sequence_length=max_sequence_length,
                            allow_sequence_reduction=allow_sequence_reduction or None,
                            purpose=purpose,
                            use_gpu=False if cpu_only else None)
    hw = _hardware(hardware, ram, gpu_mem, gpus, cpu_only, output_dir)
    workload = Workload(model=model, config=cfg, mode=mode, num_processes=max(1, gpus or 1),
                        validate_plan=validate)
    plan = make_plan(hw, workload, book)
    if output is not None and plan.feasible:  # an infeasible plan would replace a good one with nothing to train
        from overseer_plan.plan_file import save_plan

        try:
            save_plan(plan, output)
        except OSError as e:
            raise UserInputError(f"-o {output}: cannot write it ({e.strerror or e}); pick another path") from None
    if as_json:
        print_json(plan)
    else:
        from overseer_plan.commands._render_plan import render_plan

        typer.echo(render_plan(plan, explain=explain))
    if not plan.feasible:
        if output is not None:
            kept = "left as it was" if output.exists() else "not created"
            typer.echo(f"overseer: nothing fits, so no plan was written; {output} {kept}", err=True)
        raise typer.Exit(code=1)
