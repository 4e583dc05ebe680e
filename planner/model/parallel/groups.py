"""torch.distributed process groups of a :class:`~planner.specs.Plan`.

The rank groups come from :func:`planner.hwmodels.placement.rank_layout`, the function the
simulator prices collectives on, so the launched placement is the simulated one. Two views
of the same ranks (Megatron's expert fold):

- dense view: ``tp`` (tensor parallel) and ``dp`` (data parallel: attention, dense FFN,
  gate, shared experts, embedding and head);
- expert view: ``ep`` (routed experts split across ranks) and ``edp`` (replicas of one
  expert shard: the group its gradients are summed over);
- ``pp``: the ranks of one pipeline, in stage order (the same in both views when
  ``Plan.expert_fold_keeps_stages``), and ``embed``: the first and the last rank of that
  pipeline, which both hold the input embedding when the last stage needs it too (MTP, or
  a head tied to it) and sum its gradient (Megatron's embedding group).

``torch.distributed.new_group`` is collective: every rank must create every group, in the
same order, even the groups it is not in. :func:`build_groups` does exactly that and keeps
the one group of each kind that contains this rank.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.distributed as dist

from planner.hwmodels.placement import RankLayout, rank_layout
from planner.specs.plan import Plan

KINDS = (("tp", False), ("dp", False), ("ep", True), ("edp", True), ("pp", False))
"""(group name, expert view) in creation order; the same on every rank."""


@dataclass(frozen=True)
class Group:
    """One process group that contains this rank, with its members (global ranks)."""

    group: dist.ProcessGroup
    ranks: tuple[int, ...]
    rank: int
    """This process's index inside ``ranks``."""

    @property
    def size(self) -> int:
        return len(self.ranks)


@dataclass(frozen=True)
class ProcessGroups:
    """The groups this rank belongs to. Passed explicitly; nothing is kept in globals."""

    rank: int
    world_size: int
    layout: RankLayout
    tp: Group
    dp: Group
    ep: Group
    edp: Group
    pp: Group | None = None
    """This rank's pipeline; ``pp.rank`` is its stage."""
    embed: Group | None = None
    """First and last stage of this pipeline; None on a middle stage or when pp == 1."""

    @property
    def stage(self) -> int:
        return self.pp.rank if self.pp is not None else 0

    @property
    def num_stages(self) -> int:
        return self.pp.size if self.pp is not None else 1


def build_groups(plan: Plan) -> ProcessGroups:
    """Create the tp, dp, ep, edp, pp and embedding gloo/nccl groups of ``plan`` on the
    default group, which must already be initialised with ``plan.world_size`` ranks."""
    rank, world = dist.get_rank(), dist.get_world_size()
    if world != plan.world_size:
        raise ValueError(f"world size {world} != plan world size {plan.world_size} (tp*cp*dp*pp)")
    layout = rank_layout(plan)
    mine: dict[str, Group] = {}
    for name, experts in KINDS:
        for members in layout.groups(name, experts=experts):
            ranks = tuple(int(r) for r in members)
            group = dist.new_group(list(ranks))  # collective: called by every rank
            if rank in ranks:
                mine[name] = Group(group, ranks, ranks.index(rank))
    if plan.pp > 1:
        for pipeline in layout.groups("pp"):
            ranks = (int(pipeline[0]), int(pipeline[-1]))
            group = dist.new_group(list(ranks))
            if rank in ranks:
                mine["embed"] = Group(group, ranks, ranks.index(rank))
    return ProcessGroups(rank=rank, world_size=world, layout=layout, **mine)
