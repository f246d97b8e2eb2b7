"""`overseer doctor`: check this machine against the spec; `--report` for a bug report.

`doctor_app` is a Typer group: with no subcommand its callback runs the checks; troubleshooting
subcommands (`oom`, `slow`, `overwhelmed`) are added to the same app from their own module. The
options parsed here are left in `ctx.obj` (a `DoctorOptions`) for those subcommands.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from overseer_plan.commands._common import handle_errors, print_json
from overseer_plan.errors import UserInputError
from overseer_plan.units import fmt_bytes

if TYPE_CHECKING:
    from overseer_plan.doctor import DoctorResult
    from overseer_plan.hardware import Hardware

doctor_app = typer.Typer(
    help="Check this machine against the spec's requirements and say what to fix.",
    invoke_without_command=True,
    no_args_is_help=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

_MARKS = {"ok": "[✓]", "warn": "[!]", "fail": "[✗]", "skip": "[-]", "info": "[i]"}
_COLORS = {"ok": "green", "warn": "yellow", "fail": "red", "skip": None, "info": "cyan"}
# Characters the doctor prints, with what to print where stdout cannot encode them ("[✓]" -> "[ok]").
_ASCII = str.maketrans({"✓": "ok", "✗": "x", "—": "-", "·": "|", "°": " deg", "≥": ">=", "≤": "<=", "→": "->"})


@dataclass
class DoctorOptions:
    """What `overseer doctor` parsed, for its subcommands."""

    hardware: Path | None = None
    output_dir: Path = Path(".")
    data_dir: Path | None = None
    rules: list[Path] = field(default_factory=list)


@doctor_app.callback(invoke_without_command=True)
@handle_errors
def doctor(
    ctx: typer.Context,
    json_out: bool = typer.Option(False, "--json", help="Print the checks and a summary as JSON."),
    report: bool = typer.Option(False, "--report", help="Print a Markdown environment report for a bug report."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Show the facts behind every check and their sources."),
    hardware: Path | None = typer.Option(None, "--hardware", metavar="FILE",
                                         help="Check a profile saved by `overseer probe --save` instead of this machine."),
    output_dir: Path = typer.Option(Path("."), "--output-dir", metavar="DIR", help="Where checkpoints will go."),
    data_dir: Path | None = typer.Option(None, "--data-dir", metavar="DIR", help="Where the data set lives."),
    rules: list[Path] = typer.Option([], "--rules", metavar="DIR", help="Extra rules directory (repeatable)."),
) -> None:
    """Check RAM, GPU memory, cores, storage, limits, heat and shared use against the spec.

    Exit code 0 when nothing failed (warnings allowed), 1 when a requirement failed, 2 on bad usage.

    Examples:

        overseer doctor -v

        overseer doctor --report > overseer-env.md   # paste into a bug report
    """
    from overseer_plan._io import check_dir_option

    check_dir_option(output_dir, flag="--output-dir")
    ctx.obj = DoctorOptions(hardware=hardware, output_dir=output_dir, data_dir=data_dir, rules=list(rules))
    if ctx.invoked_subcommand:
        return
    if json_out and report:
        raise UserInputError("--json and --report: pick one")
    from overseer_plan.doctor import run_doctor
    from overseer_plan.rules import load_rulebook

    book = load_rulebook(rules)
    hw = _hardware(ctx.obj)
    result = run_doctor(hw, book, output_dir=output_dir)
    if json_out:
        checks = [c.model_dump(mode="json") for c in result.checks]
        print_json({"checks": checks, "summary": result.summary.model_dump(mode="json")})
    elif report:
        from overseer_plan.report import render_report

        _echo(render_report(hw, result))
    else:
        _render(result, verbose=verbose, source=str(hardware) if hardware else "this machine")
    raise typer.Exit(code=result.exit_code())


def _hardware(opts: DoctorOptions) -> Hardware:
    from overseer_plan.hardware import Hardware

    if opts.hardware is not None:
        return Hardware.load(opts.hardware)
    from overseer_plan.probe import probe

    return probe(output_dir=opts.output_dir, data_dir=opts.data_dir)


def _encodable(text: str) -> bool:
    try:
        text.encode(getattr(sys.stdout, "encoding", None) or "ascii")
    except (UnicodeEncodeError, LookupError):
        return False
    return True


def _echo(text: str, **style: str | None) -> None:
    """Print, falling back to ASCII where stdout cannot encode the marks; colour only on a TTY without NO_COLOR."""
    if not _encodable(text):
        text = text.translate(_ASCII).encode("ascii", "replace").decode("ascii")
    if style.get("fg") and "NO_COLOR" not in os.environ:
        text = typer.style(text, **style)
    typer.echo(text)


def _detail(key: str, value: object) -> str:
    if isinstance(value, (dict, list)):
        return json.dumps(value, default=str)
    if isinstance(value, int) and not isinstance(value, bool) and key.endswith("_bytes"):
        return f"{value} ({fmt_bytes(value)})"
    return str(value)


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def _render(result: DoctorResult, *, verbose: bool, source: str) -> None:
    from overseer_plan import __version__
    from overseer_plan.doctor import REPORT_HINT

    _echo(f"overseer {__version__} doctor on {source} — details: -v · machine output: --json · bug report: --report\n")
    for c in result.checks:
        _echo(f"{_MARKS[c.status]} {c.title} — {c.message}", fg=_COLORS[c.status])
        if c.fix:
            _echo(f"    Fix: {c.fix}")
        for key, value in c.details.items() if verbose else ():
            for i, line in enumerate(_detail(key, value).splitlines() or [""]):
                _echo(f"      {key}: {line}" if i == 0 else f"        {line}")
    s = result.summary
    mode = s.mode or "the planner's fit decides"
    _echo(f"\n{s.ok} ok, {_plural(s.warn, 'warning')}, {s.fail} failed, {s.skip} skipped, {s.info} advice. "
          f"Mode: {mode}. Exit code {s.exit_code}.")
    if s.fail:
        _echo(f"Report for a bug: {REPORT_HINT}")
