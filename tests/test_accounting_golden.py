"""Golden tests: parameter, FLOP and KV-cache accounting against published numbers.

Each test names its source and tolerance. Seeds-digest = ../shared/research/seeds-digest.md.
"""

from __future__ import annotations

import pytest

from planner import describe_model, load_model
from planner.costmodel.flops import deepseek_llm_m, nonembedding_flops_per_token
from planner.specs import ModelSpec


def rel_err(value: float, target: float) -> float:
    return abs(value - target) / target


def test_deepseek_v3_params_flops_kv():
    """DeepSeek-V3 report §4.2 (671B total, 37B activated); ISCA'25 "Insights into
    DeepSeek-V3" Table 2 (250 GFLOPs/token at seq 4096, the convention that reproduces
    Table 4's 38.94% causal MFU, seeds-digest §2.9) and Table 1 (KV cache 70.272 KB).
    Tolerances from the foundations issue: 0.5%, 3%, 2%, exact."""
    acc = describe_model(load_model("deepseek-v3"), 4096)
    assert rel_err(acc.params.total, 671e9) <= 0.005
    assert rel_err(acc.params.active, 37e9) <= 0.03
    assert rel_err(acc.flops_per_token_train, 250e9) <= 0.02
    assert acc.kv_cache_bytes_per_token == 70_272


def test_deepseek_v3_mfu_convention_reproduces_table4():
    """ISCA'25 Table 4: 1541.7 tokens/s/GPU (272.80B tokens/day on 2048 GPUs) at 989 TFLOPS
    BF16 peak gives 38.94% causal and 43.73% non-causal MFU. Our FLOPs/token must
    reproduce both to within 1% (relative)."""
    acc = describe_model(load_model("deepseek-v3"), 4096)
    tokens_per_s_per_gpu = 272.80e9 / 86400 / 2048
    peak = 989e12
    assert rel_err(acc.flops_per_token_train * tokens_per_s_per_gpu / peak, 0.3894) <= 0.01
    assert rel_err(acc.flops_per_token_train_noncausal * tokens_per_s_per_gpu / peak, 0.4373) <= 0.01


def test_deepseek_v3_mtp_module_size():
    """DeepSeek-V3 README_WEIGHTS: the MTP module holds 11.5B unique parameters; 5%."""
    acc = describe_model(load_model("deepseek-v3"))
    assert rel_err(acc.params.mtp, 11.5e9) <= 0.05


def test_deepseek_v2():
    """DeepSeek-V2 (arXiv 2405.04434) §3.1.2: 236B total / 21B activated (3%);
    ISCA'25 Table 2: 155 GFLOPs/token at seq 4096 (2%)."""
    acc = describe_model(load_model("deepseek-v2"), 4096)
    assert rel_err(acc.params.total, 236e9) <= 0.03
    assert rel_err(acc.params.active, 21e9) <= 0.03
    assert rel_err(acc.flops_per_token_train, 155e9) <= 0.02


def test_deepseek_v2_lite():
    """DeepSeek-V2 §7: V2-Lite has 15.7B total and 2.4B activated parameters (3%). The
    2.4B leaves out the input embedding (0.21B): with it the count is 2.66B. DeepSeek's
    papers differ here (V3's 37B includes embedding and head, README_WEIGHTS), so we
    report both and test each against the convention its source uses."""
    p = describe_model(load_model("deepseek-v2-lite")).params
    assert rel_err(p.total, 15.7e9) <= 0.03
    assert rel_err(p.active_excluding_embedding, 2.4e9) <= 0.03


def test_deepseekmoe_16b():
    """DeepSeekMoE (arXiv 2401.06066) §5.1.2: about 16.4B total / 2.8B activated; 3%."""
    p = describe_model(load_model("deepseekmoe-16b")).params
    assert rel_err(p.total, 16.4e9) <= 0.03
    assert rel_err(p.active, 2.8e9) <= 0.03


@pytest.mark.parametrize(
    ("name", "total", "active", "tol"),
    [
        # DeepSeekMoE §7: 145B preliminary model, 144.6B / 22.2B.
        ("deepseekmoe-145b", 144.6e9, 22.2e9, 0.03),
        # Mixtral of Experts (arXiv 2401.04088) §2: 47B total, 13B active.
        ("mixtral-8x7b", 46.7e9, 12.9e9, 0.03),
        # Qwen3 technical report (arXiv 2505.09388) Table 2: 235B total, 22B activated.
        ("qwen3-235b-a22b", 235e9, 22e9, 0.03),
    ],
)
def test_moe_presets_published_sizes(name, total, active, tol):
    p = describe_model(load_model(name)).params
    assert rel_err(p.total, total) <= tol
    assert rel_err(p.active, active) <= tol


