"""Shared plumbing of the example studies: command line, table printing, CSV output."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
from rich.console import Console
from rich.table import Table

HERE = Path(__file__).resolve().parent


def parse_args(doc: str | None) -> argparse.Namespace:
    first = (doc or "").strip().splitlines()[0] if doc else None
    parser = argparse.ArgumentParser(description=first)
    parser.add_argument("--small", action="store_true", help="a 2-3 point grid (seconds; used by CI)")
    parser.add_argument("--out", type=Path, default=None,
                        help="folder for the CSV (default: next to this script)")
    return parser.parse_args()


def write_csv(df: pd.DataFrame, name: str, out: str | Path | None) -> Path:
    folder = Path(out) if out is not None else HERE
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.csv"
    df.to_csv(path, index=False)
    return path


def _cell(value) -> str:
    if isinstance(value, float):
        if value != value:  # NaN
            return "-"
        if abs(value) >= 1000:
            return f"{value:,.0f}"
        if abs(value) >= 10:
            return f"{value:.1f}"
        return f"{value:.3g}"
    return str(value)


def print_table(
    df: pd.DataFrame, columns: Sequence[str] | dict[str, str], title: str, console: Console | None = None
) -> None:
    """The chosen columns of ``df`` as a rich table (NaN shown as '-'); ``columns`` may map
    column names to shorter headers."""
    headers = dict(columns) if isinstance(columns, dict) else {c: c for c in columns}
    table = Table(title=title)
    for col, header in headers.items():
        table.add_column(header, justify="right" if pd.api.types.is_numeric_dtype(df[col]) else "left")
    for _, row in df[list(headers)].iterrows():
        table.add_row(*(_cell(v) for v in row))
    if console is None:
        console = Console()
        console.width = max(console.width, 160)  # wide enough for the tables when piped
    console.print(table)
