"""planner.report.trace: the simulated pipeline timeline as a Chrome/Perfetto trace."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import defaultdict

import pytest

from planner import load_cluster, load_model
from planner.costmodel.schedules import ChunkTimes, EventKind, simulate_pipeline
from planner.costmodel.simulate import simulate
from planner.report import chrome_trace, write_chrome_trace
from planner.specs import Plan, Workload
from planner.specs.plan import PipelineSchedule

EPS_US = 1e-6


def _timeline(schedule: PipelineSchedule):
    # Unequal chunks and a p2p delay, so the timeline has bubbles and waits.
    times = [ChunkTimes(1e-3 * (1 + c / 4), 2e-3, 1e-3, 3.5e-3) for c in range(4)]
    return simulate_pipeline(schedule, times, num_microbatches=8, pp=4, p2p_s=1e-4)


def _x(trace: dict) -> list[dict]:
    return [e for e in trace["traceEvents"] if e["ph"] == "X"]


@pytest.mark.parametrize("schedule", [PipelineSchedule.ONE_F_ONE_B, PipelineSchedule.DUALPIPE])
def test_trace_one_event_per_block(schedule: PipelineSchedule, tmp_path) -> None:
    tl = _timeline(schedule)
    path = write_chrome_trace(tl, tmp_path / "sub" / "trace.json", label="test")
    trace = json.loads(path.read_text())
    assert trace["displayTimeUnit"] == "ms"
    xs = _x(trace)
    assert len(xs) == len(tl.events)
    # One X event per timeline event, in the same order, with the same times.
    for x, e in zip(xs, tl.events, strict=True):
        assert (x["tid"], x["cat"], x["pid"]) == (e.rank, e.kind.value, 0)
        assert x["args"]["microbatch"] == e.microbatch and x["args"]["chunk"] == e.chunk
        assert x["ts"] == pytest.approx(e.start_s * 1e6)
        assert x["ts"] + x["dur"] == pytest.approx(e.end_s * 1e6)
    makespan_us = tl.makespan_s * 1e6
    assert max(x["ts"] + x["dur"] for x in xs) == pytest.approx(makespan_us)
    by_tid = defaultdict(list)
    for x in xs:
        assert x["ts"] >= 0 and x["dur"] >= 0
        assert x["ts"] + x["dur"] <= makespan_us + EPS_US
        by_tid[x["tid"]].append(x)
    assert sorted(by_tid) == list(range(4))
    for events in by_tid.values():  # a rank runs one block at a time
        events.sort(key=lambda x: x["ts"])
        for a, b in zip(events, events[1:]):
            assert a["ts"] + a["dur"] <= b["ts"] + EPS_US
    names = {e["tid"]: e["args"]["name"] for e in trace["traceEvents"] if e.get("name") == "thread_name"}
    assert names == {r: f"rank {r}" for r in range(4)}
    # Every forward (alone or in an F&B pair) and every backward appears once per (mb, chunk).
    forwards = [(x["args"]["microbatch"], x["args"]["chunk"]) for x in xs if x["cat"] in ("F", "FB")]
    backwards = [(x["args"]["microbatch"], x["args"]["chunk"]) for x in xs if x["cat"] in ("B", "BW")]
    backwards += [(x["args"]["backward_microbatch"], x["args"]["backward_chunk"]) for x in xs if x["cat"] == "FB"]
    assert sorted(forwards) == sorted(backwards) == sorted((m, c) for m in range(8) for c in range(4))


def test_1f1b_names() -> None:
    xs = _x(chrome_trace(_timeline(PipelineSchedule.ONE_F_ONE_B)))
    assert xs[0]["name"] == "F mb0 c0"
    assert {x["args"]["direction"] for x in xs} == {0}
    assert {x["cat"] for x in xs} == {"F", "BW"}
    assert not any(x["name"][0] in "→←" for x in xs)


def test_dualpipe_two_directions() -> None:
    tl = _timeline(PipelineSchedule.DUALPIPE)
    xs = _x(chrome_trace(tl, label="dualpipe"))
    assert {x["args"]["direction"] for x in xs} == {0, 1}
    for x in xs:
        assert x["name"].startswith("→" if x["args"]["direction"] == 0 else "←")
    cnames = {d: {x["cname"] for x in xs if x["args"]["direction"] == d} for d in (0, 1)}
    assert cnames[0] and cnames[1] and not cnames[0] & cnames[1]
    pairs = [x for x in xs if x["cat"] == EventKind.FB.value]
    assert pairs
    for x in pairs:
        a = x["args"]
        want = (f"{'→←'[a['direction']]}F mb{a['microbatch']} c{a['chunk']} + "
                f"{'→←'[a['backward_direction']]}B mb{a['backward_microbatch']} c{a['backward_chunk']}")
        assert x["name"] == want
    # Direction 1 enters at the last rank: its first forward runs there.
    first = min((x for x in xs if x["args"]["direction"] == 1 and x["cat"] == "F"), key=lambda x: x["ts"])
    assert first["tid"] == 3 and first["args"]["chunk"] == 0


def test_trace_from_step_report() -> None:
    model, cluster = load_model("tiny-moe-mla"), load_cluster("dgx-h100", num_gpus=8)
    plan = Plan(dp=4, pp=2, ep=4, pipeline_schedule="dualpipe")
    report = simulate(model, cluster, plan, Workload(global_batch_size=16, seq_length=model.default_seq_length))
    assert report.timeline is not None
    assert "timeline" not in report.model_dump(mode="json")
    assert "timeline" not in repr(report)
    xs = _x(chrome_trace(report))
    assert len(xs) == len(report.timeline.events)
    with pytest.raises(TypeError):
        chrome_trace(object())


def test_cli_simulate_trace(tmp_path) -> None:
    out_file = tmp_path / "trace.json"
    out = subprocess.run(
        [sys.executable, "-m", "planner", "simulate", "-m", "tiny-moe-mla", "-c", "dgx-h100", "--gpus", "8",
         "--global-batch", "16", "--ep", "4", "--pp", "2", "--schedule", "dualpipe", "--trace", str(out_file)],
        capture_output=True, text=True, timeout=300,
    )
    assert out.returncode == 0, out.stderr
    assert str(out_file) in out.stdout
    trace = json.loads(out_file.read_text())
    xs = _x(trace)
    assert xs and {x["tid"] for x in xs} == {0, 1}
    assert {x["args"]["direction"] for x in xs} == {0, 1}


def test_cli_simulate_trace_json_and_bad_path(tmp_path) -> None:
    base = [sys.executable, "-m", "planner", "simulate", "-m", "tiny-dense", "-c", "dgx-h100", "--gpus", "8",
            "--global-batch", "16", "--pp", "4", "--format", "json", "--trace"]
    out = subprocess.run([*base, str(tmp_path / "t.json")], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert data["trace_file"] == str(tmp_path / "t.json")
    assert _x(json.loads((tmp_path / "t.json").read_text()))
    (tmp_path / "file").write_text("")
    bad = subprocess.run([*base, str(tmp_path / "file" / "t.json")], capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "--trace" in bad.stderr and "Traceback" not in bad.stderr
