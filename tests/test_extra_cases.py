"""The extra validation cases (``data/validation/extra_cases.csv``): published H100, B200 and
GB200 runs (Megatron-Bridge / NeMo performance summaries, NeMo AutoModel, torchtitan, the
Llama 3 paper) and A100 runs (MosaicML llm-foundry's MPT benchmarks, BigScience's BLOOM
topology benchmarks) in the schema of ``public_cases.csv``.

These tests check the file, not the model: same columns in the same order, unique ids, every
row converts to specs (or is reported unsupported with a reason), and each stored step time
agrees with the published metric it was derived from. No assertion is made on prediction error.
"""

from __future__ import annotations

import csv
import re

import pytest

from planner.errors import UnsupportedError
from planner.presets import data_root
from planner.validation import case_inputs, read_cases

VALIDATION = data_root() / "validation"
EXTRA = VALIDATION / "extra_cases.csv"
ROWS = read_cases(EXTRA)

# The README's vocabularies (shared/validation/README.md, Schema table).
GPUS = {
    "a100-sxm-40gb", "a100-sxm-80gb", "a100-pcie-40gb", "h100-sxm-80gb", "h100-sxm-95gb-500w",
    "h800-sxm-80gb", "b200", "gb200",
}
CONFIDENCE = {"high", "medium", "low"}
SCHEDULES = {"none", "1f1b", "interleaved", "zero-bubble", "dualpipe"}


def _header(path) -> list[str]:
    with open(path, newline="", encoding="utf-8") as handle:
        return next(csv.reader(handle))


def test_columns_match_the_public_file_in_order():
    assert _header(EXTRA) == _header(VALIDATION / "public_cases.csv")


def test_case_ids_are_unique_and_disjoint_from_the_public_ones():
    ids = [row["case_id"] for row in ROWS]
    assert len(ids) == len(set(ids))
    public = {row["case_id"] for row in read_cases(VALIDATION / "public_cases.csv")}
    assert not public & set(ids)


def test_coverage_of_gpus_precisions_and_architectures():
    """The point of the file: Ampere, Hopper and Blackwell, FP8 and BF16, dense and MoE, CP > 1."""
    gpus = {row["gpu"] for row in ROWS}
    assert {"a100-sxm-40gb", "a100-sxm-80gb", "h100-sxm-80gb", "b200", "gb200"} <= gpus
    assert {row["precision"] for row in ROWS} >= {"bf16", "fp8"}
    assert {row["arch"] for row in ROWS} == {"dense", "moe"}
    assert any(int(row["cp"]) > 1 for row in ROWS)
    assert len({row["source"] for row in ROWS}) >= 3


@pytest.mark.parametrize("row", ROWS, ids=[r["case_id"] for r in ROWS])
def test_every_row_converts(row):
    assert row["gpu"] in GPUS
    assert row["confidence"] in CONFIDENCE
    assert row["pp_schedule"] in SCHEDULES
    try:
        case = case_inputs(row)
    except UnsupportedError as exc:  # allowed, but only with a reason
        assert str(exc)
        return
    assert case.cluster.gpu.name == row["gpu"]
    assert case.cluster.num_gpus == case.plan.world_size == int(row["num_gpus"])
    assert case.model.num_layers == int(row["layers"])
    assert case.workload.global_batch_size == int(row["global_batch"])
    assert case.plan.tp * case.plan.pp * case.plan.cp * case.plan.dp == int(row["num_gpus"])


@pytest.mark.parametrize("row", ROWS, ids=[r["case_id"] for r in ROWS])
def test_step_time_follows_from_the_published_metric(row):
    """Each target is recomputed from the printed number; tolerance 0.1% (the file keeps
    four significant digits)."""
    step = float(row["step_time_s"])
    value = float(row["published_value"])
    unit = row["published_unit"]
    tokens = int(row["global_batch"]) * int(row["seq_len"])
    gpus = int(row["num_gpus"])
    if unit == "s/step":
        assert step == pytest.approx(value, rel=1e-3)
    elif unit == "tokens/s/GPU":
        assert step == pytest.approx(tokens / (value * gpus), rel=1e-3)
    elif unit == "tokens/s":  # whole-job throughput (MosaicML llm-foundry's Throughput (T/s))
        assert step == pytest.approx(tokens / value, rel=1e-3)
    elif unit == "TFLOP/s/GPU":
        # Model FLOPs per token as stated in the derivation, fwd + bwd: causal attention
        # (6*l*s*h_q) unless the derivation states the full-attention convention of the NeMo
        # performance pages (12*l*s*h_q).
        derivation = row["step_time_derivation"]
        n_matmul = float(re.search(r"N_matmul = ([0-9.]+e9)", derivation).group(1))
        attention_coefficient = 12 if "12*l*s*h_q" in derivation else 6
        h_q = int(row["heads"]) * (int(row["head_dim"] or 0) or int(row["hidden"]) // int(row["heads"]))
        flops_per_token = (
            6 * n_matmul + attention_coefficient * int(row["layers"]) * int(row["seq_len"]) * h_q
        )
        assert step == pytest.approx(tokens * flops_per_token / (value * 1e12 * gpus), rel=2e-3)
    else:
        pytest.fail(f"unknown published_unit {unit!r}")


def test_direct_step_times_agree_with_the_throughput_column():
    """AutoModel prints both step time and tokens/s/GPU; the derivation records the cross-check."""
    for row in ROWS:
        if row["published_unit"] != "s/step":
            continue
        implied = float(re.search(r"= ([0-9.]+) s\)", row["step_time_derivation"]).group(1))
        assert implied == pytest.approx(float(row["step_time_s"]), rel=0.01)
