"""``planner validate``: predict published training runs and score the predictions.

Reads a case file in the schema of ``shared/validation/README.md`` (default: the shipped
public cases), writes one prediction per case (``case_id,predicted_step_time_s,status,
message``) and prints the error summary: median absolute percentage error and the share of
cases within 15%, overall, per source and per confidence. ``--report DIR`` also writes
``summary.json`` and ``per_case.csv``. Defaults taken for empty cells are documented in
:mod:`planner.validation.cases` and named in each case's message.
"""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from planner.cli import options
from planner.cli.main import app, reports_errors
from planner.cli.output import Format, progress_bar, write_result
from planner.errors import SpecError
from planner.presets import data_root
from planner.validation import read_cases, run_cases, score, write_per_case, write_predictions
from planner.validation.run import WITHIN, GroupScore, Summary


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


def _group_table(title: str, groups: dict[str, GroupScore]) -> Table:
    table = Table(title=title, title_justify="left")
    table.add_column(title.split()[-1])
    for name in ("cases", "ok", "median APE", f"within {WITHIN:.0%}"):
        table.add_column(name, justify="right")
    for name, g in groups.items():
        table.add_row(name, str(g.cases), str(g.ok), _pct(g.median_ape), _pct(g.within))
    return table


def _print_summary(summary: Summary, console: Console) -> None:
    o = summary.overall
    statuses = ", ".join(f"{n} {k}" for k, n in summary.by_status.items() if n)
    console.print(
        f"[bold]{o.cases} cases[/bold] ({statuses}): median APE [bold]{_pct(o.median_ape)}[/bold] "
        f"over the ok cases, [bold]{_pct(o.within)}[/bold] of the {o.measured} measured cases "
        f"ok and within {WITHIN:.0%}"
    )
    console.print(_group_table("Per source", summary.by_source))
    console.print(_group_table("Per confidence", summary.by_confidence))


def _write_report(folder: Path, summary: Summary) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SpecError("report", str(folder), f"cannot be created ({exc.strerror})") from None
    (folder / "summary.json").write_text(json.dumps(summary.as_dict(), indent=2) + "\n")
    write_per_case(folder / "per_case.csv", summary)


@app.command(epilog="Examples: planner validate --out pred.csv;  planner validate --cases my_cases.csv --out "
                     "pred.csv --report report/ --format json;  planner validate --plot scatter.png.")
@reports_errors
def validate(
    cases: Path = typer.Option(
        None, "--cases", help="Case file (CSV, validation schema); default: the shipped public cases."
    ),
    out: Path = typer.Option(None, "--out", "-o", help="Write the predictions to FILE (CSV: case_id, predicted_step_time_s, status, message)."),
    report: Path = typer.Option(None, "--report", help="Also write summary.json and per_case.csv here."),
    fmt: Format = options.fmt("the summary (csv: one row per case)"),
    plot: Path = typer.Option(
        None, "--plot", metavar="FILE",
        help="Also draw predicted vs measured step time (log-log, ±10% band, coloured by source) to FILE "
             "(.png, .svg or .pdf).",
    ),
) -> None:
    """Predict the step time (s) of published training runs and score against the
    measurements (median absolute percentage error, share within 15%)."""
    if plot is not None:  # matplotlib is imported only when a drawing is asked for
        from planner.report.topology_plot import check_suffix

        plot = check_suffix(plot, "--plot")  # before the cases run, not after
    path = cases or data_root() / "validation" / "public_cases.csv"
    rows = read_cases(path)
    with progress_bar("validating", "cases") as update:
        results = run_cases(rows, progress=update)
    if out is not None:
        try:
            write_predictions(out, results)
        except OSError as exc:
            raise SpecError("out", str(out), f"cannot be written ({exc.strerror})") from None
    summary = score(rows, results)
    if report is not None:
        _write_report(report, summary)
    if plot is not None:
        from planner.report.plots import plot_validation

        try:
            plot_validation(rows, results, plot)
        except OSError as exc:
            raise SpecError("--plot", str(plot), f"cannot be written ({exc.strerror or exc})") from None
    rows = [{"case_id": c.case_id, "source": c.source, "measured_step_time_s": c.measured,
             "predicted_step_time_s": c.predicted, "ape": c.ape, "status": c.status.value, "message": c.message}
            for c in summary.cases]

    def table(console: Console) -> None:
        _print_summary(summary, console)
        if plot is not None:
            console.print(f"plot: {plot}", markup=False)

    write_result(summary.as_dict(), fmt, None, table=table, rows=rows)
