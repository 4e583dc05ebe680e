"""Fit the GPU preset's measured constants from a measurement folder (measure.py, sustain.py):
the numbers data/hardware/gpus/*.yaml and data/costmodel/compute.yaml take from it, with the
procedure that gave them, so that a measurement of another GPU gives its own.

    python benchmarks/gpu/fit.py [--dir DIR] [--gpu h100-sxm-80gb]

- ``attention_shape``: per direction, least squares in log space of rate = R t/(t + t_half)
  s/(s + s_half) over the causal head-dim-128 cuDNN shapes of attention.json (t = query
  tiles of 128 rows per launch, s = sequence), on a grid (t_half 0..1200 by 10, s_half
  0..3000 by 25); t_half is printed per SM as the preset stores it;
- ``fp8_split_accumulation_fraction``: median over gemm.json's FP8 timings of the
  fast-accumulating time over the split-accumulating one;
- ``fp8_torchao_cast_hbm_share``: from the llama3-8b-6l profiles (BF16 and torchao float8),
  torchao's roofline bytes of the measured configuration (fp32 weights: 4-byte reads) at the
  preset's HBM rate over the FP8 step's extra element-wise kernel time plus the BF16 weight
  casts it no longer runs.
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

from planner.costmodel.ops import ATTENTION_TILE_ROWS, OpKind, compute_constants, piece_ops  # noqa: E402
from planner.costmodel.partition import Piece  # noqa: E402
from planner.presets import load_gpu  # noqa: E402
from planner.specs import ModelSpec, Plan, Workload  # noqa: E402
from planner.specs.hardware import Dtype  # noqa: E402

DEFAULT_DIR = ROOT / "data" / "hardware" / "measurements" / "h100-sxm-80gb-2026-11-24"
FP32_WEIGHT_BYTES = 4.0 + (4.0 + 1.0) + (4.0 + 1.0)
"""torchao's roofline per weight element (roofline_utils.py, tensorwise: amax read, forward
cast, backward cast) with the weight read as fp32, as the measured run kept it under bf16
autocast (compute.yaml's fp8_torchao_weight_* count BF16 weights, as TorchTitan's FSDP runs)."""
AUTOCAST_WEIGHT_CAST_BYTES = 4.0 + 2.0
"""BF16 autocast's weight copy per element and forward (read fp32, write bf16)."""


def _load(directory: Path, name: str):
    return json.loads((directory / f"{name}.json").read_text())


def attention_shape(directory: Path, peak: float, sms: int) -> dict:
    rows = [r for r in _load(directory, "attention") if r["backend"] == "cudnn" and r["causal"]
            and r["qk_dim"] == 128 and r["v_dim"] == 128 and "forward_s" in r]
    data = [(r["batch"] * r["heads"] * r["seq"] / ATTENTION_TILE_ROWS, r["seq"],
             r["forward_flops"] / r["forward_s"] / peak, 2.5 * r["forward_flops"] / r["backward_s"] / peak)
            for r in rows]
    out = {"shapes": len(data), "min_tiles": min(d[0] for d in data), "min_seq": min(d[1] for d in data)}
    for name, idx in (("forward", 2), ("backward", 3)):
        best = None
        for t_half in range(0, 1201, 10):
            for s_half in range(0, 3001, 25):
                logs = [math.log(d[idx]) - math.log(d[0] / (d[0] + t_half)) - math.log(d[1] / (d[1] + s_half))
                        for d in data]
                mean = statistics.fmean(logs)
                rms = math.sqrt(statistics.fmean([(v - mean) ** 2 for v in logs]))
                if best is None or rms < best[2]:
                    best = (t_half, s_half, rms)
        out[name] = {"half_tiles_per_sm": round(best[0] / sms, 2), "half_seq": best[1], "log_rms": round(best[2], 4)}
    return out


def split_accumulation(directory: Path) -> dict:
    ratios = [r["fp8_fast_s"] / r["fp8_split_s"] for r in _load(directory, "gemm") if "fp8_fast_s" in r]
    return {"timings": len(ratios), "fraction": round(statistics.median(ratios), 3)}


def torchao_share(directory: Path, hbm_bytes_per_s: float) -> dict:
    bf16, fp8 = _load(directory, "profile-llama3-8b-6l"), _load(directory, "profile-llama3-8b-6l-fp8-tensorwise")
    spec = ModelSpec.model_validate(fp8["spec"])
    plan = Plan.model_validate({"tp": 1, "pp": 1, "dp": 1, "micro_batch_size": fp8["micro_batch"]})
    workload = Workload.model_validate({"global_batch_size": fp8["micro_batch"], "seq_length": fp8["seq_len"],
                                        "precision": "fp8"})
    c = compute_constants()
    gemms = [op for op in piece_ops(spec, plan, workload, Piece.DENSE) if op.kind is OpKind.GEMM and op.fp8]
    per_layer = sum(op.shape[0] * op.shape[2] * c["fp8_torchao_input_bytes"]
                    + op.shape[0] * op.shape[1] * c["fp8_torchao_grad_output_bytes"]
                    + op.shape[1] * op.shape[2] * FP32_WEIGHT_BYTES for op in gemms)
    weights = sum(op.shape[1] * op.shape[2] for op in gemms) * spec.num_layers
    roofline_s = per_layer * spec.num_layers / hbm_bytes_per_s
    measured_s = (fp8["compiled_kernel_s_by_kind"]["other"] - bf16["compiled_kernel_s_by_kind"]["other"]
                  + weights * AUTOCAST_WEIGHT_CAST_BYTES / hbm_bytes_per_s)
    return {"roofline_ms": round(roofline_s * 1e3, 2), "measured_ms": round(measured_s * 1e3, 2),
            "share": round(roofline_s / measured_s, 3)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", type=Path, default=DEFAULT_DIR)
    ap.add_argument("--gpu", default="h100-sxm-80gb", help="preset whose peak, SM count and HBM rate the fit uses")
    args = ap.parse_args()
    gpu = load_gpu(args.gpu)
    hbm = gpu.hbm_bandwidth_bytes_per_s * gpu.efficiency.hbm_fraction
    result = {"attention_shape": attention_shape(args.dir, gpu.peak(Dtype.BF16), gpu.num_sms),
              "fp8_split_accumulation": split_accumulation(args.dir)}
    if (args.dir / "profile-llama3-8b-6l-fp8-tensorwise.json").exists():
        result["fp8_torchao_cast_hbm_share"] = torchao_share(args.dir, hbm)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
