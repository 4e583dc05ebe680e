"""The h100-sxm-80gb preset against kernels and a training step measured on a real H100
(data/hardware/measurements/h100-sxm-80gb-2026-11-24: benchmarks/gpu/measure.py and
sustain.py on one H100 80GB HBM3, PyTorch 2.11, cuDNN 9.19; method in its README). The
preset's figures come from the literature; these tests hold them to the measurement."""

from __future__ import annotations

import json
import math
import statistics

import pytest

from planner.costmodel.compute import attention_rates, backward_gemm_rate, gemm_rate, piece_time
from planner.costmodel.ops import compute_constants, piece_ops
from planner.costmodel.partition import Piece
from planner.presets import data_root, load_cluster, load_gpu, revalidate
from planner.specs import ModelSpec, Plan, Workload
from planner.specs.hardware import Dtype

MEASURED = data_root() / "hardware" / "measurements" / "h100-sxm-80gb-2026-11-24"
GPU = load_gpu("h100-sxm-80gb")
SUSTAINED = compute_constants()["sustained_kernel_fraction"]


def _load(name: str):
    return json.loads((MEASURED / f"{name}.json").read_text())


def _sustained(kernel: str) -> dict:
    return next(r for r in _load("sustained") if r["kernel"] == kernel)


def test_hbm_copy_matches_the_preset_bandwidth() -> None:
    """hbm.json: 2 GiB device-to-device copy, 3.02 TB/s; preset 3.35 TB/s x 0.89. Within 5%."""
    measured = _load("hbm")["bytes_per_s"]
    preset = GPU.hbm_bandwidth_bytes_per_s * GPU.efficiency.hbm_fraction
    assert measured == pytest.approx(preset, rel=0.05)


def test_bf16_in_step_rate_is_the_sustained_power_limited_rate() -> None:
    """sustained.json: BF16 8192 x 28672 x 8192 looped for 12 s at the 700 W limit (SM clock
    1320 MHz) sustains 690 TFLOP/s; the preset's kernel rate times the fitted
    sustained_kernel_fraction gives 688. Within 5%; the kernel rate alone (809) is not."""
    row = _sustained("gemm_bf16")
    kernel = gemm_rate(GPU, Dtype.BF16, tuple(row["shape"]))
    assert row["last_third_flops_per_s"] == pytest.approx(kernel * SUSTAINED, rel=0.05)
    assert row["last_third_flops_per_s"] < 0.9 * kernel


def test_fp8_in_step_rates_are_not_above_the_measured_sustained_ones() -> None:
    """sustained.json: FP8 sustains 1311 (fast accumulation) and 1230 TFLOP/s (split); the
    preset's in-step rates are 13-16% below: conservative, never optimistic, and within 25%."""
    for kernel, rate in (("gemm_fp8_fast", gemm_rate), ("gemm_fp8_split", backward_gemm_rate)):
        row = _sustained(kernel)
        in_step = rate(GPU, Dtype.FP8, tuple(row["shape"])) * SUSTAINED
        assert 0.75 * row["last_third_flops_per_s"] < in_step <= row["last_third_flops_per_s"]


def test_split_accumulation_fraction_is_the_measured_one() -> None:
    """gemm.json: over every FP8 timing (108 shapes x 3 layouts) the fast-accumulating GEMM over
    the split-accumulating one has a median of 0.949; the preset's fraction within 0.01."""
    ratios = [r["fp8_fast_s"] / r["fp8_split_s"] for r in _load("gemm") if "fp8_fast_s" in r]
    assert len(ratios) >= 300
    assert GPU.efficiency.fp8_split_accumulation_fraction == pytest.approx(statistics.median(ratios), abs=0.01)


def test_large_bf16_gemms_of_the_validation_rows_run_near_the_in_step_rate() -> None:
    """gemm.json, aligned shapes over 1 TFLOP (the bulk of a large model's GEMM time): their
    median measured rate over the preset's in-step rate within 5% of 1 (today 1.008)."""
    ratios = []
    for r in _load("gemm"):
        shape = (r["M"], r["N"], r["K"])
        flops = 2.0 * r["M"] * r["N"] * r["K"]
        if flops > 1e12 and all(x % 64 == 0 for x in shape):
            ratios.append(flops / r["bf16_s"] / (gemm_rate(GPU, Dtype.BF16, shape) * SUSTAINED))
    assert len(ratios) > 100
    assert statistics.median(ratios) == pytest.approx(1.0, abs=0.05)


def test_cudnn_attention_forward_plus_backward_matches_the_preset() -> None:
    """attention.json, cuDNN, causal, 8 x 32 heads x 4096 x 128 (SDPA's Hopper backend in
    PyTorch 2.11): forward + backward 503 TFLOP/s measured; the preset's fractions (0.545 /
    0.495, the FA3 paper's cuDNN figures) give 503. Within 5%."""
    row = next(r for r in _load("attention") if r["set"] == "sweep" and r["backend"] == "cudnn"
               and r["causal"] and r["seq"] == 4096)
    ratio = compute_constants()["attention_backward_flops_ratio"]
    measured = (1 + ratio) * row["forward_flops"] / (row["forward_s"] + row["backward_s"])
    eff, peak = GPU.efficiency, GPU.peak(Dtype.BF16)
    preset = (1 + ratio) / (1 / (peak * eff.attention_forward_fraction) + ratio / (peak * eff.attention_backward_fraction))
    assert measured == pytest.approx(preset, rel=0.05)


