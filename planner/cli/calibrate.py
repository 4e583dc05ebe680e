"""``planner calibrate --from-cases FILE.csv``: fit ``sustained_kernel_fraction`` on published
runs and report its leave-one-source-out error (the honest accuracy figure)."""

from __future__ import annotations

import json
from pathlib import Path

import typer
import yaml
from rich.console import Console
from rich.table import Table

from planner.cli.main import OutputFormat, app, reports_errors
from planner.errors import SpecError
from planner.validation import read_cases
from planner.validation.calibrate import DEFAULT_GRID, calibrate


@app.command("calibrate")
@reports_errors
def calibrate_command(
    from_cases: Path = typer.Option(..., "--from-cases", help="Validation CSV (schema of data/validation)."),
    grid: str = typer.Option(",".join(f"{v:g}" for v in DEFAULT_GRID), "--grid",
                             help="Comma-separated sustained_kernel_fraction values to try (0 < v <= 1)."),
    out: Path = typer.Option(None, "--out", help="Write the fitted constant as YAML here."),
    fmt: OutputFormat = typer.Option(OutputFormat.TABLE, "--format", help="Output format."),
) -> None:
    """Fit the sustained kernel fraction; print in-sample and leave-one-source-out error.

    Each grid value re-runs every case, so a 44-case file takes a few minutes.
    """
    try:
        values = tuple(float(v) for v in grid.split(","))
    except ValueError:
        raise SpecError("--grid", grid, "must be comma-separated numbers") from None
    if not values or any(not 0 < v <= 1 for v in values):
        raise SpecError("--grid", grid, "every value must be in (0, 1]")
    result = calibrate(read_cases(from_cases), values)
    if out is not None:
        out.write_text(yaml.safe_dump({
            "sustained_kernel_fraction": result.best_fraction,
            "fitted_on": str(from_cases),
            "loso_median_ape": round(result.loso_median_ape, 4),
            "loso_within_15pct": round(result.loso_within, 4),
        }, sort_keys=False))
    if fmt is OutputFormat.JSON:
        print(json.dumps({
            "best_fraction": result.best_fraction,
            "in_sample_median_ape": result.in_sample_median_ape,
            "loso_median_ape": result.loso_median_ape,
            "loso_within_15pct": result.loso_within,
            "per_source": {k: {"fitted": f, "held_out_median_ape": a} for k, (f, a) in result.per_source.items()},
        }, indent=2))
        return
    console = Console()
    console.print(
        f"sustained_kernel_fraction: in-sample best [bold]{result.best_fraction:g}[/bold] "
        f"(median APE {result.in_sample_median_ape:.1%}); leave-one-source-out: median APE "
        f"[bold]{result.loso_median_ape:.1%}[/bold], {result.loso_within:.0%} of cases within 15%"
    )
    table = Table(title="Held-out sources", title_justify="left")
    for name in ("source", "fitted on the others", "held-out median APE"):
        table.add_column(name, justify="left" if name == "source" else "right")
    for source, (fit, ape) in result.per_source.items():
        table.add_row(source, f"{fit:g}", f"{ape:.1%}")
    console.print(table)
