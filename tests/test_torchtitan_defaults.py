"""Framework defaults in `planner validate`: FlashAttention-2 rates on Hopper for TorchTitan (PyTorch
SDPA) and for NeMo containers up to 24.07 (the launcher disabled cuDNN attention), FlashAttention's
Triton kernel for MosaicML's MPT rows, and TorchTitan's
pipeline defaults (stages per rank, one micro-batch per stage) for rows that leave vpp / micro_batch
empty. Rows: the torchtitan H100 benchmarks (pytorch/torchtitan
benchmarks/llama3_h100_202412_torchtitan.md) and NeMo's 2024 H100 tables in
data/validation/extra_cases.csv."""

from __future__ import annotations

import pytest

from planner.costmodel import compute as C
from planner.costmodel.partition import Piece
from planner.costmodel.simulate import simulate
from planner.errors import SpecError
from planner.presets import data_root, load_gpu
from planner.specs import PipelineSchedule
from planner.specs.hardware import GPUEfficiency
from planner.validation import case_inputs, read_cases

BY_ID = {row["case_id"]: row for row in read_cases(data_root() / "validation" / "extra_cases.csv")}
ROW_8B = "torchtitan-h100-llama31-8b-fp8-8gpu"
ROW_1F1B = "torchtitan-h100-llama31-405b-fp8-512gpu-1f1b"
ROW_INTERLEAVED = "torchtitan-h100-llama31-405b-fp8-512gpu-interleaved"


def _row(case_id: str, **changes: str) -> dict[str, str]:
    return {**BY_ID[case_id], **changes}


def _not_titan(case_id: str, **changes: str) -> dict[str, str]:
    """The same row without any mention of TorchTitan (another framework's run)."""
    return _row(case_id, source="Some trainer 2024", notes="", source_locator="", **changes)


@pytest.mark.parametrize("name", ["h100-sxm-80gb", "h100-sxm-95gb-500w"])
def test_hopper_presets_set_slower_flash_attention_2_rates(name):
    """FA3 paper (arXiv 2407.08608) Fig. 5d / 6: FA2 335 / 322 TFLOPS against cuDNN's 539 / 516
    on H100 SXM5: FA2 is 0.60-0.63 of the cuDNN rate in both directions."""
    eff = load_gpu(name).efficiency
    fa2 = eff.with_flash_attention_2()
    assert fa2.attention_forward_fraction / eff.attention_forward_fraction == pytest.approx(335 / 539, rel=0.01)
    assert fa2.attention_backward_fraction / eff.attention_backward_fraction == pytest.approx(322 / 516, rel=0.01)
    assert fa2.gemm_max_fraction == eff.gemm_max_fraction


def test_gpus_without_separate_fa2_rates_keep_theirs():
    eff = load_gpu("a100-sxm-80gb").efficiency  # its attention fractions are FA2's own (FA2 paper)
    assert eff.with_flash_attention_2() is eff


def test_flash_attention_2_fractions_are_checked():
    fields = {**load_gpu("h100-sxm-80gb").efficiency.model_dump(), "flash_attention_2_fractions": (0.3, 1.3)}
    with pytest.raises((SpecError, ValueError)):
        GPUEfficiency.model_validate(fields)


def test_torchtitan_rows_run_attention_at_fa2_rates():
    titan = case_inputs(_row(ROW_8B))
    other = case_inputs(_not_titan(ROW_8B))
    assert titan.cluster.gpu.efficiency.attention_forward_fraction == 0.325
    assert other.cluster.gpu.efficiency.attention_forward_fraction == 0.522
    assert any(n.startswith("attention: FlashAttention-2") for n in titan.notes)
    assert not any(n.startswith("attention: FlashAttention-2") for n in other.notes)
    # PyTorch made cuDNN SDPA's Hopper default again for 2026 builds
    later = case_inputs(_row(ROW_8B, source="PyTorch torchtitan 2026"))
    assert later.cluster.gpu.efficiency.attention_forward_fraction == 0.522
    # the attention core's forward takes the rate ratio longer; GEMMs are unchanged
    times = {}
    for key, case in (("titan", titan), ("other", other)):
        ops = C.piece_ops(case.model, case.plan, case.workload, Piece.DENSE)
        gpu, precision = case.cluster.gpu, case.workload.precision
        times[key] = {op.name: C.op_forward_s(op, gpu, precision, 1.0) for op in ops}
    assert times["titan"]["core_attention"] / times["other"]["core_attention"] == pytest.approx(0.522 / 0.325)
    assert times["titan"]["ffn_up_gate"] == times["other"]["ffn_up_gate"]


