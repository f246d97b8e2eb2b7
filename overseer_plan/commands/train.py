"""`overseer train`: train a causal LM that fits this machine, stepping down on OOM, resumable.

Exit codes: 0 done; 1 a checkpoint could not be written (disk full...); 2 bad input; 3 out of memory
with no rung left on the ladder (see `overseer doctor oom`); 75 a sticky device error persisted after
3 automatic restarts; 130 stopped by Ctrl-C/SIGTERM after saving a checkpoint (resume with --resume).
"""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path
from typing import Any

import typer

from overseer_plan.commands._common import handle_errors
from overseer_plan.errors import UserInputError

EXIT_INTERRUPTED = 130


@handle_errors
def train_command(
    auto: bool = typer.Option(False, "--auto", help="Fit the run to this machine with the planner (the default)."),
    standard: bool = typer.Option(False, "--standard", help="Standard mode's preset (spec: batch 16 x 4, seq 2048)."),
    resource_efficient: bool = typer.Option(False, "--resource-efficient",
                                            help="Resource-efficient preset (batch 4 x 16, seq 1024, checkpointing)."),
    config_file: Path | None = typer.Option(None, "--config", metavar="PLAN.yaml",
                                            help="Settings or a plan file from `overseer plan --save` (alone: train as "
                                                 "it says; with a mode flag: its settings on top of that mode)."),
    training_config: Path | None = typer.Option(None, "--training-config", metavar="training_config.py",
                                                help="A Python file defining `config = TrainingConfig()` (the spec's "
                                                     "training_config.py); --config and flags win over it."),
    purpose: str | None = typer.Option(None, "--purpose", help="development | production | speed: lets --auto pick "
                                                                 "the mode (the spec's When to Use lists)."),
    model: str | None = typer.Option(None, "--model", help="Catalogue name, local model directory or hub id."),
    data: list[str] = typer.Option([], "--data", help="Text/Markdown/JSONL file or directory (repeatable)."),
    output: str | None = typer.Option(None, "--output", metavar="DIR", help="Run directory."),
    max_steps: int | None = typer.Option(None, "--max-steps", min=1, help="Optimizer steps to run."),
    epochs: float | None = typer.Option(None, "--epochs", help="Passes over the data (when --max-steps is not given)."),
    batch_size: int | None = typer.Option(None, "--batch-size", min=1, help="Micro-batch size per process."),
    grad_accum: int | None = typer.Option(None, "--gradient-accumulation-steps", min=1, help="Micro-batches per step."),
    seq_len: int | None = typer.Option(None, "--max-sequence-length", min=8, help="Tokens per sequence."),
    learning_rate: float | None = typer.Option(None, "--learning-rate", help="Peak learning rate."),
    resume: bool = typer.Option(False, "--resume", help="Continue from the last complete checkpoint in --output."),
    seed: int | None = typer.Option(None, "--seed", help="Seed for init, data order and dropout."),
    scale_up: bool = typer.Option(False, "--scale-up", help="Step back up a rung after stable steps with headroom."),
    cpu_only: bool = typer.Option(False, "--cpu-only", help="Train on the CPU even when a GPU is present."),
    allow_seq: bool = typer.Option(False, "--allow-sequence-reduction",
                                   help="Let the planner and the OOM ladder shorten sequences (changes what is learned)."),
    download_data: bool = typer.Option(False, "--download-data",
                                       help="Fetch fresh data first: `--download-data URL`, or the config's data_sources."),
    download_from: list[str] = typer.Option([], "--download-from", metavar="SOURCE", hidden=True,
                                            help="The SOURCE of `--download-data SOURCE` (repeatable)."),
    continuous: bool = typer.Option(False, "--continuous-learning",
                                    help="Keep watching the data sources; train on new data with 20% replay."),
    rounds: int | None = typer.Option(None, "--rounds", min=1, help="With --continuous-learning: stop after N rounds."),
    watch_interval: float | None = typer.Option(None, "--watch-interval", metavar="SECONDS",
                                                help="With --continuous-learning: seconds between source checks."),
) -> None:
    """Train a causal LM: the embedded default (overseer-tiny on Python's own source) when no model/data.

    Examples:

        overseer train --auto                                  # embedded default, ~2 minutes on a laptop CPU

        overseer train --resource-efficient --model ./my-model --data notes/ --output runs/notes --resume

        overseer train --resource-efficient --download-data https://example.org/corpus.tar.gz --continuous-learning
    """
    from trainer.pipeline import run_pipeline

    modes = [name for name, on in (("--auto", auto), ("--standard", standard),
                                   ("--resource-efficient", resource_efficient)) if on]
    if len(modes) > 1:
        raise UserInputError(f"{' and '.join(modes)}: choose one of --auto, --standard, --resource-efficient")
    if max_steps is not None and epochs is not None:
        raise UserInputError("--max-steps and --epochs: give one (--max-steps wins over epochs in a config file)")
    empty = [flag for flag, value in (("--model", model), ("--output", output), ("--data", "" if "" in data else None))
             if value == ""]
    if empty:  # an empty path would quietly mean the current directory
        raise UserInputError(f"{', '.join(empty)}: empty value; give a path (or leave the option out)")
    flags = _flags(locals())
    config = _build_config(flags, config_file, training_config, standard=standard, resource_efficient=resource_efficient)
    if not (resume or output):
        config = _fresh_default_run_dir(config, continuous=continuous)
    # A settings file that picks the mode (the spec's `config.resource_efficient_mode = True`) means
    # what the mode flag means: that preset under the file's settings, not a fit by the planner.
    picked = "resource_efficient_mode" in config.explicit_fields() and not (auto or standard or resource_efficient)
    if picked:
        standard, resource_efficient = not config.resource_efficient_mode, config.resource_efficient_mode
    mode = "standard" if standard else "resource-efficient" if resource_efficient else None
    # --auto is the default; --config alone trains as the file says (a plan file is already fitted).
    use_auto = auto or not (standard or resource_efficient or config_file)
    source = list(download_from) or (True if download_data else None)
    try:
        with _sigterm_as_interrupt():
            out = _run(run_pipeline, config, auto=use_auto, mode=mode, resume=resume, download_source=source,
                       continuous=continuous, rounds=rounds, watch_interval_s=watch_interval)
    except KeyboardInterrupt:  # before the trainer took over the signals: nothing to save yet
        typer.echo("stopped by signal before training started", err=True)
        raise typer.Exit(code=EXIT_INTERRUPTED) from None
    if out.result is not None:
        _print_summary(out.result)
    if out.interrupted:
        if out.result is None or not out.result.interrupted:
            typer.echo("stopped by signal between rounds; run the same command to go on", err=True)
        raise typer.Exit(code=EXIT_INTERRUPTED)


