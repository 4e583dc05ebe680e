"""Plan-vs-model rules (planner.specs.compat): each broken rule names the plan field."""

from __future__ import annotations

import pytest

from planner.errors import SpecError
from planner.presets import load_model
from planner.specs import PipelineSchedule, Plan, Workload
from planner.specs.compat import check_plan

V3_WORKLOAD = Workload(global_batch_size=15360, seq_length=4096, precision="fp8")


def v3_plan(**changes) -> Plan:
    base = dict(pp=16, dp=128, ep=64, etp=1, zero_stage=1, pipeline_schedule=PipelineSchedule.DUALPIPE)
    return Plan(**{**base, **changes})


def test_deepseek_v3_published_plan_is_valid():
    """DeepSeek-V3 §3.2: PP16 DualPipe, EP64, ZeRO-1, TP1 on 2048 GPUs."""
    check_plan(load_model("deepseek-v3"), V3_WORKLOAD, v3_plan(), num_gpus=2048)


@pytest.mark.parametrize(
    ("model", "plan", "workload", "field", "words"),
    [
        ("llama3-8b", Plan(tp=3, dp=1), None, "plan.tp", "num_attention_heads"),
        ("llama3-70b", Plan(tp=16, dp=1), None, "plan.tp", "key/value heads (8)"),
        ("llama3-8b", Plan(ep=2, dp=2), None, "plan.ep", "has no experts"),
        ("deepseek-v3", v3_plan(ep=48, dp=96), None, "plan.ep", "routed experts (256)"),
        ("deepseek-v3", Plan(pp=64, dp=32), None, "plan.pp", "num_layers (61)"),
        ("llama3-8b", Plan(cp=3, dp=1), None, "plan.cp", "seq_length"),
        ("llama3-8b", Plan(dp=7), None, "plan.micro_batch_size", "global_batch_size"),
        # DualPipe: micro-batches >= 2 pp (dualpipe.py step()); 15360/(1024*1) = 15 < 32.
        ("deepseek-v3", v3_plan(dp=1024, ep=64), V3_WORKLOAD, "plan.pipeline_schedule", ">= 2 * pp"),
    ],
)
def test_rules(model, plan, workload, field, words):
    workload = workload or Workload(global_batch_size=1024, seq_length=4096)
    with pytest.raises(SpecError) as info:
        check_plan(load_model(model), workload, plan)
    assert info.value.field == field
    assert words in info.value.rule


def test_world_size_must_match_gpus():
    with pytest.raises(SpecError) as info:
        check_plan(load_model("deepseek-v3"), V3_WORKLOAD, v3_plan(), num_gpus=1024)
    assert "must equal the GPUs (1024)" in str(info.value)


def test_expert_fold_must_keep_pipeline_stages():
    """Megatron requires the dense and expert views to share pp groups; with pp inside dp
    in the rank order and etp != tp they would not."""
    plan = Plan(tp=2, dp=2, pp=2, ep=1, etp=1, rank_order="tp-cp-ep-pp-dp")
    with pytest.raises(SpecError) as info:
        check_plan(load_model("mixtral-8x7b"), Workload(global_batch_size=8, seq_length=4096), plan)
    assert info.value.field == "plan.rank_order"
    # A dense model has no expert view: the same plan is fine.
    check_plan(load_model("llama3-8b"), Workload(global_batch_size=8, seq_length=4096), plan)
