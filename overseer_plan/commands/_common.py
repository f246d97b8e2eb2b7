"""What every CLI verb shares: error handling and JSON output."""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import typer

from overseer_plan.errors import OverseerError

F = TypeVar("F", bound=Callable[..., Any])


def handle_errors(fn: F) -> F:
    """Turn an OverseerError into a one-line message on stderr and its exit code (2 for bad input).

    Anything else is a bug and keeps its traceback.
    """

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from overseer_plan import hub

        try:
            hub.check_endpoint()  # before any verb imports transformers, which fails on a bad one
            return fn(*args, **kwargs)
        except OverseerError as e:
            msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            typer.echo(f"overseer: error: {msg}", err=True)
            raise typer.Exit(code=e.exit_code) from None

    return wrapper  # type: ignore[return-value]


def print_json(data: Any) -> None:
    """Print JSON to stdout (pydantic models via model_dump(mode='json'))."""
    if hasattr(data, "model_dump"):
        data = data.model_dump(mode="json")
    sys.stdout.write(json.dumps(data, indent=2, sort_keys=False) + "\n")
