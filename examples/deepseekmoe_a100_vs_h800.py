"""DeepSeekMoE-16B on Fire-Flyer 2 (PCIe A100-40GB, one 200 Gb/s NIC per node) vs H800 nodes.

Sweeps the cluster (``fire-flyer-2`` and ``deepseek-v3-h800``) and the GPU count, keeping the
Fire-Flyer paper's scaling-test plan (pp=10, data parallel over the rest, DP = GPUs / 10;
global batch 4608 x 4096 tokens, BF16, full recomputation so the 40 GB A100 fits) and reports
the step time, tokens/s per GPU, MFU and the cost of a trillion tokens in GPU-hours:

    GPU-hours per 1e12 tokens = num_gpus x step_time_s / 3600 x 1e12 / tokens_per_step

Run: ``python examples/deepseekmoe_a100_vs_h800.py [--small] [--out DIR]``.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import pandas as pd  # noqa: E402
from _common import parse_args, print_table, write_csv  # noqa: E402

import planner  # noqa: E402

NAME = "deepseekmoe_a100_vs_h800"
PP = 10


def main(small: bool = False, out: str | Path | None = None) -> pd.DataFrame:
    base = {
        "model": "deepseekmoe-16b",
        "cluster": "fire-flyer-2",
        "plan": {"pp": PP, "dp": 4, "recompute": "full"},
        "workload": {"global_batch_size": 4608, "seq_length": 4096, "precision": "bf16"},
    }
    grid = {
        "cluster": ["fire-flyer-2", "deepseek-v3-h800"],
        "cluster.num_gpus": [320] if small else [40, 160, 320, 640],
    }
    df = planner.sweep(base, grid, derive=lambda p: {"plan.dp": p.cluster.num_gpus // (p.plan.tp * p.plan.pp)})
    df["gpu_hours_per_1e12_tokens"] = df["num_gpus"] * df["step_time_s"] / 3600 * 1e12 / df["tokens_per_step"]
    df = df.rename(columns={"cluster": "cluster_preset"})
    path = write_csv(df, NAME, out)
    print_table(
        df,
        {"cluster_preset": "cluster", "num_gpus": "GPUs", "plan.dp": "dp", "status": "status",
         "step_time_s": "step s", "tokens_per_s_per_gpu": "tok/s/GPU", "mfu_causal": "MFU",
         "memory_peak_gib": "peak GiB", "gpu_hours_per_1e12_tokens": "GPU-h per 1e12 tok"},
        "DeepSeekMoE-16B: Fire-Flyer PCIe A100 vs H800 (pp=10, global batch 4608 x 4096)",
    )
    print(f"wrote {path}")
    return df


if __name__ == "__main__":
    args = parse_args(__doc__)
    main(small=args.small, out=args.out)
