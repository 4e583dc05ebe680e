"""The errors a user can cause, each with the CLI exit code it maps to.

Bad input (an unknown preset, a field that breaks a rule) is :class:`SpecError`, exit
code 2, printed as one line naming the field, the value and the rule. A request that is
valid but cannot be met (the model fits nowhere) is :class:`InfeasibleError`, exit code 3.
A combination the models do not cover is :class:`UnsupportedError`, never a silent guess.
"""

from __future__ import annotations

from typing import Any


class PlannerError(Exception):
    """Base of the errors the CLI reports without a traceback."""

    exit_code = 1


class SpecError(PlannerError, ValueError):
    """Bad input: ``field`` (a dotted path) holds ``value``, which breaks ``rule``."""

    exit_code = 2

    def __init__(self, field: str, value: Any, rule: str, *, origin: str | None = None):
        self.field, self.value, self.rule, self.origin = field, value, rule, origin
        where = f"{origin}: " if origin else ""
        super().__init__(f"{where}{field} = {_show(value)}: {rule}")


class UnknownPresetError(SpecError):
    """A preset name that does not exist; the message lists the known ones."""

    def __init__(self, kind: str, name: str, known: list[str]):
        super().__init__(kind, name, f"unknown {kind} preset; known: {', '.join(known)}")


class UnsupportedError(PlannerError):
    """The input is valid but outside what the planner models."""

    exit_code = 2


class InfeasibleError(PlannerError):
    """Valid input that no plan satisfies; the message says what would make it feasible."""

    exit_code = 3


def _show(value: Any) -> str:
    if isinstance(value, str):
        return repr(value)
    return str(value)
