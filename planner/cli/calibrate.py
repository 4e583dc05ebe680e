"""``planner calibrate``: fit the cost model to measurements.

- ``--from-cases FILE.csv``: fit ``sustained_kernel_fraction`` on published runs and report
  its leave-one-source-out error (the honest accuracy figure); with ``--gpu NAME`` (repeatable)
  a GPU preset's own value on that GPU's rows only;
- ``--device cpu|cuda [--nproc N] --out HW.yaml``: measure this machine's GEMM, attention,
  memory and gloo collective speeds and its host time per kernel launch on N local
  processes and write a one-node cluster YAML the simulator accepts
  (:mod:`planner.launch.device_calibration`).
"""

from __future__ import annotations

from pathlib import Path

import typer
import yaml
from rich.console import Console
from rich.table import Table

from planner.cli.main import app, reports_errors
from planner.cli.output import Format, progress_bar, write_result
from planner.errors import SpecError, UnsupportedError
from planner.launch.device_calibration import Device
from planner.validation import read_cases
from planner.validation.calibrate import DEFAULT_GRID, calibrate


@app.command("calibrate")
@reports_errors
def calibrate_command(
    from_cases: Path = typer.Option(None, "--from-cases", help="Validation CSV (schema of data/validation)."),
    device: Device = typer.Option(None, "--device", help="Measure this machine (cpu or cuda) instead."),
    nproc: int = typer.Option(8, "--nproc", help="Local processes (devices) measured at once with --device."),
    name: str = typer.Option(None, "--name", help="Cluster name written with --device \\[default: local-DEVICE-N]."),
    grid: str = typer.Option(",".join(f"{v:g}" for v in DEFAULT_GRID), "--grid",
                             help="Comma-separated sustained_kernel_fraction values to try (0 < v <= 1)."),
    gpu: list[str] = typer.Option([], "--gpu", metavar="NAME", help="With --from-cases: fit the own value of this GPU preset "
                                   "(repeatable: one value for several) on its rows only."),
    out: Path = typer.Option(None, "--out", help="Write the fitted constant as YAML here."),
    fmt: Format = typer.Option(Format.TABLE, "--format", "-f", help="Output format (csv: one row per held-out source or measured term)."),
) -> None:
    """Fit the sustained kernel fraction (--from-cases), or measure this machine (--device).

    --from-cases: each grid value re-runs every case, so a 44-case file takes a few minutes.
    --device cpu: about 10-30 s; writes a cluster YAML for planner simulate/launch --cluster.
    """
    if (from_cases is None) == (device is None):
        raise SpecError("--from-cases/--device", None, "give exactly one of --from-cases FILE.csv and --device cpu|cuda")
    if gpu and device is not None:
        raise SpecError("--gpu", ",".join(gpu), "goes with --from-cases")
    if device is not None:
        _calibrate_device(device, nproc, name, out, fmt)
        return
    try:
        values = tuple(float(v) for v in grid.split(","))
    except ValueError:
        raise SpecError("--grid", grid, "must be comma-separated numbers") from None
    if not values or any(not 0 < v <= 1 for v in values):
        raise SpecError("--grid", grid, "every value must be in (0, 1]")
    rows = read_cases(from_cases)
    gpus = tuple(gpu)
    with progress_bar("calibrating", "case runs") as update:
        result = calibrate(rows, values, progress=update, gpus=gpus)
    if out is not None:
        out.write_text(yaml.safe_dump({
            "sustained_kernel_fraction": result.best_fraction,
            **({"gpus": list(gpus)} if gpus else {}),
            "fitted_on": str(from_cases),
            "loso_median_ape": round(result.loso_median_ape, 4),
            "loso_within_15pct": round(result.loso_within, 4),
        }, sort_keys=False))
    if fmt is not Format.TABLE:
        write_result({
            "best_fraction": result.best_fraction,
            "in_sample_median_ape": result.in_sample_median_ape,
            "loso_median_ape": result.loso_median_ape,
            "loso_within_15pct": result.loso_within,
            "per_source": {k: {"fitted": f, "held_out_median_ape": a} for k, (f, a) in result.per_source.items()},
        }, fmt, rows=[{"source": k, "fitted": f, "held_out_median_ape": a} for k, (f, a) in result.per_source.items()])
        return
    console = Console()
    scope = f" of {', '.join(gpus)} ({result.cases} cases)" if gpus else ""
    console.print(
        f"sustained_kernel_fraction{scope}: in-sample best [bold]{result.best_fraction:g}[/bold] "
        f"(median APE {result.in_sample_median_ape:.1%}); leave-one-source-out: median APE "
        f"[bold]{result.loso_median_ape:.1%}[/bold], {result.loso_within:.0%} of cases within 15%"
    )
    table = Table(title="Held-out sources", title_justify="left")
    for name in ("source", "fitted on the others", "held-out median APE"):
        table.add_column(name, justify="left" if name == "source" else "right")
    for source, (fit, ape) in result.per_source.items():
        table.add_row(source, f"{fit:g}", f"{ape:.1%}")
    console.print(table)


