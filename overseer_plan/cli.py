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
    app()


if __name__ == "__main__":
    main()