def expand_download_value(argv: list[str]) -> list[str]:
    """Let `--download-data` take an optional value, as the spec writes it (`--download-data URL`).

    typer options cannot have optional values, so `--download-data X` (X not a flag) and
    `--download-data=X` become `--download-data --download-from X` before parsing.
    """
    out: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg.startswith("--download-data="):
            out += ["--download-data", "--download-from", arg.split("=", 1)[1]]
        elif arg == "--download-data" and i + 1 < len(argv) and not argv[i + 1].startswith("-"):
            out += ["--download-data", "--download-from", argv[i + 1]]
            i += 1
        else:
            out.append(arg)
        i += 1
    return out


_FLAG_FIELDS = {"model": "model", "data": "data", "output": "output_dir", "max_steps": "max_steps", "epochs": "epochs",
                "batch_size": "batch_size", "grad_accum": "gradient_accumulation_steps", "seq_len": "max_sequence_length",
                "learning_rate": "learning_rate", "seed": "seed", "purpose": "purpose"}


def _flags(options: dict[str, Any]) -> dict[str, Any]:
    out = {field: options[opt] for opt, field in _FLAG_FIELDS.items() if options[opt] not in (None, [])}
    for opt, field in (("scale_up", "scale_up"), ("allow_seq", "allow_sequence_reduction")):
        if options[opt]:
            out[field] = True
    if options["cpu_only"]:
        out["use_gpu"] = False
    return out


