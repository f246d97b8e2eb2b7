"""`overseer doctor oom|slow|overwhelmed`: walk one troubleshooting ladder with concrete numbers."""

from __future__ import annotations

from pathlib import Path

import typer

from overseer_plan.commands._common import handle_errors, print_json

_MARK = {"helps": "[✓]", "no effect": "[-]", "does not help": "[✗]", "advice": "[•]"}


def _walk(symptom: str, config: Path | None, model: str | None, hardware: Path | None, ram: str | None,
          gpu_mem: str | None, cpu_only: bool, rules: list[Path], as_json: bool) -> None:
    from overseer_plan.commands.plan import _hardware
    from overseer_plan.config import TrainingConfig
    from overseer_plan.ladder import walk_ladder
    from overseer_plan.plan import DEFAULT_MODEL, Workload, make_plan
    from overseer_plan.rules import load_rulebook

    book = load_rulebook(rules)
    hw = _hardware(hardware, ram, gpu_mem, None, cpu_only, Path("."))
    if config is not None:
        cfg = TrainingConfig.load(config)
        name = model or cfg.model or DEFAULT_MODEL
        device = "cuda" if (hw.gpus and cfg.use_gpu) else "cpu"
        origin = f"from {config}"
    else:
        plan = make_plan(hw, Workload(model=model, validate_plan=False), book)
        cfg, name, device = plan.config, model or DEFAULT_MODEL, plan.device
        origin = "from the plan for this machine (overseer plan)"
    report = walk_ladder(symptom, cfg, hw, model=name, device=device, rulebook=book)
    if as_json:
        print_json(report)
        return
    from overseer_plan.units import fmt_bytes

    typer.echo(f"{symptom} ladder for {name} on {device}, starting {origin}; budget {fmt_bytes(report.budget_bytes)}")
    for r in report.rungs:
        typer.echo(f"{_MARK[r.verdict]} step {r.step}: {r.change}  [{r.rule}]")
        typer.echo(f"      {r.verdict}: {r.detail}")
    changed = {k: v for k, v in report.final.items() if report.start.get(k) != v}
    typer.echo("Result: " + (", ".join(f"{k}={v}" for k, v in changed.items()) if changed else "no rung helps here"))


def _command(symptom: str, summary: str):
    @handle_errors
    def command(
        config: Path = typer.Option(None, "--config", help="Start from this config or plan file (default: plan one)."),
        model: str = typer.Option(None, "--model", "-m", help="Model (default: the config's, else overseer-tiny)."),
        hardware: Path = typer.Option(None, "--hardware", help="A profile saved by `overseer probe --save`."),
        ram: str = typer.Option(None, "--ram", help="Assume this much RAM, e.g. 8GiB."),
        gpu_mem: str = typer.Option(None, "--gpu-mem", help="Assume a GPU with this much memory."),
        cpu_only: bool = typer.Option(False, "--cpu-only", help="Assume CPU-only training."),
        rules: list[Path] = typer.Option([], "--rules", help="Extra rules directory."),
        as_json: bool = typer.Option(False, "--json", help="Print the walk as JSON."),
    ) -> None:
        _walk(symptom, config, model, hardware, ram, gpu_mem, cpu_only, rules, as_json)

    command.__doc__ = f"""{summary}

    Each rung of the spec's ladder with its estimated effect on peak memory and speed here.

    Example: overseer doctor {symptom} --config plan.yaml
    """
    return command


def register(doctor_app: typer.Typer) -> None:
    """Add the three ladder subcommands to `overseer doctor`."""
    doctor_app.command("oom")(_command("oom", "Out of memory: what to change, in the spec's order, with numbers."))
    doctor_app.command("slow")(_command("slow", "Slow training: what to change, with the estimated speed-up."))
    doctor_app.command("overwhelmed")(_command("overwhelmed", "System overwhelmed: what to free or change."))
