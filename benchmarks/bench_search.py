"""Time the plan search (issue #6) and check the quality of its answers.

- pruned vs exhaustive on llama3-8b / 64 H100 (same top-5, speed-up);
- GPT-3 175B on 1024 A100-80GB (dgx-a100), Narayanan et al. 2021's batch 1536 x 2048, fp16,
  FULL space: time, and predicted throughput vs the published layout (TP8 PP16 DP8, mb 1,
  full recompute, 1F1B: the SC21 175B run; Table 1's rows use full recompute);
- DeepSeek-V3 on its 2048 H800 (deepseek-v3-h800), global batch 15,360 x 4096, fp8: a
  bounded space and the FULL space, each vs the published plan (TP1 PP16 DualPipe EP64
  ZeRO-1 mb1 selective);
- llama3-405b on 16,384 H100 (dgx-h100), global batch 2048 x 8192 (Llama 3's 16M tokens), FULL space.

Times are wall-clock on whatever machine runs this (2 shared cores when measured for the
issue: noisy). Each case starts with the objects of the earlier ones frozen out of the
garbage collector (:func:`_fresh`), as if in its own process, the way ``planner plan`` runs.

    .venv/bin/python benchmarks/bench_search.py [--skip-exhaustive] [--skip-v3] [--skip-full] [--skip-16k]
"""

from __future__ import annotations

import argparse
import gc
import time

from planner.costmodel.simulate import simulate
from planner.presets import load_cluster, load_model
from planner.search import Constraints, SearchResult, plan
from planner.specs import Plan, Workload
from planner.specs.plan import PipelineSchedule, Precision, Recompute, ZeroStage


def _fresh() -> None:
    """Collect, then freeze what is left (caches of the earlier cases) out of the garbage
    collector's scans: after the exhaustive run about 1.5 M objects stay alive, and scanning
    them made the next GPT-3 search about 30% slower (10.7 s vs 8.2 s, 2-core machine)."""
    gc.collect()
    gc.freeze()


def _show(label: str, result: SearchResult) -> None:
    best = result.best
    p = best.plan
    print(f"  {label}: {result.elapsed_s:.1f} s, {result.counts.line()}")
    print(f"    best: tp{p.tp} pp{p.pp} vpp{p.vpp} cp{p.cp} ep{p.ep} etp{p.expert_tp} dp{p.dp} mb{p.micro_batch_size} "
          f"zero{int(p.zero_stage)} sp={p.sequence_parallel} {p.recompute.value} {p.pipeline_schedule.value} "
          f"order {p.rank_order}: "
          f"{best.report.step_time_s:.3f} s, MFU {best.report.mfu_causal:.1%}")


def _versus(result: SearchResult, model, cluster, workload, published: Plan, label: str) -> None:
    ref = simulate(model, cluster, published, workload)
    best = result.best.report
    print(f"  published config ({label}): {ref.step_time_s:.3f} s ({ref.status.value}), "
          f"{ref.tokens_per_s_per_gpu:,.0f} tokens/s/GPU")
    print(f"  recommended step <= published step: {best.step_time_s <= ref.step_time_s} "
          f"({best.step_time_s:.3f} s vs {ref.step_time_s:.3f} s; "
          f"{best.tokens_per_s_per_gpu:,.0f} vs {ref.tokens_per_s_per_gpu:,.0f} tokens/s/GPU)")


def bench_pruned_vs_exhaustive(skip_exhaustive: bool) -> None:
    model, cluster = load_model("llama3-8b"), load_cluster("dgx-h100", num_gpus=64)
    workload = Workload(global_batch_size=512, seq_length=8192)
    # cp and ZeRO bounded so that the brute-force reference runs in minutes.
    constraints = Constraints(cp=(1, 2), zero_stage=(ZeroStage.NONE, ZeroStage.OPTIMIZER))
    print("llama3-8b on 64 x H100, global batch 512 x 8192, cp in {1,2}, ZeRO in {0,1}")
    _fresh()
    pruned = plan(model, cluster, workload, constraints)
    _show("pruned", pruned)
    if skip_exhaustive:
        return
    _fresh()
    brute = plan(model, cluster, workload, constraints, exhaustive=True)
    _show("exhaustive", brute)
    same = [(r.plan, r.report.step_time_s) for r in pruned.ranked] == [
        (r.plan, r.report.step_time_s) for r in brute.ranked]
    print(f"  same top-{len(pruned.ranked)}: {same}; speed-up {brute.elapsed_s / pruned.elapsed_s:.1f}x")