def _user_line(error: BaseException, path: Path) -> str:
    """', line N' of the user's file where `error` was raised from it (its innermost frame there)."""
    import traceback

    target = str(Path(path).resolve())
    lines = [f.lineno for f in traceback.extract_tb(error.__traceback__) if str(Path(f.filename).resolve()) == target]
    return f", line {lines[-1]}" if lines else ""


def _build_config(flags: dict[str, Any], config_file: Path | None, training_config: Path | None, *,
                  standard: bool, resource_efficient: bool) -> Any:
    """The run's settings, later layers winning: training_config.py, --config, the mode flag, the other flags."""
    from overseer_plan.config import TrainingConfig

    base: dict[str, Any] = {}
    if training_config is not None:
        loaded = load_training_config_py(training_config)
        base.update({k: getattr(loaded, k) for k in loaded.explicit_fields()})
    if config_file is not None:
        loaded = TrainingConfig.load(config_file)  # one-line errors naming each bad key
        base.update({k: getattr(loaded, k) for k in loaded.explicit_fields()})
    if resource_efficient or standard:
        base["resource_efficient_mode"] = resource_efficient
    return TrainingConfig.from_dict({**base, **flags}, what="the train options")


def _fresh_default_run_dir(config: Any, *, continuous: bool) -> Any:
    """With no --output, a new run never lands on an earlier one: the next free `run-N` beside it.

    Only for the default directory (a plan file records it too); an --output the user names that
    holds checkpoints is refused by the trainer instead. Continuous learning goes on in a directory
    whose manifest it wrote.
    """
    from overseer_plan.config import TrainingConfig
    from trainer.checkpoint import list_checkpoints
    from trainer.rounds import MANIFEST_NAME

    default = Path(config.output_dir)
    if config.output_dir != TrainingConfig.model_fields["output_dir"].default or not list_checkpoints(default):
        return config
    if continuous and (default / MANIFEST_NAME).is_file():
        return config
    n = 2
    while (fresh := default.with_name(f"{default.name}-{n}")).exists():
        n += 1
    typer.echo(f"overseer: {default} holds an earlier run; this one goes to {fresh} (--resume continues that one, "
               "--output chooses)", err=True)
    return config.with_changes(output_dir=str(fresh))


def load_training_config_py(path: Path) -> Any:
    """The `config` a training_config.py defines (the spec's way to customise a run).

    It is the user's own Python file, named on their command line (or next to the spec's scripts),
    so running it is what they asked for; anything it raises becomes a one-line error.
    """
    import runpy

    from overseer_plan.config import TrainingConfig

    what = f"--training-config {path}"
    if not Path(path).is_file():
        problem = "is a directory" if Path(path).is_dir() else "no such file"
        raise UserInputError(f"{what}: {problem}; give the path of a training_config.py")
    from pydantic import ValidationError

    try:
        namespace = runpy.run_path(str(path), run_name="training_config")
    except UserInputError as e:
        raise UserInputError(f"{what}: {e}") from None
    except ValidationError as e:  # an assignment TrainingConfig refused
        problems = "; ".join(f"{'.'.join(str(x) for x in err['loc'])}: {err['msg']}" for err in e.errors())
        raise UserInputError(f"{what}{_user_line(e, path)}: {problems}") from None
    except SystemExit as e:  # sys.exit() in a settings file must not end the run silently, with its code
        raise UserInputError(f"{what}{_user_line(e, path)}: it called sys.exit({e.code!r}); a settings file only "
                             "assigns `config`") from None
    except Exception as e:  # noqa: BLE001 - the user's code: name what went wrong, in one line
        first = (str(e).strip().splitlines() or [""])[0]
        raise UserInputError(f"{what}{_user_line(e, path)}: running it failed ({type(e).__name__}: {first})") from None
    config = namespace.get("config")
    if not isinstance(config, TrainingConfig):
        raise UserInputError(f"{what}: it must set `config = TrainingConfig()` (from overseer_plan import TrainingConfig)")
    return config


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Any:
    """SIGTERM (docker stop, systemd) outside the training loop stops the command like Ctrl-C.

    The trainer installs its own handler while it trains (checkpoint, then exit 130) and puts this
    one back; between continuous-learning rounds, SIGTERM would otherwise kill the process outright.
    """
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(_signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def _run(run: Any, config: Any, **kwargs: Any) -> Any:
    from trainer.loop import RestartRequired

    reporter = _ProgressReporter()
    try:
        return run(config, reporter=reporter, **kwargs)
    except RestartRequired as e:
        _restart_or_fail(e, config.output_dir)
        raise
    finally:
        reporter.close()


def _restart_or_fail(error: Exception, run_dir: Any = None) -> None:
    """After a sticky device error, replace this process with a fresh one that resumes (bounded)."""
    from trainer.run import MAX_RESTARTS, RESTART_ENV, restart_count

    done = restart_count()
    if done >= MAX_RESTARTS:
        return  # handle_errors prints the message and exits 75
    typer.echo(f"overseer: {error}; restart {done + 1} of {MAX_RESTARTS}", err=True)
    argv = [a for a in sys.argv[1:] if a != "--resume"] + ["--resume"]
    if run_dir is not None and "--output" not in argv:  # resume this run, not one its default directory held
        argv += ["--output", str(run_dir)]
    os.environ[RESTART_ENV] = str(done + 1)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, [sys.executable, "-m", "overseer_plan", *argv])