def _causal_d128(backend: str) -> list[dict]:
    return [r for r in _load("attention") if r["backend"] == backend and r["causal"] and r["qk_dim"] == 128
            and r["v_dim"] == 128 and "forward_s" in r]


@pytest.mark.parametrize("backend", ["cudnn", "flash"])
def test_attention_shape_curve_follows_the_measured_rates(backend: str) -> None:
    """attention.json, causal head dim 128, the 29 shapes (1-32 sequences x 8-40 heads x
    1k-128k tokens), cuDNN (fitted) and SDPA's FlashAttention-2 (the same curve, not refitted):
    measured rate over the preset's (attention_rates: the fractions scaled by the shape curve,
    capped at the reference) has a log spread (standard deviation) within 7% (today cuDNN 5.0%
    forward, 4.1% backward; FA2 5.8%, 5.4%); without the curve it is 12-19%."""
    from planner.costmodel.ops import ATTENTION_TILE_ROWS, Op, OpKind

    ratio = compute_constants()["attention_backward_flops_ratio"]
    eff = GPU.efficiency if backend == "cudnn" else GPU.efficiency.with_flash_attention_2()
    for shape, limit in ((eff.attention_shape, 0.07), (None, 0.20)):
        gpu = revalidate(GPU, efficiency=revalidate(eff, attention_shape=shape))
        logs: list[list[float]] = [[], []]
        for r in _causal_d128(backend):
            tiles = r["batch"] * r["heads"] * r["seq"] / ATTENTION_TILE_ROWS
            op = Op("core_attention", OpKind.ATTENTION, flops=r["forward_flops"], attention_shape=(tiles, r["seq"]))
            forward, backward = attention_rates(gpu, op)
            logs[0].append(math.log(r["forward_flops"] / r["forward_s"] / forward))
            logs[1].append(math.log(ratio * r["forward_flops"] / r["backward_s"] / backward))
        spreads = [statistics.pstdev(v) for v in logs]
        assert (all(x < limit for x in spreads) if shape else any(x > 0.10 for x in spreads)), spreads


def test_attention_shape_only_lowers_and_is_one_at_the_reference() -> None:
    """At the reference shape (2048 tiles, 16k) the fractions hold; 512 tiles at 8k (one tp-8
    rank of Llama-3-70B) run at about 0.82 of them; larger or longer launches never above."""
    from planner.costmodel.ops import Op, OpKind

    peak, eff = GPU.peak(Dtype.BF16), GPU.efficiency
    base = (peak * eff.attention_forward_fraction, peak * eff.attention_backward_fraction)

    def rates(tiles, seq):
        return attention_rates(GPU, Op("core_attention", OpKind.ATTENTION, flops=1.0, attention_shape=(tiles, seq)))

    assert rates(2048, 16384) == pytest.approx(base, rel=1e-12)
    small = rates(512, 8192)
    assert [s / b for s, b in zip(small, base)] == pytest.approx([0.82, 0.82], abs=0.02)
    assert rates(65536, 131072) == pytest.approx(base, rel=1e-12)
    other = load_gpu("a100-sxm-80gb")  # no measured curve: fractions for every shape
    op = Op("core_attention", OpKind.ATTENTION, flops=1.0, attention_shape=(64, 1024))
    assert attention_rates(other, op) == pytest.approx(
        (other.peak(Dtype.BF16) * other.efficiency.attention_forward_fraction,
         other.peak(Dtype.BF16) * other.efficiency.attention_backward_fraction))


def test_flash_attention_2_fractions_match_the_long_sequence_measurement() -> None:
    """attention.json, SDPA's flash backend (FlashAttention-2), causal, 16k tokens: 0.325 /
    0.314 of peak; the preset's 0.339 / 0.309 (FA3 paper, 16k) within 10% each."""
    row = next(r for r in _load("attention") if r["set"] == "sweep" and r["backend"] == "flash"
               and r["causal"] and r["seq"] == 16384)
    peak = GPU.peak(Dtype.BF16)
    fwd, bwd = GPU.efficiency.flash_attention_2_fractions
    ratio = compute_constants()["attention_backward_flops_ratio"]
    assert row["forward_flops"] / row["forward_s"] / peak == pytest.approx(fwd, rel=0.10)
    assert ratio * row["forward_flops"] / row["backward_s"] / peak == pytest.approx(bwd, rel=0.10)


PROFILES = {
    # profile file: GEMM tolerance (FP8 GEMMs: the preset is conservative, see the sustained test)
    "profile": 0.20, "profile-llama3-8b-6l": 0.20, "profile-llama3-8b-6l-fp8-tensorwise": 0.30,
    "profile-llama3-70b-tp8-8l": 0.20, "profile-llama3-70b-tp8-8l-fp8-tensorwise": 0.35,
}


