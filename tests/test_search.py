"""The plan search: lossless pruning (same answer as brute force), sound lower bounds,
constraints, infeasibility (exit code 3) and the CLI's JSON."""

from __future__ import annotations

import json
import random
import subprocess
import sys

import pytest

from planner.costmodel.simulate import simulate
from planner.errors import InfeasibleError, SpecError, UnsupportedError
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


def _pruned_and_exhaustive(model, cluster, workload, constraints):
    """Both searches' top 3, checked equal (plans and step times), the pruned one in one
    process and in two (planner.search.parallel, forced on these small spaces); None when
    the instance is infeasible, which the pruned search must then say too."""
    try:
        exhaustive = plan(model, cluster, workload, constraints, top_k=3, exhaustive=True)
    except InfeasibleError:
        for workers in (1, 2):
            with pytest.raises(InfeasibleError):
                plan(model, cluster, workload, constraints, top_k=3, workers=workers)
        return None
    pruned = plan(model, cluster, workload, constraints, top_k=3, workers=1)
    assert _key(pruned) == _key(exhaustive)
    two = plan(model, cluster, workload, constraints, top_k=3, workers=2)
    assert _key(two) == _key(exhaustive)
    c = two.counts
    assert c.simulated + c.pruned["memory_lower_bound"] + c.pruned["time_lower_bound"] == c.enumerated
    assert all(r.bounds.step_time_s <= (r.simulator_split_step_s or r.report.step_time_s) for r in two.ranked)
    return pruned, exhaustive


@pytest.mark.parametrize("seed", range(14))
def test_pruned_search_equals_exhaustive(seed):
    both = _pruned_and_exhaustive(*_instance(seed))
    if both is None:
        return
    pruned, exhaustive = both
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


def test_no_valid_plan_says_which_rule():
    """Pinned knobs that leave no structurally valid plan: the message names the pinned value
    that cannot divide the GPUs, or the rules the combinations break in words (not the
    duplicate-dropping rules), with exit code 3."""
    model, cluster = load_model("llama3-8b"), load_cluster("dgx-h100", num_gpus=16)
    workload = Workload(global_batch_size=16, seq_length=1024)
    cases = [(Constraints(tp=(3,)), "tp 3 does not divide the 16 GPUs"),
             (Constraints(tp=(8,), cp=(4,)), "no tp x cp x pp of the allowed values divides the 16 GPUs"),
             (Constraints(tp=(16,)), "tp must divide the attention heads (32), the KV heads (8)")]
    for constraints, words in cases:
        with pytest.raises(InfeasibleError, match="no structurally valid plan") as err:
            plan(model, cluster, workload, constraints)
        assert words in str(err.value) and "schedule_without_pp" not in str(err.value)
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


def _nontrivial_dims(order: str, sizes: dict[str, int]) -> tuple[str, ...]:
    return tuple(d for d in order.split("-") if sizes[d] > 1)


