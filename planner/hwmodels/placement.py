"""Rank placement: which global rank sits on which GPU, and which ranks form each group.

A pure function of the plan's degrees and ``rank_order``; the simulator prices
collectives on these groups and the launcher builds its process groups from the same
function, so the placement that was simulated is the one that is launched.

Ranks are laid out Megatron-style (``parallel_state.RankGenerator``): with the default
order ``tp-cp-ep-dp-pp`` the first dimension varies fastest over consecutive ranks. Rank r
runs on GPU r % gpus_per_node of node r // gpus_per_node (torchrun's node-major order).

Dense and expert layers see the same ranks through two views (Megatron's expert fold):

- dense view, sizes (tp, cp, ep=1, dp, pp): attention, dense FFN, embedding, head;
- expert view, sizes (etp, cp=1, ep, edp, pp): MoE layers, where the tp * cp * dp ranks of
  a stage are re-split as etp * ep * edp.

Worked example, 16 GPUs on 2 nodes of 8, ``tp=2, pp=2, dp=4, ep=4, etp=1`` (so edp=2),
order ``tp-cp-ep-dp-pp``. The rank is tp + 2*dp + 8*pp in the dense view and
ep + 4*edp + 8*pp in the expert view, so

    tp groups   [0,1] [2,3] [4,5] [6,7] [8,9] ... [14,15]   (NVLink neighbours)
    dp groups   [0,2,4,6] [1,3,5,7] [8,10,12,14] [9,11,13,15]
    pp groups   [0,8] [1,9] ... [7,15]                       (cross-node p2p)
    ep groups   [0,1,2,3] [4,5,6,7] [8,9,10,11] [12,13,14,15]
    edp groups  [0,4] [1,5] [2,6] [3,7] [8,12] ...

so each pipeline stage fills one node, TP pairs are adjacent GPUs, and the experts of a
layer are spread over 4 GPUs of one node with 2 replicas.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np

from planner.errors import SpecError
from planner.specs.plan import Plan

_DENSE_NAMES = {"tp": "tp", "cp": "cp", "ep": "ep", "dp": "dp", "pp": "pp"}
# Expert view: the tp slot holds etp, the dp slot holds edp (cp is folded away).
_EXPERT_NAMES = {"etp": "tp", "ep": "ep", "edp": "dp", "pp": "pp", "cp": "cp"}


@dataclass(frozen=True)
class RankLayout:
    """Rank groups of a plan; ``groups("dp")`` etc. Built by :func:`rank_layout`."""

    plan: Plan

    @cached_property
    def order(self) -> tuple[str, ...]:
        return tuple(self.plan.rank_order.split("-"))

    def sizes(self, experts: bool) -> dict[str, int]:
        p = self.plan
        if experts:
            return {"tp": p.expert_tp, "cp": 1, "ep": p.ep, "dp": p.edp, "pp": p.pp}
        return {"tp": p.tp, "cp": p.cp, "ep": 1, "dp": p.dp, "pp": p.pp}

    def _grid(self, experts: bool) -> np.ndarray:
        """Ranks as an array with one axis per order slot, slowest slot first."""
        sizes = self.sizes(experts)
        shape = [sizes[d] for d in reversed(self.order)]
        return np.arange(self.plan.world_size).reshape(shape)

    def groups(self, dims: str, experts: bool = False) -> np.ndarray:
        """Rank groups over ``dims`` (e.g. ``"tp"``, ``"dp-cp"``, ``"ep"``; expert view
        names: ``etp ep edp pp``), shape (num_groups, group_size).

        Within a group the first-listed-in-order dimension varies fastest; groups are
        enumerated with the remaining dimensions, fastest first (as Megatron does).
        """
        names = _EXPERT_NAMES if experts else _DENSE_NAMES
        wanted = set()
        for name in dims.split("-"):
            if name not in names:
                view = "expert" if experts else "dense"
                raise SpecError("group", dims, f"unknown {view} dimension {name!r}; use {', '.join(names)}")
            wanted.add(names[name])
        grid = self._grid(experts)
        axes = list(reversed(self.order))  # axis i of grid is slot axes[i]
        outer = [i for i, d in enumerate(axes) if d not in wanted]
        inner = [i for i, d in enumerate(axes) if d in wanted]
        group_size = int(np.prod([grid.shape[i] for i in inner], dtype=np.int64))
        return grid.transpose(outer + inner).reshape(-1, group_size)

    def group_of(self, rank: int, dims: str, experts: bool = False) -> np.ndarray:
        """The group over ``dims`` that contains ``rank``."""
        groups = self.groups(dims, experts)
        return groups[np.nonzero((groups == rank).any(axis=1))[0][0]]

    def coords(self, rank: int, experts: bool = False) -> dict[str, int]:
        """Index of ``rank`` along each dimension (dense or expert names)."""
        sizes = self.sizes(experts)
        out, rest = {}, rank
        for slot in self.order:
            rest, out[slot] = divmod(rest, sizes[slot])
        if experts:
            names = {v: k for k, v in _EXPERT_NAMES.items()}
            return {names[slot]: i for slot, i in out.items() if slot != "cp"}
        return {slot: i for slot, i in out.items() if slot != "ep"}


def rank_layout(plan: Plan) -> RankLayout:
    return RankLayout(plan)


def gpu_of_rank(rank: int | np.ndarray, gpus_per_node: int) -> tuple:
    """(node, local GPU index) of a global rank (node-major, as torchrun assigns them)."""
    return np.divmod(rank, gpus_per_node)


def nodes_of(group: np.ndarray, gpus_per_node: int) -> np.ndarray:
    """Distinct nodes a rank group spans, sorted."""
    return np.unique(np.asarray(group) // gpus_per_node)
