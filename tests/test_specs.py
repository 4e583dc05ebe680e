"""Spec validation: frozen, unknown fields rejected, rules named, friendly units converted."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from planner.errors import SpecError
from planner.presets import load_cluster, load_model, revalidate, validate_spec
from planner.specs import (
    AttentionKind,
    ClusterSpec,
    Dtype,
    GPUSpec,
    ModelSpec,
    MoESpec,
    PipelineSchedule,
    Plan,
    Recompute,
    Workload,
    ZeroStage,
)
from planner.units import to_si

DENSE = {
    "name": "tiny",
    "num_layers": 4,
    "hidden_size": 256,
    "num_attention_heads": 8,
    "num_kv_heads": 2,
    "ffn_hidden_size": 512,
    "vocab_size": 1000,
}

MOE = {"num_experts": 16, "top_k": 2, "expert_ffn_hidden_size": 128, "num_dense_layers": 1}


def err(cls, data) -> SpecError:
    with pytest.raises(SpecError) as info:
        validate_spec(cls, data, "test.yaml")
    return info.value


def test_specs_are_frozen():
    model = ModelSpec(**DENSE)
    with pytest.raises(ValidationError):
        model.num_layers = 8  # type: ignore[misc]


def test_unknown_field_named_with_allowed_list():
    e = err(ModelSpec, {**DENSE, "num_layer": 4})
    assert e.field == "num_layer"
    assert "unknown field" in e.rule and "num_layers" in e.rule
    assert str(e).startswith("test.yaml: num_layer = 4: unknown field")


def test_nested_unknown_field():
    e = err(ModelSpec, {**DENSE, "moe": {**MOE, "experts": 3}})
    assert e.field == "moe.experts"


def test_negative_value():
    e = err(ModelSpec, {**DENSE, "hidden_size": -256})
    assert (e.field, e.value) == ("hidden_size", -256)
    assert "greater than 0" in e.rule


def test_heads_not_divisible_by_kv_heads():
    e = err(ModelSpec, {**DENSE, "num_kv_heads": 3})
    assert (e.field, e.value) == ("num_kv_heads", 3)
    assert "must divide num_attention_heads (8)" in e.rule


def test_top_k_above_experts():
    e = err(ModelSpec, {**DENSE, "moe": {**MOE, "top_k": 17}})
    assert (e.field, e.value) == ("moe.top_k", 17)
    assert "num_experts (16)" in e.rule


def test_group_limited_routing_rules():
    e = err(MoESpec, {**MOE, "num_expert_groups": 3})
    assert e.field == "num_expert_groups"
    e = err(MoESpec, {**MOE, "num_expert_groups": 4, "num_limited_groups": 5})
    assert e.field == "num_limited_groups"
    # 1 group of 4 experts cannot supply top-8.
    e = err(MoESpec, {**MOE, "top_k": 8, "num_expert_groups": 4, "num_limited_groups": 1})
    assert (e.field, e.value) == ("top_k", 8)


def test_dense_layers_must_leave_moe_layers():
    e = err(ModelSpec, {**DENSE, "moe": {**MOE, "num_dense_layers": 4}})
    assert e.field == "moe.num_dense_layers"


def test_dense_ffn_size_required():
    data = {k: v for k, v in DENSE.items() if k != "ffn_hidden_size"}
    assert err(ModelSpec, data).field == "ffn_hidden_size"
    # An all-MoE model needs no dense FFN size.
    model = validate_spec(ModelSpec, {**data, "moe": {**MOE, "num_dense_layers": 0}})
    assert model.num_dense_ffn_layers == 0


def test_mla_rejects_kv_heads():
    mla = {"kv_lora_rank": 64, "qk_nope_head_dim": 32, "qk_rope_head_dim": 16, "v_head_dim": 32}
    e = err(ModelSpec, {**DENSE, "mla": mla})
    assert e.field == "num_kv_heads"
    data = {k: v for k, v in DENSE.items() if k != "num_kv_heads"}
    assert err(ModelSpec, {**data, "mla": mla, "qk_norm": True}).field == "qk_norm"
    model = validate_spec(ModelSpec, {**data, "mla": mla})
    assert model.attention_kind is AttentionKind.MLA
    assert model.qk_head_dim == 48


def test_enum_value_rejected_with_choices():
    e = err(ModelSpec, {**DENSE, "ffn_activation": "relu"})
    assert e.field == "ffn_activation" and "swiglu" in e.rule


def test_derived_properties():
    model = ModelSpec(**DENSE)
    assert model.attention_kind is AttentionKind.GQA
    assert model.kv_channels == 32
    assert ModelSpec(**{**DENSE, "num_kv_heads": None}).attention_kind is AttentionKind.MHA


def test_friendly_units_convert_once():
    data, origins = to_si({"gpu": {"hbm_capacity_gib": 80, "peak_tflops": {"bf16": 989.4}, "x_us": 2.8}})
    assert data["gpu"]["hbm_capacity_bytes"] == 80 * 2**30
    assert data["gpu"]["peak_flops_per_s"] == {"bf16": 989.4e12}
    assert data["gpu"]["x_s"] == pytest.approx(2.8e-6)
    assert origins[("gpu", "hbm_capacity_bytes")] == (("gpu", "hbm_capacity_gib"), 80)
    assert to_si({"nic_bandwidth_gbit_per_s": 400})[0] == {"nic_bandwidth_bytes_per_s": 50e9}


def test_error_reported_in_the_units_written():
    gpu = {
        "name": "g",
        "peak_tflops": {"bf16": 100},
        "hbm_capacity_gib": -80,
        "hbm_bandwidth_gb_per_s": 2000,
        "num_sms": 100,
    }
    e = err(GPUSpec, gpu)
    assert (e.field, e.value) == ("hbm_capacity_gib", -80)


def test_gpu_needs_bf16_peak_and_unsupported_dtype_fails_loudly():
    gpu = {"name": "g", "peak_tflops": {"fp16": 100}, "hbm_capacity_gib": 80,
           "hbm_bandwidth_gb_per_s": 2000, "num_sms": 100}
    assert err(GPUSpec, gpu).field == "peak_tflops"  # reported as written
    spec = validate_spec(GPUSpec, {**gpu, "peak_tflops": {"bf16": 100}})
    from planner.errors import UnsupportedError

    with pytest.raises(UnsupportedError):
        spec.peak(Dtype.FP8)


def test_plan_long_megatron_names_and_defaults():
    plan = Plan.model_validate(
        {"tensor_model_parallel_size": 2, "pipeline_model_parallel_size": 4, "data_parallel_size": 8}
    )
    assert (plan.tp, plan.pp, plan.dp, plan.world_size) == (2, 4, 8, 64)
    assert plan.zero_stage is ZeroStage.NONE and plan.recompute is Recompute.NONE
    assert plan.expert_tp == 2 and plan.edp == 8  # tp * dp / (ep * etp)


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"tp": 0}, "tp"),
        ({"vpp": 2}, "vpp"),  # interleaving without the interleaved schedule
        ({"pp": 4, "pipeline_schedule": "interleaved"}, "vpp"),
        ({"pp": 3, "pipeline_schedule": "dualpipe"}, "pp"),
        ({"pp": 1, "pipeline_schedule": "dualpipev"}, "pp"),
        ({"dp": 4, "ep": 3}, "ep"),  # expert fold: ep * etp must divide tp * cp * dp
        ({"rank_order": "tp-dp-pp"}, "rank_order"),
        ({"zero_stage": 4}, "zero_stage"),
    ],
)
def test_plan_rules(data, field):
    assert err(Plan, data).field == field


def test_dualpipe_plan_of_deepseek_v3():
    plan = Plan(pp=16, dp=128, ep=64, etp=1, zero_stage=1, pipeline_schedule=PipelineSchedule.DUALPIPE)
    assert plan.world_size == 2048 and plan.edp == 2
    workload = Workload(global_batch_size=15360, seq_length=4096, precision="fp8")
    assert plan.num_microbatches(workload) == 120


def test_revalidate_checks_what_model_copy_does_not():
    model = load_model("deepseek-v3")
    assert revalidate(model, num_layers=30).num_layers == 30
    with pytest.raises(SpecError):
        revalidate(model, num_attention_heads=0)


def test_cluster_resize():
    cluster = load_cluster("deepseek-v3-h800")
    assert cluster.num_gpus == 2048
    assert load_cluster("deepseek-v3-h800", 64).num_nodes == 8
    with pytest.raises(SpecError) as info:
        cluster.with_num_gpus(12)
    assert "multiple of gpus_per_node (8)" in str(info.value)


def test_cluster_rules():
    data = load_cluster("deepseek-v3-h800").model_dump()
    bad = {**data, "fabric": {**data["fabric"], "planes": 3}}
    assert err(ClusterSpec, bad).field == "fabric.planes"
    bad = {**data, "node": {**data["node"], "scale_up": {**data["node"]["scale_up"], "domain_gpus": 3}}}
    assert err(ClusterSpec, bad).field == "node.scale_up.domain_gpus"


def test_launch_overhead_block():
    """The GPU's optional ``launch`` block: friendly units, a mode from the enum, no negative
    overhead; absent means no host term."""
    from planner.specs.hardware import LaunchMode

    gpu = {"name": "g", "peak_tflops": {"bf16": 100}, "hbm_capacity_gib": 80,
           "hbm_bandwidth_gb_per_s": 2000, "num_sms": 100}
    assert validate_spec(GPUSpec, gpu).launch is None
    launch = {"source": "test", "mode": "synchronous", "overhead_us": 50}
    spec = validate_spec(GPUSpec, {**gpu, "launch": launch})
    assert spec.launch.mode is LaunchMode.SYNCHRONOUS and spec.launch.overhead_s == pytest.approx(50e-6)
    e = err(GPUSpec, {**gpu, "launch": {**launch, "overhead_us": -1}})
    assert (e.field, e.value) == ("launch.overhead_us", -1)
    e = err(GPUSpec, {**gpu, "launch": {**launch, "mode": "eager"}})
    assert e.field == "launch.mode" and "asynchronous" in e.rule
    assert err(GPUSpec, {**gpu, "launch": {"mode": "synchronous", "overhead_us": 5}}).field == "launch.source"
    assert load_cluster("local-cpu-8").gpu.launch.mode is LaunchMode.SYNCHRONOUS


def test_model_copy_turns_enum_strings_into_members():
    """A what-if copy with a string for an enum field gets the member (the cost model compares
    members by identity), and a string no member has is refused."""
    from planner.specs import MoERouting, PipelineP2P, Workload

    w = Workload(global_batch_size=8, seq_length=1024)
    real = w.model_copy(update={"moe_routing": "real", "pipeline_p2p": "deepspeed"})
    assert real.moe_routing is MoERouting.REAL and real.pipeline_p2p is PipelineP2P.DEEPSPEED
    with pytest.raises(ValueError, match="MoERouting"):
        w.model_copy(update={"moe_routing": "realistic"})
    assert w.model_copy(update={"seq_length": 2048}).seq_length == 2048
