"""`planner validate`: case rows become validated specs, run_cases never stops on a bad row,
scores are right, and the command reads any file in the schema."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

from planner.costmodel.params import count_params
from planner.costmodel.report import Status, StepReport, TimeBreakdown
from planner.errors import SpecError, UnsupportedError
from planner.presets import data_root, load_model
from planner.specs import AttentionKernel, PipelineSchedule, Precision, Recompute, ZeroStage
from planner.validation import (
    PREDICTION_COLUMNS,
    CaseStatus,
    case_inputs,
    read_cases,
    run_cases,
    score,
    write_predictions,
)
from planner.validation.cases import RECOMPUTE_ORDER

PUBLIC = data_root() / "validation" / "public_cases.csv"
ROWS = read_cases(PUBLIC)
BY_ID = {row["case_id"]: row for row in ROWS}


def _row(case_id: str, **changes: str) -> dict[str, str]:
    return {**BY_ID[case_id], **changes}


# --- conversion of the public rows ------------------------------------------------------


def test_public_file_has_44_unique_cases():
    assert len(ROWS) == 44 == len(BY_ID)


@pytest.mark.parametrize("row", ROWS, ids=[r["case_id"] for r in ROWS])
def test_every_public_row_converts(row):
    case = case_inputs(row)
    assert case.cluster.gpu.name == row["gpu"]
    assert case.cluster.num_gpus == case.plan.world_size == int(row["num_gpus"])
    assert case.cluster.node.gpus_per_node == int(row["gpus_per_node"])
    assert case.model.num_layers == int(row["layers"])
    assert case.workload.global_batch_size == int(row["global_batch"])
    assert case.recompute_candidates


def test_deepseek_v3_row_matches_the_preset():
    case = case_inputs(BY_ID["dsv3-isca25-table4"])
    preset = load_model("deepseek-v3")
    assert count_params(case.model).total == pytest.approx(count_params(preset).total, rel=0.01)
    assert count_params(case.model).active == pytest.approx(count_params(preset).active, rel=0.01)
    # Fields the schema has no column for come from the preset of the same architecture.
    assert case.model.moe.num_expert_groups == 8 and case.model.moe.num_limited_groups == 4
    assert any("deepseek-v3" in note for note in case.notes)
    plan = case.plan
    assert (plan.tp, plan.pp, plan.ep, plan.dp) == (1, 16, 64, 128)
    assert plan.pipeline_schedule is PipelineSchedule.DUALPIPE
    assert case.workload.precision is Precision.FP8
    assert case.cluster.name == "deepseek-v3-h800" and case.cluster.fabric.planes == 8


@pytest.mark.parametrize("case_id", [r["case_id"] for r in ROWS if "175B" in r["model_name"] or "174.6B" in r["model_name"]])
def test_gpt3_rows_have_174_6b_parameters(case_id):
    assert count_params(case_inputs(BY_ID[case_id]).model).total == pytest.approx(174.6e9, rel=0.01)


def test_gelu_rows_are_gpt_style():
    model = case_inputs(BY_ID["narayanan21-t1-gpt-3.6b-64gpu"]).model
    assert model.add_bias_linear and model.tie_word_embeddings
    assert model.normalization == "layernorm" and model.position_embedding == "learned"


def test_gelu_rows_noted_squared_relu_are_llama_style():
    """The schema encodes non-gated squared-ReLU FFNs (Nemotron) as gelu with a note; those
    models have rotary positions, no linear biases and an untied head (arXiv 2402.16819 §2.1)."""
    row = _row("narayanan21-t1-gpt-3.6b-64gpu", notes="FFN is squared-ReLU (non-gated) encoded gelu")
    case = case_inputs(row)
    model = case.model
    assert not model.add_bias_linear and not model.tie_word_embeddings
    assert model.position_embedding == "rope" and model.normalization == "layernorm"
    assert any("squared-ReLU" in n for n in case.notes)


def test_defaults_are_recorded_in_notes():
    case = case_inputs(BY_ID["fireflyer-llama-13b-64gpu"])
    for note in ("precision empty: bf16", "micro_batch empty: 1", "zero empty: 1", "pp_schedule empty: 1f1b"):
        assert note in case.notes
    assert any(n.startswith("recompute empty") for n in case.notes)
    assert case.recompute_candidates == RECOMPUTE_ORDER
    plan = case.plan
    assert plan.zero_stage is ZeroStage.OPTIMIZER and plan.micro_batch_size == 1
    assert plan.pipeline_schedule is PipelineSchedule.ONE_F_ONE_B and plan.vpp == 1
    assert case.workload.precision is Precision.BF16
    assert case.cluster.name == "fire-flyer-2"
    # A fully specified row takes no default but the attention kernel (no column for it).
    notes = case_inputs(BY_ID["korthikanti22-t5-gpt-175b-64gpu-selective"]).notes
    assert notes == ["attention kernel: unfused (source year 2022 < 2023, before FlashAttention)"]


def test_source_year_sets_attention_kernel_and_unstated_recompute():
    """Runs published before 2023 predate FlashAttention in Megatron-LM and selective
    recomputation: the unfused kernel, and full recomputation when the row leaves it empty.
    Later (or undated) sources get FlashAttention and the least recomputation that fits."""
    old = case_inputs(_row("narayanan21-t2-ptdp-gpt-174.6b-384gpu"))
    assert old.plan.attention_kernel is AttentionKernel.UNFUSED
    assert old.recompute_candidates == (Recompute.FULL,)
    new = case_inputs(_row("narayanan21-t2-ptdp-gpt-174.6b-384gpu", source="Someone et al. 2024"))
    assert new.plan.attention_kernel is AttentionKernel.FLASH
    assert new.recompute_candidates == RECOMPUTE_ORDER
    undated = case_inputs(_row("narayanan21-t2-ptdp-gpt-174.6b-384gpu", source="a README"))
    assert undated.plan.attention_kernel is AttentionKernel.FLASH
    stated = case_inputs(_row("narayanan21-t2-ptdp-gpt-174.6b-384gpu", recompute="selective"))
    assert stated.recompute_candidates == (Recompute.SELECTIVE,)


def test_unstated_sequence_parallel_follows_tp_ep_and_source_year():
    """Empty sequence_parallel: off before 2023 (Megatron's flag default), on with tp > 1 from
    2023 (recipes pair it with TP), on for MoE with tp > 1 and ep > 1 in any year (Megatron-Core
    requires it); never with tp = 1; a stated cell always wins."""
    row = "narayanan21-t2-ptdp-gpt-174.6b-384gpu"  # tp 8, 2021
    assert case_inputs(_row(row, sequence_parallel="")).plan.sequence_parallel is False
    later = case_inputs(_row(row, sequence_parallel="", source="Someone et al. 2024"))
    assert later.plan.sequence_parallel is True
    assert any(n.startswith("sequence_parallel empty: 1") for n in later.notes)
    assert case_inputs(_row(row, sequence_parallel="0", source="Someone et al. 2024")).plan.sequence_parallel is False
    tp1 = case_inputs(_row("narayanan21-t1-gpt-1.7b-32gpu", sequence_parallel="", source="Someone et al. 2024"))
    assert tp1.plan.sequence_parallel is False
    moe = _row("dsv3-isca25-table4", tp="2", dp="64", sequence_parallel="", source="Someone et al. 2021")
    assert case_inputs(moe).plan.sequence_parallel is True
    assert case_inputs({**moe, "ep": "1", "dp": "64"}).plan.sequence_parallel is False


def test_interleaved_without_vpp_takes_the_mildest_even_split():
    case = case_inputs(_row("korthikanti22-t5-gpt-530b-280gpu-selective", vpp=""))
    assert case.plan.vpp == 3  # 105 layers / pp 35 = 3 per stage
    case = case_inputs(_row("korthikanti22-t5-gpt-175b-64gpu-selective", vpp=""))
    assert case.plan.vpp == 2  # 96 / 8 = 12 per stage
    assert any(n.startswith("vpp empty: 2") for n in case.notes)


def test_dp_is_derived_and_checked():
    case = case_inputs(_row("narayanan21-t1-gpt-7.5b-128gpu", dp=""))
    assert case.plan.dp == 32 and "dp empty: 32 = num_gpus / (tp * pp * cp)" in case.notes
    with pytest.raises(SpecError, match="tp \\* pp \\* cp"):
        case_inputs(_row("narayanan21-t1-gpt-7.5b-128gpu", dp="", num_gpus="130"))


def test_bad_cells_name_the_column():
    with pytest.raises(SpecError, match="layers"):
        case_inputs(_row("bloom-176b-384gpu", layers=""))
    with pytest.raises(SpecError, match="precision = 'fp4'"):
        case_inputs(_row("bloom-176b-384gpu", precision="fp4"))
    with pytest.raises(SpecError, match="tp"):
        case_inputs(_row("bloom-176b-384gpu", tp="3"))  # 3 does not divide 112 heads


def test_no_preset_is_unsupported():
    with pytest.raises(UnsupportedError, match="no cluster preset for gpu a100-pcie-40gb with intra_node nvswitch"):
        case_inputs(_row("fireflyer-llama-13b-64gpu", intra_node="nvswitch"))
    with pytest.raises(UnsupportedError, match="no cluster preset for gpu mi300x"):
        case_inputs(_row("bloom-176b-384gpu", gpu="mi300x"))


def test_partial_nodes_become_smaller_whole_nodes():
    case = case_inputs(_row("narayanan21-t1-gpt-7.5b-128gpu", num_gpus="12", dp="3", global_batch="480"))
    assert case.cluster.num_gpus == 12 and case.cluster.node.gpus_per_node == 4
    assert case.cluster.node.scale_up.domain_gpus == 4
    case = case_inputs(_row("korthikanti22-t5-gpt-22b-8gpu-selective", num_gpus="4", tp="4"))
    assert case.cluster.num_gpus == 4 and case.cluster.num_nodes == 1


# --- hand-written rows in another column order ------------------------------------------

EXTRA = [
    {  # H100, dense GQA, interleaved PP, context parallel
        "case_id": "x-h100-llama3-70b-cp2", "source": "hand", "model_name": "Llama-3 70B", "arch": "dense",
        "layers": "80", "hidden": "8192", "ffn_hidden": "28672", "ffn_act": "swiglu", "heads": "64",
        "kv_heads": "8", "vocab": "128256", "seq_len": "8192", "attention": "gqa", "gpu": "h100-sxm-80gb",
        "num_gpus": "64", "gpus_per_node": "8", "intra_node": "nvswitch", "nics_per_node": "8", "nic_gbps": "400",
        "precision": "bf16", "tp": "4", "pp": "4", "vpp": "5", "cp": "2", "zero": "1", "sequence_parallel": "1",
        "recompute": "none", "micro_batch": "1", "global_batch": "128", "pp_schedule": "interleaved",
        "step_time_s": "10", "confidence": "high", "unused_extra_column": "ignored",
    },
    {  # B200, FP8, everything optional left out
        "case_id": "x-b200-llama3-8b-fp8", "source": "hand", "layers": "32", "hidden": "4096", "ffn_hidden": "14336",
        "heads": "32", "kv_heads": "8", "vocab": "128256", "seq_len": "8192", "gpu": "b200", "num_gpus": "8",
        "precision": "fp8", "micro_batch": "2", "global_batch": "128", "step_time_s": "5",
    },
    {  # GB200 NVL72, MLA + MoE without group columns, 4-GPU trays
        "case_id": "x-gb200-moe-mla", "source": "hand", "arch": "moe", "layers": "27", "hidden": "2048",
        "ffn_hidden": "10944", "ffn_act": "swiglu", "heads": "16", "vocab": "102400", "seq_len": "4096",
        "attention": "mla", "mla_kv_lora_rank": "512", "mla_qk_nope_head_dim": "128", "mla_qk_rope_head_dim": "64",
        "mla_v_head_dim": "128", "moe_experts": "64", "moe_topk": "6", "moe_shared_experts": "2",
        "moe_expert_ffn": "1408", "moe_dense_layers": "1", "gpu": "gb200", "num_gpus": "144", "gpus_per_node": "4",
        "intra_node": "nvl72", "nics_per_node": "4", "nic_gbps": "400", "precision": "fp8", "tp": "1", "pp": "1",
        "ep": "8", "etp": "1", "global_batch": "1152", "step_time_s": "3",
    },
    {  # TorchTitan-style: H100 95 GB at 500 W, FSDP (ZeRO-3), Float8 encoded fp8
        "case_id": "x-h100-95gb-fsdp-fp8", "source": "hand", "arch": "dense", "layers": "32", "hidden": "4096",
        "ffn_hidden": "14336", "ffn_act": "swiglu", "heads": "32", "kv_heads": "8", "vocab": "128256",
        "seq_len": "8192", "attention": "gqa", "gpu": "h100-sxm-95gb-500w", "num_gpus": "128", "gpus_per_node": "8",
        "intra_node": "nvswitch", "precision": "fp8", "zero": "3", "recompute": "selective", "micro_batch": "1",
        "global_batch": "128", "step_time_s": "4",
    },
    {  # A100 40 GB on NVSwitch, GELU without ffn_hidden (4 x hidden)
        "case_id": "x-a100-40gb-gpt", "source": "hand", "arch": "dense", "layers": "24", "hidden": "2048",
        "ffn_act": "gelu", "heads": "16", "vocab": "51200", "seq_len": "2048", "gpu": "a100-sxm-40gb",
        "num_gpus": "16", "gpus_per_node": "8", "intra_node": "nvswitch", "nics_per_node": "8", "nic_gbps": "200",
        "tp": "2", "pp": "2", "dp": "4", "micro_batch": "4", "global_batch": "256", "step_time_s": "1",
    },
]


@pytest.fixture
def extra_csv(tmp_path: Path) -> Path:
    columns = sorted({key for row in EXTRA for key in row}, reverse=True)  # not the schema's order
    path = tmp_path / "extra.csv"
    with open(path, "w", newline="") as out:
        writer = csv.DictWriter(out, fieldnames=columns)
        writer.writeheader()
        writer.writerows(EXTRA)
    return path


def test_hand_written_rows_convert(extra_csv):
    cases = {row["case_id"]: case_inputs(row) for row in read_cases(extra_csv)}
    h100 = cases["x-h100-llama3-70b-cp2"]
    assert h100.cluster.name == "dgx-h100" and h100.plan.cp == 2 and h100.plan.dp == 2
    assert h100.model.attention_kind == "gqa" and h100.plan.pipeline_schedule is PipelineSchedule.INTERLEAVED
    b200 = cases["x-b200-llama3-8b-fp8"]
    assert b200.cluster.name == "dgx-b200" and b200.workload.precision is Precision.FP8
    assert b200.plan.dp == 8 and "intra_node empty: nvswitch (the only preset for b200)" in b200.notes
    gb200 = cases["x-gb200-moe-mla"]
    assert gb200.cluster.name == "gb200-nvl72" and gb200.cluster.num_nodes == 36
    assert gb200.cluster.node.scale_up.domain_gpus == 72
    assert gb200.model.mla.q_lora_rank is None and gb200.model.moe.num_expert_groups == 1
    titan = cases["x-h100-95gb-fsdp-fp8"]
    assert titan.cluster.name == "grand-teton-h100-95gb" and titan.plan.zero_stage is ZeroStage.PARAMETERS
    assert titan.cluster.node.nics_per_node == 8  # the preset's, noted
    gpt = cases["x-a100-40gb-gpt"]
    assert gpt.cluster.name == "dgx-a100-40gb" and gpt.model.ffn_hidden_size == 8192


def test_read_cases_errors(tmp_path: Path):
    with pytest.raises(SpecError, match="no such file"):
        read_cases(tmp_path / "absent.csv")
    path = tmp_path / "short.csv"
    path.write_text("case_id,layers\nx,2\n")
    with pytest.raises(SpecError, match="missing required column\\(s\\): hidden, heads"):
        read_cases(path)


# --- run_cases with a fake simulator ----------------------------------------------------


def _report(status: Status, step_time_s: float) -> StepReport:
    zero = TimeBreakdown(
        forward_s=0, backward_input_s=0, backward_weight_s=0, overlapped_fb_s=step_time_s,
        bubble_s=0, dp_exposed_s=0, optimizer_s=0,
    )
    return StepReport(
        status=status, step_time_s=step_time_s, breakdown=zero, comm_exposed_s={}, comm_hidden_s={},
        compute_s=step_time_s, recompute_s=0, tokens_per_s_per_gpu=1, mfu_causal=0.4, mfu_noncausal=0.45,
        mfu_peak_flops_per_s=1e15, stages=[], memory_peak_bytes=90 * 2**30, memory_capacity_bytes=80 * 2**30,
        num_microbatches=1, messages=["fake"],
    )


def fake_simulate(model, cluster, plan, workload):
    """OOM unless recompute is full; otherwise 10 s per 1,000 sequences."""
    if "oom-always" in model.name:
        return _report(Status.OOM, 99.0)
    if "boom" in model.name:
        raise RuntimeError("boom")
    status = Status.OK if plan.recompute is Recompute.FULL else Status.OOM
    return _report(status, 10.0 * workload.global_batch_size / 1000)


def test_run_cases_statuses():
    rows = [
        # recompute empty (a 2024 source): none and selective OOM, full fits
        _row("mtnlg-530b-2240gpu", source="Smith et al. 2024"),
        _row("korthikanti22-t5-gpt-22b-8gpu-selective"),  # recompute given: stays OOM
        _row("bloom-176b-384gpu", model_name="boom"),
        _row("bloom-176b-384gpu", gpu="mi300x"),
        _row("bloom-176b-384gpu", layers="many"),
        _row("bloom-176b-384gpu", model_name="oom-always"),
    ]
    results = run_cases(rows, simulate=fake_simulate)
    assert [r.case_id for r in results] == [r["case_id"] for r in rows]
    ok, oom, boom, gpu, bad, oom2 = results
    assert ok.status is CaseStatus.OK and ok.predicted_step_time_s == pytest.approx(19.2)
    assert "recompute: took full" in ok.message and "micro_batch empty: 1" in ok.message
    assert oom.status is CaseStatus.OOM and "OOM: peak 90.0 GiB > capacity 80.0 GiB" in oom.message
    assert boom.status is CaseStatus.ERROR and "RuntimeError: boom" in boom.message
    assert gpu.status is CaseStatus.UNSUPPORTED and "no cluster preset for gpu mi300x" in gpu.message
    assert bad.status is CaseStatus.ERROR and "layers = 'many'" in bad.message
    assert oom2.status is CaseStatus.OOM and "recompute" not in oom2.message
    assert all(r.predicted_step_time_s is None for r in (boom, gpu, bad))


def test_predictions_file_and_scores(tmp_path: Path):
    rows = [BY_ID["mtnlg-530b-2240gpu"], BY_ID["mtnlg-530b-2800gpu"], _row("bloom-176b-384gpu", gpu="mi300x")]
    results = run_cases(rows, simulate=fake_simulate)
    path = tmp_path / "pred.csv"
    write_predictions(path, results)
    with open(path, newline="") as f:
        written = list(csv.reader(f))
    assert tuple(written[0]) == PREDICTION_COLUMNS
    assert [w[0] for w in written[1:]] == [r["case_id"] for r in rows]
    assert [w[2] for w in written[1:]] == ["ok", "ok", "unsupported"]
    assert float(written[1][1]) == pytest.approx(19.2) and written[3][1] == ""

    summary = score(rows, results)
    apes = [abs(19.2 - 60.1) / 60.1, abs(19.2 - 50.2) / 50.2]
    assert summary.overall.median_ape == pytest.approx(sum(apes) / 2)
    assert summary.overall.within == 0.0 and summary.overall.measured == 3
    assert set(summary.by_source) == {"Smith et al. 2022, MT-NLG 530B", "BigScience tr11-176B-ml README (BLOOM)"}
    assert summary.by_status == {"ok": 2, "oom": 0, "unsupported": 1, "error": 0}
    assert json.loads(json.dumps(summary.as_dict()))["overall"]["ok"] == 2


def test_within_counts_failures_as_misses():
    rows = [_row("mtnlg-530b-2240gpu", step_time_s="19.2"), _row("bloom-176b-384gpu", gpu="mi300x")]
    summary = score(rows, run_cases(rows, simulate=fake_simulate))
    assert summary.overall.median_ape == pytest.approx(0.0)
    assert summary.overall.within == 0.5


# --- the command ------------------------------------------------------------------------


def planner(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "planner", *args], capture_output=True, text=True, timeout=300)


def planner_with_fake_simulator(*args: str) -> subprocess.CompletedProcess:
    """The real command, with the simulator replaced by :func:`fake_simulate`."""
    code = (
        "import sys; sys.path.insert(0, %r); import test_validation as t; "
        "import planner.validation.run as r; r.default_simulate = lambda: t.fake_simulate; "
        "from planner.cli.main import app; app(prog_name='planner')"
    ) % str(Path(__file__).parent)
    return subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=300
    )


def _one_line_error(result: subprocess.CompletedProcess, *words: str) -> None:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    for word in words:
        assert word in lines[0]


def test_cli_writes_predictions_for_any_schema_file(extra_csv, tmp_path: Path):
    out = tmp_path / "pred.csv"
    result = planner("validate", "--cases", str(extra_csv), "--out", str(out), "--report", str(tmp_path / "rep"))
    assert result.returncode == 0, result.stderr
    with open(out, newline="") as f:
        written = list(csv.DictReader(f))
    assert list(written[0]) == list(PREDICTION_COLUMNS)
    assert [w["case_id"] for w in written] == [row["case_id"] for row in EXTRA]
    assert {w["status"] for w in written} <= {s.value for s in CaseStatus}
    assert (tmp_path / "rep" / "summary.json").is_file()
    with open(tmp_path / "rep" / "per_case.csv", newline="") as f:
        assert next(csv.reader(f)) == ["case_id", "source", "measured", "predicted", "ape", "status", "message"]
    assert "Per source" in result.stdout


def test_cli_json_with_fake_simulator(tmp_path: Path):
    out = tmp_path / "pred.csv"
    result = planner_with_fake_simulator("validate", "--out", str(out), "--format", "json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["overall"]["cases"] == 44
    assert data["by_status"]["ok"] + data["by_status"]["oom"] == 44
    assert "Narayanan et al. 2021 (SC21)" in data["by_source"] and "high" in data["by_confidence"]
    with open(out, newline="") as f:
        assert len(list(csv.DictReader(f))) == 44


def test_cli_missing_column_and_missing_file(tmp_path: Path):
    path = tmp_path / "cases.csv"
    with open(PUBLIC, newline="") as src, open(path, "w", newline="") as dst:
        reader = csv.DictReader(src)
        columns = [c for c in reader.fieldnames if c != "seq_len"]
        writer = csv.DictWriter(dst, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(reader)
    _one_line_error(planner("validate", "--cases", str(path), "--out", str(tmp_path / "p.csv")), "seq_len", "cases.csv")
    _one_line_error(planner("validate", "--cases", str(tmp_path / "nope.csv")), "nope.csv", "no such file")


# --- memory of published runs ---------------------------------------------------------

EXTRA_BY_ID = {row["case_id"]: row for row in read_cases(data_root() / "validation" / "extra_cases.csv")}


def test_fp8_rows_keep_fp32_adam_moments():
    """The schema has no optimizer column: an FP8 row gets the Workload default, FP32 moments
    (Megatron-LM --exp-avg-dtype default 'fp32'; TE and torchao FP8 change only the GEMMs)."""
    case = case_inputs(EXTRA_BY_ID["mbridge2511-h100-llama3-8b-fp8cs-8gpu"])
    assert case.workload.precision is Precision.FP8
    assert case.workload.adam_moment_dtype == "fp32"


def test_fsdp_run_with_unsharded_experts_fits():
    """NeMo AutoModel performance summary (2025-10-02): Kimi-K2 on 256 H100-80GB, PP8 VP4,
    EP32, FSDP2 over DP32 (edp 1: every expert state unsharded) ran, so it must not be
    predicted OOM. It fits only because ZeRO-3 keeps no 16-bit weight shard (FSDP shards the
    FP32 master itself): with one (2 B/param more) pipeline rank 2 needed 84.8 GiB > 79.65."""
    from planner.costmodel.simulate import simulate

    case = case_inputs(EXTRA_BY_ID["automodel-h100-kimi-k2-bf16-256gpu"])
    assert case.plan.zero_stage is ZeroStage.PARAMETERS and case.plan.edp == 1
    report = simulate(case.model, case.cluster, case.plan, case.workload)
    assert report.status is Status.OK
    assert report.memory_peak_bytes <= report.memory_capacity_bytes


def test_dualpipe_fp8_rows_take_deepseek_v3s_recipe():
    """A dualpipe row in fp8 is DeepSeek's framework: BF16 Adam moments and FP8 dispatch (V3
    §3.3.3); the same row on 1F1B keeps the Workload defaults (Megatron-Core's)."""
    from planner.validation.cases import case_inputs, read_cases
    from planner.presets import data_root
    from planner.specs import DispatchDtype, MomentDtype

    row = next(r for r in read_cases(data_root() / "validation" / "public_cases.csv")
               if r["case_id"] == "dsv3-isca25-table4")
    v3 = case_inputs(row)
    assert v3.workload.adam_moment_dtype is MomentDtype.BF16
    assert v3.workload.moe_dispatch_dtype is DispatchDtype.FP8
    assert any("DeepSeek-V3's recipe" in n for n in v3.notes)
    other = case_inputs({**row, "pp_schedule": "1f1b"})
    assert other.workload.adam_moment_dtype is MomentDtype.FP32
    assert other.workload.moe_dispatch_dtype is DispatchDtype.BF16


def test_tp_comm_overlap_rule():
    """NeMo and Megatron-Bridge rows with tp > 1 and sequence parallelism run TE's TP overlap
    (their performance recipes: reconcile.tp_comm_overlap); tp 1, NeMo AutoModel and other
    sources (Megatron-MoE-ModelZoo, Meta's Llama 3) keep Megatron-LM's default, off."""
    on = ["nemo2407-h100-llama2-70b-64gpu", "mbridge2511-h100-llama3-70b-fp8cs-64gpu",
          "nemolongseq-h100-llama2-7b-64k-cp2-64gpu", "mbridge2511-h100-qwen3-235b-a22b-fp8cs-256gpu"]
    off = ["nemo2407-h100-llama2-7b-8gpu", "automodel-h100-dsv3-bf16-256gpu",
           "mzoo-h100-qwen3-235b-a22b-bf16-256gpu-tp4-ep8-pp8", "llama3-t4-405b-8192gpu",
           "torchtitan-h100-llama31-70b-fp8-256gpu"]
    for case_id in on:
        case = case_inputs(EXTRA_BY_ID[case_id])
        assert case.plan.tp > 1 and case.plan.sequence_parallel
        assert case.workload.tp_comm_overlap, case_id
        assert any(n.startswith("tp_comm_overlap: on") for n in case.notes)
    for case_id in off:
        assert not case_inputs(EXTRA_BY_ID[case_id]).workload.tp_comm_overlap, case_id
    # Without sequence parallelism Megatron-Core turns it off: so does the rule.
    row = {**EXTRA_BY_ID["nemo2407-h100-llama2-70b-64gpu"], "sequence_parallel": "0"}
    assert not case_inputs(row).workload.tp_comm_overlap
    # Every public row is from other sources: all off.
    assert not any(case_inputs(r).workload.tp_comm_overlap for r in ROWS)
