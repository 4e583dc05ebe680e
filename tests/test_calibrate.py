"""planner calibrate --from-cases: the fit and its leave-one-source-out score."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from planner.errors import SpecError
from planner.presets import data_root
from planner.validation import read_cases
from planner.validation.calibrate import calibrate

CASES = ["korthikanti22-t5-gpt-22b-8gpu-selective", "fireflyer-llama-13b-64gpu", "narayanan21-t1-gpt-1.7b-32gpu"]


@pytest.fixture(scope="module")
def small_csv(tmp_path_factory) -> Path:
    rows = [r for r in read_cases(data_root() / "validation" / "public_cases.csv") if r["case_id"] in CASES]
    path = tmp_path_factory.mktemp("cal") / "cases.csv"
    with open(path, "w", newline="") as out:
        writer = csv.DictWriter(out, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def test_loso_uses_only_other_sources(small_csv: Path) -> None:
    rows = read_cases(small_csv)
    seen = []
    result = calibrate(rows, (0.7, 1.0), progress=lambda done, total: seen.append((done, total)))
    assert seen[-1] == (2 * len(rows), 2 * len(rows)) and [d for d, _ in seen] == list(range(1, 2 * len(rows) + 1))
    assert result.best_fraction in (0.7, 1.0)
    assert set(result.per_source) == {r["source"] for r in rows}
    assert 0 <= result.loso_within <= 1 and result.loso_median_ape >= 0
    # A faster kernel fraction (1.0) predicts shorter steps than 0.7 for the same cases.
    from planner.validation.calibrate import _predict

    fast, slow = _predict(rows, 1.0), _predict(rows, 0.7)
    assert all(f < s for f, s in zip(fast, slow))


def test_cli_calibrate(small_csv: Path, tmp_path: Path) -> None:
    out = tmp_path / "fit.yaml"
    proc = subprocess.run(
        [sys.executable, "-m", "planner", "calibrate", "--from-cases", str(small_csv), "--grid", "0.8,0.9",
         "--out", str(out), "--format", "json"],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data["best_fraction"] in (0.8, 0.9) and "loso_median_ape" in data
    assert "sustained_kernel_fraction" in out.read_text()


def test_cli_calibrate_csv_and_yaml(small_csv: Path) -> None:
    """The shared --format: csv is one row per held-out source, yaml the same payload as json."""
    def run(fmt: str) -> str:
        proc = subprocess.run(
            [sys.executable, "-m", "planner", "calibrate", "--from-cases", str(small_csv), "--grid", "0.85",
             "-f", fmt],
            capture_output=True, text=True, timeout=300,
        )
        assert proc.returncode == 0, proc.stderr
        return proc.stdout

    rows = list(csv.DictReader(run("csv").splitlines()))
    assert {r["source"] for r in rows} == {r["source"] for r in read_cases(small_csv)}
    assert yaml.safe_load(run("yaml"))["best_fraction"] == 0.85


def test_cli_calibrate_bad_grid(small_csv: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "planner", "calibrate", "--from-cases", str(small_csv), "--grid", "0,1.5"],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2 and "--grid" in proc.stderr and "Traceback" not in proc.stderr


# --- planner calibrate --device ------------------------------------------------------


def _calibrate(*args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "planner", "calibrate", *args],
                          capture_output=True, text=True, timeout=timeout)


def test_device_cpu_writes_a_cluster_the_simulator_accepts(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    out = tmp_path / "hw.yaml"
    proc = _calibrate("--device", "cpu", "--nproc", "2", "--out", str(out), "--format", "json")
    assert proc.returncode == 0, proc.stderr
    fit = json.loads(proc.stdout)["fit"]
    assert fit["peak_flops_per_s"] > 1e8 and fit["link_bandwidth_bytes_per_s"] > 1e6
    assert 0 < fit["attention_forward_fraction"] <= 1 and fit["link_latency_s"] >= 0
    from planner.presets import load_cluster

    cluster = load_cluster(str(out))
    assert cluster.num_gpus == 2 and cluster.name == "local-cpu-2"
    assert cluster.gpu.efficiency is not None and "calibrate --device cpu" in cluster.gpu.source
    # The measured host time per launch, written as a synchronous launch block.
    probe = fit["launch_probe"]
    assert [r["model"] for r in probe] == ["tiny-dense", "tiny-moe-mla"]
    assert all(r["measured_s"] > r["device_s"] > 0 and r["launches"] > 50 for r in probe)
    launch = cluster.gpu.launch
    assert launch.mode == "synchronous" and 1e-6 < launch.overhead_s < 1e-2
    assert launch.overhead_s == pytest.approx(fit["launch_overhead_s"])
    assert "calibrate --device cpu" in launch.source and "per modelled launch" in launch.source
    sim = subprocess.run([sys.executable, "-m", "planner", "simulate", "-m", "tiny-dense", "--cluster", str(out),
                          "--global-batch", "4", "--dp", "2", "--format", "json"],
                         capture_output=True, text=True, timeout=120)
    assert sim.returncode == 0, sim.stderr
    assert json.loads(sim.stdout)["step_time_s"] > 0


def test_device_cuda_without_a_gpu_exits_2() -> None:
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    proc = _calibrate("--device", "cuda", "--out", "unused.yaml")
    assert proc.returncode == 2 and "torch.cuda.is_available() is False" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("args", [[], ["--device", "cpu", "--from-cases", "x.csv"], ["--device", "cpu", "--nproc", "1"]])
def test_device_bad_input_exits_2(args: list[str]) -> None:
    proc = _calibrate(*args, timeout=60)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("planner: error:") and "Traceback" not in proc.stderr


def test_gemm_fit_recovers_plateau_and_half_dim() -> None:
    from planner.launch.device_calibration import fit_gemm

    peak, half = 5e10, 32.0
    shapes = [(64, 64, 64), (256, 256, 256), (1024, 1024, 1024), (2048, 64, 512)]
    samples = [(m, n, k, 2 * m * n * k / (peak * (m / (m + half)) * (n / (n + half)) * (k / (k + half))))
               for m, n, k in shapes]
    got_peak, got_half, rms = fit_gemm(samples)
    assert got_half == pytest.approx(half, rel=0.05) and got_peak == pytest.approx(peak, rel=0.05)
    assert rms < 0.02


def test_link_fit_recovers_the_collective_model() -> None:
    """Samples priced by the planner's own collective model come back as its bandwidth and latency."""
    import numpy as np

    from planner.hwmodels.collectives import collective_cost
    from planner.launch.device_calibration import _trial_cluster, fit_link

    bandwidth, latency = 2e9, 50e-6
    cluster = _trial_cluster(4, bandwidth, latency)
    group = np.arange(4).reshape(1, -1)
    samples = [(op, n, collective_cost(cluster, op, group, n).time_s)
               for op in ("all_reduce", "all_gather", "all_to_all") for n in (16384, 1 << 20, 1 << 24)]
    got_bw, got_lat, rms = fit_link(samples, 4)
    assert got_bw == pytest.approx(bandwidth, rel=1e-3) and got_lat == pytest.approx(latency, rel=1e-3)
    assert rms < 1e-6


