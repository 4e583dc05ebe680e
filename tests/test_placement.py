"""Rank placement (planner.hwmodels.placement): Megatron-style rank groups."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from planner.errors import SpecError
from planner.hwmodels.placement import gpu_of_rank, nodes_of, rank_layout
from planner.specs import DEFAULT_RANK_ORDER, Plan


def test_docstring_example_16_gpus():
    layout = rank_layout(Plan(tp=2, pp=2, dp=4, ep=4, etp=1))
    assert layout.groups("tp").tolist()[:2] == [[0, 1], [2, 3]]
    assert layout.groups("dp").tolist() == [[0, 2, 4, 6], [1, 3, 5, 7], [8, 10, 12, 14], [9, 11, 13, 15]]
    assert layout.groups("pp").tolist()[0] == [0, 8]
    assert layout.groups("ep", experts=True).tolist() == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11], [12, 13, 14, 15]]
    assert layout.groups("edp", experts=True).tolist()[:2] == [[0, 4], [1, 5]]


def test_deepseek_v3_layout_on_h800_nodes():
    """DeepSeek-V3 §3.2 / §4.2: EP64 spans 8 nodes (4 experts per GPU); PP16 over 2048
    GPUs puts each stage on 16 nodes; dense DP is 128, expert DP 2."""
    layout = rank_layout(Plan(pp=16, dp=128, ep=64, etp=1, zero_stage=1))
    ep = layout.groups("ep", experts=True)
    assert ep.shape == (32, 64)
    assert all(len(nodes_of(g, 8)) == 8 for g in ep)
    assert layout.groups("dp").shape == (16, 128)
    assert layout.groups("edp", experts=True).shape == (16 * 64, 2)
    pp = layout.groups("pp")
    assert pp.shape == (128, 16) and len(nodes_of(pp[0], 8)) == 16


def brute_force_groups(plan: Plan, dims: set[str]) -> set[tuple[int, ...]]:
    """Reference: group ranks by their coordinates outside ``dims`` (dense view)."""
    layout = rank_layout(plan)
    buckets: dict[tuple, list[int]] = {}
    for rank in range(plan.world_size):
        c = layout.coords(rank)
        key = tuple(v for k, v in sorted(c.items()) if k not in dims)
        buckets.setdefault(key, []).append(rank)
    return {tuple(sorted(g)) for g in buckets.values()}


orders = st.permutations(DEFAULT_RANK_ORDER.split("-")).map("-".join)


@settings(max_examples=150, deadline=None)
@given(
    tp=st.sampled_from([1, 2, 4]),
    cp=st.sampled_from([1, 2]),
    dp=st.sampled_from([1, 2, 3, 4]),
    pp=st.sampled_from([1, 2, 3]),
    order=orders,
    dims=st.sampled_from(["tp", "cp", "dp", "pp", "dp-cp", "tp-pp", "tp-cp-dp"]),
)
def test_groups_partition_ranks_and_agree_with_coordinates(tp, cp, dp, pp, order, dims):
    plan = Plan(tp=tp, cp=cp, dp=dp, pp=pp, rank_order=order)
    groups = rank_layout(plan).groups(dims)
    size = int(np.prod([getattr(plan, d) for d in dims.split("-")]))
    assert groups.shape == (plan.world_size // size, size)
    assert sorted(groups.ravel().tolist()) == list(range(plan.world_size))
    assert {tuple(sorted(g)) for g in groups.tolist()} == brute_force_groups(plan, set(dims.split("-")))


@settings(max_examples=100, deadline=None)
@given(
    tp=st.sampled_from([1, 2, 4]),
    dp=st.sampled_from([1, 2, 4, 8]),
    pp=st.sampled_from([1, 2]),
    ep=st.sampled_from([1, 2, 4, 8]),
    etp=st.sampled_from([1, 2]),
    order=orders,
)
def test_expert_fold_keeps_stages(tp, dp, pp, ep, etp, order):
    """Expert groups live inside one pipeline stage: the same ranks as the dense view's
    tp * cp * dp block of that stage (Megatron: dp * cp * tp == edp * ep * etp)."""
    if (tp * dp) % (ep * etp):
        return
    plan = Plan(tp=tp, dp=dp, pp=pp, ep=ep, etp=etp, rank_order=order)
    if not plan.expert_fold_keeps_stages():  # check_plan rejects these for MoE models
        layout = rank_layout(plan)
        dense_pp = {tuple(g) for g in layout.groups("pp").tolist()}
        assert dense_pp != {tuple(g) for g in layout.groups("pp", experts=True).tolist()}
        return
    layout = rank_layout(plan)
    stage_of = {r: layout.coords(r)["pp"] for r in range(plan.world_size)}
    for dims in ("ep", "etp", "edp", "ep-edp-etp"):
        for group in layout.groups(dims, experts=True):
            assert len({stage_of[int(r)] for r in group}) == 1
    dense_stages = {tuple(sorted(g)) for g in layout.groups("tp-cp-dp").tolist()}
    expert_stages = {tuple(sorted(g)) for g in layout.groups("ep-edp-etp", experts=True).tolist()}
    assert dense_stages == expert_stages


def test_default_order_puts_tp_on_adjacent_gpus():
    layout = rank_layout(Plan(tp=8, dp=4, pp=2))
    for group in layout.groups("tp"):
        assert len(nodes_of(group, 8)) == 1
    assert gpu_of_rank(13, 8) == (1, 5)


def test_unknown_dimension():
    with pytest.raises(SpecError):
        rank_layout(Plan(dp=2)).groups("xp")
    with pytest.raises(SpecError):
        rank_layout(Plan(dp=2)).groups("etp")  # an expert-view name in the dense view


def test_group_of_and_coords_roundtrip():
    plan = Plan(tp=2, cp=2, dp=2, pp=2)
    layout = rank_layout(plan)
    for rank, dims in itertools.product(range(plan.world_size), ["tp", "dp", "pp"]):
        group = layout.group_of(rank, dims)
        assert rank in group
        c = layout.coords(rank)
        for other in group:
            oc = layout.coords(int(other))
            assert all(oc[k] == c[k] for k in c if k != dims)