def _reference_candidates(model, num_gpus, workload, c, stats):
    """The space as it was enumerated one Plan at a time (Plan validators, check_plan,
    check_schedule, num_chunks): the vectorised rules must give the same plans and counts."""
    import itertools

    from pydantic import ValidationError

    from planner.costmodel.partition import num_chunks
    from planner.costmodel.schedules import check_schedule
    from planner.errors import SpecError
    from planner.search.space import (
        DEFAULT_CPS, DEFAULT_MICRO_BATCH_SIZES, DEFAULT_RANK_ORDERS, DEFAULT_VPPS, _allowed, _divisors,
    )
    from planner.specs import Plan
    from planner.specs.compat import check_plan

    divisors = _divisors(num_gpus)
    tps = [t for t in _allowed(c.tp, divisors) if t in divisors]
    cps = [x for x in _allowed(c.cp, DEFAULT_CPS) if x in divisors]
    pps = [p for p in _allowed(c.pp, divisors) if p in divisors]
    eps = _allowed(c.ep, _divisors(model.moe.num_experts) if model.moe else (1,))
    orders = _allowed(c.rank_order, DEFAULT_RANK_ORDERS)
    for tp, cp, pp in itertools.product(tps, cps, pps):
        if num_gpus % (tp * cp * pp):
            continue
        dp = num_gpus // (tp * cp * pp)
        per_replica = workload.global_batch_size // dp if workload.global_batch_size % dp == 0 else 0
        mbs = _allowed(c.micro_batch_size, [m for m in DEFAULT_MICRO_BATCH_SIZES if m <= max(per_replica, 1)])
        # etp: tp unless listed, else the listed divisors of tp, tp first (dense models: tp only)
        etps = [tp] if model.moe is None or c.etp is None else [
            e for e in [tp] + [d for d in _divisors(tp) if d != tp] if e in c.etp]
        for schedule in _allowed(c.pipeline_schedule, PipelineSchedule):
            for vpp in (_allowed(c.vpp, DEFAULT_VPPS) if schedule is PipelineSchedule.INTERLEAVED else [1]):
                for ep, etp, k, mb, sp, zero, rec in itertools.product(
                        eps, etps, range(len(orders)), mbs, _allowed(c.sequence_parallel, (False, True)),
                        _allowed(c.zero_stage, ZeroStage), _allowed(c.recompute, Recompute)):
                    stats.generated += 1
                    if sp and tp == 1:
                        stats.rejected["sequence_parallel_without_tp"] += 1
                        continue
                    if pp == 1 and schedule is not PipelineSchedule.ONE_F_ONE_B:
                        stats.rejected["schedule_without_pp"] += 1
                        continue
                    edp = tp * cp * dp // (ep * etp)
                    dense = {"tp": tp, "cp": cp, "ep": 1, "dp": dp, "pp": pp}
                    expert = {"tp": etp, "cp": 1, "ep": ep, "dp": edp, "pp": pp}

                    def layout(order):
                        return (_nontrivial_dims(order, dense),
                                _nontrivial_dims(order, expert) if model.moe is not None else ())

                    if any(layout(orders[i]) == layout(orders[k]) for i in range(k)):
                        stats.rejected["rank_order_same_layout"] += 1
                        continue
                    try:
                        plan = Plan(tp=tp, cp=cp, pp=pp, dp=dp, vpp=vpp, ep=ep, etp=None if etp == tp else etp,
                                    micro_batch_size=mb, zero_stage=zero, sequence_parallel=sp, recompute=rec,
                                    pipeline_schedule=schedule, rank_order=orders[k])
                    except ValidationError as exc:
                        error = exc.errors()[0]
                        stats.rejected[f"plan.{(error.get('ctx') or {}).get('field')}"] += 1
                        continue
                    try:
                        check_plan(model, workload, plan, num_gpus)
                        check_schedule(plan.pipeline_schedule, plan.num_microbatches(workload), plan.pp, plan.vpp)
                        if num_chunks(plan) > model.num_layers:
                            raise SpecError("partition.num_chunks", num_chunks(plan), "> num_layers")
                    except SpecError as exc:
                        stats.rejected[exc.field if "." in exc.field else f"schedule.{exc.field}"] += 1
                        continue
                    yield plan


@pytest.mark.parametrize(("name", "gpus", "batch", "seq", "pins"), [
    ("tiny-dense", 16, 64, 2048, {}), ("tiny-moe-mla", 16, 48, 2048, {}), ("llama3-8b", 64, 96, 4096, {}),
    ("deepseek-v3", 2048, 15360, 4096, {"cp": (1, 2), "tp": (1, 8), "vpp": (1, 3), "zero_stage": (1,)}),
    ("gpt3-175b", 1024, 1536, 2048, {"pp": (8, 16, 32, 96, 128)}),
    ("tiny-moe-mla", 16, 48, 2048, {"etp": (1, 2), "rank_order": ("tp-cp-ep-pp-dp", "tp-dp-ep-cp-pp",
                                                                  "tp-cp-ep-dp-pp")}),
])
def test_vectorised_space_equals_the_plan_by_plan_rules(name, gpus, batch, seq, pins):
    model = load_model(name)
    workload = Workload(global_batch_size=batch, seq_length=seq)
    c = Constraints(**pins)
    ref_stats, stats = SpaceStats(), SpaceStats()
    ref = list(_reference_candidates(model, gpus, workload, c, ref_stats))
    got = list(candidates(model, gpus, workload, c, stats))
    assert got == ref
    assert stats.generated == ref_stats.generated and stats.rejected == ref_stats.rejected


