"""The memory-constrained layer split (planner/costmodel/partition_solver.py).

Oracle: brute force over every contiguous split (compositions of the blocks into chunks)
on small instances; the solver must return a split with exactly the minimal bottleneck
among those that fit, and None when none fits. Then one real plan whose balanced split
overflows rank 0 is made to fit, checked with the simulator's own ``stage_memory``.
"""

from __future__ import annotations

import itertools

import pytest

pytest.importorskip("ortools")

from planner import load_cluster, load_model  # noqa: E402
from planner.costmodel import compute as C  # noqa: E402
from planner.costmodel.memory import inflight_microbatches, stage_memory  # noqa: E402
from planner.costmodel.partition import Piece, model_pieces, partition, partition_from_counts  # noqa: E402
from planner.costmodel.partition_solver import blocks_per_chunk, fit_partition  # noqa: E402
from planner.specs import Plan, Workload  # noqa: E402
from planner.specs.plan import PipelineSchedule, Recompute  # noqa: E402

GIB = 2.0**30


def _compositions(total: int, parts: int):
    for cuts in itertools.combinations(range(1, total), parts - 1):
        bounds = (0, *cuts, total)
        yield [bounds[i + 1] - bounds[i] for i in range(parts)]


def _load(part, piece_s, rank):
    return sum(piece_s.get(p, 0.0) for c in part.chunks_of_rank(rank) for p in c.pieces)


def _deviation(part, piece_s, share):
    return sum(abs(sum(piece_s.get(p, 0.0) for p in c.pieces) - share) for c in part.chunks)


def _toy_memory(weight: dict[Piece, float], nonlinear: bool):
    """Bytes on a rank: per-piece state plus (pp - rank) in-flight copies of activations,
    optionally plus the largest piece once more (a working set: not linear in counts)."""

    def mem(part, rank):
        pieces = [p for c in part.chunks_of_rank(rank) for p in c.pieces]
        total = sum(weight[p] * (1 + (part.pp - rank)) for p in pieces)
        if nonlinear:
            total += 3 * max(weight[p] for p in pieces)
        return total * GIB

    return mem


