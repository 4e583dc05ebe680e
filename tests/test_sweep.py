"""planner.sweep: grid product, columns, nested paths, invalid points, cluster resize."""

from __future__ import annotations

import math

import pandas as pd
import pytest

import planner
from planner.costmodel.report import PHASE_LABELS, Dim, TimeBreakdown
from planner.sweep import METRIC_COLUMNS, SweepBase, apply_change

BASE = {
    "model": "tiny-dense",
    "cluster": "dgx-h100",
    "plan": {"tp": 2, "pp": 2, "dp": 2},
    "workload": {"global_batch_size": 16, "seq_length": 512},
}


@pytest.fixture(scope="module")
def base() -> SweepBase:
    return SweepBase.from_mapping({**BASE, "cluster": planner.load_cluster("dgx-h100", num_gpus=8)})


def test_cartesian_product_one_row_per_point(base):
    df = planner.sweep(base, {"plan.tp": [1, 2], "plan.pp": [1, 2], "workload.global_batch_size": [16, 32]},
                       derive=lambda p: {"plan.dp": 8 // (p.plan.tp * p.plan.pp)}, progress=False)
    assert isinstance(df, pd.DataFrame)
    assert len(df) == 8
    assert set(zip(df["plan.tp"], df["plan.pp"], df["workload.global_batch_size"])) == {
        (tp, pp, b) for tp in (1, 2) for pp in (1, 2) for b in (16, 32)
    }
    assert list(df["plan.dp"]) == [8 // (tp * pp) for tp in (1, 2) for pp in (1, 2) for _ in (16, 32)]
    assert (df["status"] == "ok").all(), df["message"].tolist()
    # last key varies fastest; bigger batches take longer
    assert (df["step_time_s"].iloc[1::2].to_numpy() > df["step_time_s"].iloc[0::2].to_numpy()).all()


def test_every_breakdown_term_is_a_column(base):
    df = planner.sweep(base, {"plan.tp": [2]}, progress=False)
    for col in ("step_time_s", "tokens_per_s_per_gpu", "mfu_causal", "mfu_noncausal", "status",
                "memory_peak_gib", "message", *TimeBreakdown.model_fields,
                *(f"comm_{k}_{d.value}_s" for k in ("exposed", "hidden") for d in Dim)):
        assert col in df.columns, col
    row = df.iloc[0]
    report = planner.simulate(base.model, base.cluster, base.plan, base.workload)
    assert row["step_time_s"] == pytest.approx(report.step_time_s)
    assert row["comm_exposed_tp_s"] == pytest.approx(report.comm_exposed_s.get(Dim.TP, 0.0))
    assert row["memory_peak_gib"] == pytest.approx(report.memory_peak_bytes / 2**30)
    assert sum(row[c] for c in TimeBreakdown.model_fields) == pytest.approx(row["step_time_s"], rel=1e-6)


def test_every_phase_has_one_display_name():
    """The CLI table, explain and the plots all name the phases from PHASE_LABELS."""
    assert tuple(PHASE_LABELS) == tuple(TimeBreakdown.model_fields)
    assert len(set(PHASE_LABELS.values())) == len(PHASE_LABELS)


def test_nested_field_path_is_revalidated(base):
    nic = base.cluster.node.nic_bandwidth_bytes_per_s
    df = planner.sweep(base, {"cluster.node.nic_bandwidth_bytes_per_s": [nic, -1.0]}, progress=False)
    assert list(df["status"]) == ["ok", "invalid"]
    assert "nic_bandwidth_bytes_per_s" in df["message"].iloc[1]
    changed = apply_change(base, "cluster.node.nic_bandwidth_bytes_per_s", nic * 2)
    assert changed.cluster.node.nic_bandwidth_bytes_per_s == nic * 2
    assert base.cluster.node.nic_bandwidth_bytes_per_s == nic  # base untouched
    deeper = apply_change(base, "model.num_layers", 2)
    assert deeper.model.num_layers == 2


def test_invalid_points_are_rows_not_exceptions(base):
    # tp=3 does not divide the heads / world size mismatch: invalid, with the reason
    df = planner.sweep(base, {"plan.tp": [2, 3], "plan.pipeline_schedule": ["1f1b", "dualpipe"],
                              "plan.pp": [2, 3]}, progress=False)
    assert len(df) == 8
    bad = df[df["status"] == "invalid"]
    assert len(bad) >= 5
    assert all(msg for msg in bad["message"])
    assert bad["step_time_s"].map(math.isnan).all()
    assert (df["status"] == "ok").any()
    assert df.loc[(df["plan.pp"] == 3) & (df["plan.pipeline_schedule"] == "dualpipe"), "message"].str.contains(
        "DualPipe").all()


def test_cluster_resize_and_whole_spec_replacement(base):
    df = planner.sweep(
        BASE, {"cluster": ["dgx-h100", "dgx-a100"], "cluster.num_gpus": [8, 16, 12]},
        derive=lambda p: {"plan.dp": p.cluster.num_gpus // 4}, progress=False,
    )
    assert len(df) == 6
    assert list(df["cluster"]) == ["dgx-h100"] * 3 + ["dgx-a100"] * 3
    ok = df[df["status"] == "ok"]
    assert list(ok["num_gpus"]) == [8, 16, 8, 16]
    assert list(ok["plan.dp"]) == [2, 4, 2, 4]
    bad = df[df["cluster.num_gpus"] == 12]
    assert (bad["status"] == "invalid").all()
    assert bad["message"].str.contains("multiple of gpus_per_node").all()
    # A100 is slower than H100 on the same plan
    h100, a100 = ok["step_time_s"].iloc[0], ok["step_time_s"].iloc[2]
    assert a100 > h100


def test_derive_dp_fills_the_gpus_or_says_why_not(base):
    """planner.sweep.derive_dp (the CLI's and the report's derive): dp = GPUs / (tp cp pp);
    a pp whose tp * cp * pp does not divide the GPUs is an invalid point that says so."""
    from planner.sweep import derive_dp

    df = planner.sweep(base, {"plan.pp": [2, 3]}, derive=derive_dp, progress=False)
    assert list(df["status"]) == ["ok", "invalid"]
    assert df["plan.dp"].iloc[0] == 2  # 8 / (2 * 1 * 2)
    assert "tp * cp * pp = 6: must divide the GPUs (8)" in df["message"].iloc[1]


def test_bad_grid_key_raises_up_front(base):
    with pytest.raises(planner.SpecError, match="no field"):
        planner.sweep(base, {"plan.nonsense": [1]})
    with pytest.raises(planner.SpecError, match="must start with"):
        planner.sweep(base, {"tp": [1]})
    with pytest.raises(planner.SpecError):
        planner.sweep({"model": "tiny-dense"}, {})


def test_metric_columns_nan_for_invalid(base):
    df = planner.sweep(base, {"plan.dp": [1]}, progress=False)
    assert df["status"].iloc[0] == "invalid"
    assert all(math.isnan(df[c].iloc[0]) for c in METRIC_COLUMNS)


def test_progress_bar_on_long_sweeps(base, monkeypatch, capsys):
    import sys

    sweep_mod = sys.modules["planner.sweep"]  # planner.sweep is the function
    monkeypatch.setattr(sweep_mod, "PROGRESS_AFTER_S", -1.0)  # every sweep counts as long
    df = planner.sweep(base, {"workload.global_batch_size": [16, 32, 48]}, progress=True)
    assert len(df) == 3 and (df["status"] == "ok").all()
    df = planner.sweep(base, {"workload.global_batch_size": [16, 32]}, progress=False)
    assert len(df) == 2