def test_torchtitan_pipeline_rows_take_one_micro_batch_per_stage():
    """build_pipeline_schedule: n_microbatches defaults to pp * stages per rank, each rank's
    batch (global / dp = 32) split evenly; generate_split_points: 2 stages per rank for
    Interleaved1F1B."""
    one = case_inputs(_row(ROW_1F1B))
    assert (one.plan.pipeline_schedule, one.plan.vpp, one.plan.micro_batch_size) == (PipelineSchedule.ONE_F_ONE_B, 1, 4)
    inter = case_inputs(_row(ROW_INTERLEAVED))
    assert (inter.plan.pipeline_schedule, inter.plan.vpp, inter.plan.micro_batch_size) == (
        PipelineSchedule.INTERLEAVED, 2, 2)
    assert any(n.startswith("vpp empty: 2, TorchTitan") for n in inter.notes)
    assert any(n.startswith("micro_batch empty: 2 (TorchTitan") for n in inter.notes)
    # stated cells win
    stated = case_inputs(_row(ROW_INTERLEAVED, vpp="3", micro_batch="1"))
    assert (stated.plan.vpp, stated.plan.micro_batch_size) == (3, 1)
    # another framework's row keeps Megatron's defaults (micro-batch 1, the mildest even split)
    other = case_inputs(_not_titan(ROW_INTERLEAVED))
    assert (other.plan.vpp, other.plan.micro_batch_size) == (3, 1)
    assert case_inputs(_not_titan(ROW_1F1B)).plan.micro_batch_size == 1


def test_micro_batch_default_needs_an_even_split():
    """A local batch the stages do not divide (TorchTitan refuses it) falls back to 1."""
    case = case_inputs(_row(ROW_1F1B, global_batch="200"))  # 25 per rank, 8 stages
    assert case.plan.micro_batch_size == 1


NEMO_2407 = "nemo2407-h100-llama2-7b-8gpu"
NEMO_LONGSEQ = "nemolongseq-h100-llama2-7b-32k-cp2-32gpu"


@pytest.mark.parametrize("case_id", [NEMO_2407, NEMO_LONGSEQ])
def test_nemo_launcher_rows_up_to_24_07_run_flash_attention_2(case_id):
    """NeMo-Framework-Launcher's conf/config.yaml (container nemo:24.03.01) sets
    ``NVTE_FUSED_ATTN: 0`` ("Disable cudnn FA until we've tested it more") until PR #422 "enable
    fused attention" (2024-08-29), so NeMo's 24.03-24.07 tables ran FlashAttention-2."""
    row = BY_ID[case_id]
    fa2 = case_inputs(row)
    assert fa2.cluster.gpu.efficiency.attention_forward_fraction == load_gpu("h100-sxm-80gb").efficiency \
        .with_flash_attention_2().attention_forward_fraction
    assert any(n.startswith("attention: FlashAttention-2") and "NVTE_FUSED_ATTN" in n for n in fa2.notes)
    cudnn = load_gpu("h100-sxm-80gb").efficiency.attention_forward_fraction
    # the first container after the change, a later year without a release named, and no NeMo at all
    for source in ("NVIDIA NeMo 2024, performance summary (NeMo 24.09)", "NVIDIA NeMo 2025, performance summary",
                   "Some trainer 2024"):
        later = case_inputs({**row, "source": source, "notes": ""})
        assert later.cluster.gpu.efficiency.attention_forward_fraction == cudnn, source
    # a 2024 NeMo row that names no release is taken as the launcher's (8 of 2024's 12 months)
    undated = case_inputs({**row, "source": "NVIDIA NeMo 2024, performance summary", "notes": ""})
    assert undated.cluster.gpu.efficiency.attention_forward_fraction < cudnn


MPT_LONG = "llmfoundry-a100-80gb-mpt-7b-s65536-8gpu"


def test_triton_flash_attention_rows_run_at_the_fa2_papers_ratios():
    """FA2 paper (arXiv 2307.08691) §4.1, A100: FlashAttention-2 is "around 1.3-1.5x faster than
    FlashAttention in Triton in the forward pass and around 2x faster in the backward pass";
    MosaicML's MPT rows name attn_impl triton in their notes. Tolerance: exact (the rates are
    data/costmodel/compute.yaml's ratios times the A100 preset's FlashAttention-2 rates)."""
    row = BY_ID[MPT_LONG]
    assert "attn_impl triton" in row["notes"]
    a100 = load_gpu("a100-sxm-80gb").efficiency
    triton = case_inputs(row)
    eff = triton.cluster.gpu.efficiency
    assert eff.attention_forward_fraction == pytest.approx(a100.attention_forward_fraction * 0.714)
    assert eff.attention_backward_fraction == pytest.approx(a100.attention_backward_fraction * 0.5)
    assert eff.gemm_max_fraction == a100.gemm_max_fraction
    assert any("Triton kernel" in n for n in triton.notes)
    plain = case_inputs({**row, "notes": ""})
    assert plain.cluster.gpu.efficiency.attention_forward_fraction == a100.attention_forward_fraction
    # the long-sequence run is attention-bound: the slower kernel moves its prediction most
    assert simulate(triton.model, triton.cluster, triton.plan, triton.workload).step_time_s > \
        1.2 * simulate(plain.model, plain.cluster, plain.plan, plain.workload).step_time_s
