"""Per-shape tables of the fast estimate, priced once each with the simulator's own functions.

A candidate set of thousands of plans shares few *shapes*: the compute of a piece depends
only on (tp, cp, ep, etp, micro-batch, sequence parallelism, recompute, attention kernel,
compute share), a stage's TP/CP/EP communication on those degrees and on the rank groups it
runs on, a partition on (pp, vpp, schedule, piece costs), and so on. :class:`Shapes` holds
one memo table per shape kind for one (model, cluster, workload); every entry is computed by
the function ``simulate`` uses (``compute.piece_ops``/``piece_time`` through
``simulate.piece_compute``, ``comm.StageComm``, ``comm.pp_p2p_s``, ``comm.dp_step_comm``,
``partition.partition``, ``memory.piece_params``/``rank_params``/``activation_bytes``/
``working_set_bytes``/``largest_gemm_weight``), called with a canonical plan that carries
the shape's fields.

Two sharing rules go beyond equal fields (tests/test_fast.py checks them through exact
agreement with ``simulate`` on several clusters):

- a stage's TP/CP/EP groups that all stay inside one scale-up island (a node, or an NVL72
  rack) with the same local pattern in every island cost the same on any stage of any plan
  (islands are identical and such a collective loads only links inside its islands), so
  :meth:`Shapes.stage_comm` prices each pattern once; groups that leave their island are
  priced per (degrees, stage);
- a DP reduction depends on its groups only up to relabelling zones, leaf blocks within a
  zone and nodes within a block (identical leaves, zones and nodes; local GPUs keep their
  rails), so :meth:`Shapes.dp_comm` keys on that canonical form (exact groups where NVLink
  domains span nodes).

The splits come from :class:`planner.costmodel.splits.SplitCache` (the simulator's partitions).
"""

from __future__ import annotations

import numpy as np

from planner.costmodel.comm import StageComm, dp_step_comm, pp_p2p_s, stage_groups
from planner.costmodel.memory import (
    _chunk_shares, activation_bytes, largest_gemm_weight, piece_params, rank_params, working_set_bytes,
)
from planner.costmodel.partition import Piece, model_pieces
from planner.costmodel.simulate import piece_compute
from planner.costmodel.splits import SplitCache
from planner.hwmodels.collectives import cluster_maps
from planner.hwmodels.placement import rank_layout
from planner.specs.hardware import ClusterSpec
from planner.specs.model import ModelSpec
from planner.specs.plan import AttentionKernel, PipelineSchedule, Plan, Recompute, Workload, ZeroStage

PIECES = tuple(Piece)
"""Piece kinds, in the column order of every per-piece array."""
SCHEDULES = tuple(PipelineSchedule)
RECOMPUTES = tuple(Recompute)
KERNELS = tuple(AttentionKernel)
DUAL = (PipelineSchedule.DUALPIPE, PipelineSchedule.DUALPIPEV)


def canonical_plan(tp=1, cp=1, ep=1, etp=None, dp=1, pp=1, vpp=1, mb=1, sp=False, rec=Recompute.NONE,
                   zero=ZeroStage.NONE, sched=PipelineSchedule.ONE_F_ONE_B, kernel=AttentionKernel.FLASH,
                   order=None) -> Plan:
    """A Plan carrying just the fields of a shape key (the others at their defaults)."""
    extra = {} if order is None else {"rank_order": order}
    return Plan(tp=tp, cp=cp, ep=ep, etp=etp, dp=dp, pp=pp, vpp=vpp, micro_batch_size=mb, sequence_parallel=sp,
                recompute=rec, zero_stage=zero, pipeline_schedule=sched, attention_kernel=kernel, **extra)


def _first_seen(x: np.ndarray) -> np.ndarray:
    """``x`` relabelled 0, 1, ... in order of first appearance (row-major)."""
    _, first, inverse = np.unique(x.ravel(), return_index=True, return_inverse=True)
    rank = np.empty(len(first), dtype=np.int64)
    rank[np.argsort(first)] = np.arange(len(first))
    return rank[inverse.reshape(-1)].reshape(x.shape)


