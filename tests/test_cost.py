"""Cost of a token budget and the workload of a token budget (planner.budget)."""

from __future__ import annotations

import pytest

import planner
from planner.budget import (
    DEFAULT_PRICE_PER_GPU_HOUR,
    budget_workload,
    training_cost,
)
from planner.errors import SpecError


def test_deepseek_v3_180k_gpu_hours_per_trillion_tokens():
    """DeepSeek-V3 §1 / Table 1: 180K H800 GPU-hours per trillion tokens, $2/GPU-hour.
    The measured step (ISCA'25 Table 4: 19.926 s on 2048 GPUs, 15,360 x 4096 tokens per
    step) gives 2048 * 19.926 / 62,914,560 * 1e12 / 3600 = 180,176 GPU-hours exactly."""
    cost = training_cost(19.926, 15360 * 4096, 2048)
    assert cost.tokens == 1e12 and cost.price_per_gpu_hour == DEFAULT_PRICE_PER_GPU_HOUR == 2.0
    exact = 2048 * 19.926 / (15360 * 4096) * 1e12 / 3600
    assert cost.gpu_hours == pytest.approx(exact, rel=1e-12)
    assert cost.gpu_hours == pytest.approx(180_176, abs=1)
    assert cost.gpu_hours == pytest.approx(180e3, rel=0.005)  # the paper's rounded "180K"
    assert cost.cost_usd == pytest.approx(2 * exact, rel=1e-12)
    assert cost.wall_time_days == pytest.approx(3.67, abs=0.01)  # "3.7 days on our cluster"
    assert cost.tokens_per_day == pytest.approx(272.8e9, rel=1e-3)  # ISCA'25 Table 4: 272.80B/day


def test_deepseek_v3_pretraining_cost():
    """Table 1: pre-training 2,664K GPU-hours, $5.328M, for 14.8T tokens (the batch ramp
    and everything else folded in): steady state at the measured step is within 0.2%."""
    cost = training_cost(19.926, 15360 * 4096, 2048, tokens=14.8e12, price_per_gpu_hour=2.0)
    assert cost.gpu_hours == pytest.approx(2_664e3, rel=0.002)
    assert cost.cost_usd == pytest.approx(5.328e6, rel=0.002)
    assert cost.gpu_hours_per_1e12_tokens == pytest.approx(training_cost(19.926, 15360 * 4096, 2048).gpu_hours)


def test_cost_rejects_bad_input():
    with pytest.raises(SpecError, match="--tokens"):
        training_cost(1.0, 4096, 8, tokens=-1)
    with pytest.raises(SpecError, match="--price-per-gpu-hour"):
        training_cost(1.0, 4096, 8, price_per_gpu_hour=float("nan"))
    with pytest.raises(SpecError):
        training_cost(0.0, 4096, 8)


@pytest.mark.parametrize(
    ("model", "batch", "lr"),
    [("deepseek-llm-7b", 2304, 4.2e-4), ("deepseek-llm-67b", 4608, 3.2e-4)],  # DeepSeek LLM Table 2
)
def test_deepseek_llm_batch_and_lr_from_2t_tokens(model, batch, lr):
    """DeepSeek LLM's laws with M from our accounting reproduce its own 7B and 67B choices
    (2T tokens): batch within 5% (B_opt before rounding), peak LR within 3%."""
    m = planner.describe_model(planner.load_model(model), 4096).flops_per_token_nonembedding
    b = budget_workload(m, 2e12, 4096, num_gpus=256)
    assert b.batch_sequences_opt == pytest.approx(batch, rel=0.05)
    assert b.learning_rate_opt == pytest.approx(lr, rel=0.03)
    assert b.global_batch_size % 256 == 0
    assert abs(b.global_batch_size - b.batch_sequences_opt) <= 128  # nearest multiple of the GPUs


def test_budget_law_arithmetic():
    """seeds-digest §3.3: C = 8.46e22 gives B_opt = 9.2e6 tokens and eta_opt = 4.25e-4."""
    b = budget_workload(8.46e22 / 2e12, 2e12, 4096, num_gpus=8)
    assert b.compute_flops == pytest.approx(8.46e22)
    assert b.batch_tokens_opt == pytest.approx(0.2920 * 8.46e22 ** 0.3271)
    assert b.batch_tokens_opt == pytest.approx(9.2e6, rel=0.01)
    assert b.learning_rate_opt == pytest.approx(4.25e-4, rel=0.01)
    tiny = budget_workload(1e9, 1e9, 4096, num_gpus=64)  # B_opt under one sequence per GPU
    assert tiny.global_batch_size == 64
    assert "multiple of the GPU count" in tiny.line()