def test_bounds_never_exceed_the_simulation_on_deepseek_v3():
    """Level-0 and level-1 bounds on DualPipe(V), 1F1B and ZB plans of V3 (uneven splits,
    EP hidden in F&B pairs, ZeRO-3 waits)."""
    from planner.specs import Plan
    from planner.specs.plan import Precision
    model, cluster = load_model("deepseek-v3"), load_cluster("deepseek-v3-h800")
    workload = Workload(global_batch_size=15360, seq_length=4096, precision=Precision.FP8)
    calc = BoundCalculator(model, cluster, workload)
    for sched, pp, ep, zero in [("dualpipe", 16, 64, 1), ("dualpipev", 8, 32, 3), ("1f1b", 16, 64, 1),
                                ("zero-bubble", 8, 64, 0)]:
        p = Plan(tp=1, pp=pp, ep=ep, dp=2048 // pp, zero_stage=zero, recompute="selective", pipeline_schedule=sched)
        bound, report = calc.bounds(p), simulate(model, cluster, p, workload)
        assert 0.7 * report.step_time_s < bound.step_time_s <= report.step_time_s * (1 + 1e-9), p
        assert 0 < bound.memory_bytes <= report.memory_peak_bytes * (1 + 1e-9), p


@pytest.mark.slow
def test_gpt3_full_space_beats_the_published_layout():
    """Narayanan et al. 2021's GPT-3 175B run on 1024 A100-80GB (batch 1536 x 2048):
    the recommendation's predicted throughput is at least the published layout's."""
    from planner.specs import Plan
    model, cluster = load_model("gpt3-175b"), load_cluster("dgx-a100", num_gpus=1024)
    workload = Workload(global_batch_size=1536, seq_length=2048, precision="fp16")
    best = plan(model, cluster, workload, top_k=1).best.report
    published = simulate(model, cluster, Plan(tp=8, pp=16, dp=8, micro_batch_size=1, recompute="full"), workload)
    assert best.tokens_per_s_per_gpu >= published.tokens_per_s_per_gpu


@pytest.mark.slow
def test_deepseek_v3_full_space_beats_the_published_plan():
    from planner.specs import Plan
    from planner.specs.plan import Precision
    model, cluster = load_model("deepseek-v3"), load_cluster("deepseek-v3-h800")
    workload = Workload(global_batch_size=15360, seq_length=4096, precision=Precision.FP8)
    best = plan(model, cluster, workload, top_k=1).best.report
    published = simulate(model, cluster, Plan(tp=1, pp=16, ep=64, dp=128, zero_stage=1, micro_batch_size=1,
                                              recompute="selective", pipeline_schedule="dualpipe"), workload)
    assert best.step_time_s <= published.step_time_s


def _wide_instance(seed: int):
    """Like :func:`_instance` with every schedule, context parallelism and ZeRO-3 in play
    (DualPipe's pairs, ZeRO-3 waits, the CP exchange: what the refined bounds model)."""
    rng = random.Random(seed)
    name = rng.choice(["tiny-dense", "tiny-moe-mla"])
    model = load_model(name)
    cluster = load_cluster("dgx-h100", num_gpus=rng.choice([8, 16]))
    workload = Workload(global_batch_size=rng.choice([32, 64]), seq_length=model.default_seq_length)
    constraints = Constraints(
        zero_stage=(ZeroStage.OPTIMIZER, ZeroStage.PARAMETERS), recompute=tuple(rng.sample(RECOMPUTES, 2)),
        micro_batch_size=(1, 2), cp=(1, 2), max_memory_fraction=TIGHT[name] if rng.random() < 0.5 else 1.0,
    )
    return model, cluster, workload, constraints


@pytest.mark.parametrize("seed", range(100, 106))
def test_pruned_search_equals_exhaustive_on_every_schedule(seed):
    both = _pruned_and_exhaustive(*_wide_instance(seed))
    if both is None:
        return
    pruned, exhaustive = both
    assert pruned.counts.simulated < exhaustive.counts.simulated


def _sample_plans(name, gpus, batch, seq, n, seed=3, precision="bf16", cluster="dgx-h100"):
    from planner.specs.plan import Precision
    model = load_model(name)
    cl = load_cluster(cluster, num_gpus=gpus)
    workload = Workload(global_batch_size=batch, seq_length=seq, precision=Precision(precision))
    plans = list(candidates(model, gpus, workload))
    return model, cl, workload, random.Random(seed).sample(plans, min(n, len(plans)))


@pytest.mark.parametrize(("name", "gpus", "batch", "seq", "n"), [
    ("tiny-dense", 16, 64, 64, 50), ("tiny-moe-mla", 16, 64, 64, 50), ("llama3-8b", 16, 64, 4096, 25),
])
def test_every_bound_level_is_below_the_simulation_and_the_replay_is_tight(name, gpus, batch, seq, n):
    """Each refinement (rank 0 with stage 0's communication, the busiest ranks, with the
    data-parallel terms, the replayed pipeline) is never above the simulated step; the replay
    prices what the simulator prices, so it is within the search's rounding margin of it."""
    model, cluster, workload, sample = _sample_plans(name, gpus, batch, seq, n)
    calc = BoundCalculator(model, cluster, workload)
    replay = []
    for p in sample:
        step = simulate(model, cluster, p, workload).step_time_s
        levels = calc.levels(p)
        for level, value in levels.items():
            assert 0 < value <= step * (1 + 1e-12), (level, p)
        replay.append(levels["replay"] / step)
    # The replay adds the data-parallel tail of the two ranks that end last only.
    assert sum(r > 1 - 1e-6 for r in replay) >= 0.9 * len(replay)


def _reference_balanced_split(costs: list[float], parts: int) -> list[int]:
    """The plain O(parts * n^2) dynamic programme, strict < over increasing cuts (the oracle)."""
    n = len(costs)
    prefix = [0.0]
    for c in costs:
        prefix.append(prefix[-1] + c)
    inf = float("inf")
    best = [[inf] * (n + 1) for _ in range(parts + 1)]
    cut = [[0] * (n + 1) for _ in range(parts + 1)]
    best[0][0] = 0.0
    for k in range(1, parts + 1):
        for i in range(k, n - (parts - k) + 1):
            for j in range(k - 1, i):
                value = max(best[k - 1][j], prefix[i] - prefix[j])
                if value < best[k][i]:
                    best[k][i], cut[k][i] = value, j
    sizes, i = [], n
    for k in range(parts, 0, -1):
        j = cut[k][i]
        sizes.append(i - j)
        i = j
    return sizes[::-1]


def test_numpy_balanced_split_equals_the_plain_programme():
    """partition.balanced_split (one numpy step per part) returns the plain dynamic
    programme's split, ties included (many equal costs)."""
    from planner.costmodel.partition import balanced_split
    rng = random.Random(1)
    for _ in range(400):
        n = rng.randint(1, 30)
        costs = [rng.choice([1.0, 2.0, 0.1, 0.2, 0.30000000000000004]) if rng.random() < 0.6 else rng.random()
                 for _ in range(n)]
        parts = rng.randint(1, n)
        assert balanced_split(costs, parts) == _reference_balanced_split(costs, parts), (costs, parts)


@pytest.mark.parametrize("schedule", [s for s in SCHEDULES if s not in (PipelineSchedule.DUALPIPE,
                                                                        PipelineSchedule.DUALPIPEV)])
def test_closed_form_programs_agree_with_the_compiled_ones(schedule):
    """Long programs are summarised in closed form (programs.py); on short ones, where both
    exist, the closed form's first position and drain are the compiled program's."""
    import numpy as np

    from planner.costmodel.schedules import _layout
    from planner.search.programs import _closed_form, _from_program
    for pp, vpp, m in [(4, 1, 8), (3, 1, 12), (1, 1, 4), (4, 2, 8), (3, 3, 6)]:
        if (vpp > 1) != (schedule is PipelineSchedule.INTERLEAVED):
            continue
        full = _from_program(schedule, m, pp, vpp)
        closed = _closed_form(schedule, m, pp, _layout(schedule, pp, vpp, m).chunk_ranks)
        for field in ("chain_forward", "chain_sends", "rest_forward", "rest_backward_input", "rest_backward_weight"):
            assert np.array_equal(getattr(full, field)[:, 0], getattr(closed, field)[:, 0]), field
        for field in ("drain_backward_input", "drain_backward_weight", "drain_sends"):
            assert np.array_equal(getattr(full, field), getattr(closed, field)), field


def test_progress_counts_up_to_the_candidates():
    model, cluster, workload, constraints = _instance(3)
    for workers in (1, 2):
        seen = []
        result = plan(model, cluster, workload, constraints, top_k=2, workers=workers,
                      progress=lambda done, total: seen.append((done, total)))
        assert seen and seen[-1] == (len(list(candidates(model, cluster.num_gpus, workload, constraints))),) * 2
        assert all(0 <= d <= t for d, t in seen) and [d for d, _ in seen] == sorted(d for d, _ in seen)
        assert result.ranked


def test_plans_the_cost_model_refuses_are_counted_invalid(monkeypatch):
    """A plan the simulator rejects while pricing it is left out and counted under
    ``costmodel.<field>``, in both modes, and the counts still add up."""
    import sys

    from planner.errors import SpecError
    search_plan = sys.modules["planner.search.plan"]  # the module (the package exports the function)
    real = search_plan.simulate

    def refusing(model, cluster, p, workload):
        if p.pp == 1:
            raise SpecError("node_limit", 4, "too few experts")
        return real(model, cluster, p, workload)

    monkeypatch.setattr(search_plan, "simulate", refusing)
    model, cluster, workload, constraints = _instance(5)
    for exhaustive, workers in ((True, 1), (False, 1), (False, 2)):
        result = plan(model, cluster, workload, constraints, top_k=3, exhaustive=exhaustive, workers=workers)
        c = result.counts
        assert all(r.plan.pp > 1 for r in result.ranked)
        assert c.pruned["divisibility"] == c.generated - c.enumerated
        assert c.simulated + c.pruned["memory_lower_bound"] + c.pruned["time_lower_bound"] == c.enumerated
        if exhaustive:
            assert c.invalid_by_rule["costmodel.node_limit"] > 0


def test_raw_programs_are_the_simulators():
    """programs.py reads each rank's operations before the simulator's compile step
    (schedules.raw_programs); compiling keeps them as they are (schedules._compiled's ops)."""
    from planner.costmodel.schedules import _compiled, raw_programs
    for schedule in SCHEDULES:
        for pp, vpp, m in [(4, 1, 8), (2, 1, 6), (4, 2, 8), (3, 3, 6), (8, 1, 16), (6, 1, 24)]:
            if (vpp > 1) != (schedule is PipelineSchedule.INTERLEAVED) or (
                    schedule is PipelineSchedule.DUALPIPE and pp % 2):
                continue
            raw = tuple(tuple(ops) for ops in raw_programs(schedule, m, pp, vpp))
            assert raw == _compiled(schedule, m, pp, vpp).ops, (schedule, pp, vpp, m)


@pytest.mark.parametrize(("name", "gpus", "batch", "seq"), [
    ("tiny-moe-mla", 16, 64, 64), ("tiny-dense", 16, 64, 64), ("llama3-8b", 16, 64, 4096),
])
def test_batched_first_refinement_equals_the_one_group_path(name, gpus, batch, seq):
    """quick.py prices many groups at once; each value is the one-group path's
    (Refiner.variant_bounds with quick=True) up to float rounding, refusals included."""
    import numpy as np

    from planner.search.quick import quick_bounds
    model, cluster, workload, sample = _sample_plans(name, gpus, batch, seq, 60, seed=7)
    groups = [[p.model_copy(update={"recompute": r}) for r in RECOMPUTES] for p in sample]
    one = BoundCalculator(model, cluster, workload).refiner
    values, errors = quick_bounds(BoundCalculator(model, cluster, workload).refiner, groups)
    for g, variants in enumerate(groups):
        try:
            expected = one.variant_bounds(variants, quick=True)
        except (SpecError, UnsupportedError):
            assert g in errors
            continue
        assert g not in errors
        np.testing.assert_allclose(values[g], expected, rtol=1e-12)


def test_two_process_search_ranks_like_one_on_a_real_space():
    """llama3-8b on 64 H100 (the benchmark's pruned-vs-exhaustive instance, ~15k candidates):
    the forked search's top 5 are the one-process search's, plans and step times, bounds
    below the simulation."""
    model, cluster = load_model("llama3-8b"), load_cluster("dgx-h100", num_gpus=64)
    workload = Workload(global_batch_size=256, seq_length=4096)
    one = plan(model, cluster, workload, top_k=5, workers=1)
    two = plan(model, cluster, workload, top_k=5, workers=2)
    assert _key(two) == _key(one)
    assert all(r.bounds.step_time_s <= (r.simulator_split_step_s or r.report.step_time_s) for r in two.ranked)
    assert two.counts.enumerated == one.counts.enumerated


def test_workers_is_checked():
    from planner.search import parallel
    with pytest.raises(ValueError, match="workers"):
        parallel.workers_for(3, 10)
    assert parallel.workers_for(1, 10**9) == 1
    assert parallel.workers_for(None, parallel.MIN_CANDIDATES - 1) == 1


def test_a_dead_worker_is_replaced_by_the_parent(monkeypatch):
    """If the forked half dies without a word, the parent searches that half itself: same
    ranking as one process."""
    import os

    from planner.search import parallel

    model, cluster, workload, constraints = _instance(3)
    one = plan(model, cluster, workload, constraints, top_k=3, workers=1)
    monkeypatch.setattr(parallel, "_child", lambda *args: os._exit(3))
    two = plan(model, cluster, workload, constraints, top_k=3, workers=2)
    assert _key(two) == _key(one)
    c = two.counts
    assert c.simulated + c.pruned["memory_lower_bound"] + c.pruned["time_lower_bound"] == c.enumerated


# --- expert tensor parallelism (etp) and the rank order as searched knobs -------------------


def _knob_instance(seed: int):
    """A small MoE search with tp > 1, where etp (every divisor of tp) and the rank order
    (the two default orders and a random third) vary."""
    import itertools

    from planner.search.space import RANK_ORDERS
    rng = random.Random(seed)
    model = load_model("tiny-moe-mla")
    cluster = load_cluster("dgx-h100", num_gpus=16)
    workload = Workload(global_batch_size=rng.choice([32, 64]), seq_length=model.default_seq_length)
    others = ["-".join(p) for p in itertools.permutations(("tp", "cp", "ep", "dp", "pp"))]
    third = rng.choice([o for o in others if o not in RANK_ORDERS[:2]])
    constraints = Constraints(
        tp=(2, 4), etp=(1, 2, 4), cp=(1,), zero_stage=(rng.choice([ZeroStage.NONE, ZeroStage.OPTIMIZER]),),
        recompute=(rng.choice(RECOMPUTES),), micro_batch_size=(1, 2),
        pipeline_schedule=tuple(rng.sample(SCHEDULES, 2)), rank_order=RANK_ORDERS[:2] + (third,),
        max_memory_fraction=TIGHT["tiny-moe-mla"] if rng.random() < 0.3 else 1.0,
    )
    return model, cluster, workload, constraints


@pytest.mark.parametrize("seed", range(200, 206))
def test_pruned_search_equals_exhaustive_with_etp_and_rank_order(seed):
    model, cluster, workload, constraints = _knob_instance(seed)
    plans = list(candidates(model, cluster.num_gpus, workload, constraints))
    assert any(p.expert_tp != p.tp for p in plans)
    assert len({p.rank_order for p in plans}) >= 2
    _pruned_and_exhaustive(model, cluster, workload, constraints)


def test_bounds_never_exceed_the_simulation_with_etp_and_rank_order():
    """Every bound level of plans with etp < tp and a non-default rank order is below the
    simulated step, and the memory bounds below the simulated peak."""
    from planner.specs.plan import DEFAULT_RANK_ORDER
    model, cluster = load_model("tiny-moe-mla"), load_cluster("dgx-h100", num_gpus=16)
    workload = Workload(global_batch_size=64, seq_length=64)
    from planner.search.space import RANK_ORDERS
    plans = [p for p in candidates(model, 16, workload, Constraints(etp=(1, 2, 4, 8, 16), rank_order=RANK_ORDERS[:3]))
             if p.expert_tp != p.tp or p.rank_order != DEFAULT_RANK_ORDER]
    calc = BoundCalculator(model, cluster, workload)
    sample = random.Random(11).sample(plans, 60)
    assert any(p.expert_tp != p.tp for p in sample) and any(p.rank_order != DEFAULT_RANK_ORDER for p in sample)
    for p in sample:
        report = simulate(model, cluster, p, workload)
        for level, value in calc.levels(p).items():
            assert 0 < value <= report.step_time_s * (1 + 1e-12), (level, p)
        assert 0 < calc.bounds(p).memory_bytes <= report.memory_peak_bytes * (1 + 1e-9), p


def test_etp_and_rank_order_pins_are_honoured():
    """Unlisted, etp = tp and the order is Megatron's default; listed values are searched."""
    from planner.search.space import ALTERNATE_RANK_ORDER, DEFAULT_RANK_ORDERS
    model, cluster = load_model("tiny-moe-mla"), load_cluster("dgx-h100", num_gpus=16)
    workload = Workload(global_batch_size=64, seq_length=64)
    base = dict(tp=(2, 4), cp=(1,), zero_stage=(ZeroStage.OPTIMIZER,), recompute=(Recompute.NONE,),
                micro_batch_size=(1,))
    default = list(candidates(model, 16, workload, Constraints(**base)))
    assert all(p.expert_tp == p.tp for p in default) and {p.rank_order for p in default} == set(DEFAULT_RANK_ORDERS)
    free = list(candidates(model, 16, workload, Constraints(**base, etp=(1, 2, 4))))
    assert {p.expert_tp for p in free} == {1, 2, 4}
    assert len(free) > len(default)
    one = list(candidates(model, 16, workload, Constraints(**base, etp=(1,))))
    assert one and all(p.expert_tp == 1 for p in one)
    assert len(one) == sum(p.expert_tp == 1 for p in free)
    alt = list(candidates(model, 16, workload, Constraints(**base, rank_order=(ALTERNATE_RANK_ORDER,))))
    assert alt and all(p.rank_order == ALTERNATE_RANK_ORDER for p in alt)
    result = plan(model, cluster, workload, Constraints(**base, etp=(1,), rank_order=(ALTERNATE_RANK_ORDER,)),
                  top_k=3)
    assert all(r["etp"] == 1 and r["rank_order"] == ALTERNATE_RANK_ORDER for r in result.to_records())
    # A dense model has no experts: etp is tp whatever the pin.
    dense = list(candidates(load_model("tiny-dense"), 16, workload, Constraints(**base, etp=(1,))))
    assert dense and all(p.expert_tp == p.tp and p.etp is None for p in dense)
    with pytest.raises(SpecError, match="rank_order"):
        Constraints(rank_order=("tp-pp",))
    with pytest.raises(SpecError, match="etp"):
        Constraints(etp=(0,))


def test_rank_order_equivalence_drops_exactly_the_same_layouts():
    """``rank_order_same_layout`` drops a row's second order exactly when the rank layout
    (every dense and expert group) is the first order's; and on dense models, with the two
    default orders, exactly when pp == 1 or dp == 1."""
    import numpy as np

    from planner.hwmodels.placement import rank_layout
    from planner.search.space import RANK_ORDERS, candidate_table
    pairs = [(RANK_ORDERS[0], RANK_ORDERS[1]), (RANK_ORDERS[0], "tp-ep-cp-dp-pp"), ("pp-dp-ep-cp-tp", RANK_ORDERS[0])]
    for name in ("tiny-moe-mla", "tiny-dense"):
        model = load_model(name)
        workload = Workload(global_batch_size=64, seq_length=64)
        for first, second in pairs:
            base = dict(cp=(1, 2), zero_stage=(ZeroStage.NONE,), recompute=(Recompute.NONE,), micro_batch_size=(1,),
                        pipeline_schedule=(PipelineSchedule.ONE_F_ONE_B,))
            kept = set(candidates(model, 16, workload, Constraints(**base, rank_order=(first, second))))
            alone = list(candidates(model, 16, workload, Constraints(**base, rank_order=(second,))))
            firsts = set(candidates(model, 16, workload, Constraints(**base, rank_order=(first,))))
            dropped = 0
            for p in alone:
                twin = p.model_copy(update={"rank_order": first})
                a, b = rank_layout(twin), rank_layout(p)
                views = [(d, False) for d in ("tp", "cp", "dp", "pp")]
                if model.moe is not None:
                    views += [(d, True) for d in ("etp", "ep", "edp", "pp")]
                same = all(np.array_equal(a.groups(d, experts=e), b.groups(d, experts=e)) for d, e in views)
                assert (p not in kept) == same, p
                if same:
                    dropped += 1
                    assert twin in firsts  # the same plan under the first order is kept
                if model.moe is None and first == RANK_ORDERS[0] and second == RANK_ORDERS[1]:
                    assert same == (p.pp == 1 or p.dp == 1), p
            assert dropped > 0
            stats = SpaceStats()
            candidate_table(model, 16, workload, Constraints(**base, rank_order=(first, second)), stats)
            assert stats.rejected["rank_order_same_layout"] >= dropped


def test_candidate_table_round_trips_plans():
    """from_plans(table's plans) is the table, and its plans are the plans (etp=None where it
    is tp; non-default etp and orders included)."""
    import numpy as np

    from planner.search.space import RANK_ORDERS, CandidateTable, candidate_table
    model = load_model("tiny-moe-mla")
    workload = Workload(global_batch_size=64, seq_length=64)
    table = candidate_table(model, 16, workload, Constraints(etp=(1, 2, 4, 8, 16), rank_order=RANK_ORDERS[:3], cp=(1,)))
    rows = random.Random(5).sample(range(len(table)), 300)
    plans = [table.plan(i) for i in rows]
    assert any(p.etp is not None for p in plans) and len({p.rank_order for p in plans}) == 3
    back = CandidateTable.from_plans(plans)
    for col in CandidateTable.COLUMNS:
        np.testing.assert_array_equal(getattr(back, col), getattr(table, col)[rows], err_msg=col)
    assert [back.plan(k) for k in range(len(back))] == plans


@pytest.mark.parametrize(("args", "option"), [
    (["--etp", "0"], "--etp"), (["--etp", "one"], "--etp"), (["--rank-order", "tp-pp-dp"], "--rank-order"),
    (["--rank-order", "tp-cp-ep-dp-pp,tp-tp-ep-dp-pp"], "--rank-order"),
])
@pytest.mark.parametrize("command", ["plan", "report"])
def test_cli_rejects_bad_etp_and_rank_order(command, args, option, tmp_path):
    out = subprocess.run([sys.executable, "-m", "planner", command, "-m", "tiny-moe-mla", "-c", "dgx-h100", "--gpus",
                          "8", "--global-batch", "16", *args, "--out", str(tmp_path / "x")],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and option in lines[0] and args[1] in lines[0] and "Traceback" not in out.stderr


def test_cli_pins_etp_and_rank_order():
    base = ["-m", "tiny-moe-mla", "-c", "dgx-h100", "--gpus", "16", "--global-batch", "32", "--tp", "2,4", "--cp", "1",
            "--zero", "1", "--recompute", "none", "--micro-batch", "1", "--schedule", "1f1b"]
    out = _cli(*base, "--etp", "1", "--rank-order", "tp-cp-ep-pp-dp", "--top-k", "3", "--format", "json")
    assert out.returncode == 0, out.stderr
    plans = json.loads(out.stdout)["plans"]
    assert plans and all(p["etp"] == 1 and p["rank_order"] == "tp-cp-ep-pp-dp" for p in plans)


@pytest.mark.parametrize(("name", "gpus", "batch", "seq", "n"), [
    ("tiny-moe-mla", 16, 64, 64, 60), ("deepseek-v2-lite", 32, 128, 4096, 12),
])
def test_bounds_hold_under_combined_1f1b(name, gpus, batch, seq, n):
    """Megatron-Core's combined 1F1B (ep_comm_overlap) runs its steady-state forwards and
    backwards as F&B nodes whose halves cost f k and (b + w) k (schedules._merged): the
    bounds count them as pairs (programs.py) and replay the merged programs, so every level
    stays below the simulated step and the replay is tight. (Priced as plain 1F1B, 53 of
    60 tiny-moe-mla plans had a bound above their step.)"""
    from planner.costmodel import ep_overlap
    model, cluster = load_model(name), load_cluster("dgx-h100", num_gpus=gpus)
    workload = Workload(global_batch_size=batch, seq_length=seq, ep_comm_overlap=True)
    merged = [p for p in candidates(model, gpus, workload) if ep_overlap.applies(model, p, workload)]
    calc = BoundCalculator(model, cluster, workload)
    for p in random.Random(5).sample(merged, n):
        step = simulate(model, cluster, p, workload).step_time_s
        levels = calc.levels(p)
        for level, value in levels.items():
            assert 0 < value <= step * (1 + 1e-12), (level, p)
        assert levels["replay"] > step * (1 - 1e-6), p


def test_pruned_search_equals_exhaustive_under_combined_1f1b():
    model, cluster = load_model("tiny-moe-mla"), load_cluster("dgx-h100", num_gpus=16)
    workload = Workload(global_batch_size=32, seq_length=model.default_seq_length, ep_comm_overlap=True)
    constraints = Constraints(micro_batch_size=(1, 2), cp=(1,), zero_stage=(ZeroStage.OPTIMIZER,),
                              pipeline_schedule=(PipelineSchedule.ONE_F_ONE_B, PipelineSchedule.INTERLEAVED))
    pruned, exhaustive = _pruned_and_exhaustive(model, cluster, workload, constraints)
    assert pruned.counts.simulated < exhaustive.counts.simulated
