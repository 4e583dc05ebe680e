"""The ``planner`` command: a thin layer over the Python API.

Exit codes: 0 ok, 2 bad input (one line naming the field, the value and the rule),
3 infeasible request. A user error never prints a traceback.
"""

from __future__ import annotations

import functools
import sys
from enum import StrEnum
from typing import Callable, TypeVar

import typer

from planner import __version__
from planner.errors import PlannerError

F = TypeVar("F", bound=Callable)

app = typer.Typer(
    name="planner",
    help="Auto-parallel planner and performance simulator for distributed LLM training.",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode="markdown",  # docstring lines join into paragraphs; [brackets] stay text
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


class OutputFormat(StrEnum):
    TABLE = "table"
    JSON = "json"


def reports_errors(command: F) -> F:
    """Turn planner errors into one line on stderr and their exit code."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except PlannerError as exc:
            print(f"planner: error: {exc}", file=sys.stderr)
            raise typer.Exit(exc.exit_code) from None

    return wrapper  # type: ignore[return-value]


def _version(value: bool) -> None:
    if value:
        print(f"planner {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
) -> None:
    """Auto-parallel planner and performance simulator for distributed LLM training."""


def _register() -> None:
    from planner.cli import describe, simulate, topology  # noqa: F401  (register their commands on `app`)
    from planner.cli import validate  # noqa: F401
    from planner.cli import collective  # noqa: F401
    from planner.cli import plan  # noqa: F401
    from planner.cli import explain  # noqa: F401
    from planner.cli import launch  # noqa: F401
    from planner.cli import calibrate  # noqa: F401
    from planner.cli import sweep  # noqa: F401
    from planner.cli import report  # noqa: F401


_register()


def main() -> None:
    app()
