"""Speed and top-20 agreement of the fast estimate (issue #5: >= 50,000 plans/s, within 3 %
of the full simulation on its top-20).

Candidate set: every valid combination of tp in {1,2,4,8}, pp in {1,2,4,8,16}, vpp in
{1,2,4}, micro-batch in {1,2,4,8}, ZeRO 0-3, recompute none/selective/full, sequence
parallelism, all five schedules, for llama3-70b on 1024 H100 (dgx-h100), global batch
1024 x 4096. Cold = memo tables empty; warm = the same call again (memo tables full);
"new plans, warm shapes" = plans unseen per plan but with every shape-level table full.

Run: .venv/bin/python benchmarks/bench_fast.py
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from test_fast import candidates, top_k  # noqa: E402

from planner import load_cluster, load_model  # noqa: E402
from planner.costmodel import fast  # noqa: E402
from planner.costmodel.simulate import simulate  # noqa: E402
from planner.specs import Workload  # noqa: E402


def main() -> None:
    model, cluster = load_model("llama3-70b"), load_cluster("dgx-h100", num_gpus=1024)
    workload = Workload(global_batch_size=1024, seq_length=4096)
    plans = candidates(model, 1024, workload)
    print(f"llama3-70b / 1024 H100 / GBS 1024 x 4096: {len(plans)} valid plans")
    fast.clear_caches()
    start = time.perf_counter()
    est = fast.estimate(model, cluster, workload, plans)
    cold = time.perf_counter() - start
    warm = []
    for _ in range(5):
        start = time.perf_counter()
        fast.estimate(model, cluster, workload, plans)
        warm.append(time.perf_counter() - start)
    # Per-plan results dropped, shape tables kept: what a search pays for unseen plans.
    for ctx in fast._CTX.values():
        ctx.plan.clear()
    start = time.perf_counter()
    fast.estimate(model, cluster, workload, plans)
    shapes = time.perf_counter() - start
    print(f"cold:                     {len(plans) / cold:12,.0f} plans/s ({cold * 1e3:.0f} ms)")
    print(f"warm:                     {len(plans) / statistics.median(warm):12,.0f} plans/s")
    print(f"new plans, warm shapes:   {len(plans) / shapes:12,.0f} plans/s")
    errs = []
    for i in top_k(est):
        sim = simulate(model, cluster, plans[i], workload).step_time_s
        errs.append(abs(est.step_time_s[i] - sim) / sim)
    errs = np.array(errs)
    print(f"top-20 |fast - simulate| / simulate: max {errs.max():.2%}, median {np.median(errs):.2%}")


if __name__ == "__main__":
    main()
