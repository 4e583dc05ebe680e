"""Each study in examples/ runs on its small grid and writes a non-empty table."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
STUDIES = ["deepseekmoe_a100_vs_h800", "deepseek_v3_bandwidth", "llama70b_scaling"]


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name", STUDIES)
def test_example_small_grid(name, tmp_path, capsys):
    module = _load(name)
    assert module.__doc__ and module.__doc__.strip(), "each study says what it shows"
    df = module.main(small=True, out=tmp_path)
    assert isinstance(df, pd.DataFrame) and 2 <= len(df) <= 3
    assert (df["status"] == "ok").all(), df["message"].tolist()
    assert (df["step_time_s"] > 0).all()
    csv = tmp_path / f"{name}.csv"
    assert csv.is_file()
    assert len(pd.read_csv(csv)) == len(df)
    assert "wrote" in capsys.readouterr().out


def test_example_figures(tmp_path):
    moe = _load("deepseekmoe_a100_vs_h800").main(small=True, out=tmp_path)
    a100 = moe[moe["cluster_preset"] == "fire-flyer-2"].set_index("num_gpus")
    h800 = moe[moe["cluster_preset"] == "deepseek-v3-h800"].set_index("num_gpus")
    assert (a100["step_time_s"] > h800["step_time_s"]).all()
    row = a100.iloc[0]
    expected = row.name * row["step_time_s"] / 3600 * 1e12 / row["tokens_per_step"]
    assert row["gpu_hours_per_1e12_tokens"] == pytest.approx(expected)

    bw = _load("deepseek_v3_bandwidth").main(small=True, out=tmp_path)
    assert list(bw["nic_scale"]) == [0.5, 1.0]
    assert bw["step_time_s"].iloc[0] > bw["step_time_s"].iloc[1]  # half the bandwidth is slower

    scale = _load("llama70b_scaling").main(small=True, out=tmp_path)
    assert scale["scaling_efficiency"].iloc[0] == pytest.approx(1.0)
    assert scale["scaling_efficiency"].is_monotonic_decreasing


def test_example_runs_as_a_script(tmp_path):
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / "llama70b_scaling.py"), "--small", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "tok/s/GPU" in result.stdout
    assert (tmp_path / "llama70b_scaling.csv").is_file()
