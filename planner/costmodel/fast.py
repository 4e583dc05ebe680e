"""A vectorised fast estimate of step time and peak memory for many plans at once.

``estimate(model, cluster, workload, plans)`` (a list of :class:`Plan`) and
``estimate_table(model, cluster, workload, table)`` (the search's columnar
:class:`~planner.search.space.CandidateTable`) return :class:`FastEstimates` aligned with
their input, for ranking candidates before the best few are re-priced with
:func:`planner.costmodel.simulate.simulate`.

How (the simulator's numbers, assembled per plan with numpy instead of per plan in Python):

1. Shape tables (:mod:`~planner.costmodel.fast_shapes`): per-piece compute, per-stage
   TP/CP/EP communication, PP p2p, partitions, per-rank DP/ZeRO communication, parameters
   and per-piece activation bytes, each priced once per distinct shape with the simulator's
   own functions and memoised across calls.
2. Per plan, as arrays over (plans, chunks) or (plans, ranks): chunk times exactly as
   ``simulate`` builds them (CP hidden behind attention, ZeRO-3 gathers gating F and B,
   DualPipe's F&B pairs with the EP all-to-all overlapped), the pipeline by
   :mod:`~planner.costmodel.fast_pipeline` (the simulator's compiled schedules evaluated for
   all plans at once; exact up to the micro-batch extrapolation it documents), then each
   rank's exposed DP gradient sync and optimizer step, and memory per rank
   (``memory.state_bytes`` and ``memory.stage_memory`` re-assembled over arrays from the
   per-piece primitives; tests/test_fast.py checks both against ``simulate`` to 1e-9).
3. The split, as ``simulate`` picks it: Megatron's even split when the blocks divide and the
   schedule is not DualPipe(V); otherwise both candidate splits (forward-time and count
   balanced) are priced and the faster that fits is kept.

Differences from ``simulate``: the pipeline extrapolation beyond
:func:`fast_pipeline.exact_limit` micro-batches (see that module), and two sharing rules of
:mod:`~planner.costmodel.fast_shapes` (collectives on groups equal up to a symmetry of the
cluster cost the same), which tests/test_fast.py checks through exact agreement with
``simulate`` on H100/H800/A100 fat-trees, Fire-Flyer PCIe nodes and NVL72 racks.

Speed (benchmarks/bench_fast.py, 2 shared CPU cores): llama3-70b on 1024 H100, 5,772 plans:
about 1,300 plans/s cold, 9,000-10,000 plans/s for new plans over warm shape tables, 250,000
plans/s for a repeated call; top-20 agreement with ``simulate`` 0.000 % (DeepSeek-V3, 768
plans: 0.03 %). Cold calls are bound by one-time work per shape: compiling each
(schedule, micro-batches, pp, vpp) program into waves (``schedules._compiled`` plus a unit
run), the first collective profiles of every DP group, and the splits; warm calls by the
wave loop of :func:`fast_pipeline.pipeline` (a few numpy calls per wave, ~8,000 waves for
the dense set) and the per-shape gathers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from planner.costmodel import compute as C
from planner.costmodel import fast_pipeline
from planner.costmodel.fast_shapes import (
    DUAL, KERNELS, PIECES, RECOMPUTES, SCHEDULES, Shapes, canonical_plan,
)
from planner.costmodel.memory import _formats, inflight_microbatches, memory_constants
from planner.costmodel.partition import Piece
from planner.costmodel.simulate import _optimizer_bytes_per_param
from planner.errors import UnsupportedError
from planner.specs.hardware import ClusterSpec
from planner.specs.model import ModelSpec
from planner.specs.plan import DEFAULT_RANK_ORDER, PipelineSchedule, Plan, Precision, Workload

__all__ = ["FastEstimates", "estimate", "estimate_table", "clear_caches"]

COLUMNS = ("tp", "cp", "pp", "vpp", "ep", "etp", "dp", "mb", "zero", "sp", "rec", "sched", "kernel", "order")
"""Integer plan columns: ``rec``, ``sched``, ``kernel`` index RECOMPUTES, SCHEDULES, KERNELS;
``order`` indexes the context's rank orders (0 = the default)."""
_C = {name: k for k, name in enumerate(COLUMNS)}
_DUAL_CODES = [SCHEDULES.index(s) for s in DUAL]
_HEADS = np.array([p in (Piece.HEAD, Piece.MTP) for p in PIECES])