def _calibrate_device(device: Device, nproc: int, name: str | None, out: Path | None, fmt: Format) -> None:
    """Measure, fit, write the cluster YAML (friendly units) and print the fitted terms."""
    if nproc < 2:
        raise SpecError("--nproc", nproc, "must be >= 2 (collectives need two processes)")
    try:
        import torch
    except ImportError:
        raise UnsupportedError('torch is not installed; install the model extra: pip install "planner[model]"') from None
    if device is Device.CUDA and not torch.cuda.is_available():
        raise UnsupportedError("--device cuda: torch.cuda.is_available() is False on this machine; use --device cpu")
    from planner.launch import device_calibration as dc
    from planner.presets import validate_spec
    from planner.specs import ClusterSpec

    name = name or f"local-{device.value}-{nproc}"
    with progress_bar(f"measuring this machine ({device.value}, {nproc} processes)", "") as update:
        update(0, None)
        measured = dc.measure(device, nproc)
    fitted = dc.fit(measured)
    document = dc.calibrated_cluster(measured, fitted, name)
    validate_spec(ClusterSpec, document, name)  # what we write must load
    if out is not None:
        try:
            out.write_text(yaml.safe_dump(document, sort_keys=False))
        except OSError as exc:
            raise SpecError("--out", str(out), f"cannot write there: {exc.strerror or exc}") from None
    if fmt is not Format.TABLE:
        summary = {**dc.summary(measured, fitted), "out": str(out) if out else None}
        write_result(summary, fmt, rows=[{"term": k, "value": v} for k, v in summary.items()])
        return
    console = Console()
    table = Table(title=f"{name}: {measured.device_name}, {nproc} processes", title_justify="left")
    table.add_column("term")
    table.add_column("value", justify="right")
    rows = [
        ("GEMM plateau (peak)", f"{fitted.peak_flops_per_s / 1e9:.2f} GFLOP/s"),
        ("gemm_half_dim", f"{fitted.gemm_half_dim:.1f} (rms log error {fitted.gemm_rms_log_error:.3f})"),
        ("attention forward / backward fraction",
         f"{fitted.attention_forward_fraction:.3f} / {fitted.attention_backward_fraction:.3f}"),
        ("memory bandwidth", f"{fitted.memory_bytes_per_s / 1e9:.2f} GB/s"),
        ("link bandwidth (gloo)", f"{fitted.link_bandwidth_bytes_per_s / 1e9:.3f} GB/s"),
        ("link latency (gloo)", f"{fitted.link_latency_s * 1e6:.0f} us (rms rel. error {fitted.link_rms_relative_error:.2f})"),
        ("launch overhead",
         f"{fitted.launch_overhead_s * 1e6:.1f} us per modelled kernel ({fitted.launch_mode.value})"),
    ]
    for term, value in rows:
        table.add_row(term, value)
    console.print(table)
    if out is not None:
        console.print(f"wrote {out}")
