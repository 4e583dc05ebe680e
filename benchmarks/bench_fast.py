"""Speed and top-20 agreement of the fast estimate (issue #5: >= 50,000 plans/s, within 3 %
of the full simulation on its top-20).

Cases:

- dense: llama3-70b on 1024 H100 (dgx-h100), global batch 1024 x 4096; every valid plan of
  tests/test_fast.py's grid: tp {1,2,4,8}, pp {1,2,4,8,16}, vpp {1,2,4}, micro-batch
  {1,2,4,8}, ZeRO 0-3, recompute none/selective/full, sequence parallelism, all five
  schedules (5,772 plans);
- moe: deepseek-v3 on 2048 H800 (deepseek-v3-h800), global batch 15,360 x 4096 in FP8; tp
  {1,2}, pp {8,16}, ep {8,16,32,64}, micro-batch {1,2}, ZeRO 0-1, recompute
  selective/full, 1F1B, zero-bubble, DualPipe and DualPipeV (768 plans);
- space: the same llama3-70b / 1024 H100 case over the search's whole candidate space
  (:func:`planner.search.space.candidate_table`, default constraints: every tp, cp, pp
  dividing 1024, ...: 37,224 plans), through ``estimate_table``;
- moe-space: the moe case's DeepSeek-V3 / 2048 H800 / 15,360 x 4096 FP8 over the search's
  whole candidate space (default constraints: 379,800 plans, every tp, cp, ep, pp, vpp,
  micro-batch, ZeRO stage, recompute and schedule), some of which the cost model refuses
  (an EP group over more nodes than the node-limited routing serves): counted, not priced.

Figures per case (plans / wall seconds of one estimate call, 2 CPU cores shared with other
work, so the best of 5 and the median are printed): cold (every memo table empty, in a fresh
process), warm (the same call again: a memo hit), and new plans over warm shape tables (the
per-call memo dropped: what a search pays for a new batch of candidates of known shapes);
through ``estimate`` (Plan objects) and ``estimate_table`` (columns, no Plan objects). Then
how many plans the default ``exact_top`` = 20 replayed, the gap of the other plans' lower
bounds to the full replay (``exact_top=None``; dense and moe), and |fast - simulate| /
simulate over the estimate's 20 fastest plans that fit, against the live ``simulate``.

BLAS runs single-threaded (OPENBLAS_NUM_THREADS / OMP_NUM_THREADS = 1 unless set): the
estimate's matrix products are small, and on 2 shared cores OpenBLAS threads made them
2-10x slower and the timings erratic.

Run: .venv/bin/python benchmarks/bench_fast.py [dense|moe|space|moe-space]   (no argument:
all, each in a fresh interpreter)
"""

from __future__ import annotations

import os

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from test_fast import candidates, top_k  # noqa: E402

from planner import load_cluster, load_model  # noqa: E402
from planner.costmodel import fast  # noqa: E402
from planner.costmodel.simulate import simulate  # noqa: E402
from planner.search.space import CandidateTable, Constraints, candidate_table  # noqa: E402
from planner.specs import Workload  # noqa: E402

DENSE = ("llama3-70b", "dgx-h100", 1024, Workload(global_batch_size=1024, seq_length=4096))
CASES = {
    "dense": (*DENSE, {}),
    "moe": ("deepseek-v3", "deepseek-v3-h800", 2048,
            Workload(global_batch_size=15360, seq_length=4096, precision="fp8", adam_moment_dtype="bf16", moe_dispatch_dtype="fp8"),
            {"tps": (1, 2), "pps": (8, 16), "eps": (8, 16, 32, 64), "mbs": (1, 2), "zeros": (0, 1),
             "recomputes": ("selective", "full"), "vpps": (1,),
             "schedules": ("1f1b", "zero-bubble", "dualpipe", "dualpipev")}),
    "space": (*DENSE, None),
    "moe-space": ("deepseek-v3", "deepseek-v3-h800", 2048,
                  Workload(global_batch_size=15360, seq_length=4096, precision="fp8", adam_moment_dtype="bf16", moe_dispatch_dtype="fp8"), None),
}
REPEATS = 5