@pytest.mark.parametrize("preset,pp,schedule", [
    ("tiny-moe-mla", 2, PipelineSchedule.ONE_F_ONE_B),
    ("tiny-moe-mla", 4, PipelineSchedule.ONE_F_ONE_B),
    ("tiny-moe-mla", 2, PipelineSchedule.DUALPIPE),
    ("tiny-moe-mla", 4, PipelineSchedule.DUALPIPE),
    ("tiny-dense", 2, PipelineSchedule.ONE_F_ONE_B),
    ("tiny-dense", 4, PipelineSchedule.ONE_F_ONE_B),
])
@pytest.mark.parametrize("nonlinear", [False, True])
def test_matches_brute_force(preset, pp, schedule, nonlinear):
    model = load_model(preset)
    plan = Plan(pp=pp, pipeline_schedule=schedule, dp=1)
    weight = {Piece.EMBEDDING: 0.7, Piece.DENSE: 1.0, Piece.MOE: 1.6, Piece.HEAD: 0.9, Piece.MTP: 1.2}
    piece_s = {Piece.EMBEDDING: 0.1, Piece.DENSE: 1.0, Piece.MOE: 1.3, Piece.HEAD: 0.8, Piece.MTP: 1.1}
    mem = _toy_memory(weight, nonlinear)
    start = partition(model, plan, piece_s)
    splits = [partition_from_counts(model, plan, c) for c in _compositions(model.num_layers, len(start.chunks))]
    assert splits, "the instance must have at least one split"
    peaks = [max(mem(s, r) for r in range(pp)) for s in splits]
    # Capacities from "everything fits" down to "nothing fits", through the tight middle.
    for capacity in sorted({min(peaks), *peaks})[:: max(1, len(peaks) // 6)] + [min(peaks) - GIB]:
        feasible = [s for s, peak in zip(splits, peaks, strict=True) if peak <= capacity]
        got = fit_partition(model, plan, piece_s, mem, capacity, start)
        if not feasible:
            assert got is None
            continue
        best = min(max(_load(s, piece_s, r) for r in range(pp)) for s in feasible)
        start_fits = max(mem(start, r) for r in range(pp)) <= capacity
        if nonlinear and got is None:
            # Conservative under non-linear memory, but never loses a starting split that fits.
            assert not start_fits
            continue
        assert got is not None, f"capacity {capacity / GIB:.2f}: a split fits but none was found"
        assert max(mem(got.partition, r) for r in range(pp)) <= capacity
        achieved = max(_load(got.partition, piece_s, r) for r in range(pp))
        assert achieved == pytest.approx(got.bottleneck_s)
        assert achieved >= best - 1e-9
        if start_fits:
            assert achieved <= max(_load(start, piece_s, r) for r in range(pp)) + 1e-9
        if not nonlinear:  # linear memory: exactly the brute-force optimum
            assert achieved == pytest.approx(best), blocks_per_chunk(got.partition)
            per_rank = len(start.chunks) // pp
            if per_rank > 1:  # then, among those, the most even chunks
                optimal = [s for s in feasible
                           if max(_load(s, piece_s, r) for r in range(pp)) <= best + 1e-9]
                least = min(_deviation(s, piece_s, best / per_rank) for s in optimal)
                assert _deviation(got.partition, piece_s, best / per_rank) == pytest.approx(least, abs=1e-6)


def test_partition_from_counts_rejects_bad_counts():
    model = load_model("tiny-dense")
    plan = Plan(pp=2, dp=1)
    with pytest.raises(ValueError, match="do not split"):
        partition_from_counts(model, plan, [0, model.num_layers])
    # A loss-only last stage is a split (Megatron's layouts allow it).
    assert partition_from_counts(model, plan, [model.num_layers, 0]).chunks[-1].pieces == (Piece.HEAD,)
    with pytest.raises(ValueError, match="do not split"):
        partition_from_counts(model, plan, [1, 1, model.num_layers - 2])


def test_a_balanced_split_that_overflows_rank0_is_made_to_fit():
    """llama3-70b, tp4 pp8 dp2, micro-batch 1 x 8192, selective recompute on 64 H100-80GB:
    1F1B keeps pp - rank micro-batches in flight, so the even split (10 blocks per rank)
    overflows rank 0 (~88 GiB); moving blocks toward the last ranks fits. Checked with the
    simulator's own stage_memory, not the solver's linearisation."""
    model, cluster = load_model("llama3-70b"), load_cluster("dgx-h100", num_gpus=64)
    workload = Workload(global_batch_size=64, seq_length=8192)
    plan = Plan(tp=4, pp=8, dp=2, micro_batch_size=1, recompute=Recompute.SELECTIVE, sequence_parallel=True)
    num = plan.num_microbatches(workload)

    def mem(part, rank):
        inflight = inflight_microbatches(plan, num, rank)
        return stage_memory(model, plan, workload, part, rank, cluster.gpu, inflight).total_bytes

    capacity = cluster.gpu.hbm_capacity_bytes
    even = partition(model, plan)
    assert mem(even, 0) > capacity
    piece_s = {}
    for piece in set(model_pieces(model)):
        t = C.piece_time(C.piece_ops(model, plan, workload, piece), cluster.gpu, workload.precision, plan.recompute)
        piece_s[piece] = t.forward_s + t.backward_input_s + t.backward_weight_s
    got = fit_partition(model, plan, piece_s, mem, capacity, even)
    assert got is not None
    counts = blocks_per_chunk(got.partition)
    assert sum(counts) == model.num_layers
    assert all(mem(got.partition, r) <= capacity for r in range(plan.pp))
    assert counts[0] < counts[-2], counts  # rank 0 gives blocks away


def test_plan_pipeline_layers_rules():
    """One block count per model chunk (Plan), adding up to the model's layers (compat)."""
    from planner.errors import SpecError
    from planner.specs.compat import check_plan

    model = load_model("tiny-dense")
    workload = Workload(global_batch_size=8, seq_length=64)
    assert Plan(pp=2, dp=1, pipeline_layers=[3, 1]).num_chunks == 2
    assert Plan(pp=2, dp=1, pipeline_schedule=PipelineSchedule.DUALPIPEV).num_chunks == 4
    with pytest.raises(ValueError, match="one block count per model chunk"):
        Plan(pp=2, dp=1, pipeline_layers=[4])
    with pytest.raises(ValueError, match="every chunk but the last"):
        Plan(pp=2, dp=1, pipeline_layers=[0, 4])
    with pytest.raises(SpecError, match="must add up to num_layers"):
        check_plan(model, workload, Plan(pp=2, dp=1, pipeline_layers=[model.num_layers, 1]))


def _planner_cli(*args: str):
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-m", "planner", *args], capture_output=True, text=True)


def test_simulate_cli_suggests_and_takes_a_fitted_split():
    """The OOM plan of the test above: `planner simulate` names a split that fits, and
    simulating with it (--pipeline-layers) fits and reports that split."""
    import json

    common = ["simulate", "-m", "llama3-70b", "-c", "dgx-h100", "--gpus", "64", "--global-batch", "64",
              "--seq-len", "8192", "--tp", "4", "--pp", "8", "--recompute", "selective", "--sequence-parallel",
              "-f", "json"]
    first = _planner_cli(*common)
    assert first.returncode == 0, first.stderr
    data = json.loads(first.stdout)
    assert data["status"] == "oom"
    layers = data["fitted_pipeline_layers"]["pipeline_layers"]
    assert sum(layers) == 80 and len(layers) == 8
    second = _planner_cli(*common, "--pipeline-layers", ",".join(map(str, layers)))
    assert second.returncode == 0, second.stderr
    fitted = json.loads(second.stdout)
    assert fitted["status"] == "ok"
    assert fitted["pipeline_layers"] == layers
    assert fitted["step_time_s"] == pytest.approx(data["fitted_pipeline_layers"]["step_time_s"])
    bad = _planner_cli(*common, "--pipeline-layers", "10,10")
    assert bad.returncode == 2 and "pipeline_layers" in bad.stderr and "Traceback" not in bad.stderr


def test_plan_emit_carries_the_simulated_split(tmp_path):
    """`planner plan --emit` writes the uneven split #1 was simulated with into the run
    config and Megatron's layout argument, so the launched run builds the same stages."""
    import yaml

    out = tmp_path / "emit"
    result = _planner_cli("plan", "-m", "llama3-8b", "-c", "dgx-h100", "--gpus", "16", "--global-batch", "64",
                          "--seq-len", "4096", "--pp", "4", "--tp", "1,2", "--emit", str(out), "-f", "json")
    assert result.returncode == 0, result.stderr
    config = yaml.safe_load((out / "run_config.yaml").read_text())
    layers = config["plan"]["pipeline_layers"]
    args = (out / "megatron_args.txt").read_text()
    if layers is None:  # an even split stays Megatron's default
        assert "--pipeline-model-parallel-layout" not in args
    else:
        assert sum(layers) == 32 and len(set(layers)) > 1
        assert "--pipeline-model-parallel-layout" in args
