"""Time the plan search: pruned vs exhaustive on a mid-size instance, and DeepSeek-V3 on
2048 H800 in a bounded space, compared with DeepSeek's published configuration.

    .venv/bin/python benchmarks/bench_search.py [--skip-exhaustive] [--skip-v3]
"""

from __future__ import annotations

import argparse
import time

from planner.costmodel.simulate import simulate
from planner.presets import load_cluster, load_model
from planner.search import Constraints, SearchResult, plan
from planner.specs import Plan, Workload
from planner.specs.plan import PipelineSchedule, Precision, Recompute, ZeroStage


def _show(label: str, result: SearchResult) -> None:
    best = result.best
    p = best.plan
    print(f"  {label}: {result.elapsed_s:.1f} s, {result.counts.line()}")
    print(f"    best: tp{p.tp} pp{p.pp} vpp{p.vpp} cp{p.cp} ep{p.ep} dp{p.dp} mb{p.micro_batch_size} "
          f"zero{int(p.zero_stage)} sp={p.sequence_parallel} {p.recompute.value} {p.pipeline_schedule.value}: "
          f"{best.report.step_time_s:.3f} s, MFU {best.report.mfu_causal:.1%}")


def bench_pruned_vs_exhaustive(skip_exhaustive: bool) -> None:
    model, cluster = load_model("llama3-8b"), load_cluster("dgx-h100", num_gpus=64)
    workload = Workload(global_batch_size=512, seq_length=8192)
    # cp and ZeRO bounded so that the brute-force reference runs in minutes.
    constraints = Constraints(cp=(1, 2), zero_stage=(ZeroStage.NONE, ZeroStage.OPTIMIZER))
    print("llama3-8b on 64 x H100, global batch 512 x 8192, cp in {1,2}, ZeRO in {0,1}")
    pruned = plan(model, cluster, workload, constraints)
    _show("pruned", pruned)
    if skip_exhaustive:
        return
    brute = plan(model, cluster, workload, constraints, exhaustive=True)
    _show("exhaustive", brute)
    same = [(r.plan, r.report.step_time_s) for r in pruned.ranked] == [
        (r.plan, r.report.step_time_s) for r in brute.ranked]
    print(f"  same top-{len(pruned.ranked)}: {same}; speed-up {brute.elapsed_s / pruned.elapsed_s:.1f}x")


def bench_deepseek_v3() -> None:
    model, cluster = load_model("deepseek-v3"), load_cluster("deepseek-v3-h800")
    workload = Workload(global_batch_size=15360, seq_length=4096, precision=Precision.FP8)
    constraints = Constraints(
        tp=(1,), cp=(1,), pp=(8, 16), pipeline_schedule=(PipelineSchedule.ONE_F_ONE_B, PipelineSchedule.DUALPIPE),
        micro_batch_size=(1, 2), zero_stage=(ZeroStage.OPTIMIZER,), ep=(16, 32, 64),
    )
    print(f"deepseek-v3 on {cluster.num_gpus} x {cluster.gpu.name}, global batch 15360 x 4096, fp8; "
          "tp 1, pp {8,16}, schedule {1f1b, dualpipe}, ep {16,32,64}, mb {1,2}, ZeRO-1")
    result = plan(model, cluster, workload, constraints)
    _show("pruned", result)
    published = Plan(tp=1, pp=16, ep=64, dp=cluster.num_gpus // 16, zero_stage=ZeroStage.OPTIMIZER,
                     micro_batch_size=1, recompute=Recompute.SELECTIVE,
                     pipeline_schedule=PipelineSchedule.DUALPIPE)
    start = time.perf_counter()
    ref = simulate(model, cluster, published, workload)
    print(f"  published config (TP1 PP16 DualPipe EP64 ZeRO-1 mb1 selective): {ref.step_time_s:.3f} s "
          f"({ref.status.value}, {time.perf_counter() - start:.2f} s to simulate)")
    ok = result.best.report.step_time_s <= ref.step_time_s
    print(f"  recommended step <= published step: {ok} "
          f"({result.best.report.step_time_s:.3f} s vs {ref.step_time_s:.3f} s)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--skip-exhaustive", action="store_true")
    parser.add_argument("--skip-v3", action="store_true")
    args = parser.parse_args()
    bench_pruned_vs_exhaustive(args.skip_exhaustive)
    if not args.skip_v3:
        bench_deepseek_v3()


if __name__ == "__main__":
    main()
