"""DualPipe pricing: Megatron-Bridge's filled layer split as a simulator candidate, the F&B
pair's compute stalls (DeepSeek's kernel profile), and the Table 4 phase convention."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from planner import load_cluster, load_model
from planner.costmodel.compute import compute_constants
from planner.costmodel.partition import filled_counts
from planner.costmodel.schedules import ChunkTimes, EventKind, simulate_pipeline
from planner.costmodel.simulate import dualpipe_pair_s, simulate
from planner.specs import Plan, Workload


@pytest.mark.parametrize(("blocks", "chunks", "expected"), [
    # Megatron-Bridge recipes/deepseek/deepseek_v3.py, set_deepseek_v3_pipeline_model_parallel_layout:
    # (16, 1) and (8, 2): [embedding + 4] + [4] * 14 + [1 + mtp + loss]
    (61, 16, [4] * 15 + [1]),
    # (8, 1): [embedding + 8] + [8] * 6 + [5 + mtp + loss]
    (61, 8, [8] * 7 + [5]),
    # (4, 1): 16, 16, 16, 13 + mtp + loss
    (61, 4, [16, 16, 16, 13]),
    (30, 16, [2] * 15 + [0]),  # the last chunk holds only the head (and MTP)
    (17, 16, None),  # ceil = 2 leaves chunks before the last empty
    (8, 1, None),
])
def test_filled_counts_are_megatron_bridges_layouts(blocks, chunks, expected):
    assert filled_counts(blocks, chunks) == expected


def test_simulate_takes_the_filled_split_when_it_is_fastest():
    """DeepSeek-V3's plan under forced-balanced routing: the filled split (4 x 15, 1) is
    faster than the forward-balanced and count splits, and simulate keeps it (the report's
    split and its note say so)."""
    model, cluster = load_model("deepseek-v3"), load_cluster("deepseek-v3-h800")
    plan = Plan(pp=16, ep=64, dp=128, zero_stage=1, recompute="selective", pipeline_schedule="dualpipe")
    workload = Workload(global_batch_size=15360, seq_length=4096, precision="fp8", adam_moment_dtype="bf16",
                        moe_dispatch_dtype="fp8", overlap_param_gather=False, moe_routing="balanced")
    report = simulate(model, cluster, plan, workload)
    assert report.pipeline_layers == (4,) * 15 + (1,)
    assert any("Megatron-Bridge" in m for m in report.messages)
    # The count split it kept before the filled candidate: rank 0 carried 3 dense + 3 MoE
    # blocks, the head and MTP: 2 s slower.
    count = (3, 4, 4, 4, 4, 4, 4, 4, 3, 4, 4, 4, 4, 4, 4, 3)
    pinned = simulate(model, cluster, plan.model_copy(update={"pipeline_layers": count}), workload)
    assert report.step_time_s < 0.92 * pinned.step_time_s


def test_pair_stalls_only_when_it_hides_all_to_all():
    """DeepSeek's profile of one F&B pair: compute busy 118.2 ms of a 128.5 ms span
    (seeds-digest §2.10). A pair hiding all-to-all takes compute / 0.920; without all-to-all
    it is its compute; never longer than the chunk run serially."""
    frac = compute_constants()["dualpipe_pair_compute_busy_fraction"]
    assert frac == pytest.approx(118.2 / 128.5, abs=5e-4)
    assert dualpipe_pair_s(0.1182, 0.09, 0.0, 0.0, 1.0, frac) == pytest.approx(0.1285, abs=1e-4)
    assert dualpipe_pair_s(0.1182, 0.0, 0.0, 0.0, 1.0, frac) == pytest.approx(0.1182)
    assert dualpipe_pair_s(0.1182, 0.15, 0.0, 0.0, 1.0, frac) == pytest.approx(0.15)  # network-bound
    assert dualpipe_pair_s(0.1182, 0.001, 0.0, 0.0, 0.1192, frac) == pytest.approx(0.1192)  # serial caps it
    arrays = dualpipe_pair_s(np.array([0.1, 0.1]), np.array([0.0, 0.05]), 0.0, 0.0, np.array([1.0, 1.0]), frac)
    assert arrays.tolist() == pytest.approx([0.1, 0.1 / frac])


def test_full_backward_counts_as_backward_and_w_only_as_deferred():
    """Phases follow ISCA'25 Table 4: 1B holds every backward pass run alone (B and full BW),
    1W only the deferred W passes. 1F1B has no deferred W; DualPipe has all three."""
    times = [ChunkTimes(1.0, 2.0, 0.5)] * 4
    plain = simulate_pipeline("1f1b", times, 8, 4)
    assert all(p.backward_weight_s == 0.0 for p in plain.phases)
    assert all(p.backward_input_s == pytest.approx(8 * 2.5) for p in plain.phases)
    dual = simulate_pipeline("dualpipe", [ChunkTimes(1.0, 2.0, 0.5, 3.0)] * 4, 8, 4)
    for rank, p in enumerate(dual.phases):
        kinds = Counter(e.kind for e in dual.events if e.rank == rank)
        assert kinds[EventKind.W] > 0 and kinds[EventKind.BW] > 0
        assert p.backward_weight_s == pytest.approx(0.5 * kinds[EventKind.W])
        assert p.backward_input_s == pytest.approx(2.0 * kinds[EventKind.B] + 2.5 * kinds[EventKind.BW])
