"""Workload.fp8_implementation: whose kernels quantise FP8 Linears.

Transformer Engine (the default) fuses each quantisation into one cast-transpose kernel and
lets the norm write the FP8 input; torchao's float8 (TorchTitan) computes every operand's amax
and casts it per Linear, the weight in every micro-batch, at the byte counts of torchao's own
roofline (torchao/testing/float8/roofline_utils.py) over the share of the HBM rate its compiled
kernels reached on an H100 (data/costmodel/compute.yaml ``fp8_torchao_*``). The validator picks
torchao for TorchTitan FP8 rows.
"""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
from typer.testing import CliRunner

from planner import load_cluster, load_model
from planner.cli.main import app
from planner.costmodel.fast import estimate
from planner.costmodel.ops import OpKind, compute_constants, piece_ops
from planner.costmodel.partition import Piece
from planner.costmodel.simulate import simulate
from planner.launch.emit import megatron_args
from planner.specs import FP8Implementation, Plan, Workload
from planner.validation.cases import case_inputs

TORCHAO = FP8Implementation.TORCHAO
EXTRA = Path(__file__).resolve().parents[1] / "data" / "validation" / "extra_cases.csv"


@pytest.fixture(scope="module")
def inputs():
    model, cluster = load_model("llama3-8b"), load_cluster("dgx-h100").with_num_gpus(8)
    workload = Workload(global_batch_size=16, seq_length=8192, precision="fp8")
    return model, cluster, Plan(tp=4, pp=1, dp=2, micro_batch_size=1, sequence_parallel=True), workload


def _ops(model, plan, workload, impl):
    return piece_ops(model, plan, workload.model_copy(update={"fp8_implementation": impl}), Piece.DENSE)


def test_torchao_replaces_te_casts_with_per_linear_ones(inputs):
    """Every FP8 GEMM (m, n, k) gets an input cast of m k x 6 B (rows / tp for the column-
    parallel qkv and up-gate under sequence parallelism), a weight cast of n k x (5 + 3) B and
    an output-gradient cast of m n x 6 B (rows / tp for the row-parallel out_proj and down),
    each over the measured HBM share; no Transformer Engine cast remains."""
    model, _, plan, workload = inputs
    te = _ops(model, plan, workload, FP8Implementation.TRANSFORMER_ENGINE)
    ao = _ops(model, plan, workload, TORCHAO)
    assert any(op.fp8_cast for op in te) and not any(op.fp8_cast for op in ao)
    c = compute_constants()
    scale = 1.0 / c["fp8_torchao_cast_hbm_share"]
    byname = {op.name: op for op in ao}
    gemms = [op for op in ao if op.kind is OpKind.GEMM and op.fp8]
    assert {op.name for op in gemms} == {"qkv", "out_proj", "ffn_up_gate", "ffn_down"}
    for op in gemms:
        m, n, k = op.shape
        rows_in = m / plan.tp if op.name in ("qkv", "ffn_up_gate") else m
        rows_grad = m / plan.tp if op.name in ("out_proj", "ffn_down") else m
        assert byname[f"{op.name}_f8_input"].bytes == pytest.approx(rows_in * k * 6.0 * scale)
        weight = byname[f"{op.name}_f8_weight"]
        assert (weight.bytes, weight.backward_traffic()) == pytest.approx((n * k * 5.0 * scale, n * k * 3.0 * scale))
        grad = byname[f"{op.name}_f8_grad"]
        assert grad.bytes == 0.0 and grad.backward_traffic() == pytest.approx(rows_grad * n * 6.0 * scale)
    # Everything else is the same kernel list.
    assert [op for op in te if not op.fp8_cast] == [op for op in ao if "_f8_" not in op.name]


def test_torchao_is_slower_and_bf16_is_untouched(inputs):
    model, cluster, plan, workload = inputs
    te = simulate(model, cluster, plan, workload)
    ao = simulate(model, cluster, plan, workload.model_copy(update={"fp8_implementation": TORCHAO}))
    assert ao.step_time_s > te.step_time_s
    bf16 = workload.model_copy(update={"precision": "bf16"})
    assert simulate(model, cluster, plan, bf16.model_copy(update={"fp8_implementation": TORCHAO})).step_time_s == \
        pytest.approx(simulate(model, cluster, plan, bf16).step_time_s, rel=1e-12)
    est = estimate(model, cluster, workload.model_copy(update={"fp8_implementation": TORCHAO}), [plan])
    assert float(est.step_time_s[0]) == pytest.approx(ao.step_time_s, rel=0.03)


def test_validator_picks_torchao_for_torchtitan_fp8_rows():
    rows = list(csv.DictReader(EXTRA.open()))
    picked = {}
    for row in rows:
        titan = "torchtitan" in f"{row['source']} {row['notes']}".lower()
        picked[row["case_id"]] = (case_inputs(row).workload.fp8_implementation is TORCHAO,
                                  titan and row["precision"] == "fp8")
    assert sum(want for _, want in picked.values()) >= 5
    assert all(got == want for got, want in picked.values())


def test_cli_option_and_launch(inputs):
    model, _, plan, workload = inputs
    args = ["simulate", "-m", "llama3-8b", "-c", "dgx-h100", "--gpus", "8", "--tp", "4", "--sequence-parallel",
            "--micro-batch", "1", "--global-batch", "16", "--seq-len", "8192", "--precision", "fp8", "-f", "json"]
    runner = CliRunner()
    te, ao = runner.invoke(app, args), runner.invoke(app, args + ["--fp8-impl", "torchao"])
    assert te.exit_code == 0 and ao.exit_code == 0, ao.output
    assert te.output != ao.output
    bad = runner.invoke(app, args + ["--fp8-impl", "apex"])
    assert bad.exit_code == 2 and "fp8_implementation" in bad.output and "Traceback" not in bad.output
    lines = megatron_args(model, plan, workload.model_copy(update={"fp8_implementation": TORCHAO}))
    assert any("torchao" in line for line in lines if line.startswith("#"))
    assert not any("torchao" in line for line in megatron_args(model, plan, workload))