def test_launch_overhead_fit_reproduces_the_probe() -> None:
    """Probe times made of the compute model's device time plus 80 us per launch come back as
    80 us, and a GPU with that synchronous launch block prices each probe at its time."""
    from dataclasses import replace

    from planner.launch.host_overhead import fit_overhead_s, probe_rows
    from planner.presets import load_gpu, revalidate
    from planner.specs.hardware import LaunchOverhead

    gpu = load_gpu("local-cpu-core")
    device_only = revalidate(gpu, launch=None)
    rows = probe_rows([("tiny-dense", 0.0), ("tiny-moe-mla", 0.0)], device_only)
    rows = [replace(r, measured_s=r.device_s + r.launches * 80e-6) for r in rows]
    assert fit_overhead_s(rows) == pytest.approx(80e-6, rel=1e-9)
    fitted = revalidate(gpu, launch=LaunchOverhead(source="t", mode="synchronous", overhead_s=80e-6))
    # probe_rows prices with whatever launch block the GPU has: with the fitted one, the total.
    for row, priced in zip(rows, probe_rows([(r.model, 0.0) for r in rows], fitted)):
        assert priced.device_s == pytest.approx(row.measured_s, rel=1e-9)
    # Launches of the whole model at PROBE_SEQ tokens: the MoE + MLA + MTP model has more.
    assert 50 < rows[0].launches < rows[1].launches



def test_gpu_fit_runs_only_that_gpus_rows_and_tries_its_own_value() -> None:
    rows = read_cases(data_root() / "validation" / "extra_cases.csv")
    picked = [r for r in rows if r["gpu"] == "b200"][:2] + [r for r in rows if r["gpu"] == "h100-sxm-80gb"][:2]
    result = calibrate(picked, (0.6, 0.9), gpus=("B200",))
    assert result.cases == 2 and result.best_fraction in (0.6, 0.9)
    from planner.validation.calibrate import _predict

    b200 = picked[:2]
    slow, fast = _predict(b200, 0.6, per_gpu=True), _predict(b200, 0.9, per_gpu=True)
    assert all(f < s for f, s in zip(fast, slow))
    with pytest.raises(SpecError):
        calibrate(picked, (0.6,), gpus=("tpu-v5",))


def test_blackwell_value_is_the_fit() -> None:
    """data/hardware/gpus/b200.yaml and gb200.yaml ship sustained_kernel_fraction 0.72: the
    in-sample best of `planner calibrate --from-cases data/validation/extra_cases.csv --gpu
    b200 --gpu gb200` (grid step 0.02-0.05 around it), whose leave-one-source-out error the
    YAML states. Re-fit on the neighbours of the shipped value."""
    from planner.presets import load_gpu

    shipped = load_gpu("b200").efficiency.sustained_kernel_fraction
    assert shipped == load_gpu("gb200").efficiency.sustained_kernel_fraction
    rows = read_cases(data_root() / "validation" / "extra_cases.csv")
    result = calibrate(rows, (0.68, shipped, 0.75), gpus=("b200", "gb200"))
    assert result.best_fraction == shipped
    assert result.loso_median_ape < 0.08 and result.loso_within >= 0.85
