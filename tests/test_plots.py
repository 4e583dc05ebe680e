"""planner.report.plots and the --plot-dir / --plot options of simulate and validate."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import pytest
from matplotlib.image import imread

from planner import load_cluster, load_model
from planner.costmodel.simulate import simulate
from planner.presets import data_root
from planner.report.plots import plot_breakdown, plot_memory, plot_pipeline, plot_validation
from planner.specs import Plan, Workload
from planner.validation.run import CaseResult, CaseStatus


def _png(path) -> None:
    assert path.exists() and path.stat().st_size > 1000
    image = imread(path)
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100
    assert image.std() > 0.01  # not a blank canvas


@pytest.fixture(scope="module")
def reports():
    model = load_model("tiny-moe-mla")
    cluster = load_cluster("dgx-h100", num_gpus=8)
    workload = Workload(global_batch_size=16, seq_length=model.default_seq_length)
    out = {}
    for schedule in ("dualpipe", "1f1b"):
        plan = Plan(tp=1, pp=2, ep=4, dp=4, pipeline_schedule=schedule)
        out[schedule] = simulate(model, cluster, plan, workload)
    return out


def test_plot_pipeline_dualpipe(reports, tmp_path) -> None:
    report = reports["dualpipe"]
    assert any(e.direction for e in report.timeline.events)  # two directions to draw
    path = plot_pipeline(report, tmp_path / "sub" / "pipeline.png", label="tiny")
    _png(path)
    # A bare timeline works too.
    _png(plot_pipeline(reports["1f1b"].timeline, tmp_path / "p2.png"))


def test_plot_pipeline_rejects_a_report_without_timeline(tmp_path) -> None:
    with pytest.raises(TypeError):
        plot_pipeline(object(), tmp_path / "x.png")


def test_plot_breakdown_and_memory(reports, tmp_path) -> None:
    _png(plot_breakdown(reports, tmp_path / "breakdown.png"))
    _png(plot_memory(reports["dualpipe"], tmp_path / "memory.png"))
    with pytest.raises(ValueError):
        plot_breakdown({}, tmp_path / "empty.png")


def test_plot_validation_fake_rows(tmp_path) -> None:
    rows = [
        {"case_id": "a", "source": "paper A", "step_time_s": "1.0"},
        {"case_id": "b", "source": "paper B", "step_time_s": "10"},
        {"case_id": "c", "source": "paper B", "step_time_s": ""},
    ]
    results = [
        CaseResult("a", 1.05, CaseStatus.OK, ""),
        CaseResult("b", 7.0, CaseStatus.OOM, "OOM"),
        CaseResult("c", None, CaseStatus.ERROR, "bad row"),
    ]
    _png(plot_validation(rows, results, tmp_path / "scatter.png"))


def test_cli_simulate_plot_dir(tmp_path) -> None:
    folder = tmp_path / "plots"
    cmd = [sys.executable, "-m", "planner", "simulate", "-m", "tiny-moe-mla", "-c", "dgx-h100", "--gpus", "8",
           "--global-batch", "16", "--pp", "2", "--ep", "4", "--schedule", "dualpipe", "--plot-dir", str(folder)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    for name in ("pipeline.png", "breakdown.png", "memory.png"):
        _png(folder / name)
        assert f"plot: {folder / name}" in out.stdout
    js = subprocess.run([*cmd, "--format", "json"], capture_output=True, text=True, timeout=120)
    assert js.returncode == 0, js.stderr
    assert sorted(json.loads(js.stdout)["plot_files"]) == sorted(
        str(folder / n) for n in ("pipeline.png", "breakdown.png", "memory.png"))


def test_cli_validate_plot(tmp_path) -> None:
    with open(data_root() / "validation" / "public_cases.csv", newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        rows = [r for r in reader if r.get("step_time_s")][:3]
        fields = reader.fieldnames
    cases = tmp_path / "cases.csv"
    with open(cases, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    scatter = tmp_path / "scatter.png"
    base = [sys.executable, "-m", "planner", "validate", "--cases", str(cases)]
    out = subprocess.run([*base, "--plot", str(scatter)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    _png(scatter)
    bad = subprocess.run([*base, "--plot", str(tmp_path / "scatter.txt")], capture_output=True, text=True,
                         timeout=120)
    assert bad.returncode == 2
    assert "Traceback" not in bad.stderr


def test_plot_scaling_and_heatmap(tmp_path) -> None:
    from planner.report.plots import plot_heatmap, plot_scaling

    rows = [{"num_gpus": 8, "tokens_per_s_per_gpu": 1000.0, "status": "ok"},
            {"num_gpus": 16, "tokens_per_s_per_gpu": 900.0, "status": "ok"},
            {"num_gpus": float("nan"), "cluster.num_gpus": 4, "tokens_per_s_per_gpu": float("nan"),
             "status": "invalid"}]
    _png(plot_scaling(rows, tmp_path / "scaling.png", label="test"))
    grid = [{"plan.pp": pp, "plan.ep": ep, "step_time_s": pp + ep / 10, "status": "oom" if pp == 4 else "ok"}
            for pp in (1, 2, 4) for ep in (2, 4)]
    _png(plot_heatmap(grid, "plan.ep", "plan.pp", tmp_path / "heat.png"))
