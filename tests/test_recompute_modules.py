"""Selective recomputation by module (Megatron-Core ``--recompute-modules``): the plan knob,
what memory keeps, what backward repeats, and the validator's choice among module sets."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from pydantic import ValidationError

from planner import load_cluster, load_model
from planner.costmodel import compute as C
from planner.costmodel.comm import StageComm
from planner.costmodel.memory import _kept, activation_bytes, saved_tensors
from planner.costmodel.partition import Piece
from planner.hwmodels.placement import rank_layout
from planner.launch.emit import megatron_args
from planner.presets import revalidate
from planner.specs import Plan, Precision, Recompute, RecomputeModule, Workload
from planner.validation import run as R
from planner.validation.reconcile import selective_ladder

QWEN = load_model("qwen3-235b-a22b")
WORKLOAD = Workload(global_batch_size=256, seq_length=4096, precision="bf16")
BASE = Plan(tp=2, pp=8, vpp=4, pipeline_schedule="interleaved", ep=8, dp=16, sequence_parallel=True,
            recompute="selective")
MOE_BLOCK = revalidate(BASE, recompute_modules=["moe", "layernorm"])


def test_modules_need_selective_and_are_canonical() -> None:
    assert MOE_BLOCK.recompute_modules == (RecomputeModule.LAYERNORM, RecomputeModule.MOE)
    with pytest.raises(ValidationError, match="needs recompute 'selective'"):
        Plan(recompute="full", recompute_modules=["moe"])
    with pytest.raises(ValidationError, match="at least one module"):
        Plan(recompute="selective", recompute_modules=[])


def test_default_modules() -> None:
    """core_attn (Megatron's default), + moe_act in FP8; MLA: V3's norms, up-projections, SwiGLU."""
    dense = load_model("llama3-8b")
    assert C.selective_modules(dense, BASE, WORKLOAD.precision) == {RecomputeModule.CORE_ATTN}
    assert C.selective_modules(dense, BASE, Precision.FP8) == {RecomputeModule.CORE_ATTN, RecomputeModule.MOE_ACT}
    assert C.selective_modules(load_model("deepseek-v3"), BASE, Precision.FP8) == {
        RecomputeModule.LAYERNORM, RecomputeModule.MLA_UP_PROJ, RecomputeModule.MOE_ACT}
    assert C.selective_modules(dense, MOE_BLOCK, WORKLOAD.precision) == set(MOE_BLOCK.recompute_modules)


def test_whole_moe_block_keeps_only_its_input() -> None:
    """Recomputing ``moe`` checkpoints the block at its input: the router scores, dispatched
    rows, indices and expert fc1/activation outputs go; the residual stream stays; with
    ``layernorm`` the norm outputs go too, and the softmax statistics stay (core_attn is
    no longer named)."""
    assert activation_bytes(QWEN, MOE_BLOCK, WORKLOAD, Piece.MOE) < 0.5 * activation_bytes(
        QWEN, BASE, WORKLOAD, Piece.MOE)
    keep, gone = _kept(QWEN, MOE_BLOCK, WORKLOAD, Piece.MOE)
    assert {s.name for s in keep} | {s.name for s in gone} == {
        s.name for s in saved_tensors(QWEN, MOE_BLOCK, WORKLOAD, Piece.MOE)}
    assert {"router scores", "expert inputs (dispatched)", "expert indices and probabilities",
            "expert fc1 output", "expert activation output", "FFN norm output", "norm output"} <= {
        s.name for s in gone}
    assert {"block input (norm input)", "FFN norm input", "softmax log-sum-exp", "q", "k, v"} <= {
        s.name for s in keep}


def test_whole_moe_block_repeats_its_forward_and_all_to_all() -> None:
    """Backward repeats the forward of every op in the MoE block (router, experts, permutes)
    and the dispatch/combine all-to-all; nothing else is recomputed without core_attn."""
    ops = C.piece_ops(QWEN, MOE_BLOCK, WORKLOAD, Piece.MOE)
    gpu = load_cluster("dgx-h100").gpu
    block = [op for op in ops if RecomputeModule.MOE in op.modules]
    assert {op.name for op in block} >= {"router", "experts_up_gate", "experts_down", "moe_permute"}
    assert all(op.recompute_selective == (op in block or RecomputeModule.LAYERNORM in op.modules) for op in ops)
    timed = C.piece_time(ops, gpu, WORKLOAD.precision, Recompute.SELECTIVE)
    alone = sum(C.piece_time((op,), gpu, WORKLOAD.precision, Recompute.NONE).forward_s
                for op in ops if op.recompute_selective)
    assert timed.recompute_s == pytest.approx(alone, rel=0.05)
    assert timed.recompute_s > 0.3 * timed.forward_s

    cluster = load_cluster("dgx-h100", num_gpus=256)
    comm = {p.recompute_modules: StageComm(QWEN, cluster, p, WORKLOAD, rank_layout(p), 0).piece(Piece.MOE)
            for p in (BASE, MOE_BLOCK)}
    base, moe = comm[None], comm[MOE_BLOCK.recompute_modules]
    assert base.ep_forward_s > 0
    assert moe.ep_backward_s == pytest.approx(2 * base.ep_backward_s)
    assert moe.ep_forward_s == base.ep_forward_s


def test_launch_emits_the_modules() -> None:
    lines = megatron_args(QWEN, MOE_BLOCK, WORKLOAD)
    assert "--recompute-modules layernorm moe" in lines
    assert not any(line.startswith("--recompute-modules") for line in megatron_args(QWEN, BASE, WORKLOAD))


def test_validator_takes_the_first_module_set_that_fits() -> None:
    """A selective row whose default modules are out of memory: the run fitted, so the
    validator walks reconcile.selective_ladder and keeps the first set that fits."""
    seen = []

    def fake_simulate(model, cluster, plan, workload):
        seen.append(plan.recompute_modules)
        fits = plan.recompute_modules is not None and RecomputeModule.MOE in plan.recompute_modules
        return SimpleNamespace(status="ok" if fits else "oom", step_time_s=1.0, memory_peak_bytes=1,
                               memory_capacity_bytes=1, messages=[])

    inputs = SimpleNamespace(model=QWEN, cluster=None, plan=BASE, workload=WORKLOAD,
                             recompute_candidates=(Recompute.SELECTIVE,),
                             selective_sets=selective_ladder(QWEN), offload=False)
    notes: list[str] = []
    report = R._simulate_fitting(inputs, fake_simulate, notes)
    assert report.status == "ok"
    assert seen == [None, (RecomputeModule.LAYERNORM, RecomputeModule.MOE_ACT),
                    (RecomputeModule.LAYERNORM, RecomputeModule.MOE)]
    assert "selective (layernorm moe)" in notes[-1]

    seen.clear()

    def always_oom(model, cluster, plan, workload):
        seen.append(plan.recompute_modules)
        return SimpleNamespace(status="oom", step_time_s=float(len(seen)), memory_peak_bytes=2,
                               memory_capacity_bytes=1, messages=[])

    report = R._simulate_fitting(inputs, always_oom, [])
    assert report.status == "oom" and len(seen) == 3
    assert report.step_time_s == 1.0  # the default modules' report


def test_full_recompute_repeats_the_forward_collectives() -> None:
    """Full recomputation re-runs each block's forward in backward, its TP collectives and
    its dispatch/combine included (Megatron checkpoints the layer and calls the same
    forward); the embedding and the head are not recomputed."""
    cluster = load_cluster("dgx-h100", num_gpus=256)
    plans = {r: revalidate(BASE, recompute=r, recompute_modules=None) for r in (Recompute.NONE, Recompute.FULL)}
    comm = {r: StageComm(QWEN, cluster, p, WORKLOAD, rank_layout(p), 0) for r, p in plans.items()}
    for piece in (Piece.MOE, Piece.DENSE):
        none, full = comm[Recompute.NONE].piece(piece), comm[Recompute.FULL].piece(piece)
        assert none.tp_forward_s > 0
        assert full.tp_backward_s == pytest.approx(none.tp_backward_s + none.tp_forward_s)
        assert full.ep_backward_s == pytest.approx(none.ep_backward_s + none.ep_forward_s)
    assert comm[Recompute.FULL].piece(Piece.MOE).ep_forward_s > 0
    for piece in (Piece.EMBEDDING, Piece.HEAD):
        assert comm[Recompute.FULL].piece(piece) == comm[Recompute.NONE].piece(piece)
