"""Workload.pipeline_p2p: DeepSpeed's blocking pipeline transfers against Megatron's.

Under ``deepspeed`` every forward and backward of a stage waits out its receive and its send
(deepspeed/runtime/pipe/p2p.py: ``assert async_op == False``), so the step rises by those
waits, the report counts them as exposed PP time, the vectorised estimate mirrors them, and
the only schedule is 1F1B; the validator picks it for pipelined rows that name DeepSpeed.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from planner import load_cluster, load_model
from planner.costmodel.comm import pp_blocking_transfers, pp_p2p_s
from planner.costmodel.fast import estimate
from planner.costmodel.report import Dim
from planner.costmodel.simulate import simulate
from planner.errors import SpecError
from planner.hwmodels.placement import rank_layout
from planner.search.space import Constraints, candidate_table
from planner.specs import PipelineP2P, Plan, Workload
from planner.specs.compat import check_plan
from planner.validation.cases import case_inputs

DEEPSPEED = PipelineP2P.DEEPSPEED
CASES = Path(__file__).resolve().parents[1] / "data" / "validation" / "public_cases.csv"


@pytest.fixture(scope="module")
def inputs():
    model, cluster = load_model("llama3-8b"), load_cluster("dgx-a100")
    workload = Workload(global_batch_size=64, seq_length=4096)
    return model, cluster, workload


def test_transfers_per_stage():
    assert pp_blocking_transfers(1).tolist() == [0.0]
    assert pp_blocking_transfers(2).tolist() == [1.0, 1.0]
    assert pp_blocking_transfers(5).tolist() == [1.0, 2.0, 2.0, 2.0, 1.0]


def test_blocking_transfers_are_exposed_and_slower(inputs):
    model, cluster, workload = inputs
    cluster = cluster.with_num_gpus(8)
    plan = Plan(tp=2, pp=4, dp=1, micro_batch_size=1)
    megatron = simulate(model, cluster, plan, workload)
    blocking = simulate(model, cluster, plan, workload.model_copy(update={"pipeline_p2p": DEEPSPEED}))
    p2p = pp_p2p_s(cluster, plan, workload, rank_layout(plan), model)
    assert p2p > 0
    m = plan.num_microbatches(workload)
    # Megatron hides every transfer in the schedule's slack; blocking ones are exposed, one
    # per forward and per backward at the pipeline's ends and two in the middle.
    assert megatron.comm_exposed_s[Dim.PP] == 0.0
    assert blocking.comm_hidden_s[Dim.PP] == 0.0
    assert blocking.comm_exposed_s[Dim.PP] in (pytest.approx(2 * m * p2p), pytest.approx(4 * m * p2p))
    # The waits sit on the critical path: the step rises by at least the critical rank's
    # waits less the dependency delays Megatron's schedule already paid.
    assert blocking.step_time_s > megatron.step_time_s + 2 * (m - 2 * plan.pp) * p2p


def test_no_pipeline_no_change(inputs):
    model, cluster, workload = inputs
    cluster = cluster.with_num_gpus(8)
    plan = Plan(tp=2, pp=1, dp=4, micro_batch_size=1)
    a = simulate(model, cluster, plan, workload)
    b = simulate(model, cluster, plan, workload.model_copy(update={"pipeline_p2p": DEEPSPEED}))
    assert a.step_time_s == b.step_time_s


def test_only_1f1b(inputs):
    model, _, workload = inputs
    plan = Plan(tp=2, pp=4, vpp=2, dp=1, pipeline_schedule="interleaved")
    with pytest.raises(SpecError, match="pipeline_schedule"):
        check_plan(model, workload.model_copy(update={"pipeline_p2p": DEEPSPEED}), plan)
    table = candidate_table(model, 32, workload.model_copy(update={"pipeline_p2p": DEEPSPEED}),
                            Constraints(pp=(1, 2, 4)))
    pp, sched = np.asarray(table.pp), np.asarray(table.sched)
    assert (pp > 1).any() and len({int(s) for s in sched[pp > 1]}) == 1
    assert all(table.plan(i).pipeline_schedule.value == "1f1b" for i in np.nonzero(pp > 1)[0][:50])


def test_fast_estimate_mirrors_simulate(inputs):
    model, cluster, workload = inputs
    workload = workload.model_copy(update={"pipeline_p2p": DEEPSPEED})
    plans = [Plan(tp=tp, pp=pp, dp=32 // (tp * pp), micro_batch_size=mb, recompute=rec)
             for tp in (1, 2, 4) for pp in (2, 4, 8) for mb in (1, 2) for rec in ("none", "full")]
    cluster = cluster.with_num_gpus(32)
    est = estimate(model, cluster, workload, plans)
    for plan, step in zip(plans, est.step_time_s, strict=True):
        assert step == pytest.approx(simulate(model, cluster, plan, workload).step_time_s, rel=1e-9)


def test_validator_picks_deepspeed_for_pipelined_rows_that_name_it():
    rows = {r["case_id"]: r for r in csv.DictReader(CASES.open())}
    chosen = {}
    for case_id, row in rows.items():
        text = f"{row['source']} {row['notes']}".lower()
        chosen[case_id] = (case_inputs(row).workload.pipeline_p2p, "deepspeed" in text, int(row["pp"] or 1) > 1)
    assert any(named and piped for _, named, piped in chosen.values())
    for p2p, named, piped in chosen.values():
        assert (p2p is DEEPSPEED) == (named and piped)
