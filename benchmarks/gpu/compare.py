"""The H100 preset's compute model against the kernels measured on a real H100
(data/hardware/measurements/h100-sxm-80gb-2026-11-24, written by measure.py and sustain.py).
Runs on any machine, from the committed files:

    python benchmarks/gpu/compare.py [--dir DIR] [--gpu h100-sxm-80gb]

Prints, per kernel family, the measured rate, the preset's kernel rate (the efficiency block
alone: what a short benchmark sees) and its in-step rate (times data/costmodel/compute.yaml's
sustained_kernel_fraction), then the reference model's measured step against the simulator.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from planner.costmodel.compute import backward_gemm_rate, gemm_rate  # noqa: E402
from planner.costmodel.ops import compute_constants  # noqa: E402
from planner.presets import load_gpu  # noqa: E402
from planner.specs.hardware import Dtype  # noqa: E402

DEFAULT_DIR = ROOT / "data" / "hardware" / "measurements" / "h100-sxm-80gb-2026-11-24"
SIZE_BUCKETS_GFLOP = (0, 10, 100, 1000, math.inf)


def load(directory: Path) -> dict:
    return {p.stem: json.loads(p.read_text()) for p in sorted(directory.glob("*.json"))}


def aligned(row: dict) -> bool:
    """Every dimension a multiple of 64: the shapes frameworks run (Megatron pads the
    vocabulary to a multiple of 128; cuBLAS runs a dimension like GPT-2's 50,257 at 0.11-0.27
    of peak, which no training step sees)."""
    return all(row[d] % 64 == 0 for d in ("M", "N", "K"))


def gemm_timings(row: dict) -> dict[str, float]:
    """{format: seconds} of one gemm.json row: bf16; fp8 as a training step runs it (fprop
    fast-accumulating, dgrad/wgrad split) and both accumulations."""
    out = {"bf16": row["bf16_s"]}
    if "fp8_fast_s" in row:
        out["fp8_fast"], out["fp8_split"] = row["fp8_fast_s"], row["fp8_split_s"]
    return out


def preset_gemm_rate(gpu, fmt: str, shape) -> float:
    if fmt == "bf16":
        return gemm_rate(gpu, Dtype.BF16, shape)
    return (gemm_rate if fmt == "fp8_fast" else backward_gemm_rate)(gpu, Dtype.FP8, shape)


def gemm_table(data: dict, gpu, sustained: float) -> list[str]:
    lines = ["GEMM (aligned shapes of the Hopper validation rows, 3 layouts each): measured / preset kernel rate",
             f"  {'format':10s} {'GFLOP':>12s} {'n':>4s} {'median':>7s} {'p10':>6s} {'p90':>6s}  (x {sustained} in step)"]
    rows = [r for r in data["gemm"] if aligned(r)]
    for fmt in ("bf16", "fp8_fast", "fp8_split"):
        for lo, hi in zip(SIZE_BUCKETS_GFLOP, SIZE_BUCKETS_GFLOP[1:]):
            ratios = []
            for r in rows:
                flops = 2.0 * r["M"] * r["N"] * r["K"]
                t = gemm_timings(r).get(fmt)
                if t is None or not lo <= flops / 1e9 < hi:
                    continue
                ratios.append(flops / t / preset_gemm_rate(gpu, fmt, (r["M"], r["N"], r["K"])))
            if ratios:
                q = statistics.quantiles(ratios, n=10) if len(ratios) > 1 else [ratios[0]] * 9
                lines.append(f"  {fmt:10s} {f'{lo:g}-{hi:g}':>12s} {len(ratios):4d} {statistics.median(ratios):7.3f} "
                             f"{q[0]:6.3f} {q[-1]:6.3f}")
    return lines


def squares_table(data: dict, gpu) -> list[str]:
    lines = ["Square GEMMs, TFLOP/s: measured (preset kernel rate)"]
    for r in data.get("squares", []):
        n = r["n"]
        flops = 2.0 * n**3
        cells = [f"{fmt} {flops / t / 1e12:5.0f} ({preset_gemm_rate(gpu, fmt, (n, n, n)) / 1e12:5.0f})"
                 for fmt, t in gemm_timings(r).items()]
        lines.append(f"  {n:6d}^3  " + "  ".join(cells))
    return lines


def sustained_table(data: dict, gpu, sustained: float) -> list[str]:
    lines = ["Looped without pause (nvidia-smi under load): first 200 ms chunk, last third, preset in step"]
    eff = gpu.efficiency
    for r in data.get("sustained", []):
        kind = r["kernel"]
        if kind.startswith("gemm"):
            fmt = kind.removeprefix("gemm_")
            preset = preset_gemm_rate(gpu, fmt, tuple(r["shape"]))
        else:  # causal forward + backward, FlashAttention convention: 1 + 2.5 forward units
            ratio = compute_constants()["attention_backward_flops_ratio"]
            peak = gpu.peak(Dtype.BF16)
            preset = (1 + ratio) / (1 / (peak * eff.attention_forward_fraction)
                                    + ratio / (peak * eff.attention_backward_fraction))
        lines.append(f"  {kind:24s} {r['first_chunk_flops_per_s'] / 1e12:6.0f} -> {r['last_third_flops_per_s'] / 1e12:6.0f}"
                     f" TFLOP/s at {r['sm_clock_mhz_last_third']:.0f} MHz, {r['power_w_last_third']:.0f} W;"
                     f" preset {preset / 1e12:5.0f} kernel, {preset * sustained / 1e12:5.0f} in step"
                     f" (measured / in step {r['last_third_flops_per_s'] / (preset * sustained):.3f})")
    return lines


def attention_table(data: dict, gpu) -> list[str]:
    eff = gpu.efficiency
    peak = gpu.peak(Dtype.BF16)
    presets = {"cudnn": (eff.attention_forward_fraction, eff.attention_backward_fraction),
               "flash": tuple(eff.flash_attention_2_fractions or (float("nan"), float("nan")))}
    ratio = compute_constants()["attention_backward_flops_ratio"]
    lines = ["SDPA attention, share of the BF16 peak (sweep: 32k tokens, 32 heads, head dim 128): forward / backward",
             f"  {'backend':9s} {'causal':6s} " + " ".join(f"{s:>11d}" for s in sorted({
                 r['seq'] for r in data['attention'] if r['set'] == 'sweep'})) + "   preset"]
    for backend in ("cudnn", "flash", "efficient"):
        for causal in (True, False):
            cells = [f"{r['forward_flops'] / r['forward_s'] / peak:.3f}/{ratio * r['forward_flops'] / r['backward_s'] / peak:.3f}"
                     for r in data["attention"] if r["set"] == "sweep" and r["backend"] == backend
                     and r["causal"] is causal and "forward_s" in r]
            pre = presets.get(backend)
            tail = f"   {pre[0]:.3f}/{pre[1]:.3f}" if pre and causal else ""
            lines.append(f"  {backend:9s} {causal!s:6s} " + " ".join(f"{c:>11s}" for c in cells) + tail)
    mla = [r for r in data["attention"] if r["qk_dim"] != r["v_dim"] and "forward_s" in r]
    for r in mla:
        lines.append(f"  MLA {r['backend']} b{r['batch']} h{r['heads']} s{r['seq']} qk{r['qk_dim']}/v{r['v_dim']}: "
                     f"{r['forward_flops'] / r['forward_s'] / peak:.3f}/"
                     f"{ratio * r['forward_flops'] / r['backward_s'] / peak:.3f}")
    return lines


def reference_table(data: dict, gpu) -> list[str]:
    from planner.costmodel.simulate import simulate
    from planner.presets import load_cluster, revalidate
    from planner.specs import ModelSpec, Plan, Workload

    dgx = load_cluster("dgx-h100")
    node = revalidate(dgx.node, gpus_per_node=1, scale_up=revalidate(dgx.node.scale_up, domain_gpus=1))
    cluster = revalidate(dgx, num_nodes=1, node=node, gpu=gpu)
    lines = ["Reference model (planner.model.deepseek), one H100, eager PyTorch, fp32 weights + bf16 autocast, fused AdamW"]
    for r in data["reference"]:
        spec = ModelSpec.model_validate(r["spec"])
        plan = Plan.model_validate({"tp": 1, "pp": 1, "dp": 1, "micro_batch_size": r["micro_batch"]})
        workload = Workload.model_validate({"global_batch_size": r["micro_batch"], "seq_length": r["seq_len"],
                                            "precision": "bf16"})
        report = simulate(spec, cluster, plan, workload)
        lines.append(f"  {r['label']:16s} {r['parameters'] / 1e9:.2f}B params, {r['micro_batch']} x {r['seq_len']} tokens: "
                     f"measured {r['median_step_s'] * 1e3:6.1f} ms, {r['peak_allocated_bytes'] / 2**30:5.1f} GiB; "
                     f"simulated {report.step_time_s * 1e3:6.1f} ms, {report.memory_peak_bytes / 2**30:5.1f} GiB")
    for key in sorted(k for k in data if k.startswith("profile")):
        lines += _profile_lines(data[key], gpu, cluster)
    return lines


def modelled_by_kind(spec, plan, workload, gpu) -> dict[str, float]:
    """The compute model's seconds per step by op kind (gemm, attention, memory) for a
    one-GPU plan of a dense model: embedding, every block, head; one micro-batch."""
    from planner.costmodel.compute import piece_time
    from planner.costmodel.ops import piece_ops
    from planner.costmodel.partition import Piece

    modelled: dict[str, float] = {}
    for piece, count in ((Piece.EMBEDDING, 1), (Piece.DENSE, spec.num_layers), (Piece.HEAD, 1)):
        for op in piece_ops(spec, plan, workload, piece):
            t = piece_time((op,), gpu, workload.precision, plan.recompute)
            kind = op.kind.value
            modelled[kind] = modelled.get(kind, 0.0) + count * (t.forward_s + t.backward_input_s + t.backward_weight_s)
    return modelled


def measured_by_kind(by_kind: dict[str, float], top: list) -> dict[str, float]:
    """A profile's kernel seconds by kind; torch.profiler also books the optimizer's CPU-side
    annotation as device time, so the optimizer counts its kernels only."""
    out = dict(by_kind)
    out["memory"] = out.pop("other", 0.0)
    out["optimizer"] = sum(t for name, t, _ in top if "multi_tensor_apply" in name)
    return out


def _profile_lines(prof: dict, gpu, cluster) -> list[str]:
    from planner.costmodel.simulate import simulate
    from planner.specs import ModelSpec, Plan, Workload

    spec = ModelSpec.model_validate(prof["spec"])
    plan = Plan.model_validate({"tp": 1, "pp": 1, "dp": 1, "micro_batch_size": prof["micro_batch"]})
    fp8 = {"precision": "fp8", "fp8_implementation": "torchao"} if prof.get("fp8") else {"precision": "bf16"}
    workload = Workload.model_validate({"global_batch_size": prof["micro_batch"], "seq_length": prof["seq_len"], **fp8})
    report = simulate(spec, cluster, plan, workload)
    modelled = modelled_by_kind(spec, plan, workload, gpu)
    modelled["optimizer"] = report.breakdown.optimizer_s
    eager = measured_by_kind(prof["kernel_s_by_kind"], prof["top_kernels"])
    compiled = measured_by_kind(prof["compiled_kernel_s_by_kind"], prof["compiled_top_kernels"])
    step = statistics.median(prof["compiled_step_s"])
    label = prof["label"] + (f" torchao float8 {prof['fp8']}" if prof.get("fp8") else "")
    lines = [f"  {label} ({spec.num_layers} layers, d {spec.hidden_size}, {prof['micro_batch']} x {prof['seq_len']}"
             f" tokens): eager {statistics.median(prof['eager_wall_s']) * 1e3:.1f} ms, torch.compile {step * 1e3:.1f} ms;"
             f" simulated {report.step_time_s * 1e3:.1f} ms ({report.step_time_s / step - 1:+.1%} against compiled);"
             f" peak memory eager {prof['eager_peak_allocated_bytes'] / 2**30:.1f} GiB, simulated"
             f" {report.memory_peak_bytes / 2**30:.1f} GiB",
             "    kernel ms per step  eager  compiled  simulated"]
    for kind in ("gemm", "attention", "memory", "optimizer"):
        lines.append(f"    {kind:18s} {eager.get(kind, 0.0) * 1e3:6.1f} {compiled.get(kind, 0.0) * 1e3:9.1f}"
                     f" {modelled.get(kind, 0.0) * 1e3:10.1f}")
    return lines


def stream_table(data: dict, gpu) -> list[str]:
    lines = ["Small GEMMs back to back (32 weights, as a MoE layer issues them), microseconds each:"
             " alone (L2 flushed) / in sequence eager / in sequence CUDA graph / preset kernel time"]
    for r in data.get("stream", []):
        shape = (r["m"], r["n"], r["k"])
        preset = 2.0 * r["m"] * r["n"] * r["k"] / gemm_rate(gpu, Dtype.BF16, shape)
        lines.append(f"  {r['m']:5d} x {r['n']:5d} x {r['k']:5d}: {r['single_flushed_s'] * 1e6:6.1f} "
                     f"{r['eager_in_sequence_s'] * 1e6:6.1f} {r['graph_in_sequence_s'] * 1e6:6.1f} {preset * 1e6:6.1f}")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", type=Path, default=DEFAULT_DIR)
    ap.add_argument("--gpu", default="h100-sxm-80gb")
    args = ap.parse_args()
    data = load(args.dir)
    gpu = load_gpu(args.gpu)
    sustained = compute_constants()["sustained_kernel_fraction"]
    env = data["env"]
    hbm = data["hbm"]["bytes_per_s"]
    preset_hbm = gpu.hbm_bandwidth_bytes_per_s * gpu.efficiency.hbm_fraction
    blocks = [
        [f"{env['device']}, torch {env['torch']}, CUDA {env['cuda_runtime']}, cuDNN {env['cudnn']}; clocks {env['clocks']}",
         f"HBM copy {hbm / 1e12:.3f} TB/s; preset {preset_hbm / 1e12:.3f} TB/s (measured / preset {hbm / preset_hbm:.3f})"],
        gemm_table(data, gpu, sustained), squares_table(data, gpu), stream_table(data, gpu),
        sustained_table(data, gpu, sustained),
        attention_table(data, gpu), reference_table(data, gpu),
    ]
    print("\n\n".join("\n".join(b) for b in blocks))


if __name__ == "__main__":
    main()
