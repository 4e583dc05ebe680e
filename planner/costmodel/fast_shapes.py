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

Sharing rules beyond equal fields (tests/test_fast.py checks them through exact agreement
with ``simulate`` on several clusters, rank orders and groups across nodes):

- a stage's TP/CP/EP groups that all stay inside one scale-up island (a node, or an NVL72
  rack) with the same local pattern in every island cost the same on any stage of any plan
  (islands are identical and such a collective loads only links inside its islands), so
  :meth:`Shapes.stage_comm` prices each pattern once;
- groups that leave their node, on a fat-tree whose islands are nodes, cost the same as any
  groups equal to them up to relabelling zones, leaf blocks and nodes in increasing order
  (:func:`planner.hwmodels.collectives.fabric_form`, the collective model's own profile key:
  leaves, zones and nodes are identical, a leaf's uplinks do
  not depend on how many nodes it holds (``linkload.ClusterMaps.uplink_bw``), local GPUs keep
  their rails, and the relabelling keeps each group's sorted order, which the ring and tree
  algorithms follow): the TP/CP/EP groups of a stage (:meth:`Shapes.stage_comm`, usually the
  same form on every stage) and a stage's DP and expert-DP groups (:meth:`Shapes.dp_table`);
  where NVLink domains span nodes, exact groups per (degrees, stage);
