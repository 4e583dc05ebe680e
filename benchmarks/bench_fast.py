"""Speed and top-20 agreement of the fast estimate (issue #5: >= 50,000 plans/s, within 3 %
of the full simulation on its top-20).

Cases (candidate sets from tests/test_fast.py's grid):

- dense: llama3-70b on 1024 H100 (dgx-h100), global batch 1024 x 4096; every valid plan over
  tp {1,2,4,8}, pp {1,2,4,8,16}, vpp {1,2,4}, micro-batch {1,2,4,8}, ZeRO 0-3, recompute
  none/selective/full, sequence parallelism and all five schedules;
- moe: deepseek-v3 on 2048 H800 (deepseek-v3-h800), global batch 15,360 x 4096 in FP8; tp
  {1,2}, pp {8,16}, ep {8,16,32,64}, micro-batch {1,2}, ZeRO 0-1, recompute
  selective/full, 1F1B, zero-bubble, DualPipe and DualPipeV.

Figures per case: cold (every memo table of the estimate empty, and the process's other
caches too: each case runs in a fresh process), warm (the same call again), and new plans
over warm shape tables (the per-call memo dropped: what a search pays for a new batch of
candidates of known shapes); each through ``estimate`` (Plan objects) and ``estimate_table``
(a CandidateTable, no Plan objects). Then |fast - simulate| / simulate over the estimate's
20 fastest plans that fit.

Run: .venv/bin/python benchmarks/bench_fast.py [dense|moe]   (no argument: both, each in a
fresh interpreter)
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from test_fast import candidates, top_k  # noqa: E402

from planner import load_cluster, load_model  # noqa: E402
from planner.costmodel import fast  # noqa: E402
from planner.costmodel.simulate import simulate  # noqa: E402
from planner.search.space import CandidateTable  # noqa: E402
from planner.specs import Workload  # noqa: E402

CASES = {
    "dense": ("llama3-70b", "dgx-h100", 1024, Workload(global_batch_size=1024, seq_length=4096), {}),
    "moe": ("deepseek-v3", "deepseek-v3-h800", 2048,
            Workload(global_batch_size=15360, seq_length=4096, precision="fp8"),
            {"tps": (1, 2), "pps": (8, 16), "eps": (8, 16, 32, 64), "mbs": (1, 2), "zeros": (0, 1),
             "recomputes": ("selective", "full"), "vpps": (1,),
             "schedules": ("1f1b", "zero-bubble", "dualpipe", "dualpipev")}),
}


def _rate(n: int, seconds: float) -> str:
    return f"{n / seconds:12,.0f} plans/s ({seconds * 1e3:8.1f} ms)"


def run(case: str) -> None:
    name, cluster_name, gpus, workload, grid = CASES[case]
    model, cluster = load_model(name), load_cluster(cluster_name, num_gpus=gpus)
    plans = candidates(model, gpus, workload, **grid)
    table = CandidateTable.from_plans(plans)
    print(f"{case}: {name} / {gpus} x {cluster.gpu.name} / GBS {workload.global_batch_size} x "
          f"{workload.seq_length}: {len(plans)} valid plans")
    fast.clear_caches()
    start = time.perf_counter()
    est = fast.estimate(model, cluster, workload, plans)
    cold = time.perf_counter() - start
    warm, table_new, plans_new = [], [], []
    for _ in range(3):
        start = time.perf_counter()
        fast.estimate(model, cluster, workload, plans)
        warm.append(time.perf_counter() - start)
        for ctx in fast._CTX.values():
            ctx.calls.clear()
        start = time.perf_counter()
        fast.estimate(model, cluster, workload, plans)
        plans_new.append(time.perf_counter() - start)
        for ctx in fast._CTX.values():
            ctx.calls.clear()
        start = time.perf_counter()
        by_table = fast.estimate_table(model, cluster, workload, table)
        table_new.append(time.perf_counter() - start)
    np.testing.assert_array_equal(by_table.step_time_s, est.step_time_s)
    print(f"  cold (Plan list):                 {_rate(len(plans), cold)}")
    print(f"  warm (same call again):           {_rate(len(plans), statistics.median(warm))}")
    print(f"  new plans, warm shapes, Plan list:{_rate(len(plans), statistics.median(plans_new))}")
    print(f"  new plans, warm shapes, table:    {_rate(len(plans), statistics.median(table_new))}")
    errs = []
    for i in top_k(est):
        sim = simulate(model, cluster, plans[i], workload).step_time_s
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