@dataclass(frozen=True)
class FastEstimates:
    """Estimates aligned with the plans passed to :func:`estimate` / :func:`estimate_table`."""

    step_time_s: np.ndarray
    """Seconds per optimizer step."""
    memory_peak_bytes: np.ndarray
    """Peak bytes on the fullest GPU (max over pipeline ranks)."""
    fits: np.ndarray
    """Every rank fits in the GPU's HBM (bool)."""
    bubble_s: np.ndarray
    """Idle seconds of the busiest rank in the pipeline part of the step."""

    def __len__(self) -> int:
        return len(self.step_time_s)


_CTX: dict = {}


def clear_caches() -> None:
    """Forget every memoised value (for cold-start measurements)."""
    _CTX.clear()
    fast_pipeline.clear()


class _Context:
    def __init__(self, model: ModelSpec, cluster: ClusterSpec, workload: Workload):
        self.shapes = Shapes(model, cluster, workload)
        self.cluster = cluster
        self.orders = [DEFAULT_RANK_ORDER]
        self.calls: dict = {}  # key-matrix bytes -> results (a repeated call)


def _context(model, cluster, workload) -> _Context:
    key = (model, id(cluster), workload)
    ctx = _CTX.get(key)
    if ctx is None or ctx.cluster is not cluster:
        if len(_CTX) > 16:
            _CTX.clear()
        ctx = _CTX[key] = _Context(model, cluster, workload)
    return ctx


def estimate(model: ModelSpec, cluster: ClusterSpec, workload: Workload, plans: Sequence[Plan]) -> FastEstimates:
    """Fast step time and peak memory of every plan (valid plans, as
    :func:`planner.specs.compat.check_plan` accepts them); results aligned with ``plans``.
    The layer split is the simulator's own choice: a plan that fixes ``pipeline_layers``
    is refused (price it with :func:`~planner.costmodel.simulate.simulate`)."""
    fixed = next((p for p in plans if p.pipeline_layers is not None), None)
    if fixed is not None:
        raise UnsupportedError(
            f"the fast estimate prices the simulator's own layer split; plan with pipeline_layers "
            f"{list(fixed.pipeline_layers)} needs simulate()"
        )
    ctx = _context(model, cluster, workload)
    orders = ctx.orders
    for p in plans:
        if p.rank_order not in orders:
            orders.append(p.rank_order)
    rows = [(p.tp, p.cp, p.pp, p.vpp, p.ep, p.expert_tp, p.dp, p.micro_batch_size, int(p.zero_stage),
             int(p.sequence_parallel), RECOMPUTES.index(p.recompute), SCHEDULES.index(p.pipeline_schedule),
             KERNELS.index(p.attention_kernel), orders.index(p.rank_order)) for p in plans]
    return _estimate(ctx, np.array(rows, dtype=np.int64).reshape(len(rows), len(COLUMNS)))


def estimate_table(model: ModelSpec, cluster: ClusterSpec, workload: Workload, table) -> FastEstimates:
    """:func:`estimate` for a :class:`~planner.search.space.CandidateTable` (etp = tp, the
    default rank order, flash attention), without building Plan objects."""
    ctx = _context(model, cluster, workload)
    n = len(table)
    cols = {"etp": table.tp, "kernel": np.zeros(n, dtype=np.int64), "order": np.zeros(n, dtype=np.int64)}
    return _estimate(ctx, np.stack([np.asarray(cols[c] if c in cols else getattr(table, c), dtype=np.int64)
                                    for c in COLUMNS], axis=1).reshape(n, len(COLUMNS)))


def _estimate(ctx: _Context, keys: np.ndarray) -> FastEstimates:
    memo = keys.tobytes()
    hit = ctx.calls.get(memo)
    if hit is None:
        hit = _evaluate(ctx, keys) if len(keys) else (np.zeros(0), np.zeros(0), np.zeros(0))
        if len(ctx.calls) > 64:
            ctx.calls.clear()
        ctx.calls[memo] = hit
    step, peak, bubble = hit
    return FastEstimates(step_time_s=step, memory_peak_bytes=peak,
                         fits=peak <= ctx.shapes.cluster.gpu.hbm_capacity_bytes, bubble_s=bubble)


