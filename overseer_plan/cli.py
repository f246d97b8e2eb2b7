"""The `overseer` command: a thin shell over the Python API.

Each verb lives in `overseer_plan/commands/<verb>.py`; this file only wires them.
No arithmetic and no torch here.
"""

from __future__ import annotations

import importlib

import typer

app = typer.Typer(
    name="overseer",
    help="Make a training run fit the machine it runs on.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)



@app.callback()
def _root() -> None:
    """Make a training run fit the machine it runs on."""


# (module, attribute, verb). A module exposing a Typer sub-app registers with add_typer.
_VERBS = [
    ("probe", "probe_command", "probe"),
    ("doctor", "doctor_app", "doctor"),
    ("train", "train_command", "train"),
    ("estimate", "estimate_command", "estimate"),
    ("plan", "plan_command", "plan"),
]

for _mod, _attr, _verb in _VERBS:
    _obj = getattr(importlib.import_module(f"overseer_plan.commands.{_mod}"), _attr)
    if isinstance(_obj, typer.Typer):
        app.add_typer(_obj, name=_verb)
    else:
        app.command(_verb)(_obj)

# `overseer doctor oom|slow|overwhelmed` live in their own module.
importlib.import_module("overseer_plan.commands.doctor_ladder").register(
    importlib.import_module("overseer_plan.commands.doctor").doctor_app
)

def main() -> None:
    """Console-script entry point."""
    import sys

    if len(sys.argv) > 1 and sys.argv[1] == "train":
        from overseer_plan.commands.train import expand_download_value

        sys.argv[1:] = expand_download_value(sys.argv[1:])
    sys.exit(_run(sys.argv[1:]))


def _run(args: list[str]) -> int:
    """Run the app; a usage error (unknown flag, bad value) is one line, like every other bad input.

    typer prints usage errors as a five-line box; with standalone_mode=False click raises them
    instead, and returns the code of a typer.Exit. Help output is untouched.
    """
    # click's exceptions, or the copy typer >= 0.2x vendors (typer._click): wherever BadParameter lives.
    errors = importlib.import_module(typer.BadParameter.__module__)
    no_args_help = getattr(errors, "NoArgsIsHelpError", ())  # click < 8.2 exits 0 after the help instead
    try:
        code = typer.main.get_command(app).main(args, prog_name="overseer", standalone_mode=False)
    except no_args_help as e:  # bare `overseer`: help, exit 2, as before
        if e.format_message().strip():  # typer's rich help has printed itself already; plain click's has not
            e.show()
        return e.exit_code
    except errors.UsageError as e:
        # A missing option value is raised before the verb's context exists: name the verb from argv.
        verb = f"overseer {args[0]}" if args and not args[0].startswith("-") else "overseer"
        where = e.ctx.command_path if e.ctx is not None else verb
        message = " ".join(e.format_message().split()).rstrip(".")
        typer.echo(f"{where}: {message}; see {where} --help", err=True)
        return 2
    except errors.ClickException as e:
        e.show()
        return e.exit_code
    except typer.Abort:
        typer.echo("Aborted.", err=True)
        return 1
    return code if isinstance(code, int) else 0


if __name__ == "__main__":
    main()