def bench_gpt3() -> None:
    model, cluster = load_model("gpt3-175b"), load_cluster("dgx-a100", num_gpus=1024)
    workload = Workload(global_batch_size=1536, seq_length=2048, precision=Precision.FP16)
    print("gpt3-175b on 1024 x A100-80GB, global batch 1536 x 2048, fp16, FULL space")
    _fresh()
    result = plan(model, cluster, workload)
    _show("pruned", result)
    published = Plan(tp=8, pp=16, dp=8, micro_batch_size=1, recompute=Recompute.FULL)
    _versus(result, model, cluster, workload, published, "TP8 PP16 DP8 mb1 full recompute 1F1B")


V3_PUBLISHED = dict(tp=1, pp=16, ep=64, dp=128, zero_stage=ZeroStage.OPTIMIZER, micro_batch_size=1,
                    recompute=Recompute.SELECTIVE, pipeline_schedule=PipelineSchedule.DUALPIPE)


def bench_deepseek_v3(full: bool) -> None:
    model, cluster = load_model("deepseek-v3"), load_cluster("deepseek-v3-h800")
    workload = Workload(global_batch_size=15360, seq_length=4096, precision=Precision.FP8,
                        adam_moment_dtype="bf16", moe_dispatch_dtype="fp8")  # DeepSeek-V3's recipe (V3 §3.3.3)
    bounded = Constraints(
        tp=(1,), cp=(1,), pp=(8, 16), pipeline_schedule=(PipelineSchedule.ONE_F_ONE_B, PipelineSchedule.DUALPIPE),
        micro_batch_size=(1, 2), zero_stage=(ZeroStage.OPTIMIZER,), ep=(16, 32, 64),
    )
    published = Plan(**V3_PUBLISHED)
    print(f"deepseek-v3 on {cluster.num_gpus} x {cluster.gpu.name}, global batch 15360 x 4096, fp8; "
          "bounded: tp 1, pp {8,16}, schedule {1f1b, dualpipe}, ep {16,32,64}, mb {1,2}, ZeRO-1")
    _fresh()
    result = plan(model, cluster, workload, bounded)
    _show("pruned (bounded)", result)
    _versus(result, model, cluster, workload, published, "TP1 PP16 DualPipe EP64 ZeRO-1 mb1 selective")
    if full:
        print("deepseek-v3, FULL space")
        _fresh()
        result = plan(model, cluster, workload)
        _show("pruned (full)", result)
        _versus(result, model, cluster, workload, published, "TP1 PP16 DualPipe EP64 ZeRO-1 mb1 selective")


def bench_16k() -> None:
    model, cluster = load_model("llama3-405b"), load_cluster("dgx-h100", num_gpus=16384)
    workload = Workload(global_batch_size=2048, seq_length=8192)
    print("llama3-405b on 16,384 x H100, global batch 2048 x 8192, FULL space")
    _fresh()
    start = time.perf_counter()
    result = plan(model, cluster, workload)
    _show(f"pruned ({time.perf_counter() - start:.1f} s wall)", result)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--skip-exhaustive", action="store_true")
    parser.add_argument("--skip-v3", action="store_true")
    parser.add_argument("--skip-full", action="store_true", help="skip the FULL-space runs (V3, GPT-3, 16k)")
    parser.add_argument("--skip-16k", action="store_true")
    args = parser.parse_args()
    bench_pruned_vs_exhaustive(args.skip_exhaustive)
    if not args.skip_full:
        bench_gpt3()
    if not args.skip_v3:
        bench_deepseek_v3(full=not args.skip_full)
    if not args.skip_full and not args.skip_16k:
        bench_16k()


if __name__ == "__main__":
    main()