- the compute of the embedding, dense blocks and head (and a dense model's MTP) reads no
  expert degree (only ``compute.moe_ops`` reads ``ep`` / ``expert_tp``): priced once for
  every (ep, etp);
- splits that come out equal (different forward times often give the same partition) are
  one :class:`PartInfo` (one ``pid``), so everything keyed by the split is priced once.

The splits come from :class:`planner.costmodel.splits.SplitCache` (the simulator's partitions).

A shape the cost model refuses (:mod:`~planner.costmodel.fast_refusals`) is memoised as
``Refused`` like a price, and its error raised again on every later request: one refusal
costs one try.
"""

from __future__ import annotations

import numpy as np

from planner.costmodel.comm import StageComm, dp_step_comm, pp_p2p_s
from planner.costmodel.fast_refusals import Refused
from planner.costmodel.fast_refusals import attempt as _attempt
from planner.costmodel.fast_refusals import value as _value
from planner.costmodel.memory import (
    _chunk_shares, activation_bytes, largest_gemm_weight, piece_params, working_set_bytes,
)
from planner.costmodel.partition import Piece, model_pieces
from planner.costmodel.simulate import piece_compute
from planner.costmodel.splits import SplitCache
from planner.hwmodels.collectives import cluster_maps, fabric_forms
from planner.hwmodels.placement import rank_layout
from planner.specs.hardware import ClusterSpec
from planner.specs.model import ModelSpec
from planner.specs.plan import AttentionKernel, PipelineSchedule, Plan, Recompute, Workload, ZeroStage

PIECES = tuple(Piece)
"""Piece kinds, in the column order of every per-piece array."""
SCHEDULES = tuple(PipelineSchedule)
RECOMPUTES = tuple(Recompute)
KERNELS = tuple(AttentionKernel)


def canonical_plan(tp=1, cp=1, ep=1, etp=None, dp=1, pp=1, vpp=1, mb=1, sp=False, rec=Recompute.NONE,
                   zero=ZeroStage.NONE, sched=PipelineSchedule.ONE_F_ONE_B, kernel=AttentionKernel.FLASH,
                   order=None) -> Plan:
    """A Plan carrying just the fields of a shape key (the others at their defaults)."""
    extra = {} if order is None else {"rank_order": order}
    return Plan(tp=tp, cp=cp, ep=ep, etp=etp, dp=dp, pp=pp, vpp=vpp, micro_batch_size=mb, sequence_parallel=sp,
                recompute=rec, zero_stage=zero, pipeline_schedule=sched, attention_kernel=kernel, **extra)


_BLOCKS = [PIECES.index(p) for p in (Piece.DENSE, Piece.MOE, Piece.MTP)]


def with_full_recompute(stages: np.ndarray) -> np.ndarray:
    """(..., pieces, 7) tables of :meth:`Shapes.stage_comm` under full recomputation: each
    block's backward repeats its forward TP (column 6, ``PieceComm.tp_recompute_s``) and its
    dispatch/combine, as ``StageComm.piece`` prices them."""
    out = stages.copy()
    out[..., _BLOCKS, 1] += stages[..., _BLOCKS, 6]
    out[..., _BLOCKS, 5] += stages[..., _BLOCKS, 4]
    return out


def by_stage(layout, stage_of: np.ndarray, name: str, experts: bool) -> np.ndarray:
    """(pp, groups per stage, group size): ``comm.stage_groups(layout, name, s, experts)``
    for every stage s at once (the groups whose first rank sits in stage s, in layout order);
    ``stage_of``: each rank's pipeline stage."""
    groups = layout.groups(name, experts=experts)
    order = np.argsort(stage_of[groups[:, 0]], kind="stable")
    return groups[order].reshape(layout.plan.pp, -1, groups.shape[1])


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


class Shapes:
    """Memo tables of one (model, cluster, workload); see the module docstring."""

    def __init__(self, model: ModelSpec, cluster: ClusterSpec, workload: Workload):
        self.model, self.cluster, self.workload = model, cluster, workload
        self.present = np.array([p in set(model_pieces(model)) for p in PIECES])
        self._compute: dict = {}
        self._piece: dict = {}
        # Pieces whose compute reads no expert degree: all but MoE blocks (and MTP's, on a MoE model).
        self._expert_free = {Piece.EMBEDDING, Piece.DENSE, Piece.HEAD}
        if model.moe is None:
            self._expert_free.add(Piece.MTP)
        self._parts: dict = {}
        self._splits: dict = {}
        self._forward: dict = {}
        self._fids: dict = {}
        self._fid_times: list = []
        self._split_cache = SplitCache(model)
        self._part_list: list[PartInfo] = []
        self._comm: dict = {}
        self._sig: dict = {}
        self._sig_ids: dict = {}
        self._dp_rows: dict = {}
        self._comm_sig: dict = {}
        self._p2p: dict = {}
        self._dp: dict = {}
        self._params: dict = {}
        self._rank_params: dict = {}
        self._act: dict = {}
        self._gemm: dict = {}
        self._maps = cluster_maps(cluster)
        self.island = self._maps.island_gpus

    # -- compute ------------------------------------------------------------------------

    def compute(self, tp, cp, ep, etp, mb, sp, rec, kernel, share) -> np.ndarray:
        """(pieces, 4): forward, backward-input, backward-weight and attention-core forward
        seconds of one micro-batch per piece (0 for pieces the model lacks)."""
        key = (tp, cp, ep, etp, mb, sp, rec, kernel, share)
        hit = self._compute.get(key)
        if hit is None:
            hit = self._compute[key] = _attempt(self._price_compute, *key)
        return _value(hit)

    def _price_compute(self, tp, cp, ep, etp, mb, sp, rec, kernel, share) -> np.ndarray:
        out = np.zeros((len(PIECES), 4))
        for k, piece in enumerate(PIECES):
            if self.present[k]:
                # Only moe_ops reads the expert degrees (compute.piece_ops), so the other
                # pieces are priced once per (tp, cp, mb, sp, recompute, kernel, share).
                free = piece in self._expert_free
                key = (piece, tp, cp, 1 if free else ep, 1 if free else etp, mb, sp, rec, kernel, share)
                hit = self._piece.get(key)
                if hit is None:
                    plan = canonical_plan(tp=tp, cp=cp, ep=key[3], etp=key[4], dp=key[3] * key[4], mb=mb, sp=sp,
                                          rec=RECOMPUTES[rec], kernel=KERNELS[kernel])
                    t, attn = piece_compute(self.model, plan, self.workload, self.cluster.gpu, piece, share)
                    hit = self._piece[key] = (t.forward_s, t.backward_input_s, t.backward_weight_s, attn)
                out[k] = hit
        return out

    # -- partitions -----------------------------------------------------------------------

    def forward_s(self, *key) -> tuple:
        """((piece, forward seconds at full SMs), ...) of :meth:`compute` ``key`` (the input of
        the forward-balanced split)."""
        return self.forward_of(self.forward_id(*key))

    def forward_id(self, *key) -> int:
        """An integer id of :meth:`forward_s` ``key``'s times (equal times, equal id), from 1."""
        hit = self._forward.get(key)
        if hit is None:
            table = self.compute(*key, 1.0)
            times = tuple((p, float(table[k, 0])) for k, p in enumerate(PIECES) if self.present[k])
            hit = self._forward[key] = self._fids.setdefault(times, len(self._fids) + 1)
            if hit > len(self._fid_times):
                self._fid_times.append(times)
        return hit

    def forward_of(self, fid: int) -> tuple:
        """The times of :meth:`forward_id` ``fid``; () for 0 (the even split reads none)."""
        return self._fid_times[fid - 1] if fid else ()

    def splits(self, pp: int, vpp: int, sched: int, fid: int) -> tuple[PartInfo, ...]:
        """The splits ``simulate`` may pick (:class:`planner.costmodel.splits.SplitCache`, the
        simulator's partitions): Megatron's even split alone
        when the blocks divide (not DualPipe), else (forward-time balanced, count balanced[,
        Megatron-Bridge filled]);
        ``fid``: the :meth:`forward_id` of the pieces' forward seconds at full SMs (0 for
        the even split)."""
        memo = (pp, vpp, sched, fid)
        hit = self._splits.get(memo)
        if hit is not None:
            return hit
        plan = canonical_plan(pp=pp, vpp=vpp, sched=SCHEDULES[sched])
        out = []
        for split in self._split_cache.splits(plan, dict(self.forward_of(fid))):
            key = (id(split), sched)
            hit = self._parts.get(key)
            if hit is None:  # one PartInfo (pid) per distinct partition, whatever times gave it
                same = (sched, split.partition)
                hit = self._parts.get(same)
                if hit is None:
                    hit = self._parts[same] = PartInfo(split.partition, len(self._part_list), plan)
                    self._part_list.append(hit)
                self._parts[key] = hit
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
                    dims.append([None] * pp)
                    continue
                island, local = groups // unit, groups % unit
                same = whole and bool((island == island[:, :1]).all())
                if same:  # every island must hold the same pattern of groups
                    per = np.bincount(island[:, 0])
                    same = bool((per == per[0]).all())
                if same:
                    pattern = local[np.lexsort((local[:, 0], island[:, 0]))].reshape(len(per), -1)
                    same = bool((pattern == pattern[0]).all())
                if same:
                    dims.append([("island", name, pattern[0].tobytes())] * pp)
                elif unit > self._maps.gpn:  # NVLink domains over nodes: exact groups
                    dims.append([("stage", name, degrees, s) for s in range(pp)])
                else:
                    forms = self._fabric_forms(by_stage(layout, stage_of, name, experts))
                    dims.append([("fabric", name, f) for f in forms])
            hit = self._comm_sig[degrees] = list(zip(*dims, strict=True))
        return hit

    def _fabric_forms(self, groups: np.ndarray) -> list[tuple]:
        """Per stage of ``groups`` (stages, groups, size; a fat-tree whose islands are
        nodes): :func:`~planner.hwmodels.collectives.fabric_form`, the key under which the
        collective model itself shares profiles."""
        return fabric_forms(self._maps, groups)

    def stage_comm(self, tp, cp, ep, etp, dp, pp, order, mb, sp) -> np.ndarray:
        """(pp, pieces, 7): per stage and piece, TP forward/backward, CP forward/backward and
        EP forward/backward seconds of one micro-batch (``StageComm.piece``) without full
        recomputation (:func:`with_full_recompute` adds it from the 7th column, the TP that
        full recomputation repeats)."""
        degrees = (tp, cp, ep, etp, dp, pp, order)
        whole = self._comm.get((degrees, mb, sp))
        if whole is None:
            whole = self._comm[degrees, mb, sp] = _attempt(self._stages, degrees, mb, sp)
        return _value(whole)

    def _stages(self, degrees: tuple, mb: int, sp: int) -> np.ndarray:
        tp, cp, ep, etp, dp, pp, order = degrees
        out = np.zeros((pp, len(PIECES), 7))
        for stage, sig in enumerate(self._signatures(degrees)):
            key = (tp, cp, ep, etp, mb, sp, sig)
            hit = self._comm.get(key)
            if hit is None:
                plan = canonical_plan(tp=tp, cp=cp, ep=ep, etp=etp, dp=dp, pp=pp, mb=mb, sp=sp, order=order)
                hit = self._comm[key] = _attempt(self._stage_comm, plan, stage)
            out[stage] = _value(hit)
        return out

    def _stage_comm(self, plan: Plan, stage: int) -> np.ndarray:
        comm = StageComm(self.model, self.cluster, plan, self.workload, rank_layout(plan), stage)
        pieces = [comm.piece(p) for p in PIECES]
        return np.array([(*c.astuple(), c.tp_recompute_s) for c in pieces])

    def p2p(self, tp, cp, dp, pp, order, mb, sp) -> float:
        key = (tp, cp, dp, pp, order, mb, sp)
        hit = self._p2p.get(key)
        if hit is None:
            plan = canonical_plan(tp=tp, cp=cp, dp=dp, pp=pp, mb=mb, sp=sp, order=order)
            hit = self._p2p[key] = _attempt(pp_p2p_s, self.cluster, plan, self.workload, rank_layout(plan),
                                            self.model)
        return _value(hit)

    def _dp_signatures(self, degrees: tuple, dualpipe: bool) -> list[tuple]:
        """Per stage, what its DP (and expert-DP) reduction costs depend on: its groups up
        to a symmetry of the fabric (:meth:`_fabric_forms`); exact where NVLink domains span
        nodes."""
        key = (degrees, dualpipe)
        hit = self._sig.get(key)
        if hit is None:
            tp, cp, ep, etp, dp, pp, order = degrees
            sched = PipelineSchedule.DUALPIPE if dualpipe else PipelineSchedule.ONE_F_ONE_B
            layout = rank_layout(canonical_plan(tp=tp, cp=cp, ep=ep, etp=etp, dp=dp, pp=pp, sched=sched, order=order))
            stage_of = np.empty(layout.plan.world_size, dtype=np.int64)
            stage_of[layout.groups("pp")] = np.arange(pp)
            parts = []
            for dims, experts in (("cp-dp" if cp > 1 else "dp", False), ("edp", True)):
                groups = by_stage(layout, stage_of, dims, experts)
                if dualpipe:  # dp_step_comm reduces over the mirror stage's copies too
                    groups = np.concatenate([groups, groups[::-1]], axis=2)
                if self.island > self._maps.gpn:
                    parts.append([(g.shape, g.tobytes()) for g in groups])
                else:
                    parts.append(self._fabric_forms(groups))
            hit = self._sig[key] = list(zip(*parts, strict=True))
        return hit

    def _dp_ids(self, degrees: tuple, dualpipe: bool) -> np.ndarray:
        """(pp,): an integer id per stage of :meth:`_dp_signatures` (equal ids, equal cost)."""
        key = (degrees, dualpipe)
        hit = self._sig_ids.get(key)
        if hit is None:
            ids = self._sig_ids
            hit = ids[key] = np.array([ids.setdefault(sig, len(ids)) for sig in self._dp_signatures(*key)])
        return hit

    def dp_table(self, degrees: list[tuple], which: np.ndarray, zero: np.ndarray, pids: np.ndarray,
                 dualpipe: bool, params: np.ndarray, units: np.ndarray) -> tuple[np.ndarray, dict]:
        """(rows, pp, 4): ``dp_step_comm`` of every rank of each row (per step the reduction
        and the ZeRO-1/2 gather, per micro-batch the ZeRO-3 gather and scatter), row u with degrees ``degrees[which[u]]``, ZeRO stage
        ``zero[u]``, split ``pids[u]`` whose ranks hold ``params[u]`` (pp, 2) dense and
        expert parameters and ``units[u]`` (pp,) pieces with parameters; and {row: refusal}
        for rows a rank of which the cost model refuses. Memoised per row (degrees, ZeRO,
        split); new rows are priced by :meth:`_dp_priced`."""
        out = np.zeros((*units.shape, 4))
        errors: dict = {}
        keys = [(degrees[w], z, dualpipe, p) for w, z, p in zip(which.tolist(), zero.tolist(), pids.tolist())]
        todo = []
        for u, key in enumerate(keys):
            hit = self._dp_rows.get(key)
            if hit is None:
                todo.append(u)
            elif type(hit) is Refused:
                errors[u] = hit.error
            else:
                out[u] = hit
        if todo:
            t = np.array(todo)
            values, refused = self._dp_priced(degrees, which[t], zero[t], dualpipe, params[t], units[t])
            out[t] = values
            for j, u in enumerate(todo):
                self._dp_rows[keys[u]] = Refused(refused[j]) if j in refused else values[j]
                if j in refused:
                    errors[u] = refused[j]
        return out, errors

    def _dp_priced(self, degrees: list[tuple], which: np.ndarray, zero: np.ndarray, dualpipe: bool,
                   params: np.ndarray, units: np.ndarray) -> tuple[np.ndarray, dict]:
        """:meth:`dp_table`'s values, priced once per distinct (stage signature, ZeRO, dense,
        expert, ZeRO-3 units): ZeRO-1 and -2 move the same bytes; DualPipe reduces over both
        copies of a chunk."""
        rows, pp = units.shape
        z = np.where(zero == 2, 1, zero)[:, None].repeat(pp, axis=1)
        keys = np.stack([np.stack([self._dp_ids(d, dualpipe) for d in degrees])[which], z,
                         np.ascontiguousarray(params[:, :, 0]).view(np.int64),
                         np.ascontiguousarray(params[:, :, 1]).view(np.int64),
                         np.where(z == 3, units, 0).astype(np.int64)], axis=2).reshape(rows * pp, 5)
        uniq, first, inverse = np.unique(keys, axis=0, return_index=True, return_inverse=True)
        values = np.zeros((len(uniq), 4))
        errors: dict = {}
        for k, key in enumerate(map(tuple, uniq.tolist())):
            hit = self._dp.get(key)
            if hit is None:
                u, stage = divmod(int(first[k]), pp)
                hit = self._dp[key] = _attempt(self._dp_step, degrees[which[u]], key[1], dualpipe, stage,
                                               float(params[u, stage, 0]), float(params[u, stage, 1]), key[4])
            if type(hit) is Refused:
                for u in np.unique(np.flatnonzero(inverse.reshape(-1) == k) // pp).tolist():
                    errors.setdefault(u, hit.error)
            else:
                values[k] = hit
        return values[inverse.reshape(-1)].reshape(rows, pp, 4), errors

    def _dp_step(self, degrees: tuple, zero: int, dualpipe: bool, stage: int, dense: float, expert: float,
                 units: int) -> tuple[float, float, float, float]:
        tp, cp, ep, etp, dp, pp, order = degrees
        sched = PipelineSchedule.DUALPIPE if dualpipe else PipelineSchedule.ONE_F_ONE_B
        plan = canonical_plan(tp=tp, cp=cp, ep=ep, etp=etp, dp=dp, pp=pp, zero=ZeroStage(zero), sched=sched,
                              order=order)
        d = dp_step_comm(self.cluster, plan, self.workload, rank_layout(plan), stage, dense, expert,
                         zero3_units=units)
        return d.reduce_s, d.gather_s, d.per_microbatch_gather_s, d.per_microbatch_scatter_s

    # -- parameters and memory primitives ------------------------------------------------

    def piece_params(self, tp, ep, etp) -> np.ndarray:
        """(pieces, 2): dense and expert parameters of each piece on one GPU."""
        key = (tp, ep, etp)
        hit = self._params.get(key)
        if hit is None:
            hit = self._params[key] = _attempt(self._piece_params, tp, ep, etp)
        return _value(hit)

    def _piece_params(self, tp, ep, etp) -> np.ndarray:
        plan = canonical_plan(tp=tp, ep=ep, etp=etp, dp=ep * etp)
        out = np.zeros((len(PIECES), 2))
        for k, piece in enumerate(PIECES):
            if self.present[k]:
                prm = piece_params(self.model, plan, piece)
                out[k] = (prm.dense, prm.expert)
        return out

    def rank_params(self, tp, ep, etp, pid: int) -> np.ndarray:
        """(pp, 3): ``memory.rank_params`` dense and expert, and the largest piece's total."""
        key = (tp, ep, etp, pid)
        hit = self._rank_params.get(key)
        if hit is None:
            hit = self._rank_params[key] = _attempt(self._rank_params_of, tp, ep, etp, pid)
        return _value(hit)

    def _rank_params_of(self, tp, ep, etp, pid: int) -> np.ndarray:
        # memory.rank_params: the rank's pieces' parameters (summed here as counts x
        # per-piece, equal up to rounding), plus a copy of the word embedding where a tied
        # head or an MTP module sits on a rank without the embedding.
        info = self.part(pid)
        per = self.piece_params(tp, ep, etp)
        out = np.zeros((info.part.pp, 3))
        out[:, :2] = info.rank_counts @ per
        model = self.model
        for r, kinds in enumerate(info.kinds):
            if Piece.EMBEDDING not in kinds and ((Piece.HEAD in kinds and model.tie_word_embeddings)
                                                 or Piece.MTP in kinds):
                out[r, 0] += model.vocab_size * model.hidden_size / tp
            out[r, 2] = max(per[PIECES.index(p)].sum() for p in kinds)
        return out

    def activations(self, tp, cp, ep, etp, mb, sp, rec) -> np.ndarray:
        """(pieces, 2): bytes kept for backward and transient working set per micro-batch."""
        key = (tp, cp, ep, etp, mb, sp, rec)
        hit = self._act.get(key)
        if hit is None:
            hit = self._act[key] = _attempt(self._activations, *key)
        return _value(hit)

    def _activations(self, tp, cp, ep, etp, mb, sp, rec) -> np.ndarray:
        plan = canonical_plan(tp=tp, cp=cp, ep=ep, etp=etp, dp=ep * etp, mb=mb, sp=sp, rec=RECOMPUTES[rec])
        out = np.zeros((len(PIECES), 2))
        for k, piece in enumerate(PIECES):
            if self.present[k]:
                out[k] = (activation_bytes(self.model, plan, self.workload, piece),
                          working_set_bytes(self.model, plan, self.workload, piece))
        return out

    def largest_gemm(self, tp, ep, etp, kinds: frozenset) -> float:
        key = (tp, ep, etp, kinds)
        hit = self._gemm.get(key)
        if hit is None:
            plan = canonical_plan(tp=tp, ep=ep, etp=etp, dp=ep * etp)
            hit = self._gemm[key] = _attempt(largest_gemm_weight, self.model, plan, sorted(kinds))
        return _value(hit)