@pytest.mark.parametrize(
    ("name", "published", "tol"),
    [
        # Brown et al. 2020 (arXiv 2005.14165) Table 2.1: 175.0B; 1% (foundations issue).
        ("gpt3-175b", 175.0e9, 0.01),
        # Llama 3 herd (arXiv 2407.21783) Table 3: 405B; 1% (foundations issue).
        ("llama3-405b", 405e9, 0.01),
        # Llama 2 (arXiv 2307.09288): 7B/13B/70B model cards list 6.74B/13.0B/69.0B; 1%.
        ("llama2-7b", 6.74e9, 0.01),
        ("llama2-13b", 13.0e9, 0.01),
        ("llama2-70b", 69.0e9, 0.01),
        # Meta Llama 3 model cards: 8.03B and 70.6B; 1%.
        ("llama3-8b", 8.03e9, 0.01),
        ("llama3-70b", 70.6e9, 0.01),
    ],
)
def test_dense_presets_published_totals(name, published, tol):
    assert rel_err(describe_model(load_model(name)).params.total, published) <= tol


def test_dense_model_is_all_active():
    p = describe_model(load_model("llama3-70b")).params
    assert p.active == p.total


@pytest.mark.parametrize(
    ("name", "kv_bytes"),
    [
        # ISCA'25 Table 1: LLaMA-3.1 405B 516.096 KB per token (BF16). Exact.
        ("llama3-405b", 516_096),
    ],
)
def test_gqa_kv_cache(name, kv_bytes):
    assert describe_model(load_model(name)).kv_cache_bytes_per_token == kv_bytes


def test_deepseek_llm_m_closed_form_table3():
    """DeepSeek LLM (arXiv 2401.02954) Table 3: 24 layers, d_model 2048, l_seq 4096
    gives M = 9.66B FLOPs/token (rounded to 3 digits by the paper: 0.1%)."""
    assert rel_err(deepseek_llm_m(24, 2048, 4096), 9.66e9) <= 1e-3


def test_deepseek_llm_m_matches_structural_count_on_the_paper_block():
    """DeepSeek LLM eq. (2) assumes 12 d^2 weights per layer (MHA + SwiGLU of 8/3 d) and
    non-causal attention. Counted from that architecture, our non-embedding FLOPs/token
    equal 72 n d^2 + 12 n d l exactly."""
    d = 3072  # 8/3 d = 8192 is an integer
    model = ModelSpec(
        name="paper-block",
        num_layers=30,
        hidden_size=d,
        num_attention_heads=24,
        ffn_hidden_size=8 * d // 3,
        vocab_size=102400,
    )
    assert nonembedding_flops_per_token(model, 4096) == deepseek_llm_m(30, d, 4096)


def test_deepseek_llm_67b_m():
    """DeepSeek LLM 67B, l_seq 4096: the paper's M is 4.97e11 FLOPs/token (seeds-digest
    §3.3, eq. 2 with n=95, d=8192). Our describe reports the architecture's own count,
    which is lower because 67B uses GQA and FFN 22016 < 8/3 d; the gap is that and only
    that (checked to 0.1% by rebuilding the count from the weights)."""
    model = load_model("deepseek-llm-67b")
    assert rel_err(deepseek_llm_m(model.num_layers, model.hidden_size, 4096), 4.97e11) <= 1e-3
    d, n, ffn = model.hidden_size, model.num_layers, model.ffn_hidden_size
    kv = model.kv_heads * model.kv_channels
    weights_per_layer = 2 * d * d + 2 * d * kv + 3 * d * ffn
    expected = 6 * n * weights_per_layer + 12 * n * d * 4096
    assert rel_err(nonembedding_flops_per_token(model, 4096), expected) <= 1e-3


def test_causal_is_less_than_noncausal_and_seq_dependence():
    model = load_model("llama3-8b")
    short, long = describe_model(model, 2048), describe_model(model, 8192)
    assert short.flops_per_token_train < short.flops_per_token_train_noncausal
    assert long.flops_per_token_train > short.flops_per_token_train
    assert long.params == short.params


def test_llama3_405b_flops_isca25_table2():
    """ISCA'25 "Insights into DeepSeek-V3" Table 2: LLaMA-405B dense, 2448 GFLOPs per token
    at sequence 4096 in the same convention as DeepSeek-V3's 250; 2% (we count 2473)."""
    acc = describe_model(load_model("llama3-405b"), 4096)
    assert rel_err(acc.flops_per_token_train, 2448e9) <= 0.02
