"""`overseer estimate`: predict the peak memory of one training step."""

from __future__ import annotations

from typing import Optional

import typer

from overseer_plan.commands._common import handle_errors, print_json
from overseer_plan.errors import UserInputError

_HELP = """Predict the peak memory of one training step, without touching real memory.

Examples:

  overseer estimate --model llama-3.2-1b --batch-size 4 --seq-len 1024 --precision bf16 --device cuda

  overseer estimate --model ./my-model/config.json --method traced --gradient-checkpointing --json
"""


@handle_errors
def estimate_command(
    model: str = typer.Option("overseer-tiny", "--model", "-m", help="Catalogue name, config.json path, model dir or Hub id."),
    batch_size: int = typer.Option(1, "--batch-size", "-b", help="Micro-batch size."),
    seq_len: int = typer.Option(512, "--seq-len", "-s", help="Tokens per sequence."),
    grad_accum: int = typer.Option(1, "--grad-accum", help="Micro-batches per optimizer step."),
    precision: str = typer.Option("fp32", "--precision", help="fp32 | fp16 | bf16 (autocast) | bf16-pure."),
    gradient_checkpointing: bool = typer.Option(
        False, "--gradient-checkpointing/--no-gradient-checkpointing", help="Recompute blocks in backward."
    ),
    optimizer: str = typer.Option("adamw", "--optimizer", help="adamw | sgd | adafactor | adamw8bit."),
    attention: str = typer.Option("sdpa", "--attention", help="eager | sdpa."),
    lora_rank: Optional[int] = typer.Option(None, "--lora-rank", help="Train LoRA adapters of this rank on a frozen base."),  # noqa: UP045
    lora_targets: Optional[str] = typer.Option(  # noqa: UP045
        None, "--lora-targets", help="Comma-separated linear layers to adapt (default: the family's query/value)."),
    lora_dropout: float = typer.Option(0.0, "--lora-dropout", help="peft's lora_dropout (each adapter keeps a copy of its input)."),
    device: str = typer.Option("cpu", "--device", help="cpu | cuda: the device that trains."),
    method: str = typer.Option("analytic", "--method", help="analytic (instant) | traced (fake-tensor dry run, seconds)."),
    calibrate: bool = typer.Option(False, "--calibrate", help="First measure this machine (about 3 minutes on 2 cores) and store its factors."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """Predict the peak memory of one training step, without touching real memory."""
    from overseer_plan.estimate import EstimateConfig, LoraSettings, estimate

    choices = {
        "precision": (precision, ("fp32", "fp16", "bf16", "bf16-pure")),
        "optimizer": (optimizer, ("adamw", "sgd", "adafactor", "adamw8bit")),
        "attention": (attention, ("eager", "sdpa")),
        "device": (device, ("cpu", "cuda")),
        "method": (method, ("analytic", "traced")),
    }
    for flag, (value, allowed) in choices.items():
        if value not in allowed:
            raise UserInputError(f"--{flag}: {value!r} is not one of {', '.join(allowed)}")
    if lora_rank is not None and lora_rank < 1:
        raise UserInputError(f"--lora-rank must be at least 1 (got {lora_rank})")
    if lora_rank is None and (lora_targets is not None or lora_dropout):
        raise UserInputError("--lora-targets and --lora-dropout need --lora-rank")
    if not 0 <= lora_dropout < 1:
        raise UserInputError(f"--lora-dropout must be at least 0 and below 1 (got {lora_dropout})")
    targets = [t.strip() for t in lora_targets.split(",") if t.strip()] if lora_targets is not None else None
    if targets is not None and not targets:
        raise UserInputError("--lora-targets: give at least one layer name, e.g. q_proj,v_proj")
    cfg = EstimateConfig.build(
        batch_size=batch_size, seq_len=seq_len, grad_accum=grad_accum, precision=precision,
        gradient_checkpointing=gradient_checkpointing, optimizer=optimizer, attention=attention,
        lora=LoraSettings(rank=lora_rank, targets=targets, dropout=lora_dropout) if lora_rank is not None else None,
    )
    if calibrate:
        from overseer_plan.calibration import calibrate as run_calibration
        from overseer_plan.calibration import calibration_path
        from overseer_plan.models import resolve

        if device == "cuda" and not _cuda_available():
            raise UserInputError("--calibrate --device cuda needs a CUDA GPU that torch can see; run it on the GPU machine")
        # Calibrating takes minutes and replaces calibration.json: a bad --model must fail before it.
        resolve(model)
        # With --device cuda only the GPU side is measured (seconds); otherwise the CPU side too.
        cal = run_calibration(cpu=device != "cuda")
        replay = (f"{cal.cpu.replay_constant_bytes / 2**20:.0f} MiB over the real-allocator replay"
                  if cal.cpu.replay_constant_bytes is not None else "replay unavailable here")
        if device != "cuda":
            typer.echo(
                f"calibrated: {cal.cpu.churn_fraction:.4f} x heap churn + {cal.cpu.constant_bytes / 2**20:.0f} MiB "
                f"over the allocator model; {replay}; {cal.cpu.half_precision_bytes / 2**20:+.0f} MiB at 16-bit "
                f"precision -> {calibration_path()}",
                err=True,
            )
        if "--calibrate" in cal.cuda.provenance:  # this machine's GPU was measured
            typer.echo(f"calibrated cuda: {cal.cuda.provenance} -> {calibration_path()}", err=True)
    est = estimate(model, cfg, device=device, method=method)  # type: ignore[arg-type]
    if as_json:
        print_json(est)
        return
    _render(est)


def _cuda_available() -> bool:
    import torch

    return bool(torch.cuda.is_available())


def _render(est: object) -> None:
    from overseer_plan.units import fmt_bytes

    e = est  # MemoryEstimate
    info, cfg, bd = e.model_info, e.config, e.breakdown  # type: ignore[attr-defined]
    where = "VRAM" if e.device == "cuda" else "RAM (growth over imports)"  # type: ignore[attr-defined]
    lines = [
        f"model      {info.name} ({info.model_type}, {info.num_params / 1e6:,.1f} M params, "
        f"{info.trainable_params / 1e6:,.2f} M trainable, {info.num_layers} layers)",
        f"settings   batch {cfg.batch_size} x seq {cfg.seq_len}, grad-accum {cfg.grad_accum}, {cfg.precision}, "
        f"{cfg.optimizer}, {cfg.attention}"
        + (", checkpointing" if cfg.gradient_checkpointing else "")
        + (f", LoRA r={cfg.lora.rank}" + (f" on {','.join(cfg.lora.targets)}" if cfg.lora.targets else "")
           + (f" dropout {cfg.lora.dropout:g}" if cfg.lora.dropout else "") if cfg.lora else ""),
        f"method     {e.method} on {e.device}",  # type: ignore[attr-defined]
        "",
        f"live at the peak (in {e.peak_phase}):",  # type: ignore[attr-defined]
        f"{'parameters':<18}{fmt_bytes(bd.parameters):>12}",
        # Gradients are freed each step (zero_grad(set_to_none=True)); a peak early in backward comes before
        # they exist, which a bare "0 B" does not say.
        f"{'gradients':<18}{fmt_bytes(bd.gradients):>12}" + ("   (not created yet at the peak)" if not bd.gradients else ""),
        f"{'optimizer states':<18}{fmt_bytes(bd.optimizer_states):>12}",
        f"{'activations':<18}{fmt_bytes(bd.activations):>12}",
        f"{'temporaries':<18}{fmt_bytes(bd.temporaries):>12}",
        f"{'overhead':<18}{fmt_bytes(bd.overhead):>12}",
        "-" * 30,
        f"{'peak ' + where:<18}{fmt_bytes(e.peak_bytes):>12}   (in {e.peak_phase})",  # type: ignore[attr-defined]
        f"{'host peak (RSS)':<18}{fmt_bytes(e.host_peak_bytes):>12}",  # type: ignore[attr-defined]
    ]
    if e.reserved_bytes is not None:  # type: ignore[attr-defined]
        lines += [
            f"{'  reserved':<18}{fmt_bytes(e.reserved_bytes):>12}   (torch.cuda.max_memory_reserved)",  # type: ignore[attr-defined]
            f"{'  allocated':<18}{fmt_bytes(e.allocated_bytes):>12}   (torch.cuda.max_memory_allocated)",  # type: ignore[attr-defined]
            f"{'  CUDA context':<18}{fmt_bytes(e.cuda_context_bytes):>12}   (outside the allocator)",  # type: ignore[attr-defined]
        ]
    if e.long_run_extra_bytes:  # type: ignore[attr-defined]
        lines.append(f"{'long-run peak':<18}{fmt_bytes(e.long_run_peak_bytes):>12}   (same measure, after many steps)")  # type: ignore[attr-defined]
    for line in lines:
        typer.echo(line)
    for note in e.notes:  # type: ignore[attr-defined]
        typer.echo(f"note: {note}")
