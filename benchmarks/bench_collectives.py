"""Benchmark: cold and cached time of one collective_cost / moe_all_to_all call.

Run: .venv/bin/python benchmarks/bench_collectives.py
Issue #4 targets a collective on a 16,384-GPU cluster in < 50 ms cold and < 1 ms cached per
distinct group shape. "cold" is the first call for a group array on a cluster whose lookup
maps are already built (the maps are built once per cluster; their time is printed
separately); "cached" is a repeat call with another message size (profiles are linear in
bytes, so any size hits the cache). Each figure is the best of 3 (cold on a fresh copy of the
cluster every time).
"""

from __future__ import annotations

import time

import numpy as np

from planner.hwmodels.allocation import job_gpus, layout_groups
from planner.hwmodels.alltoall import moe_all_to_all, routing_stats
from planner.hwmodels.collectives import CollectiveOp, cluster_maps, collective_cost
from planner.presets import load_cluster


def _cases():
    big = load_cluster("deepseek-v3-h800", num_gpus=16384)
    everything = np.arange(16384)
    pp_pairs = np.stack([everything[: 16384 // 2], everything[16384 // 2:]], axis=1)
    yield big, "DP 16 x 1024 (one GPU per node)", CollectiveOp.ALL_REDUCE, layout_groups(everything, 1024, "strided:16")
    yield big, "DP 16 x 1024 (8 per node)", CollectiveOp.ALL_REDUCE, layout_groups(everything, 1024)
    yield big, "ZeRO RS 16 x 1024", CollectiveOp.REDUCE_SCATTER, layout_groups(everything, 1024, "strided:16")
    yield big, "TP 2048 x 8", CollectiveOp.ALL_REDUCE, layout_groups(everything, 8)
    yield big, "EP 256 x 64 flat", CollectiveOp.ALL_TO_ALL, layout_groups(everything, 64)
    yield big, "PP 8192 pairs", CollectiveOp.P2P, pp_pairs
    ff2 = load_cluster("fire-flyer-2")
    yield ff2, "FF2 DP 1 x 1024 2 zones", CollectiveOp.ALL_REDUCE, job_gpus(ff2, 1024, zone_spread=2)[None, :]
    yield ff2, "FF2 DP 8 x 1248 strided", CollectiveOp.ALL_REDUCE, layout_groups(job_gpus(ff2, 9984), 1248, "strided:8")


def _best(fn, repeats: int = 3) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    print(f"{'cluster':<18} {'case':<30} {'gpus':>6} {'maps ms':>8} {'cold ms':>8} {'cached ms':>10}  algorithm")
    for cluster, label, op, groups in _cases():
        def fresh():
            return cluster.model_copy()

        maps_s = _best(lambda: cluster_maps(fresh()))
        copies = [fresh() for _ in range(3)]
        for copy in copies:
            cluster_maps(copy)
        cold = min(_time(lambda c=c: collective_cost(c, op, groups, 1e9)) for c in copies)
        cached = _best(lambda: collective_cost(copies[0], op, groups, 3e8), repeats=20)
        cost = collective_cost(copies[0], op, groups, 1e9)
        print(f"{cluster.name:<18} {label:<30} {cluster.num_gpus:>6} {maps_s * 1e3:>8.1f} {cold * 1e3:>8.1f} "
              f"{cached * 1e3:>10.3f}  {cost.algorithm} ({cost.bottleneck})")
    big = load_cluster("deepseek-v3-h800", num_gpus=16384)
    ep = layout_groups(np.arange(16384), 64)
    args = (4096, 7168, 8, 256, 4, 1 + 4 / 128, 2.0)
    routing_stats.cache_clear()
    copy = big.model_copy()
    cluster_maps(copy)
    cold = _time(lambda: moe_all_to_all(copy, ep, *args))
    cached_routing = _best(lambda: moe_all_to_all(copy, ep, *args), repeats=10)
    print(f"{big.name:<18} {'MoE EP64 x 256 (DeepEP)':<30} {big.num_gpus:>6} {'':>8} {cold * 1e3:>8.1f} "
          f"{cached_routing * 1e3:>10.3f}  (cold includes the routing Monte-Carlo)")


def _time(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


if __name__ == "__main__":
    main()
