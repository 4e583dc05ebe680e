"""Every GPU preset carries a sourced efficiency block whose numbers are sane and match the
kernel-level measurements they were taken from (data/hardware/gpus/*.yaml, `efficiency:`)."""

from __future__ import annotations

import pytest

from planner.presets import load_gpu, preset_names
from planner.specs.hardware import Dtype

GPUS = sorted(preset_names("gpu"))


def _f(x: float, half: float) -> float:
    return x / (x + half)


@pytest.mark.parametrize("name", GPUS)
def test_preset_has_efficiency_block(name: str) -> None:
    eff = load_gpu(name).efficiency
    assert eff is not None, f"{name}: no efficiency block"
    assert len(eff.source) > 200, f"{name}: efficiency figures must cite their sources"
    assert Dtype.BF16 in eff.gemm_max_fraction and Dtype.FP16 in eff.gemm_max_fraction


@pytest.mark.parametrize("name", GPUS)
def test_fractions_in_unit_interval(name: str) -> None:
    eff = load_gpu(name).efficiency
    fractions = [
        *eff.gemm_max_fraction.values(),
        eff.attention_forward_fraction,
        eff.attention_backward_fraction,
        eff.hbm_fraction,
    ]
    assert all(0.0 < x <= 1.0 for x in fractions)
    assert 0.0 < eff.gemm_half_dim < 1024, "a half-efficiency dimension beyond 1024 would cripple real GEMMs"


@pytest.mark.parametrize("name", GPUS)
def test_every_gemm_format_has_a_peak(name: str) -> None:
    gpu = load_gpu(name)
    for dtype in gpu.efficiency.gemm_max_fraction:
        assert dtype in gpu.peak_flops_per_s, f"{name}: efficiency for {dtype} but no {dtype} peak"


@pytest.mark.parametrize("name", [n for n in GPUS if Dtype.FP8 in load_gpu(n).peak_flops_per_s])
def test_fp8_plateau_is_a_share_of_the_fp8_peak(name: str) -> None:
    """Quoted against the FP8 peak (not BF16): FP8 GEMMs end up faster than BF16 ones but
    below the FP8 datasheet peak."""
    gpu = load_gpu(name)
    frac = gpu.efficiency.gemm_max_fraction
    assert Dtype.FP8 in frac, f"{name} has an FP8 peak but no FP8 GEMM efficiency"
    fp8 = gpu.peak(Dtype.FP8) * frac[Dtype.FP8]
    bf16 = gpu.peak(Dtype.BF16) * frac[Dtype.BF16]
    assert bf16 < fp8 <= gpu.peak(Dtype.FP8)


def test_h800_fp8_plateau_matches_deepgemm() -> None:
    """DeepGEMM README, News 2025.04.18: "DeepGEMM now achieves up to 1550 TFLOPS on H800"
    (github.com/deepseek-ai/DeepGEMM; PR #81: 1500 TFLOPS at M=4096, N=7168, K=16384).
    The FP8 plateau times the FP8 peak lands within 10% of it, and the model at PR #81's
    shape within 5% of 1500."""
    gpu = load_gpu("h800-sxm-80gb")
    eff = gpu.efficiency
    plateau = gpu.peak(Dtype.FP8) * eff.gemm_max_fraction[Dtype.FP8]
    assert plateau == pytest.approx(1550e12, rel=0.10)
    half = eff.gemm_half_dim
    at_shape = plateau * _f(4096, half) * _f(7168, half) * _f(16384, half)
    assert at_shape == pytest.approx(1500e12, rel=0.05)


def test_a100_pcie_vs_sxm_matches_fire_flyer() -> None:
    """Fire-Flyer AI-HPC (arXiv 2408.14158) Table II: FP16 GEMM 220 TFLOPS per PCIe A100 vs
    263 per DGX-A100 (SXM A100-40GB) GPU, a kernel-level ratio of 0.84."""
    pcie = load_gpu("a100-pcie-40gb")
    sxm = load_gpu("a100-sxm-40gb")
    ratio = (pcie.peak(Dtype.BF16) * pcie.efficiency.gemm_max_fraction[Dtype.BF16]) / (
        sxm.peak(Dtype.BF16) * sxm.efficiency.gemm_max_fraction[Dtype.BF16]
    )
    assert ratio == pytest.approx(220 / 263, rel=0.05)


@pytest.mark.parametrize(
    ("name", "tflops", "source"),
    [
        ("h100-sxm-80gb", 616.0, "FlashAttention-3 (arXiv 2407.08608) Fig. 5d: causal, head dim 128, 16k"),
        ("b200", 1418.1, "Dao-AILab/flash-attention PR #2280 (FA4): causal, head dim 128, 8k"),
    ],
)
def test_attention_forward_matches_kernel_benchmarks(name: str, tflops: float, source: str) -> None:
    gpu = load_gpu(name)
    achieved = gpu.peak(Dtype.BF16) * gpu.efficiency.attention_forward_fraction
    assert achieved == pytest.approx(tflops * 1e12, rel=0.05), source


@pytest.mark.parametrize(
    ("capped", "full"), [("h100-sxm-95gb-500w", "h100-sxm-80gb"), ("a100-pcie-40gb", "a100-sxm-40gb")]
)
def test_power_capped_parts_are_not_faster(capped: str, full: str) -> None:
    """Same silicon at a lower power limit: no compute fraction may exceed the full-power part's."""
    a, b = load_gpu(capped).efficiency, load_gpu(full).efficiency
    for dtype, value in a.gemm_max_fraction.items():
        assert value <= b.gemm_max_fraction[dtype]
    assert a.attention_forward_fraction <= b.attention_forward_fraction
    assert a.attention_backward_fraction <= b.attention_backward_fraction


def test_h100_and_h800_share_silicon() -> None:
    """H800 is an H100 SXM5 with cut NVLink: identical BF16 GEMM, attention and HBM shares.
    (FP8 differs on purpose: DeepGEMM-class kernels vs cuBLASLt, see the presets.)"""
    h100, h800 = load_gpu("h100-sxm-80gb").efficiency, load_gpu("h800-sxm-80gb").efficiency
    assert h100.gemm_max_fraction[Dtype.BF16] == h800.gemm_max_fraction[Dtype.BF16]
    assert h100.gemm_half_dim == h800.gemm_half_dim
    assert (h100.attention_forward_fraction, h100.attention_backward_fraction, h100.hbm_fraction) == (
        h800.attention_forward_fraction,
        h800.attention_backward_fraction,
        h800.hbm_fraction,
    )