def _rate(n: int, seconds: list[float]) -> str:
    best, median = min(seconds), statistics.median(seconds)
    return f"{n / best:10,.0f} plans/s best ({best * 1e3:7.1f} ms), {n / median:10,.0f} median"


def _timed(call) -> float:
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


def _forget_calls() -> None:
    for ctx in fast._CTX.values():
        ctx.calls.clear()


def run(case: str) -> None:
    name, cluster_name, gpus, workload, grid = CASES[case]
    model, cluster = load_model(name), load_cluster(cluster_name, num_gpus=gpus)
    if grid is None:
        table = candidate_table(model, gpus, workload, Constraints())
        plans = None
        n = len(table)
        what = "the search's candidate space"
    else:
        plans = candidates(model, gpus, workload, **grid)
        table = CandidateTable.from_plans(plans)
        n = len(plans)
        what = "valid plans of the grid"
    print(f"{case}: {name} / {gpus} x {cluster.gpu.name} / GBS {workload.global_batch_size} x "
          f"{workload.seq_length}: {n:,} {what} (BLAS threads {os.environ['OPENBLAS_NUM_THREADS']})")

    def by_table():
        return fast.estimate_table(model, cluster, workload, table)

    def by_plans():
        return fast.estimate(model, cluster, workload, plans)

    main = by_table if plans is None else by_plans
    fast.clear_caches()
    start = time.perf_counter()
    est = main()
    cold = time.perf_counter() - start
    warm = [_timed(main) for _ in range(REPEATS)]
    new_table, new_plans = [], []
    for _ in range(REPEATS):
        _forget_calls()
        new_table.append(_timed(by_table))
        if plans is not None:
            _forget_calls()
            new_plans.append(_timed(by_plans))
    np.testing.assert_array_equal(by_table().step_time_s, est.step_time_s)
    label = "table" if plans is None else "Plan list"
    print(f"  cold ({label}):                    {n / cold:10,.0f} plans/s      ({cold * 1e3:7.1f} ms)")
    print(f"  warm (same call again):           {_rate(n, warm)}")
    if plans is not None:
        print(f"  new plans, warm shapes, Plan list:{_rate(n, new_plans)}")
    print(f"  new plans, warm shapes, table:    {_rate(n, new_table)}")
    staged = np.asarray(table.pp) > 1
    print(f"  replayed exactly (exact_top={fast.EXACT_TOP}): {int((est.exact & staged).sum()):,} of "
          f"{int(staged.sum()):,} plans with pp > 1 (pp = 1 is exact without a replay); "
          f"{int(est.fits.sum()):,} of {n:,} fit; {int((~est.supported).sum()):,} refused by the cost model"
          + "".join(f"\n    refused: {e}" for e in est.refusals))
    if plans is not None:
        every = fast.estimate(model, cluster, workload, plans, exact_top=None)
        low = ~est.exact & est.fits
        gap = 1.0 - est.step_time_s[low] / every.step_time_s[low]
        print(f"  lower bounds of the other plans that fit vs full replay: median {np.median(gap):.2%}, "
              f"90th pct {np.quantile(gap, 0.9):.2%}, max {gap.max():.2%}")
    errs = []
    for i in top_k(est):
        plan = table.plan(i) if plans is None else plans[i]
        sim = simulate(model, cluster, plan, workload).step_time_s
        errs.append(abs(est.step_time_s[i] - sim) / sim)
    errs = np.array(errs)
    print(f"  top-{len(errs)} |fast - simulate| / simulate: max {errs.max():.3%}, median {np.median(errs):.3%}")


def main() -> None:
    if len(sys.argv) > 1:
        run(sys.argv[1])
        return
    for case in CASES:  # each in a fresh interpreter: an honest cold start
        subprocess.run([sys.executable, __file__, case], check=True)


if __name__ == "__main__":
    main()