def unique_rows(*cols: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distinct rows of the stacked (non-negative integer) columns, and per input row the
    index of its distinct row (one mixed-radix key per row: a 1-D ``np.unique``)."""
    radix = [int(c.max(initial=0)) + 1 for c in cols]
    if np.prod(np.array(radix, dtype=float)) >= 2.0**62:
        uniq, inverse = np.unique(np.stack(cols, axis=1), axis=0, return_inverse=True)
        return uniq, inverse.reshape(-1)
    key = np.zeros(len(cols[0]), dtype=np.int64)
    for c, r in zip(cols, radix, strict=True):
        key = key * r + c
    _, first, inverse = np.unique(key, return_index=True, return_inverse=True)
    return np.stack(cols, axis=1)[first], inverse.reshape(-1)



class PartInfo:
    """A partition as arrays: chunk c sits on rank ``chunk_rank[c]`` and holds ``counts[c, k]``
    pieces of kind ``PIECES[k]``; rank r owns chunks ``own[r]`` (``chunks_of_rank``, the
    mirror included for DualPipe)."""

    def __init__(self, part, pid: int, plan: Plan):
        self.part, self.pid = part, pid
        n, pp = len(part.chunks), part.pp
        self.chunk_rank = np.array([c.rank for c in part.chunks], dtype=np.int64)
        self.counts = np.array([[c.count(p) for p in PIECES] for c in part.chunks], dtype=float).reshape(n, len(PIECES))
        self.own = [tuple(c.index for c in part.chunks_of_rank(r)) for r in range(pp)]
        self.first_chunk = np.array([o[0] for o in self.own], dtype=np.int64)
        self.num_own = np.array([len(o) for o in self.own], dtype=float)
        self.rank_counts = np.array([self.counts[list(o)].sum(axis=0) for o in self.own])
        self.kinds = [frozenset(PIECES[k] for k in np.flatnonzero(row)) for row in self.rank_counts]
        # Memory: each own chunk's share of the rank's in-flight micro-batches and its pieces.
        width = max(len(o) for o in self.own)
        self.shares = np.zeros((pp, width))
        self.own_counts = np.zeros((pp, width, len(PIECES)))
        for r, own in enumerate(self.own):
            chunks = part.chunks_of_rank(r)
            self.shares[r, : len(own)] = _chunk_shares(plan, r, chunks)
            self.own_counts[r, : len(own)] = self.counts[list(own)]


class PartRows:
    """Per-row arrays of partitions ``pids`` (of one (pp, vpp, schedule)): each
    :class:`PartInfo` attribute stacked once per distinct partition, then gathered per row."""

    def __init__(self, shapes: Shapes, pids: np.ndarray):
        uniq, inv = np.unique(pids, return_inverse=True)
        self.inv = inv.reshape(-1)
        self.infos = [shapes.part(int(p)) for p in uniq]

    def get(self, name: str) -> np.ndarray:
        return np.stack([getattr(info, name) for info in self.infos])[self.inv]

    def kinds(self, row: int) -> list:
        return self.infos[self.inv[row]].kinds


class Shapes:
    """Memo tables of one (model, cluster, workload); see the module docstring."""

    def __init__(self, model: ModelSpec, cluster: ClusterSpec, workload: Workload):
        self.model, self.cluster, self.workload = model, cluster, workload
        self.present = np.array([p in set(model_pieces(model)) for p in PIECES])
        self._compute: dict = {}
        self._parts: dict = {}
        self._splits: dict = {}
        self._forward: dict = {}
        self._split_cache = SplitCache(model)
        self._part_list: list[PartInfo] = []
        self._comm: dict = {}
        self._sig: dict = {}
        self._comm_sig: dict = {}
        self._p2p: dict = {}
        self._dp: dict = {}
        self._params: dict = {}
        self._rank_params: dict = {}
        self._act: dict = {}
        self._gemm: dict = {}
        node = cluster.node
        self.island = max(node.gpus_per_node, node.scale_up.domain_gpus)

    # -- compute ------------------------------------------------------------------------

    def compute(self, tp, cp, ep, etp, mb, sp, rec, kernel, share) -> np.ndarray:
        """(pieces, 4): forward, backward-input, backward-weight and attention-core forward
        seconds of one micro-batch per piece (0 for pieces the model lacks)."""
        key = (tp, cp, ep, etp, mb, sp, rec, kernel, share)
        hit = self._compute.get(key)
        if hit is None:
            plan = canonical_plan(tp=tp, cp=cp, ep=ep, etp=etp, dp=ep * etp, mb=mb, sp=sp, rec=RECOMPUTES[rec],
                                  kernel=KERNELS[kernel])
            hit = np.zeros((len(PIECES), 4))
            for k, piece in enumerate(PIECES):
                if self.present[k]:
                    t, attn = piece_compute(self.model, plan, self.workload, self.cluster.gpu, piece, share)
                    hit[k] = (t.forward_s, t.backward_input_s, t.backward_weight_s, attn)
            self._compute[key] = hit
        return hit

    # -- partitions -----------------------------------------------------------------------

    def forward_s(self, *key) -> tuple:
        """((piece, forward seconds at full SMs), ...) of :meth:`compute` ``key`` (the input of
        the forward-balanced split)."""
        hit = self._forward.get(key)
        if hit is None:
            table = self.compute(*key, 1.0)
            hit = self._forward[key] = tuple((p, float(table[k, 0])) for k, p in enumerate(PIECES) if self.present[k])
        return hit

    def splits(self, pp: int, vpp: int, sched: int, forward_s: tuple) -> tuple[PartInfo, ...]:
        """The splits ``simulate`` may pick (:class:`planner.costmodel.splits.SplitCache`, the
        simulator's partitions): Megatron's even split alone
        when the blocks divide (not DualPipe), else (forward-time balanced, count balanced);
        ``forward_s`` is ((piece, forward seconds at full SMs), ...)."""
        memo = (pp, vpp, sched, forward_s)
        hit = self._splits.get(memo)
        if hit is not None:
            return hit
        plan = canonical_plan(pp=pp, vpp=vpp, sched=SCHEDULES[sched])
        out = []
        for split in self._split_cache.splits(plan, dict(forward_s)):
            key = (id(split), sched)
            hit = self._parts.get(key)
            if hit is None:
                hit = self._parts[key] = PartInfo(split.partition, len(self._part_list), plan)
                self._part_list.append(hit)
            out.append(hit)
        hit = self._splits[memo] = tuple(out)
        return hit

    def part(self, pid: int) -> PartInfo:
        return self._part_list[pid]

    # -- communication --------------------------------------------------------------------

    def _signatures(self, degrees: tuple) -> list[tuple]:
        """Per stage, what its TP, CP and EP groups cost depends on (module docstring)."""
        hit = self._comm_sig.get(degrees)
        if hit is None:
            tp, cp, ep, etp, dp, pp, order = degrees
            layout = rank_layout(canonical_plan(tp=tp, cp=cp, ep=ep, etp=etp, dp=dp, pp=pp, order=order))
            unit = self.island
            stage_of = np.empty(layout.plan.world_size, dtype=np.int64)
            stage_of[layout.groups("pp")] = np.arange(pp)
            whole = stage_of.size % unit == 0 and bool((stage_of.reshape(-1, unit) == stage_of[::unit, None]).all())
            dims = []
            for name, experts in (("tp", False), ("cp", False), ("ep", True)):
                groups = layout.groups(name, experts=experts)
                if groups.shape[1] == 1:
                    dims.append(None)
                    continue
                island, local = groups // unit, groups % unit
                same = whole and bool((island == island[:, :1]).all())
                if same:  # every island must hold the same pattern of groups
                    per = np.bincount(island[:, 0])
                    same = bool((per == per[0]).all())
                if same:
                    pattern = local[np.lexsort((local[:, 0], island[:, 0]))].reshape(len(per), -1)
                    same = bool((pattern == pattern[0]).all())
                dims.append(("island", name, pattern[0].tobytes()) if same else ("stage", name))
            hit = [tuple(d if d is None or d[0] == "island" else (*d, degrees, s) for d in dims) for s in range(pp)]
            self._comm_sig[degrees] = hit
        return hit

    def stage_comm(self, tp, cp, ep, etp, dp, pp, order, mb, sp) -> np.ndarray:
        """(pp, pieces, 6): per stage and piece, TP forward/backward, CP forward/backward and
        EP forward/backward seconds of one micro-batch (``StageComm.piece``)."""
        degrees = (tp, cp, ep, etp, dp, pp, order)
        whole = self._comm.get((degrees, mb, sp))
        if whole is not None:
            return whole
        out = self._comm[degrees, mb, sp] = np.zeros((pp, len(PIECES), 6))
        for stage, sig in enumerate(self._signatures(degrees)):
            key = (tp, cp, ep, etp, mb, sp, sig)
            hit = self._comm.get(key)
            if hit is None:
                plan = canonical_plan(tp=tp, cp=cp, ep=ep, etp=etp, dp=dp, pp=pp, mb=mb, sp=sp, order=order)
                comm = StageComm(self.model, self.cluster, plan, self.workload, rank_layout(plan), stage)
                hit = np.array([comm.piece(p).astuple() for p in PIECES])
                self._comm[key] = hit
            out[stage] = hit
        return out

    def p2p(self, tp, cp, dp, pp, order, mb, sp) -> float:
        key = (tp, cp, dp, pp, order, mb, sp)
        hit = self._p2p.get(key)
        if hit is None:
            plan = canonical_plan(tp=tp, cp=cp, dp=dp, pp=pp, mb=mb, sp=sp, order=order)
            hit = self._p2p[key] = pp_p2p_s(self.cluster, plan, self.workload, rank_layout(plan), self.model)
        return hit

    def _dp_signature(self, degrees: tuple, dualpipe: bool, stage: int) -> tuple:
        """What a stage's DP (and expert-DP) reduction costs depend on: its groups up to a
        symmetry of the fabric (zones, leaf blocks within a zone and nodes within a block
        relabelled in order of first appearance, local GPU kept); exact (degrees, stage)
        where NVLink domains span nodes."""
        key = (degrees, dualpipe, stage)
        hit = self._sig.get(key)
        if hit is None:
            tp, cp, ep, etp, dp, pp, order = degrees
            sched = PipelineSchedule.DUALPIPE if dualpipe else PipelineSchedule.ONE_F_ONE_B
            layout = rank_layout(canonical_plan(tp=tp, cp=cp, ep=ep, etp=etp, dp=dp, pp=pp, sched=sched, order=order))
            maps = cluster_maps(self.cluster)
            parts = []
            for dims, experts in (("cp-dp" if cp > 1 else "dp", False), ("edp", True)):
                groups = stage_groups(layout, dims, stage, experts=experts)
                if dualpipe:  # dp_step_comm reduces over the mirror stage's copies too
                    groups = np.concatenate([groups, stage_groups(layout, dims, pp - 1 - stage, experts=experts)],
                                            axis=1)
                if self.island > maps.gpn:
                    parts.append((groups.shape, groups.tobytes()))
                    continue
                node, local = groups // maps.gpn, groups % maps.gpn
                zone = node // maps.nodes_per_zone
                block = zone * maps.num_nodes + (node - zone * maps.nodes_per_zone) // maps.nodes_per_leaf
                parts.append((groups.shape, np.stack([_first_seen(zone), _first_seen(block), _first_seen(node),
                                                      local]).tobytes()))
            hit = self._sig[key] = tuple(parts)
        return hit

    def dp_ranks(self, degrees: tuple, zero: int, dualpipe: bool, pid: int, params: np.ndarray,
                 units: np.ndarray) -> np.ndarray:
        """(pp, 3): :meth:`dp_comm` of every rank of partition ``pid`` (``params`` (pp, 2)
        dense and expert, ``units`` (pp,) pieces with parameters)."""
        key = (degrees, zero, dualpipe, pid)
        hit = self._dp.get(key)
        if hit is None:
            hit = self._dp[key] = np.array([
                self.dp_comm(degrees, zero, dualpipe, r, float(params[r, 0]), float(params[r, 1]), int(units[r]))
                for r in range(len(params))])
        return hit

    def dp_comm(self, degrees: tuple, zero: int, dualpipe: bool, stage: int, dense: float, expert: float,
                units: int) -> tuple[float, float, float]:
        """``dp_step_comm`` of one rank: (per step, ZeRO-3 gather and scatter per micro-batch).
        ZeRO-1 and -2 move the same bytes; DualPipe reduces over both copies of a chunk."""
        zero = 1 if zero == 2 else zero
        key = (self._dp_signature(degrees, dualpipe, stage), zero, dense, expert, units if zero == 3 else 0)
        hit = self._dp.get(key)
        if hit is None:
            tp, cp, ep, etp, dp, pp, order = degrees
            sched = PipelineSchedule.DUALPIPE if dualpipe else PipelineSchedule.ONE_F_ONE_B
            plan = canonical_plan(tp=tp, cp=cp, ep=ep, etp=etp, dp=dp, pp=pp, zero=ZeroStage(zero), sched=sched,
                                  order=order)
            d = dp_step_comm(self.cluster, plan, self.workload, rank_layout(plan), stage, dense, expert,
                             zero3_units=units)
            hit = self._dp[key] = (d.step_s, d.per_microbatch_gather_s, d.per_microbatch_scatter_s)
        return hit

    # -- parameters and memory primitives ------------------------------------------------

    def piece_params(self, tp, ep, etp) -> np.ndarray:
        """(pieces, 2): dense and expert parameters of each piece on one GPU."""
        key = (tp, ep, etp)
        hit = self._params.get(key)
        if hit is None:
            plan = canonical_plan(tp=tp, ep=ep, etp=etp, dp=ep * etp)
            hit = np.zeros((len(PIECES), 2))
            for k, piece in enumerate(PIECES):
                if self.present[k]:
                    prm = piece_params(self.model, plan, piece)
                    hit[k] = (prm.dense, prm.expert)
            self._params[key] = hit
        return hit

    def rank_params(self, tp, ep, etp, pid: int) -> np.ndarray:
        """(pp, 3): ``memory.rank_params`` dense and expert, and the largest piece's total."""
        key = (tp, ep, etp, pid)
        hit = self._rank_params.get(key)
        if hit is None:
            info = self.part(pid)
            plan = canonical_plan(tp=tp, ep=ep, etp=etp, dp=ep * etp)
            per = self.piece_params(tp, ep, etp).sum(axis=1)
            hit = np.zeros((info.part.pp, 3))
            for r in range(info.part.pp):
                prm = rank_params(self.model, plan, info.part, r)
                largest = max(per[PIECES.index(p)] for p in info.kinds[r])
                hit[r] = (prm.dense, prm.expert, largest)
            self._rank_params[key] = hit
        return hit

    def activations(self, tp, cp, ep, etp, mb, sp, rec) -> np.ndarray:
        """(pieces, 2): bytes kept for backward and transient working set per micro-batch."""
        key = (tp, cp, ep, etp, mb, sp, rec)
        hit = self._act.get(key)
        if hit is None:
            plan = canonical_plan(tp=tp, cp=cp, ep=ep, etp=etp, dp=ep * etp, mb=mb, sp=sp, rec=RECOMPUTES[rec])
            hit = np.zeros((len(PIECES), 2))
            for k, piece in enumerate(PIECES):
                if self.present[k]:
                    hit[k] = (activation_bytes(self.model, plan, self.workload, piece),
                              working_set_bytes(self.model, plan, self.workload, piece))
            self._act[key] = hit
        return hit

    def largest_gemm(self, tp, ep, etp, kinds: frozenset) -> float:
        key = (tp, ep, etp, kinds)
        hit = self._gemm.get(key)
        if hit is None:
            plan = canonical_plan(tp=tp, ep=ep, etp=etp, dp=ep * etp)
            hit = self._gemm[key] = largest_gemm_weight(self.model, plan, sorted(kinds))
        return hit