class _ProgressReporter:
    """A tqdm bar on stderr (loss, tokens/s, RSS, ETA) and messages printed above it."""

    def __init__(self) -> None:
        self.bar: Any = None

    def start(self, *, start_step: int, total_steps: int) -> None:
        from tqdm.auto import tqdm

        self.bar = tqdm(total=total_steps, initial=start_step, unit="step", dynamic_ncols=True, file=sys.stderr)

    def update(self, step: int, info: dict[str, Any]) -> None:
        if self.bar is not None:
            self.bar.set_postfix(loss=f"{info['loss']:.3f}", tok_s=f"{info['tokens_per_s']:.0f}",
                                 rss=f"{info['rss_gib']:.2f}GiB", micro=info["micro"], refresh=False)
            self.bar.update(step - self.bar.n)

    def message(self, text: str) -> None:
        if self.bar is not None:
            self.bar.write(f"overseer: {text}", file=sys.stderr)
        else:
            typer.echo(f"overseer: {text}", err=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _print_summary(r: Any) -> None:
    def fmt(x: float | None, spec: str = ".4f") -> str:
        return "n/a" if x is None else format(x, spec)

    drop = ""
    if r.final_eval_step == 0 and r.optimizer_steps:
        # Stopped before the first eval: the only eval loss is the starting point's, not a result.
        drop = f" (before training; the first eval comes at step {r.config['eval_steps']})"
    elif r.initial_eval_loss and r.final_eval_loss is not None:
        drop = f" ({100 * (1 - r.final_eval_loss / r.initial_eval_loss):.0f}% below the start, {fmt(r.initial_eval_loss)})"
    state = "stopped by signal; resume with --resume" if r.interrupted else "done"
    typer.echo(f"{state}: {r.optimizer_steps} steps of {r.effective_batch_size} sequences on {r.device} ({r.precision}); "
               f"model {r.model}{' (from scratch)' if r.from_scratch else ''}")
    typer.echo(f"  final loss {fmt(r.final_loss)}, eval loss {fmt(r.final_eval_loss)}{drop}")
    typer.echo(f"  {fmt(r.samples_per_s, '.2f')} samples/s, {fmt(r.tokens_per_s, '.0f')} tokens/s, first step after "
               f"{fmt(r.time_to_first_step_s, '.1f')} s, {r.oom_events} OOM event(s), {r.step_downs} step-down(s)")
    typer.echo(f"  run directory: {r.run_dir} (summary.json, metrics.jsonl, events.jsonl, monitor.jsonl)")
