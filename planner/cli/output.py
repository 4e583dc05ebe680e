"""One way for every command to hand its result over: ``--format table|json|yaml|csv`` and
``--out FILE``.

:func:`write_result` takes the command's result as plain data (the *payload*), a function
that draws the rich tables for people, and (for tabular results) the rows of the CSV:

- ``table``: the rich tables (written without colour when ``--out`` names a file);
- ``json``: the payload, indented, keys in the command's fixed schema order; enums by
  value, numbers as numbers (NaN as null), paths as strings;
- ``yaml``: the same data as JSON, as YAML (pyyaml ``safe_dump``, schema order kept);
- ``csv``: one line per row (top-k plans, sweep points, validation cases); a command whose
  result is not a table rejects it with exit code 2.

With ``--out FILE`` the result goes to FILE (parent folders created) and ``wrote FILE`` to
stderr; without it, to stdout.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import sys
from collections.abc import Callable, Mapping, Sequence
from enum import Enum, StrEnum
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from planner.errors import SpecError

TABLE_WIDTH = 160
"""Columns of the rich tables when stdout is not a terminal (pipes, files)."""


class Format(StrEnum):
    """``--format``: rich tables for people, stable JSON / YAML for scripts, CSV for tables."""

    TABLE = "table"
    JSON = "json"
    YAML = "yaml"
    CSV = "csv"


def plain(value: Any) -> Any:
    """``value`` as JSON-able data: enums by value, paths as strings, NaN/inf as None,
    mappings and sequences recursively (pydantic models via ``model_dump``)."""
    if hasattr(value, "model_dump"):
        return plain(value.model_dump(mode="json"))
    if isinstance(value, Mapping):
        return {str(plain(k)): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [plain(v) for v in value]
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, bool) or value is None or isinstance(value, (int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if hasattr(value, "item"):  # numpy scalars
        return plain(value.item())
    return str(value)


def to_csv(rows: Sequence[Mapping[str, Any]]) -> str:
    """CSV text of ``rows``: columns in first-seen order, nested values as JSON."""
    columns: list[str] = []
    for row in rows:
        columns += [k for k in row if k not in columns]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        cells = {}
        for key in columns:
            value = plain(row.get(key))
            cells[key] = json.dumps(value) if isinstance(value, (dict, list)) else ("" if value is None else value)
        writer.writerow(cells)
    return buffer.getvalue()


def render(payload: Any, fmt: Format, *, table: Callable[[Console], None] | None = None,
           rows: Sequence[Mapping[str, Any]] | None = None, to_file: bool = False) -> str:
    """The text of ``payload`` in ``fmt`` (see the module docstring)."""
    if fmt is Format.JSON:
        return json.dumps(plain(payload), indent=2) + "\n"
    if fmt is Format.YAML:
        return yaml.safe_dump(plain(payload), sort_keys=False, allow_unicode=True)
    if fmt is Format.CSV:
        if rows is None:
            raise SpecError("--format", "csv", "this command's result is not a table; use table, json or yaml")
        return to_csv(rows)
    buffer = io.StringIO()
    console = Console(file=buffer, width=TABLE_WIDTH if to_file or not sys.stdout.isatty() else None,
                      force_terminal=False if to_file else None, no_color=to_file, highlight=False)
    if table is None:
        console.print(json.dumps(plain(payload), indent=2), markup=False)
    else:
        table(console)
    return buffer.getvalue()


def write_result(payload: Any, fmt: Format, out: Path | None = None, *,
                 table: Callable[[Console], None] | None = None,
                 rows: Sequence[Mapping[str, Any]] | None = None) -> None:
    """Write the result in ``fmt`` to ``out`` (or stdout); see the module docstring."""
    if out is None and fmt is Format.TABLE and table is not None:
        table(Console(width=None if sys.stdout.isatty() else TABLE_WIDTH))  # colour on terminals
        return
    text = render(payload, fmt, table=table, rows=rows, to_file=out is not None)
    if out is None:
        sys.stdout.write(text)
        return
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise SpecError("--out", str(out), f"cannot be written ({exc.strerror or exc})") from None
    print(f"wrote {out}", file=sys.stderr)


@contextlib.contextmanager
def progress_bar(label: str, unit: str, show: bool = True):
    """A transient progress bar on stderr ("LABEL [bar] done/total UNIT elapsed"), off when
    stderr is not a terminal or ``show`` is False; yields ``update(done, total)``."""
    console = Console(stderr=True)
    with Progress(TextColumn(label), BarColumn(), MofNCompleteColumn(), TextColumn(unit), TimeElapsedColumn(),
                  console=console, transient=True, disable=not (show and console.is_terminal)) as bar:
        task = bar.add_task(label, total=None)
        yield lambda done, total: bar.update(task, completed=done, total=total)


__all__ = ["Format", "plain", "progress_bar", "render", "to_csv", "write_result"]
