"""Weak-to-strong scaling of a dense 70B model from 256 to 16,384 H100 GPUs.

Llama-3-70B on DGX H100 nodes at a fixed global batch of 2048 x 8192 tokens (16M tokens),
with a fixed plan shape: tp=8 (one node), pp=4 or 8, dp = GPUs / (tp x pp), ZeRO-1,
sequence parallelism, selective recomputation, 1F1B. As the GPU count grows, each pipeline
gets fewer micro-batches (global batch / dp), so the pipeline bubble and the exposed DP
gradient reduction take a growing share of the step: tokens/s per GPU falls. Scaling
efficiency = tokens/s per GPU relative to the 256-GPU run of the same pp.

Run: ``python examples/llama70b_scaling.py [--small] [--out DIR]``.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import pandas as pd  # noqa: E402
from _common import parse_args, print_table, write_csv  # noqa: E402

import planner  # noqa: E402

NAME = "llama70b_scaling"


def main(small: bool = False, out: str | Path | None = None) -> pd.DataFrame:
    base = {
        "model": "llama3-70b",
        "cluster": "dgx-h100",
        "plan": {"tp": 8, "pp": 4, "dp": 8, "zero_stage": 1, "sequence_parallel": True,
                 "recompute": "selective"},
        "workload": {"global_batch_size": 2048, "seq_length": 8192, "precision": "bf16"},
    }
    gpus = [256, 2048, 16384] if small else [256, 512, 1024, 2048, 4096, 8192, 16384]
    grid = {"plan.pp": [4] if small else [4, 8], "cluster.num_gpus": gpus}
    df = planner.sweep(base, grid, derive=lambda p: {"plan.dp": p.cluster.num_gpus // (p.plan.tp * p.plan.pp)})
    first = df.groupby("plan.pp")["tokens_per_s_per_gpu"].transform("first")
    df["scaling_efficiency"] = df["tokens_per_s_per_gpu"] / first
    df["bubble_share"] = df["bubble_s"] / df["step_time_s"]
    path = write_csv(df, NAME, out)
    print_table(
        df,
        {"plan.pp": "pp", "num_gpus": "GPUs", "plan.dp": "dp", "num_microbatches": "micro-batches",
         "status": "status", "step_time_s": "step s", "tokens_per_s_per_gpu": "tok/s/GPU",
         "scaling_efficiency": "efficiency", "mfu_causal": "MFU", "bubble_share": "bubble share",
         "dp_exposed_s": "DP exposed s", "memory_peak_gib": "peak GiB"},
        "Llama-3-70B on DGX H100, global batch 2048 x 8192: tp=8, dp = GPUs / (8 pp)",
    )
    print(f"wrote {path}")
    return df


if __name__ == "__main__":
    args = parse_args(__doc__)
    main(small=args.small, out=args.out)
