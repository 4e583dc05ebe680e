"""The plan search: lossless pruning (same answer as brute force), sound lower bounds,
constraints, infeasibility (exit code 3) and the CLI's JSON."""

from __future__ import annotations

import json
import random
import subprocess
import sys

import pytest

from planner.costmodel.simulate import simulate
from planner.errors import InfeasibleError
from planner.presets import load_cluster, load_model
from planner.search import BoundCalculator, Constraints, PruneRule, candidates, plan
from planner.search.space import SpaceStats
from planner.specs import Workload
from planner.specs.plan import PipelineSchedule, Recompute, ZeroStage

SCHEDULES = list(PipelineSchedule)
RECOMPUTES = list(Recompute)
# Peak memory of the tiny models on an H100 clusters around 2.356 % of HBM: a limit there
# makes the memory rule prune about half the candidates.
TIGHT = {"tiny-dense": 0.02356, "tiny-moe-mla": 0.02357}


def _instance(seed: int):
    """A small random search problem: model, cluster, workload, constraints."""
    rng = random.Random(seed)
    name = rng.choice(["tiny-dense", "tiny-moe-mla"])
    model = load_model(name)
    gpus = rng.choice([8, 16])
    cluster = load_cluster("dgx-h100", num_gpus=gpus)
    workload = Workload(global_batch_size=rng.choice([16, 32, 64]), seq_length=model.default_seq_length)
    constraints = Constraints(
        zero_stage=tuple(rng.sample(list(ZeroStage), 2)),
        recompute=(rng.choice(RECOMPUTES),),
        micro_batch_size=tuple(sorted(rng.sample([1, 2, 4], 2))),
        pipeline_schedule=tuple(rng.sample(SCHEDULES, 3)),
        cp=(1,),
        sequence_parallel=(rng.choice([False, True]),),
        max_memory_fraction=TIGHT[name] if rng.random() < 0.5 else 1.0,
    )
    return model, cluster, workload, constraints


def _key(result):
    return [(r.plan, r.report.step_time_s) for r in result.ranked]


@pytest.mark.parametrize("seed", range(14))
def test_pruned_search_equals_exhaustive(seed):
    model, cluster, workload, constraints = _instance(seed)
    try:
        exhaustive = plan(model, cluster, workload, constraints, top_k=3, exhaustive=True)
    except InfeasibleError:
        with pytest.raises(InfeasibleError):
            plan(model, cluster, workload, constraints, top_k=3)
        return
    pruned = plan(model, cluster, workload, constraints, top_k=3)
    assert _key(pruned) == _key(exhaustive)
    c = pruned.counts
    assert c.enumerated == exhaustive.counts.enumerated == exhaustive.counts.simulated
    assert c.simulated + c.pruned["memory_lower_bound"] + c.pruned["time_lower_bound"] == c.enumerated
    assert c.pruned["divisibility"] == c.generated - c.enumerated
    for row in pruned.to_records():
        assert row["memory_peak_bytes"] <= pruned.memory_limit_bytes


def test_memory_rule_prunes_and_stays_lossless():
    model, cluster = load_model("tiny-moe-mla"), load_cluster("dgx-h100", num_gpus=8)
    workload = Workload(global_batch_size=16, seq_length=64)
    constraints = Constraints(zero_stage=(0, 1), recompute=(Recompute.NONE,), micro_batch_size=(1, 2), cp=(1,),
                              max_memory_fraction=TIGHT["tiny-moe-mla"])
    pruned = plan(model, cluster, workload, constraints, top_k=2)
    assert pruned.counts.pruned[PruneRule.MEMORY_LOWER_BOUND] > 0
    assert _key(pruned) == _key(plan(model, cluster, workload, constraints, top_k=2, exhaustive=True))


