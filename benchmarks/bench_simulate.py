"""Speed of one full simulation (issue #5 target: DeepSeek-V3's plan, 120 micro-batches x
16 stages, event simulation, < 50 ms), cold (first call: collective shapes uncached) and
warm (median of repeated calls).

Run: .venv/bin/python benchmarks/bench_simulate.py
"""

from __future__ import annotations

import statistics
import time

from planner import load_cluster, load_model
from planner.costmodel.simulate import simulate
from planner.specs import Plan, Workload

CASES = {
    "deepseek-v3 / 2048 H800 / PP16 DualPipe EP64": (
        "deepseek-v3", "deepseek-v3-h800", 2048,
        Plan(pp=16, ep=64, dp=128, zero_stage=1, recompute="selective", pipeline_schedule="dualpipe"),
        Workload(global_batch_size=15360, seq_length=4096, precision="fp8", adam_moment_dtype="bf16", moe_dispatch_dtype="fp8"),
    ),
    "gpt3-175b / 1024 A100 / TP8 PP8 interleaved": (
        "gpt3-175b", "dgx-a100", 1024,
        Plan(tp=8, pp=8, vpp=3, dp=16, sequence_parallel=True, recompute="selective",
             pipeline_schedule="interleaved"),
        Workload(global_batch_size=1536, seq_length=2048),
    ),
}


def main() -> None:
    for label, (model_name, cluster_name, gpus, plan, workload) in CASES.items():
        model, cluster = load_model(model_name), load_cluster(cluster_name, num_gpus=gpus)
        start = time.perf_counter()
        report = simulate(model, cluster, plan, workload)
        cold_ms = (time.perf_counter() - start) * 1e3
        warm = []
        for _ in range(20):
            start = time.perf_counter()
            simulate(model, cluster, plan, workload)
            warm.append((time.perf_counter() - start) * 1e3)
        print(f"{label}: step {report.step_time_s:.3f} s; simulate cold {cold_ms:.1f} ms, "
              f"warm median {statistics.median(warm):.1f} ms (min {min(warm):.1f})")


if __name__ == "__main__":
    main()