@pytest.mark.parametrize("name", sorted(PROFILES))
def test_reference_step_on_one_h100(name: str) -> None:
    """profile*.json: the reference model training on one H100 (fp32 weights, bf16 autocast,
    fused AdamW), the whole loss under torch.compile so that element-wise work is fused as
    the simulator prices it. dense-0.9b (16 layers, d 2048, 2 x 4096 tokens): 112.6 ms
    measured, 108.5 simulated; llama3-8b-6l (Llama-3-8B's block x 6, 1 x 8192 tokens): 197.1
    ms, 201.7 simulated; the same with torchao float8 (tensorwise, every Linear but the head;
    Workload.fp8_implementation torchao): 182.9 ms, 192.3 simulated; one tp-8 rank of
    Llama-3-70B (8 of its layers, 1 x 8192 tokens, no collectives): 114.8 ms, 107.6 simulated,
    and in float8 103.6 ms, 105.5 simulated. Step within 10%; the compiled step's attention and
    optimizer kernel time each within 20% of the compute model's (today 12% at most), its GEMM
    time within 20% (BF16; today 10% at most) or 30-35% (FP8: 98.7 modelled against 78.8
    measured, 50.2 against 38.9); peak memory of the eager step within 10% of the simulated
    (today 8% at most)."""
    from planner.costmodel.simulate import simulate

    prof = _load(name)
    spec = ModelSpec.model_validate(prof["spec"])
    plan = Plan.model_validate({"tp": 1, "pp": 1, "dp": 1, "micro_batch_size": prof["micro_batch"]})
    fp8 = {"precision": "fp8", "fp8_implementation": "torchao"} if prof.get("fp8") else {"precision": "bf16"}
    workload = Workload.model_validate({"global_batch_size": prof["micro_batch"], "seq_length": prof["seq_len"], **fp8})
    dgx = load_cluster("dgx-h100")
    node = revalidate(dgx.node, gpus_per_node=1, scale_up=revalidate(dgx.node.scale_up, domain_gpus=1))
    report = simulate(spec, revalidate(dgx, num_nodes=1, node=node), plan, workload)
    assert report.step_time_s == pytest.approx(statistics.median(prof["compiled_step_s"]), rel=0.10)
    assert report.memory_peak_bytes == pytest.approx(prof["eager_peak_allocated_bytes"], rel=0.10)

    modelled: dict[str, float] = {"optimizer": report.breakdown.optimizer_s}
    for piece, count in ((Piece.EMBEDDING, 1), (Piece.DENSE, spec.num_layers), (Piece.HEAD, 1)):
        for op in piece_ops(spec, plan, workload, piece):
            t = piece_time((op,), GPU, workload.precision, plan.recompute)
            modelled[op.kind.value] = modelled.get(op.kind.value, 0.0) + count * (
                t.forward_s + t.backward_input_s + t.backward_weight_s)
    measured = dict(prof["compiled_kernel_s_by_kind"])
    # torch.profiler also books the optimizer's CPU-side annotation as device time: its kernels only.
    measured["optimizer"] = sum(t for kernel, t, _ in prof["compiled_top_kernels"] if "multi_tensor_apply" in kernel)
    for kind in ("attention", "optimizer"):
        assert modelled[kind] == pytest.approx(measured[kind], rel=0.20), kind
    assert modelled["gemm"] == pytest.approx(measured["gemm"], rel=PROFILES[name])


def test_presets_hold_what_the_fit_script_derives() -> None:
    """benchmarks/gpu/fit.py, the procedure behind the measured constants, run on the committed
    measurement: the H100 preset's attention_shape, its FP8 split-accumulation fraction and
    compute.yaml's torchao cast share are what it prints (rounded as stored)."""
    import importlib.util

    from planner.presets import data_root as root

    path = root().parent / "benchmarks" / "gpu" / "fit.py"
    if not path.exists():  # an installed wheel carries data, not benchmarks
        pytest.skip("benchmarks/gpu/fit.py is not in this tree")
    spec = importlib.util.spec_from_file_location("gpu_fit", path)
    fit = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fit)
    shape = fit.attention_shape(MEASURED, GPU.peak(Dtype.BF16), GPU.num_sms)
    preset = GPU.efficiency.attention_shape
    assert preset.half_tiles_per_sm == (shape["forward"]["half_tiles_per_sm"], shape["backward"]["half_tiles_per_sm"])
    assert preset.half_seq == (shape["forward"]["half_seq"], shape["backward"]["half_seq"])
    assert (preset.min_tiles, preset.min_seq) == (shape["min_tiles"], shape["min_seq"])
    assert GPU.efficiency.fp8_split_accumulation_fraction == pytest.approx(
        fit.split_accumulation(MEASURED)["fraction"], abs=0.005)
    hbm = GPU.hbm_bandwidth_bytes_per_s * GPU.efficiency.hbm_fraction
    assert compute_constants()["fp8_torchao_cast_hbm_share"] == pytest.approx(
        fit.torchao_share(MEASURED, hbm)["share"], abs=0.005)
