"""compute_vec.OpArrays.times equals compute.piece_time bit for bit (``==``, no tolerance:
the search's time-balanced splits read these forward times and must match the simulator's)
on random shapes: models dense, MoE and MLA, every GPU preset, launch overhead synchronous
and asynchronous, fp8/bf16/fp16, flash and unfused attention, every recompute (selective
with the default modules and TorchTitan's op-level SAC), SM shares."""

from __future__ import annotations

import random

import pytest

from planner import load_model
from planner.costmodel.compute import OpKind, op_forward_s, piece_ops, piece_time
from planner.costmodel.compute_vec import OpArrays
from planner.costmodel.partition import model_pieces
from planner.errors import UnsupportedError
from planner.presets import load_gpu, revalidate
from planner.specs import Plan, Workload
from planner.specs.hardware import LaunchOverhead
from planner.specs.plan import Precision, Recompute

MODELS = ["deepseek-v3", "gpt3-175b", "llama3-8b", "mixtral-8x7b", "deepseek-v2-lite", "tiny-moe-mla"]
GPUS = ["h800-sxm-80gb", "a100-sxm-80gb", "h100-sxm-80gb", "b200", "local-cpu-core"]


def _random_case(rng: random.Random):
    model = load_model(rng.choice(MODELS))
    gpu = load_gpu(rng.choice(GPUS))
    launch = rng.choice([None, "synchronous", "asynchronous"])
    if launch is not None:
        gpu = revalidate(gpu, launch=LaunchOverhead(source="test", mode=launch,
                                                    overhead_s=rng.choice([1e-7, 5e-6, 1e-3])))
    tp, cp = rng.choice([1, 2, 4, 8]), rng.choice([1, 2])
    ep = rng.choice([1, 2, 4, 8]) if model.moe is not None else 1
    if model.moe is not None:
        while model.moe.num_experts % ep:
            ep //= 2
    plan = Plan(tp=tp, cp=cp, ep=ep, dp=max(ep, 1), micro_batch_size=rng.choice([1, 2, 3]),
                sequence_parallel=tp > 1 and rng.random() < 0.5,
                attention_kernel=rng.choice(["flash", "flash", "unfused"]))
    if model.moe is None and model.mla is None and plan.attention_kernel == "flash" and rng.random() < 0.5:
        # TorchTitan's op-level SAC: fractional recompute shares of the fused GEMMs
        plan = revalidate(plan, recompute="selective", recompute_modules=["op_sac"])
    precision = rng.choice(list(Precision))
    workload = Workload(global_batch_size=plan.dp * 8, seq_length=rng.choice([512, 2048, 4096]),
                        precision=precision)
    return model, gpu, plan, workload


@pytest.mark.parametrize("seed", range(8))
def test_times_equal_piece_time_exactly(seed: int) -> None:
    rng = random.Random(seed)
    checked = 0
    for _ in range(12):
        model, gpu, plan, workload = _random_case(rng)
        for piece in sorted(set(model_pieces(model)), key=lambda p: p.value):
            ops = piece_ops(model, plan, workload, piece)
            try:
                piece_time(ops, gpu, workload.precision, Recompute.NONE)
            except UnsupportedError as exc:  # e.g. no fp8 peak: the twin refuses it alike
                with pytest.raises(type(exc)):
                    OpArrays.of(ops, gpu, workload.precision)
                continue
            arrays = OpArrays.of(ops, gpu, workload.precision)
            for share in (1.0, rng.uniform(0.5, 1.0)):
                times = arrays.times(share)
                for recompute in Recompute:
                    t = piece_time(ops, gpu, workload.precision, recompute, share)
                    expected = (t.forward_s, t.backward_input_s, t.backward_weight_s, t.recompute_s)
                    assert times[recompute] == expected
                    checked += 1
                attn = sum(op_forward_s(op, gpu, workload.precision, share) for op in ops
                           if op.kind is OpKind.ATTENTION)
                assert times[None][0] == attn
    assert checked >= 2 * 3 * 3  # at least a few shapes priced (not all refused)


def test_launches_change_the_times() -> None:
    """The launch terms are not a no-op: a synchronous overhead raises every phase."""
    model, gpu = load_model("llama3-8b"), load_gpu("h800-sxm-80gb")
    plan, workload = Plan(tp=2, dp=1), Workload(global_batch_size=4, seq_length=1024)
    ops = piece_ops(model, plan, workload, model_pieces(model)[1])
    slow = revalidate(gpu, launch=LaunchOverhead(source="test", mode="synchronous", overhead_s=1e-3))
    base = OpArrays.of(ops, gpu, workload.precision).times()
    sync = OpArrays.of(ops, slow, workload.precision).times()
    for a, b in zip(base[Recompute.FULL][:3], sync[Recompute.FULL][:3], strict=True):
        assert b > a + 1e-3
