"""Shared start of the spec's scripts (main_training.py, run_resource_efficient_training.py): stdlib only.

The spec runs them as `python main_training.py ...`, with whatever `python` the shell finds. When
Overseer is not importable there but setup.sh's `.venv` sits next to the script, re-run the script
with that environment's interpreter instead of failing on an import.
"""

import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def run_train(script: str, extra: list[str]) -> None:
    """`overseer train [extra] [--training-config training_config.py] [argv]`, as the spec's scripts mean it."""
    try:
        from overseer_plan.cli import main
    except ImportError:
        venv_python = HERE / ".venv" / "bin" / "python"
        # sys.prefix, not the executable: a venv's python is a symlink to the very interpreter running now.
        if venv_python.is_file() and Path(sys.prefix).resolve() != venv_python.parent.parent.resolve():
            os.execv(str(venv_python), [str(venv_python), str(HERE / script), *sys.argv[1:]])
        sys.stderr.write(f"{script}: Overseer is not installed for {sys.executable}; run `bash setup.sh` first, "
                         "then `.venv/bin/python " + script + "`\n")
        raise SystemExit(2) from None
    given = sys.argv[1:]
    settings = HERE / "training_config.py"  # the spec customises runs there; flags and --config win over it
    if settings.is_file() and not any(a.split("=")[0] == "--training-config" for a in given):
        given = ["--training-config", str(settings), *given]
    sys.argv = ["overseer", "train", *extra, *given]
    main()
