"""DeepSeek-V3 step time against inter-node bandwidth: what if each GPU's IB NIC were x0.5 ... x4?

DeepSeek-V3's published plan on its 2,048-H800 cluster (pp=16 DualPipe, ep=64, dp=128,
ZeRO-1, selective recomputation, FP8 GEMMs, global batch 15360 x 4096) with every NIC's
``nic_bandwidth_bytes_per_s`` scaled (400 Gb/s x 0.5, 1, 2, 4). The breakdown shows where the
time goes: DualPipe hides the expert all-to-all behind compute once the links are fast enough,
so the step time saturates; slower links expose it in the warm-up/cool-down phases and bubbles.

Run: ``python examples/deepseek_v3_bandwidth.py [--small] [--out DIR]``.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import pandas as pd  # noqa: E402
from _common import parse_args, print_table, write_csv  # noqa: E402

import planner  # noqa: E402

NAME = "deepseek_v3_bandwidth"


def main(small: bool = False, out: str | Path | None = None) -> pd.DataFrame:
    cluster = planner.load_cluster("deepseek-v3-h800")
    nic = cluster.node.nic_bandwidth_bytes_per_s
    factors = [0.5, 1.0] if small else [0.5, 1.0, 2.0, 4.0]
    base = planner.SweepBase(
        model=planner.load_model("deepseek-v3"),
        cluster=cluster,
        plan=planner.Plan(pp=16, ep=64, dp=128, zero_stage=1, recompute="selective",
                          pipeline_schedule="dualpipe"),
        workload=planner.Workload(global_batch_size=15360, seq_length=4096, precision="fp8", adam_moment_dtype="bf16",
                                  moe_dispatch_dtype="fp8", moe_routing="real"),
    )
    df = planner.sweep(base, {"cluster.node.nic_bandwidth_bytes_per_s": [nic * f for f in factors]})
    df.insert(0, "nic_scale", factors)
    df.insert(1, "nic_gbit_per_s", df["cluster.node.nic_bandwidth_bytes_per_s"] * 8 / 1e9)
    baseline = df.loc[df["nic_scale"] == 1.0, "step_time_s"].iloc[0]
    df["step_time_vs_x1"] = df["step_time_s"] / baseline
    path = write_csv(df, NAME, out)
    print_table(
        df,
        {"nic_scale": "NIC x", "nic_gbit_per_s": "Gb/s per GPU", "status": "status", "step_time_s": "step s",
         "step_time_vs_x1": "vs x1", "mfu_causal": "MFU", "overlapped_fb_s": "F&B s", "forward_s": "F s",
         "backward_input_s": "B s", "bubble_s": "bubble s", "dp_exposed_s": "DP exposed s",
         "comm_hidden_ep_s": "EP hidden s", "comm_hidden_pp_s": "PP hidden s"},
        "DeepSeek-V3 on 2,048 H800: step time vs inter-node (IB) bandwidth per GPU",
    )
    print(f"wrote {path}")
    return df


if __name__ == "__main__":
    args = parse_args(__doc__)
    main(small=args.small, out=args.out)