def test_time_rule_prunes_on_a_compute_bound_model():
    model, cluster = load_model("llama3-8b"), load_cluster("dgx-h100", num_gpus=16)
    workload = Workload(global_batch_size=32, seq_length=4096)
    constraints = Constraints(tp=(2, 4, 8), pp=(1, 2), cp=(1,), zero_stage=(ZeroStage.OPTIMIZER,),
                              micro_batch_size=(1,), recompute=(Recompute.SELECTIVE, Recompute.FULL),
                              sequence_parallel=(True,))
    pruned = plan(model, cluster, workload, constraints, top_k=1)
    assert pruned.counts.pruned[PruneRule.TIME_LOWER_BOUND] > 0
    assert _key(pruned) == _key(plan(model, cluster, workload, constraints, top_k=1, exhaustive=True))


@pytest.mark.parametrize(("name", "gpus", "batch", "seq"), [
    ("tiny-dense", 8, 32, 64), ("tiny-moe-mla", 16, 64, 64), ("llama3-8b", 16, 64, 4096),
])
def test_bounds_never_exceed_the_simulation(name, gpus, batch, seq):
    model, cluster = load_model(name), load_cluster("dgx-h100", num_gpus=gpus)
    workload = Workload(global_batch_size=batch, seq_length=seq)
    plans = list(candidates(model, gpus, workload))
    calc = BoundCalculator(model, cluster, workload)
    for p in random.Random(7).sample(plans, 60):
        bound, report = calc.bounds(p), simulate(model, cluster, p, workload)
        assert 0 < bound.step_time_s <= report.step_time_s * (1 + 1e-9), p
        assert 0 < bound.memory_bytes <= report.memory_peak_bytes * (1 + 1e-9), p


def test_constraints_are_honoured():
    model, cluster = load_model("tiny-moe-mla"), load_cluster("dgx-h100", num_gpus=16)
    workload = Workload(global_batch_size=64, seq_length=64)
    constraints = Constraints(tp=(1,), pp=(2, 4), ep=(2,), zero_stage=(ZeroStage.OPTIMIZER,),
                              recompute=(Recompute.SELECTIVE,), pipeline_schedule=(PipelineSchedule.DUALPIPE,
                                                                                    PipelineSchedule.ONE_F_ONE_B))
    stats = SpaceStats()
    plans = list(candidates(model, 16, workload, constraints, stats))
    assert plans and stats.rejected
    for p in plans:
        assert p.tp == 1 and p.pp in (2, 4) and p.ep == 2 and p.zero_stage == 1
        assert p.recompute is Recompute.SELECTIVE and p.pipeline_schedule in constraints.pipeline_schedule
    result = plan(model, cluster, workload, constraints, top_k=3)
    assert all(r["tp"] == 1 and r["pp"] in (2, 4) for r in result.to_records())


def test_infeasible_raises_with_the_shortfall():
    model, cluster = load_model("tiny-dense"), load_cluster("dgx-h100", num_gpus=8)
    workload = Workload(global_batch_size=16, seq_length=64)
    with pytest.raises(InfeasibleError, match=r"GiB more per GPU.*more GPUs") as err:
        plan(model, cluster, workload, Constraints(max_memory_fraction=0.01, cp=(1,), zero_stage=(3,)))
    assert err.value.exit_code == 3


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "planner", "plan", *args], capture_output=True, text=True,
                          timeout=120)


def test_cli_json_and_infeasible_exit_code():
    base = ["-m", "tiny-dense", "-c", "dgx-h100", "--gpus", "8", "--global-batch", "16", "--cp", "1",
            "--zero", "0,1", "--recompute", "none", "--micro-batch", "1,2"]
    out = _cli(*base, "--schedule", "1f1b,dualpipe", "--top-k", "3", "--format", "json")
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert len(data["plans"]) == 3 and [p["rank"] for p in data["plans"]] == [1, 2, 3]
    assert {"tp", "pp", "step_time_s", "tokens_per_s_per_gpu", "mfu_causal", "memory_headroom_bytes"} <= set(
        data["plans"][0])
    assert set(data["counts"]["pruned"]) == {"divisibility", "memory_lower_bound", "time_lower_bound"}
    assert all(p["pipeline_schedule"] in ("1f1b", "dualpipe") for p in data["plans"])
    bad = _cli(*base, "--max-memory-frac", "0.01")
    assert bad.returncode == 3
    lines = bad.stderr.strip().splitlines()
    assert len(lines) == 1 and "no plan fits" in lines[0] and "Traceback" not in bad.stderr
