"""planner.search.explain and `planner explain`: exact term sums, dominant terms, verdict,
sensitivity monotonicity, CLI smoke."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from planner.costmodel.simulate import simulate
from planner.presets import load_cluster, load_model
from planner.search.explain import explain, sensitivity
from planner.specs import Plan, Workload


@pytest.fixture(scope="module")
def setup():
    model = load_model("llama3-8b")
    cluster = load_cluster("dgx-h100", num_gpus=16)
    workload = Workload(global_batch_size=128, seq_length=8192)
    return model, cluster, workload


def _explain(setup, pa: Plan, pb: Plan):
    model, cluster, workload = setup
    ra, rb = simulate(model, cluster, pa, workload), simulate(model, cluster, pb, workload)
    return explain(ra, rb, plans=(pa, pb), cluster=cluster)


PAIRS = [
    (Plan(tp=1, dp=16), Plan(tp=8, dp=2)),
    (Plan(pp=1, dp=16), Plan(pp=4, dp=4)),
    (Plan(pp=4, tp=2, dp=2, recompute="full"), Plan(pp=2, dp=8, pipeline_schedule="zero-bubble")),
]


@pytest.mark.parametrize("pa,pb", PAIRS)
def test_terms_and_phases_sum_to_step_difference(setup, pa, pb):
    e = _explain(setup, pa, pb)
    scale = max(e.a_step_s, e.b_step_s)
    assert abs(sum(t.delta_s for t in e.terms) - e.delta_s) <= 1e-9 * scale
    assert abs(sum(t.delta_s for t in e.phases) - e.delta_s) <= 1e-9 * scale
    assert abs(sum(t.a_s for t in e.terms) - e.a_step_s) <= 1e-9 * scale
    assert abs(sum(t.b_s for t in e.terms) - e.b_step_s) <= 1e-9 * scale


def test_tp8_vs_tp1_exposed_tp_dominates(setup):
    e = _explain(setup, Plan(tp=1, dp=16), Plan(tp=8, dp=2))
    assert e.slower == "B"
    assert e.dominant[0].key == "tp_comm"
    assert e.dominant[0].delta_s > 0
    assert e.verdict.startswith("B is ")
    assert "slower than A" in e.verdict
    assert "TP1 vs TP8" in e.verdict and "NVLink" in e.verdict


def test_pp4_vs_pp1_bubble_dominates(setup):
    e = _explain(setup, Plan(pp=4, dp=4), Plan(pp=1, dp=16))
    assert e.slower == "A"
    assert e.dominant[0].key == "bubble"
    assert e.dominant[0].delta_s < 0
    assert e.verdict.startswith("A is ")
    assert "bubble" in e.verdict


def test_json_is_stable(setup):
    e = _explain(setup, Plan(tp=1, dp=16), Plan(tp=8, dp=2))
    data = json.loads(json.dumps(e.to_json()))
    assert set(data) == {"labels", "step_time_s", "delta_s", "relative_delta", "slower", "terms", "dominant",
                         "phases", "memory", "verdict", "plans"}
    assert [t["key"] for t in data["terms"]][:3] == ["compute", "recompute", "tp_comm"]
    assert data["dominant"][0] == "tp_comm"


def test_sensitivity_monotone_and_ranking(setup):
    model, cluster, workload = setup
    s = sensitivity(model, cluster, Plan(tp=8, dp=2), workload, plans=[Plan(tp=1, dp=16), Plan(pp=4, dp=4)])
    slow, fast = s.scenario("bw_x0.5"), s.scenario("bw_x1.5")
    for o_slow, o_fast in zip(slow.outcomes, fast.outcomes):
        assert o_slow.ratio >= 1.0 - 1e-12
        assert o_fast.ratio <= 1.0 + 1e-12
    gpus = s.scenario("gpus_x2")
    assert all(o.ratio is not None and o.ratio < 1.0 for o in gpus.outcomes)
    for sc in s.scenarios:
        assert sc.ranking_changed in (True, False)
        assert sorted(sc.ranking) == [0, 1, 2]
    # tp1 dp16 (no ZeRO) does not fit 80 GB: it ranks last; pp4 beats tp8.
    assert not s.baseline.outcomes[1].fits
    assert s.baseline.ranking == (2, 0, 1)
    single = sensitivity(model, cluster, Plan(tp=1, dp=16), workload)
    assert all(sc.ranking_changed is None for sc in single.scenarios)


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "planner", "explain", *args], capture_output=True, text=True,
                          timeout=60, env={"COLUMNS": "200", **__import__("os").environ})


@pytest.fixture()
def plan_files(tmp_path):
    a, b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    a.write_text("tensor_model_parallel_size: 8\n")
    b.write_text("tp: 1\n")
    return a, b


BASE = ("-m", "llama3-8b", "-c", "dgx-h100", "--gpus", "16", "--global-batch", "128", "--seq-len", "8192")


def test_cli_table(plan_files):
    a, b = plan_files
    r = _cli(*BASE, "--plan-a", str(a), "--plan-b", str(b), "--sensitivity")
    assert r.returncode == 0, r.stderr
    assert "exposed TP comm" in r.stdout and "A is " in r.stdout and "inter-node bandwidth x0.5" in r.stdout


def test_cli_json(plan_files):
    a, b = plan_files
    r = _cli(*BASE, "--plan-a", str(a), "--plan-b", str(b), "--format", "json")
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    assert data["slower"] == "A" and data["dominant"][0] == "tp_comm"
    assert data["plans"]["A"]["tp"] == 8 and data["plans"]["A"]["dp"] == 2
    assert "sensitivity" not in data


@pytest.mark.parametrize("content", ["tp: 3\n", "tp: [1\n", "bogus_knob: 1\n"])
def test_cli_bad_plan_exit_2(plan_files, tmp_path, content):
    a, _ = plan_files
    bad = tmp_path / "bad.yaml"
    bad.write_text(content)
    r = _cli(*BASE, "--plan-a", str(a), "--plan-b", str(bad))
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr + r.stdout
    assert len(r.stderr.strip().splitlines()) == 1


def test_combined_1f1b_is_named_where_it_hides_the_all_to_all():
    """With ep_comm_overlap the plan whose pairs run (selective recompute) hides its EP16
    all-to-all across nodes; full recomputation turns combined 1F1B off, so its all-to-all
    is exposed and the term says which plan paired (labels as given). Terms still sum."""
    model, cluster = load_model("deepseek-v2-lite"), load_cluster("dgx-h100", num_gpus=32)
    workload = Workload(global_batch_size=128, seq_length=4096, ep_comm_overlap=True)
    pa = Plan(pp=2, vpp=2, ep=16, dp=16, pipeline_schedule="interleaved", recompute="selective")
    pb = pa.model_copy(update={"recompute": "full"})
    ra, rb = simulate(model, cluster, pa, workload), simulate(model, cluster, pb, workload)
    e = explain(ra, rb, ("paired", "full"), plans=(pa, pb), cluster=cluster)
    ep = next(t for t in e.terms if t.key == "ep_comm")
    assert ep.a_s == 0 < ep.b_s
    assert "hidden in combined 1F1B pairs of paired" in ep.note
    assert abs(sum(t.delta_s for t in e.terms) - e.delta_s) <= 1e-9 * max(e.a_step_s, e.b_step_s)


def test_runner_up_words_call_a_sub_rounding_gap_a_tie():
    """plan and report say how much slower the runner-up is; a gap that prints as 0.0% is a tie."""
    from planner.search.explain import runner_up_words

    assert runner_up_words(10.0, 10.0) == runner_up_words(10.0, 10.004)
    assert runner_up_words(10.0, 10.0).startswith("takes the same time")
    assert runner_up_words(10.0, 10.12) == "is 1.2% slower"