def _unique(*cols: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
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


def _evaluate(ctx: _Context, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    sh = ctx.shapes
    model, workload = sh.model, sh.workload
    col = {name: keys[:, k] for k, name in enumerate(COLUMNS)}
    tp, pp, vpp, sched = col["tp"], col["pp"], col["vpp"], col["sched"]
    n = len(keys)
    dual = np.isin(sched, _DUAL_CODES)
    even = (model.num_layers % (pp * vpp) == 0) & ~dual
    sp_eff = col["sp"] * (tp > 1)
    # DualPipe(V) with EP gives the all-to-all SMs (simulate's compute share).
    shared = (dual & (col["ep"] > 1)).astype(np.int64)
    # Rows: every plan with its first split (even, or count-balanced), then the uneven plans
    # again with the forward-balanced split.
    second = np.flatnonzero(~even)
    plan_of = np.concatenate([np.arange(n), second])
    pids = np.empty(len(plan_of), dtype=np.int64)
    fwd_key = [col[c] for c in ("tp", "cp", "ep", "etp", "mb")] + [sp_eff, col["rec"], col["kernel"]]
    uniq, inv = _unique(pp, vpp, sched, even, *(np.where(even, 0, k) for k in fwd_key))
    where_second = np.full(n, -1)
    where_second[second] = n + np.arange(len(second))
    for u, row in enumerate(uniq):
        sel = np.flatnonzero(inv == u)
        forward_s = ()
        if not row[3]:
            table = sh.compute(*(int(x) for x in row[4:]), 1.0)
            forward_s = tuple((p, float(table[k, 0])) for k, p in enumerate(PIECES) if sh.present[k])
        splits = sh.splits(int(row[0]), int(row[1]), int(row[2]), forward_s)
        pids[sel] = splits[-1].pid
        if len(splits) > 1:
            pids[where_second[sel]] = splits[0].pid
    out = np.zeros((len(plan_of), 3))
    uniq, inv = _unique(pp[plan_of], vpp[plan_of], sched[plan_of])
    for u, (p_, v_, s_) in enumerate(uniq):
        rows = np.flatnonzero(inv == u)
        out[rows] = _group(ctx, col, shared, plan_of[rows], pids[rows], int(p_), int(v_), SCHEDULES[int(s_)])
    # The faster split that fits (the first when neither fits).
    step, peak, bubble = out[:n].T.copy()
    alt = out[n:]
    cap = sh.cluster.gpu.hbm_capacity_bytes
    fit0, fit1 = peak <= cap, alt[:, 1] <= cap
    # simulate lists the forward-balanced split first: it wins ties.
    take = (fit1 & ~fit0[second]) | ((fit1 == fit0[second]) & (alt[:, 0] <= step[second]))
    idx = second[take]
    step[idx], peak[idx], bubble[idx] = alt[take].T
    return step, peak, bubble


def _group(ctx: _Context, col: dict, shared: np.ndarray, plans: np.ndarray, pids: np.ndarray, pp: int, vpp: int,
           schedule: PipelineSchedule) -> np.ndarray:
    """(rows, 3): step, peak memory and bubble of rows sharing (pp, vpp, schedule)."""
    sh = ctx.shapes
    model, workload, cluster = sh.model, sh.workload, sh.cluster
    c = {name: v[plans] for name, v in col.items()}
    g = len(plans)
    sp_eff = c["sp"] * (c["tp"] > 1)
    m = workload.global_batch_size // (c["dp"] * c["mb"])
    edp = c["tp"] * c["cp"] * c["dp"] // (c["ep"] * c["etp"])
    dual = schedule in DUAL
    parts = [sh.part(int(p)) for p in pids]
    counts = np.stack([p.counts for p in parts])  # (g, chunks, pieces)
    chunk_rank = np.stack([p.chunk_rank for p in parts])  # (g, chunks)
    rank_counts = np.stack([p.rank_counts for p in parts])  # (g, pp, pieces)
    first = np.stack([p.first_chunk for p in parts])  # (g, pp)
    num_own = np.stack([p.num_own for p in parts])
    rows = np.arange(g)[:, None]

    # Compute per chunk: (g, chunks, 4) = F, B, W, attention core.
    table = np.empty((g, len(PIECES), 4))
    share = 1.0 - C.compute_constants()["ep_overlap_communication_sms"] / cluster.gpu.num_sms
    uniq, inv = _unique(c["tp"], c["cp"], c["ep"], c["etp"], c["mb"], sp_eff, c["rec"], c["kernel"], shared[plans])
    for u, row in enumerate(uniq):
        table[inv == u] = sh.compute(*(int(x) for x in row[:8]), share if row[8] else 1.0)
    comp = np.einsum("gnk,gkj->gnj", counts, table)
    # TP/CP/EP per chunk: (g, chunks, 6); the p2p time per row.
    stage = np.empty((g, pp, len(PIECES), 6))
    p2p = np.empty(g)
    uniq, inv = _unique(c["tp"], c["cp"], c["ep"], c["etp"], c["dp"], c["order"], c["mb"], sp_eff)
    for u, (t, cp_, ep, etp, dp, order, mb, sp) in enumerate(uniq):
        sel = inv == u
        order_s = ctx.orders[int(order)]
        stage[sel] = sh.stage_comm(int(t), int(cp_), int(ep), int(etp), int(dp), pp, order_s, int(mb), int(sp))
        p2p[sel] = sh.p2p(int(t), int(cp_), int(dp), pp, order_s, int(mb), int(sp)) if pp > 1 else 0.0
    comm = np.einsum("gnk,gnkj->gnj", counts, stage[rows, chunk_rank])
    # Parameters per rank (the simulator's: pieces of the rank's chunks), DP/ZeRO per rank.
    params = np.empty((g, len(PIECES), 2))
    uniq, inv = _unique(c["tp"], c["ep"], c["etp"])
    for u, (t, ep, etp) in enumerate(uniq):
        params[inv == u] = sh.piece_params(int(t), int(ep), int(etp))
    rank_params = np.einsum("grk,gkj->grj", rank_counts, params)  # (g, pp, 2)
    # ZeRO-3 units: pieces with parameters on the rank (each gathered by its own collective).
    units = np.einsum("grk,gk->gr", rank_counts, (params.sum(axis=2) > 0).astype(float))
    dpc = np.empty((g, pp, 3))
    uniq, inv = _unique(c["tp"], c["cp"], c["ep"], c["etp"], c["dp"], c["order"], c["zero"], pids)
    for u, (t, cp_, ep, etp, dp, order, zero, pid) in enumerate(uniq):
        sel = np.flatnonzero(inv == u)
        degrees = (int(t), int(cp_), int(ep), int(etp), int(dp), pp, ctx.orders[int(order)])
        dpc[sel] = sh.dp_ranks(degrees, int(zero), schedule is PipelineSchedule.DUALPIPE, int(pid),
                               rank_params[sel[0]], units[sel[0]])

    # Chunk times as simulate's _RankCosts.chunk_times builds them.
    attn = comp[:, :, 3]
    cp_f = np.maximum(0.0, comm[:, :, 2] - attn)
    cp_b = np.maximum(0.0, comm[:, :, 3] - 2 * attn)
    gather = (dpc[:, :, 1] / num_own)[rows, chunk_rank]
    scatter = (dpc[:, :, 2] / num_own)[rows, chunk_rank]
    fwd = np.maximum(comp[:, :, 0] + cp_f, gather) + comm[:, :, 0] + comm[:, :, 4]
    bwd = np.maximum(comp[:, :, 1] + cp_b, gather) + comm[:, :, 1] + comm[:, :, 5]
    wgt = np.maximum(comp[:, :, 2], scatter)
    overlap = np.ones_like(fwd)
    if dual:  # F&B pairs: ZeRO-3 traffic shares the network with the all-to-all
        busy = comp[:, :, 0] + comp[:, :, 1] + comp[:, :, 2] + cp_f + cp_b
        pair = np.maximum(busy, comm[:, :, 4] + comm[:, :, 5] + 2 * gather + scatter) + comm[:, :, 0] + comm[:, :, 1]
        serial = fwd + bwd + wgt
        overlap = np.where(serial > 0, pair / np.where(serial > 0, serial, 1.0), 1.0)
    ends, busy_r = fast_pipeline.pipeline(schedule, pp, vpp, m, fwd.T, bwd.T, wgt.T, overlap.T, p2p)
    ends, busy_r = ends.T, busy_r.T  # (g, pp)
    makespan = ends.max(axis=1)
    bubble = np.maximum(0.0, makespan - busy_r.max(axis=1))

    # Exposed DP gradient sync (beyond the rank's last backward) and the optimizer step.
    last_bw = (bwd + wgt)[rows, first]
    exposed = np.maximum(0.0, dpc[:, :, 0] - last_bw)
    sharded = (c["zero"] >= 1)[:, None]
    local = np.where(sharded, rank_params[:, :, 0] / (c["dp"] * c["cp"])[:, None]
                     + rank_params[:, :, 1] / edp[:, None], rank_params.sum(axis=2))
    gpu = cluster.gpu
    opt = local * _optimizer_bytes_per_param(workload) / (gpu.hbm_bandwidth_bytes_per_s * gpu.efficiency.hbm_fraction)
    step = (ends + exposed + opt).max(axis=1)
    peak = _memory(ctx, c, pids, parts, rank_counts, m, edp, pp, vpp, schedule).max(axis=1)
    return np.stack([step, peak, bubble], axis=1)


def _memory(ctx: _Context, c: dict, pids, parts, rank_counts, m, edp, pp: int, vpp: int,
            schedule: PipelineSchedule) -> np.ndarray:
    """(rows, pp) bytes per rank: ``memory.state_bytes`` + ``stage_memory``'s activations and
    workspace, term by term over arrays."""
    sh = ctx.shapes
    model, workload = sh.model, sh.workload
    k = memory_constants()
    g = len(pids)
    dual = schedule in DUAL
    # States (state_bytes): ZeRO shards dense over dp * cp, experts over edp; ZeRO-3 keeps
    # two pieces gathered, ZeRO-2 one piece's gradients unsharded.
    rp = np.empty((g, pp, 3))
    transient = np.zeros((g, pp))
    fp8 = workload.precision is Precision.FP8
    uniq, inv = _unique(c["tp"], c["ep"], c["etp"], pids)
    for u, (t, ep, etp, pid) in enumerate(uniq):
        sel = inv == u
        rp[sel] = sh.rank_params(int(t), int(ep), int(etp), int(pid))
        if fp8:  # the FP8 weight copy of the rank's largest GEMM
            kinds = sh.part(int(pid)).kinds
            transient[sel] += [sh.largest_gemm(int(t), int(ep), int(etp), kinds[r]) for r in range(pp)]
    transient *= k.fp8_weight_copy_bytes_per_param
    dense, expert, largest = rp[:, :, 0], rp[:, :, 1], rp[:, :, 2]
    total = dense + expert
    shard = dense / (c["dp"] * c["cp"])[:, None] + expert / edp[:, None]
    st = k.state_bytes_per_param[workload.precision]
    zero = c["zero"][:, None]
    weights = np.where(zero >= 3, np.minimum(total * st.weights, (shard + 2 * largest) * st.weights),
                       total * st.weights)
    grads = np.where(zero >= 2, np.minimum(total * st.gradients, (shard + largest) * st.gradients),
                     total * st.gradients)
    optim = np.where(zero >= 1, shard, total) * st.optimizer
    # Activations: the largest working set of the rank's pieces, plus each chunk's share of
    # the micro-batches in flight (heads and MTP hold at most one).
    act = np.empty((g, len(PIECES), 2))
    uniq, inv = _unique(c["tp"], c["cp"], c["ep"], c["etp"], c["mb"], c["sp"], c["rec"])
    for u, row in enumerate(uniq):
        act[inv == u] = sh.activations(*(int(x) for x in row))
    present = rank_counts > 0
    ws = np.where(present, act[:, None, :, 1], 0.0).max(axis=2)
    inflight = np.empty((g, pp))
    for mm in np.unique(m):
        plan = canonical_plan(pp=pp, vpp=vpp, sched=schedule)
        inflight[m == mm] = [inflight_microbatches(plan, int(mm), r) for r in range(pp)]
    shares = np.stack([p.shares for p in parts])  # (g, pp, own)
    own_counts = np.stack([p.own_counts for p in parts])  # (g, pp, own, pieces)
    alive = inflight[:, :, None] * shares
    held = np.where(_HEADS, np.minimum(alive, 1.0)[..., None], alive[..., None]) * own_counts
    activations = ws + np.einsum("grjk,gk->gr", held, act[:, :, 0])
    # Workspace: the FP8 weight copy (above), MoE dispatch/combine buffers, p2p buffers.
    tokens = (workload.seq_length * c["mb"] / c["cp"])[:, None]
    d = model.hidden_size
    if model.moe is not None:
        moe_rank = (rank_counts[:, :, PIECES.index(Piece.MOE)] + rank_counts[:, :, PIECES.index(Piece.MTP)]) > 0
        rows_ = tokens * model.moe.top_k * (c["etp"] / c["tp"])[:, None]
        sets = k.overlapped_microbatches_dualpipe if dual else 1
        transient += moe_rank * sets * rows_ * d * (_formats(workload).cached + k.activation_bytes)
    if pp > 1:
        seq_div = np.where(c["sp"] == 1, c["tp"], 1)[:, None]
        transient += (4 if dual else 2) * k.activation_bytes * tokens * d / seq_div
    workspace = (k.cuda_context_bytes + k.nccl_buffers_bytes + k.gemm_workspace_bytes + transient
                 + k.fragmentation_fraction * (activations + transient))
    return weights + grads + optim + activations + workspace
