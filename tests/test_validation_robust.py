"""`planner validate` on synthetic rows: every plausible row of the case schema gets a
prediction (``ok`` or ``oom``), and every row that cannot is a rule of the plan that names
its field, or an ``unsupported`` with the reason, never an internal exception.

The rows are the shipped case files' rows (data/validation/public_cases.csv and
extra_cases.csv) perturbed one or a few cells at a time over the schema's vocabulary
(shared/validation/README.md): each GPU and scale-up domain, node shapes and NICs,
precisions, attention kinds, dense and MoE variants, parallel degrees with empty cells,
ZeRO stages, recomputation, schedules, routing, odd GPU counts, long sequences.
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Callable, Iterator

import pytest

from planner.errors import SpecError
from planner.presets import data_root
from planner.specs import PipelineSchedule
from planner.validation import CaseStatus, case_inputs, read_cases, run_cases

PUBLIC = read_cases(data_root() / "validation" / "public_cases.csv")
EXTRA = read_cases(data_root() / "validation" / "extra_cases.csv")
BY_ID = {row["case_id"]: row for row in [*PUBLIC, *EXTRA]}

# The gpu vocabulary of the schema, with the scale-up domain and node size that each GPU's
# systems have (README: gb200 rows are 4-GPU trays in a 72-GPU NVLink domain; the PCIe
# A100 of Fire-Flyer 2 has NVLink bridges between pairs; the SXM parts sit on NVSwitch).
GPUS = {
    "a100-sxm-40gb": ("nvswitch", 8),
    "a100-sxm-80gb": ("nvswitch", 8),
    "a100-pcie-40gb": ("nvlink-bridge-pairs", 8),
    "h100-sxm-80gb": ("nvswitch", 8),
    "h100-sxm-95gb-500w": ("nvswitch", 8),
    "h800-sxm-80gb": ("nvswitch", 8),
    "b200": ("nvswitch", 8),
    "gb200": ("nvl72", 4),
}

# Base rows: one per family of the two files (GPT gelu + MHA, BLOOM, Llama GQA, Fire-Flyer
# PCIe, DeepSeekMoE, DeepSeek-V3 MLA + MoE + MTP, Qwen3 MoE without shared experts,
# Nemotron (gelu, head_dim), context parallel, FSDP).
BASES = [
    "narayanan21-t1-gpt-7.5b-128gpu",
    "narayanan21-t1-gpt-145.6b-1536gpu",
    "bloom-176b-384gpu",
    "fireflyer-llama-13b-64gpu",
    "fireflyer-deepseekmoe-16b-40gpu",
    "dsv3-isca25-table4",
    "mbridge2511-gb200-dsv3-bf16-256gpu",
    "mbridge2511-b200-qwen3-30b-a3b-mxfp8-8gpu",
    "mbridge2511-h100-qwen3-235b-a22b-fp8cs-256gpu",
    "nemo2407-h100-llama3-70b-cp2-64gpu",
    "nemo2407-h100-nemotron4-340b-128gpu",
    "torchtitan-h100-llama31-8b-fp8-128gpu",
    "mbridge2511-gb200-llama3-70b-fp8cs-64gpu",
]

Row = dict[str, str]
Perturb = Callable[[Row], Iterator[tuple[str, Row]]]

DSV3_MLA = {
    "attention": "mla", "kv_heads": "", "head_dim": "", "mla_q_lora_rank": "1536", "mla_kv_lora_rank": "512",
    "mla_qk_nope_head_dim": "128", "mla_qk_rope_head_dim": "64", "mla_v_head_dim": "128",
}
NO_MLA = {k: "" for k in DSV3_MLA if k.startswith("mla_")}
NO_MOE = {
    "moe_experts": "", "moe_topk": "", "moe_shared_experts": "", "moe_expert_ffn": "", "moe_dense_layers": "",
    "mtp_depth": "", "ep": "", "etp": "", "moe_routing": "",
}


def _n(row: Row, column: str, default: int = 1) -> int:
    return int(row.get(column) or default)


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def _regrid(row: Row, num_gpus: int) -> Row:
    """The row on ``num_gpus`` GPUs: dp follows, the batch is kept or grown to divide."""
    model = _n(row, "tp") * _n(row, "pp") * _n(row, "cp")
    dp = max(1, num_gpus // model)
    per_step = dp * _n(row, "micro_batch")
    batch = max(int(row["global_batch"]) // per_step, 1) * per_step
    return {**row, "num_gpus": str(model * dp), "dp": str(dp), "global_batch": str(batch)}


def gpus(row: Row) -> Iterator[tuple[str, Row]]:
    for gpu, (intra, per_node) in GPUS.items():
        yield f"gpu={gpu}", {**row, "gpu": gpu, "intra_node": intra, "gpus_per_node": str(per_node)}


# NICs per node x Gbit/s: each count and each speed of the schema at least once, and empties.
NICS = [
    ("1", "100"), ("1", "800"), ("4", "200"), ("4", "400"), ("8", "400"), ("8", "800"),
    ("", ""), ("8", ""), ("", "200"),
]


def node_shapes(row: Row) -> Iterator[tuple[str, Row]]:
    for intra in ("nvswitch", "nvlink-bridge-pairs", "nvl72", ""):
        yield f"intra_node={intra or 'empty'}", {**row, "intra_node": intra}
    for per_node in ("4", "8", "16", ""):
        yield f"gpus_per_node={per_node or 'empty'}", {**row, "gpus_per_node": per_node}
    for nics, gbps in NICS:
        yield f"nics={nics or 'empty'}x{gbps or 'empty'}", {**row, "nics_per_node": nics, "nic_gbps": gbps}


def precisions(row: Row) -> Iterator[tuple[str, Row]]:
    for precision in ("bf16", "fp16", "fp8", ""):
        yield f"precision={precision or 'empty'}", {**row, "precision": precision}
    for precision in ("bf16", "fp8"):
        for gpu, (intra, per_node) in GPUS.items():
            if gpu != row["gpu"] and not (precision == "fp8" and gpu.startswith("a100")):  # no FP8 on Ampere
                changed = {"gpu": gpu, "intra_node": intra, "gpus_per_node": str(per_node)}
                yield f"gpu={gpu},precision={precision}", {**row, **changed, "precision": precision}


def attentions(row: Row) -> Iterator[tuple[str, Row]]:
    heads, tp = int(row["heads"]), _n(row, "tp")
    yield "attention=mha", {**row, **NO_MLA, "attention": "mha", "kv_heads": str(heads)}
    kv = max(tp, 8) if heads % max(tp, 8) == 0 else heads
    yield "attention=gqa", {**row, **NO_MLA, "attention": "gqa", "kv_heads": str(kv)}
    yield "attention=empty", {**row, "attention": ""}
    yield "kv_heads=empty", {**row, "kv_heads": ""}
    yield "attention=mla", {**row, **DSV3_MLA}
    yield "attention=mla,no-q-lora", {**row, **DSV3_MLA, "mla_q_lora_rank": ""}
    hidden = int(row["hidden"])
    yield "head_dim=128", {**row, "head_dim": "128"} if hidden // heads != 128 else {**row, "head_dim": "192"}


def ffns(row: Row) -> Iterator[tuple[str, Row]]:
    hidden = int(row["hidden"])
    yield "ffn_act=gelu", {**row, "ffn_act": "gelu", "ffn_hidden": row["ffn_hidden"] or str(4 * hidden)}
    yield "ffn_act=gelu,ffn_hidden=empty", {**row, "ffn_act": "gelu", "ffn_hidden": ""}
    swiglu_ffn = row["ffn_hidden"] or str(8 * hidden // 3 // 256 * 256)
    yield "ffn_act=swiglu", {**row, "ffn_act": "swiglu", "ffn_hidden": swiglu_ffn}
    yield "ffn_act=empty", {**row, "ffn_act": ""}
    yield "vocab+1", {**row, "vocab": str(int(row["vocab"]) + 1)}


def moes(row: Row) -> Iterator[tuple[str, Row]]:
    dense_ranks = _n(row, "tp") * _n(row, "cp") * _n(row, "dp", 1)
    ep = max(d for d in _divisors(dense_ranks) if 64 % d == 0)
    hidden = int(row["hidden"])
    moe = {
        "arch": "moe", "moe_experts": "64", "moe_topk": "6", "moe_expert_ffn": str(max(hidden // 4, 128)),
        "ep": str(ep), "etp": "1", "moe_routing": "balanced",
        "ffn_hidden": row["ffn_hidden"] or str(4 * hidden),
    }
    yield "moe", {**row, **moe, "moe_shared_experts": "0", "moe_dense_layers": "0", "mtp_depth": "0"}
    yield "moe+shared", {**row, **moe, "moe_shared_experts": "2", "moe_dense_layers": "0", "mtp_depth": "0"}
    yield "moe+dense-layers", {**row, **moe, "moe_shared_experts": "1", "moe_dense_layers": "1"}
    yield "moe+mtp", {**row, **moe, "moe_shared_experts": "1", "moe_dense_layers": "1", "mtp_depth": "1"}
    optionals = ("moe_shared_experts", "moe_dense_layers", "mtp_depth", "ep", "etp", "moe_routing")
    yield "moe,empty-optionals", {**row, **moe, **dict.fromkeys(optionals, "")}
    for routing in ("balanced", "real", ""):
        yield f"moe_routing={routing or 'empty'}", {**row, **moe, "moe_routing": routing}
    yield "moe,arch=empty", {**row, **moe, "arch": ""}


def dense(row: Row) -> Iterator[tuple[str, Row]]:
    if row["arch"] != "moe":
        return
    hidden = int(row["hidden"])
    ffn = row["ffn_hidden"] or str(8 * hidden // 3 // 256 * 256)
    yield "dense", {**row, **NO_MOE, "arch": "dense", "ffn_hidden": ffn}
    for routing in ("balanced", "real", ""):
        yield f"moe_routing={routing or 'empty'}", {**row, "moe_routing": routing}
    yield "mtp_depth=0", {**row, "mtp_depth": "0"}
    yield "mtp_depth=1", {**row, "mtp_depth": "1"}
    yield "ep=empty", {**row, "ep": ""}
    yield "etp=empty", {**row, "etp": ""}


def parallel(row: Row) -> Iterator[tuple[str, Row]]:
    for column in ("tp", "pp", "cp", "dp", "vpp", "ep", "etp"):
        yield f"{column}=empty", {**row, column: ""}
    layers, heads = int(row["layers"]), int(row["heads"])
    num_gpus = int(row["num_gpus"])
    for tp in (1, 2, 4, 8):
        if heads % tp == 0:
            model = tp * _n(row, "pp") * _n(row, "cp")
            if num_gpus % model == 0:
                yield f"tp={tp}", _regrid({**row, "tp": str(tp)}, num_gpus)
    for pp in (1, 2, 4):
        if layers >= pp:
            schedule = "none" if pp == 1 else "1f1b"
            yield f"pp={pp}", _regrid({**row, "pp": str(pp), "vpp": "1", "pp_schedule": schedule}, num_gpus)
    if row["pp_schedule"] not in ("", "none"):
        for schedule in ("1f1b", "interleaved", "zero-bubble", "dualpipe", "none", ""):
            vpp = "" if schedule == "interleaved" else "1"
            yield f"pp_schedule={schedule or 'empty'}", {**row, "pp_schedule": schedule, "vpp": vpp}
    else:
        yield "pp_schedule=empty,pp=1", {**row, "pp_schedule": ""}
    yield "vpp=empty,interleaved", {**row, "vpp": "", "pp_schedule": "interleaved"}
    if _n(row, "pp") > 1:
        yield "vpp=2,pp_schedule=1f1b", {**row, "vpp": "2", "pp_schedule": "1f1b"}
        yield "vpp=1,pp_schedule=interleaved", {**row, "vpp": "1", "pp_schedule": "interleaved"}
        yield "vpp=2,pp_schedule=dualpipe", {**row, "vpp": "2", "pp_schedule": "dualpipe"}
    for cp in (2, 4):
        yield f"cp={cp}", _regrid({**row, "cp": str(cp)}, num_gpus * cp)
    yield "dp=empty", {**row, "dp": ""}


def settings(row: Row) -> Iterator[tuple[str, Row]]:
    for zero in ("0", "1", "2", "3", ""):
        yield f"zero={zero or 'empty'}", {**row, "zero": zero}
    for sp in ("0", "1", ""):
        yield f"sequence_parallel={sp or 'empty'}", {**row, "sequence_parallel": sp}
    for recompute in ("none", "selective", "full", ""):
        yield f"recompute={recompute or 'empty'}", {**row, "recompute": recompute}
    yield "micro_batch=empty", {**row, "micro_batch": ""}


def sizes(row: Row) -> Iterator[tuple[str, Row]]:
    num_gpus, per_node = int(row["num_gpus"]), _n(row, "gpus_per_node", 8)
    model = _n(row, "tp") * _n(row, "pp") * _n(row, "cp")
    # A GPU count that is not whole nodes: dp + 1 or dp * 3/2 replicas.
    for dp in (_n(row, "dp") + 1, _n(row, "dp") * 3 // 2):
        if (model * dp) % per_node:
            yield f"num_gpus={model * dp}", _regrid(row, model * dp)
    # One to four GPUs without model parallelism (part of one node).
    single = {**row, "tp": "1", "pp": "1", "cp": "1", "vpp": "1", "pp_schedule": "none", "ep": "", "etp": ""}
    for small in (1, 2, 4):
        yield f"num_gpus={small}", _regrid(single, small)
    yield "global_batch+1", {**row, "global_batch": str(int(row["global_batch"]) + 1)}
    yield "global_batch<dp", {**row, "global_batch": str(max(_n(row, "dp") // 2, 1))}
    for seq in (2048, 8192, 32768, 131072):
        yield f"seq_len={seq}", {**row, "seq_len": str(seq)}


PERTURBATIONS: list[Perturb] = [
    gpus, node_shapes, precisions, attentions, ffns, moes, dense, parallel, settings, sizes,
]


def synthetic_rows() -> list[Row]:
    """Every base row perturbed by every generator; case ids say what was changed."""
    rows = []
    for base_id in BASES:
        base = BY_ID[base_id]
        for perturb in PERTURBATIONS:
            for label, row in perturb(base):
                rows.append({**row, "case_id": f"{base_id}|{label}"})
    return rows


# --- the sweep ------------------------------------------------------------------------

# What a row may be refused for: rules of a plan (each message names the field, its value
# and the rule), hardware that does not exist, and one limitation of the pipeline model.
ERROR_RULES = {
    "tp divides the heads": r"plan\.tp = \d+: must divide (num_attention_heads|the key/value heads) \(\d+\)",
    "ep * etp divides a stage's dense ranks": (
        r"\bep = \d+: ep \* etp \(\d+\) must divide tp \* cp \* dp \(\d+\)"
    ),
    "DualPipe runs an even number of micro-batches": (
        r"plan\.pipeline_schedule = 'dualpipe': needs an even number of micro-batches >= 2 \* pp"
    ),
    # Megatron-Core's rule for its default microbatch_group_size_per_vp_stage (= pp): the
    # last group must be full; other group sizes are not modelled (planner/costmodel/schedules.py).
    "interleaved: micro-batches a multiple of pp": (
        r"num_microbatches = \d+: interleaved needs a multiple of pp"
    ),
}
INTERNAL = re.compile(r"\b\w*(Error|Exception|Warning)\b: ")


def _refusal(row: Row, status: CaseStatus, message: str) -> str:
    """The class of a refused row, or an assertion error saying why it should not be."""
    assert not INTERNAL.search(message), f"internal exception: {message}"
    if status is CaseStatus.UNSUPPORTED:
        gpu, precision = row["gpu"], row.get("precision") or "bf16"
        if re.search(r"no cluster preset for gpu \S+ with intra_node \S+; known: ", message):
            assert row["intra_node"] != GPUS[gpu][0], f"{gpu} on {row['intra_node']} exists: {message}"
            return "no such system"
        if re.search(rf"(^|; ){gpu} has no fp8 peak in its spec$", message):
            assert precision == "fp8" and gpu.startswith("a100"), message
            return "FP8 on Ampere"
        raise AssertionError(f"unsupported for no known reason: {message}")
    assert status is CaseStatus.ERROR, status
    for name, pattern in ERROR_RULES.items():
        if re.search(pattern, message):
            return name
    raise AssertionError(f"refused by a rule that a published run would not break: {message}")


@pytest.fixture(scope="module")
def sweep() -> list[tuple[Row, object]]:
    rows = synthetic_rows()
    return list(zip(rows, run_cases(rows), strict=True))


def test_the_generator_covers_the_schema_vocabulary():
    rows = synthetic_rows()
    seen = {column: {row.get(column, "") for row in rows} for column in rows[0]}
    assert set(GPUS) <= seen["gpu"]
    assert {"nvswitch", "nvlink-bridge-pairs", "nvl72", ""} <= seen["intra_node"]
    assert {"4", "8"} <= seen["gpus_per_node"] and {"1", "4", "8"} <= seen["nics_per_node"]
    assert {"100", "200", "400", "800"} <= seen["nic_gbps"]
    assert {"bf16", "fp16", "fp8", ""} <= seen["precision"] and {"mha", "gqa", "mla", ""} <= seen["attention"]
    assert {"dense", "moe", ""} <= seen["arch"] and {"gelu", "swiglu", ""} <= seen["ffn_act"]
    assert {"", "1536"} <= seen["mla_q_lora_rank"] and {"0", "1"} <= seen["mtp_depth"]
    assert {"0", "1", "2"} <= seen["moe_shared_experts"] and {"0", "1", "3"} <= seen["moe_dense_layers"]
    assert {"0", "1", "2", "3", ""} <= seen["zero"] and {"0", "1", ""} <= seen["sequence_parallel"]
    assert {"none", "selective", "full", ""} <= seen["recompute"] and "" in seen["micro_batch"]
    assert {"none", "1f1b", "interleaved", "zero-bubble", "dualpipe", ""} <= seen["pp_schedule"]
    assert {"balanced", "real", ""} <= seen["moe_routing"]
    for column in ("tp", "pp", "vpp", "cp", "ep", "etp", "dp"):
        assert "" in seen[column], column
    assert {"2048", "131072"} <= seen["seq_len"] and any(row["head_dim"] for row in rows)
    assert any(int(r["num_gpus"]) % int(r["gpus_per_node"] or 8) for r in rows)
    assert any(int(r["global_batch"]) % (int(r["dp"] or 1) * int(r["micro_batch"] or 1)) for r in rows)
    assert len(rows) > 1000


def test_every_synthetic_row_is_predicted_or_refused_by_a_named_rule(sweep):
    refused: Counter[str] = Counter()
    for row, result in sweep:
        if result.status in (CaseStatus.OK, CaseStatus.OOM):
            assert result.predicted_step_time_s is not None and result.predicted_step_time_s > 0, result
        else:
            refused[_refusal(row, result.status, result.message)] += 1
    statuses = Counter(result.status for _, result in sweep)
    # Most rows are predictions; the refusals are the classes above, and a few of each.
    assert statuses[CaseStatus.OK] + statuses[CaseStatus.OOM] > 0.9 * len(sweep), statuses
    assert sum(refused.values()) < 0.1 * len(sweep), refused


def test_hardware_and_training_settings_are_always_predicted(sweep):
    """Every GPU (with its own scale-up domain), NIC shape, ZeRO stage, sequence parallelism,
    recomputation and sequence length gives a prediction; only FP8 on an A100 is refused."""
    for row, result in sweep:
        label = row["case_id"].split("|")[1]
        if label.startswith(("gpu=", "nics=", "zero=", "sequence_parallel=", "recompute=", "seq_len=")):
            if not (label.startswith("gpu=a100") and (row.get("precision") == "fp8")):
                assert result.status in (CaseStatus.OK, CaseStatus.OOM), (row["case_id"], result.message)


# --- the defaults and reconciliations behind the sweep ---------------------------------


def test_gelu_with_mla_has_no_linear_biases():
    row = {**BY_ID["narayanan21-t1-gpt-7.5b-128gpu"], **DSV3_MLA}
    case = case_inputs(row)
    assert case.model.mla is not None and not case.model.add_bias_linear
    assert case.model.normalization.value == "layernorm"  # the rest stays GPT-style
    assert any("no linear biases" in note for note in case.notes)


def test_pp_schedule_none_with_pipeline_is_the_default_schedule():
    row = BY_ID["bloom-176b-384gpu"]  # pp 12, vpp 1
    assert case_inputs({**row, "pp_schedule": "none"}).plan.pipeline_schedule is PipelineSchedule.ONE_F_ONE_B
    plan = case_inputs({**row, "pp_schedule": "none", "vpp": "2", "global_batch": "3072"}).plan
    assert (plan.pipeline_schedule, plan.vpp) == (PipelineSchedule.INTERLEAVED, 2)


def test_schedule_and_vpp_that_disagree():
    row = BY_ID["narayanan21-t1-gpt-145.6b-1536gpu"]  # pp 8, vpp 2, interleaved
    plan = case_inputs({**row, "pp_schedule": "1f1b"}).plan  # Megatron's "1F1B with virtual stages"
    assert (plan.pipeline_schedule, plan.vpp) == (PipelineSchedule.INTERLEAVED, 2)
    plan = case_inputs({**row, "vpp": "1"}).plan  # interleaved, but vpp 1 = no interleaving
    assert (plan.pipeline_schedule, plan.vpp) == (PipelineSchedule.ONE_F_ONE_B, 1)
    plan = case_inputs({**BY_ID["dsv3-isca25-table4"], "vpp": "2"}).plan
    assert (plan.pipeline_schedule, plan.vpp) == (PipelineSchedule.DUALPIPE, 1)


def test_empty_etp_is_tp_unless_ep_times_tp_cannot_fit():
    row = BY_ID["mbridge2511-h100-qwen3-235b-a22b-fp8cs-256gpu"]  # tp 2, ep 32, dp 16, etp 1
    assert case_inputs(row).plan.expert_tp == 1
    # etp = tp = 2 would need ep * etp = 64 | tp * dp = 32: the run must have used etp 1.
    case = case_inputs({**row, "etp": ""})
    assert case.plan.expert_tp == 1 and any("etp empty: 1" in note for note in case.notes)
    # ep 16 fits with etp = tp = 2: Megatron's default is kept.
    assert case_inputs({**row, "etp": "", "ep": "16"}).plan.expert_tp == 2
    # No etp fits ep 64 (64 > 32): the rule is named.
    with pytest.raises(SpecError, match=r"ep = 64: ep \* etp \(128\) must divide tp \* cp \* dp \(32\)"):
        case_inputs({**row, "etp": "", "ep": "64"})


def test_empty_kv_heads_of_gqa():
    row = BY_ID["nemo2407-h100-llama3-70b-cp2-64gpu"]
    case = case_inputs({**row, "kv_heads": ""})  # Llama-3-70B's shape: the preset's 8
    assert case.model.kv_heads == 8 and any("same shape" in note for note in case.notes)
    case = case_inputs({**row, "kv_heads": "", "layers": "40"})  # no preset of this shape
    assert case.model.kv_heads == 8 and any("commonest" in note for note in case.notes)
    with pytest.raises(SpecError, match="kv_heads = None: is required for gqa attention"):
        case_inputs({**row, "kv_heads": "", "layers": "40", "tp": "16"})  # 8, 4, 2 not multiples of 16


def test_global_batch_not_a_multiple_runs_the_slowest_replica():
    row = BY_ID["bloom-176b-384gpu"]  # dp 8, micro_batch 2: 2048 -> 128 micro-batches per replica
    case = case_inputs({**row, "global_batch": "2049"})
    assert case.workload.global_batch_size == 2064  # ceil(2049 / 16) = 129 micro-batches
    assert any("129 micro-batches per replica" in note for note in case.notes)
    assert case_inputs({**row, "global_batch": "7"}).workload.global_batch_size == 16
    base, odd = run_cases([row, {**row, "global_batch": "2049"}])
    assert odd.status is base.status is CaseStatus.OK
    assert 1.0 < odd.predicted_step_time_s / base.predicted_step_time_s < 129 / 128 * 1.01


def test_refusals_say_why():
    row = BY_ID["bloom-176b-384gpu"]
    (fp8,) = run_cases([{**row, "precision": "fp8"}])
    assert fp8.status is CaseStatus.UNSUPPORTED and "a100-sxm-80gb has no fp8 peak" in fp8.message
    (bridged,) = run_cases([{**row, "intra_node": "nvlink-bridge-pairs"}])
    assert bridged.status is CaseStatus.UNSUPPORTED
    assert "no cluster preset for gpu a100-sxm-80gb with intra_node nvlink-bridge-pairs" in bridged.message


def test_node_sizes_that_do_not_divide_the_nvl72_domain():
    row = BY_ID["mbridge2511-gb200-llama3-70b-fp8cs-64gpu"]  # 64 GPUs in 4-GPU trays, NVL72
    assert case_inputs(row).cluster.node.scale_up.domain_gpus == 72
    sixteen = case_inputs({**row, "gpus_per_node": "16"}).cluster
    assert (sixteen.num_nodes, sixteen.node.scale_up.domain_gpus) == (4, 64)  # whole nodes within 72
    rack_row = {**row, "num_gpus": "144", "dp": "144", "global_batch": "288", "gpus_per_node": "72"}
    rack = case_inputs(rack_row).cluster
    assert (rack.num_nodes, rack.node.scale_up.domain_gpus) == (2, 72)  # the rack written as a node


def test_zero_nics_only_on_one_node():
    row = BY_ID["mbridge2511-h100-llama3-8b-fp8cs-8gpu"]  # one node of 8
    case = case_inputs({**row, "nics_per_node": "0"})
    assert case.cluster.num_nodes == 1 and any("nics_per_node 0" in note for note in case.notes)
    with pytest.raises(SpecError, match="nics_per_node = 0: a run over 8 nodes needs scale-out NICs"):
        case_inputs({**BY_ID["nemo2407-h100-llama3-70b-cp2-64gpu"], "nics_per_node": "0"})
