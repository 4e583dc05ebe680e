"""Workload.cross_entropy: what the loss keeps for backward per logit.

Megatron's vocab-parallel cross entropy saves the FP32 softmax (4 bytes per logit); a fused
kernel keeps the 16-bit logits (2 bytes: flash-attn's Triton kernel saves ``logits, lse,
labels``, flash_attn/ops/triton/cross_entropy.py), so only the head's saved tensors change,
by exactly 2 bytes per logit of the micro-batch. The validator picks the fused kernel for
llm-foundry rows (MPT's default ``loss_fn: fused_crossentropy``) and Megatron-MoE-ModelZoo rows
(``--cross-entropy-fusion-impl te`` in its benchmarking configs).
"""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
from typer.testing import CliRunner

from planner import load_cluster, load_model
from planner.cli.main import app
from planner.costmodel.fast import estimate
from planner.costmodel.memory import activation_bytes, working_set_bytes
from planner.costmodel.partition import Piece
from planner.costmodel.simulate import simulate
from planner.launch.emit import megatron_args
from planner.specs import CrossEntropyKernel, Plan, Workload
from planner.validation.cases import case_inputs

FUSED = CrossEntropyKernel.FUSED
EXTRA = Path(__file__).resolve().parents[1] / "data" / "validation" / "extra_cases.csv"


@pytest.fixture(scope="module")
def inputs():
    model, cluster = load_model("llama3-8b"), load_cluster("dgx-a100").with_num_gpus(8)
    workload = Workload(global_batch_size=16, seq_length=4096)
    return model, cluster, Plan(tp=2, pp=2, dp=2, micro_batch_size=2), workload


def test_only_the_head_keeps_less(inputs):
    model, _, plan, workload = inputs
    fused = workload.model_copy(update={"cross_entropy": FUSED})
    tokens = plan.micro_batch_size * workload.seq_length
    logits = tokens * model.vocab_size / plan.tp
    head = activation_bytes(model, plan, workload, Piece.HEAD) - activation_bytes(model, plan, fused, Piece.HEAD)
    assert head == pytest.approx(2 * logits)
    for piece in (Piece.DENSE, Piece.EMBEDDING):
        assert activation_bytes(model, plan, fused, piece) == activation_bytes(model, plan, workload, piece)
    # The backward's 16-bit gradient is alive either way.
    assert working_set_bytes(model, plan, fused, Piece.HEAD) == working_set_bytes(model, plan, workload, Piece.HEAD)


def test_peak_falls_on_the_head_stage_only(inputs):
    model, cluster, plan, workload = inputs
    unfused = simulate(model, cluster, plan, workload)
    fused = simulate(model, cluster, plan, workload.model_copy(update={"cross_entropy": FUSED}))
    assert fused.step_time_s == unfused.step_time_s
    before = [s.memory.total_bytes for s in unfused.stages]
    after = [s.memory.total_bytes for s in fused.stages]
    assert after[0] == before[0] and after[-1] < before[-1]
    est = estimate(model, cluster, workload.model_copy(update={"cross_entropy": FUSED}), [plan])
    assert float(est.memory_peak_bytes[0]) == pytest.approx(fused.memory_peak_bytes, rel=1e-9)


def test_validator_picks_fused_for_llm_foundry_modelzoo_and_automodel_rows():
    """llm-foundry's fused_crossentropy, the ModelZoo's TE kernel and NeMo AutoModel's
    MaskedCrossEntropy(fp32_upcast=False) keep 16-bit logits (reconcile.cross_entropy)."""
    rows = list(csv.DictReader(EXTRA.open()))
    picked = {}
    for row in rows:
        text = f"{row['source']} {row['notes']}".lower()
        named = any(name in text for name in ("llm-foundry", "llmfoundry", "megatron-moe-modelzoo",
                                              "nemo automodel"))
        picked[row["case_id"]] = (case_inputs(row).workload.cross_entropy is FUSED, named)
    assert sum(named for _, named in picked.values()) >= 14
    assert picked["automodel-h100-qwen3-30b-a3b-bf16-8gpu"] == (True, True)
    assert all(fused == named for fused, named in picked.values())
    row = next(r for r in rows if "llm-foundry" in r["source"])
    row = {**row, "notes": row["notes"] + "; loss_fn torch_crossentropy"}
    assert case_inputs(row).workload.cross_entropy is CrossEntropyKernel.UNFUSED


def test_cli_option_and_launch(inputs):
    model, _, plan, workload = inputs
    args = ["simulate", "-m", "llama3-8b", "-c", "dgx-a100", "--gpus", "8", "--tp", "2", "--pp", "2",
            "--micro-batch", "2", "--global-batch", "16", "--seq-len", "4096", "-f", "json"]
    runner = CliRunner()
    out = runner.invoke(app, args + ["--cross-entropy", "fused"])
    assert out.exit_code == 0, out.output
    bad = runner.invoke(app, args + ["--cross-entropy", "chunked"])
    assert bad.exit_code == 2 and "cross_entropy" in bad.output and "Traceback" not in bad.output
    lines = megatron_args(model, plan, workload.model_copy(update={"cross_entropy": FUSED}))
    assert "--cross-entropy-loss-fusion" in lines and "--cross-entropy-fusion-impl te" in lines
    assert "--cross-entropy-loss-fusion" not in megatron_args(model, plan, workload)
