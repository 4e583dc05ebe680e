"""A vectorised fast estimate of step time and peak memory for many plans at once.

``estimate(model, cluster, workload, plans) -> FastEstimates`` ranks candidates for a
search before the best few are re-priced with :func:`planner.costmodel.simulate.simulate`.
It reuses the simulator's own pieces and differs from it only in the pipeline:

Memoised per *shape* (module-level dicts keyed by the inputs that matter, so a search that
calls ``estimate`` repeatedly pays each once):

- per-piece compute (F, B, W, attention core) per (tp, cp, ep, etp, micro-batch,
  recompute, sequence parallel, attention kernel, compute share) via ``piece_ops`` /
  ``piece_time``, exactly as the simulator;
- per-stage TP/CP/EP communication per (degrees, rank order, stage) via
  :class:`~planner.costmodel.comm.StageComm`, the PP p2p time via ``pp_p2p_s``;
- the partition per (pp, vpp, schedule), per-rank parameters, per-rank DP/ZeRO
  communication (``dp_step_comm``) and per-rank memory (``stage_memory`` with
  ``inflight_microbatches``), i.e. the simulator's own numbers;
- the schedule's *structure*: how many F, B, W, BW and F&B operations each rank runs per
  chunk (from the compiled programs of :mod:`~planner.costmodel.schedules`), and (even
  splits) the *bubble* of a pipeline whose chunks all take the busiest rank's mean chunk time
  (memoised by the ratios B/F, W/F, F&B/(F+B+W), p2p/F rounded to 1 %, run once as an
  event simulation at 2 pp and 4 pp micro-batches and extrapolated linearly in the
  micro-batch count beyond: the steady state adds a fixed amount per micro-batch, e.g.
  1F1B's blocking p2p, 2 (pp-1)/pp p2p per micro-batch).

Vectorised over plans (numpy over a plans x ranks matrix): each rank's busy time (exact:
operation counts x chunk times), makespan = busiest rank's busy time + the bubble above,
each rank's end = makespan - its (uniform-pipeline) lag, then the step = max over ranks of
end + exposed DP gradient sync + optimizer, as the simulator charges them; memory = max over
ranks.

Approximations (versus ``simulate``):

- **Bubble of even splits** (1F1B, ZB1P, interleaved with the blocks dividing evenly): idle
  time is that of a *uniform* pipeline made of the busiest rank's mean chunk. That is exact
  for equal chunks and over-estimates slightly when the ends (embedding, head) are heavier
  (ZB1P up to ~1.6 % of the step on llama3-70b). It is DeepSeek-V3 Table 2's closed forms
  ((pp-1)(F+B) 1F1B, ÷vpp interleaved, (pp-1)(F+B-2W) ZB1P) as our event simulation
  actually measures them, with the p2p delays charged the same way.
- Ratios are rounded to 1 % before the memoised uniform simulation (bubble error < 1 %).
- **Uneven splits and DualPipe(V)**: no closed form got within 3 % (chunks of 1 and 2
  blocks stall interleaved 1F1B's steady state; DualPipe's ranks end at very different
  times, which moves the exposed DP tail), so these run the schedule's event simulation on
  the plan's chunk times. Both of the simulator's candidate splits (count- and
  forward-balanced) are priced and the faster that fits is kept, as ``simulate`` does.
  When the two are within a percent or two, the pick may differ from ``simulate``'s
  (then the memory differs by a few percent too).

Speed (benchmarks/bench_fast.py): dominated by the per-plan event simulations of uneven
and DualPipe plans and by the first pricing of each communication shape; plan results are
memoised, so a repeated call over the same plans costs a dictionary lookup per plan.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from planner.costmodel import compute as C
from planner.costmodel.comm import StageComm, dp_step_comm, pp_p2p_s
from planner.costmodel.memory import (
    inflight_microbatches, piece_params, stage_memory, state_bytes,
)
from planner.costmodel.partition import Partition, Piece, model_pieces, partition
from planner.costmodel.schedules import ChunkTimes, _compiled, simulate_pipeline
from planner.costmodel.simulate import DUAL, _optimizer_bytes_per_param, _piece_compute
from planner.hwmodels.placement import rank_layout
from planner.specs.hardware import ClusterSpec
from planner.specs.model import ModelSpec
from planner.specs.plan import PipelineSchedule, Plan, Workload, ZeroStage

__all__ = ["FastEstimates", "estimate", "clear_caches"]

_F, _B, _W, _BW, _FB = range(5)


@dataclass(frozen=True)
class FastEstimates:
    """Estimates aligned with the ``plans`` passed to :func:`estimate`."""

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


# ---------------------------------------------------------------------------------------
# Memo tables (cleared together; keyed by the specs they were computed for)

_CTX: dict = {}  # (model, cluster id, workload) -> per-context tables
_BUBBLE: dict = {}  # uniform-pipeline bubble per (schedule, pp, vpp, m, rounded ratios)


def clear_caches() -> None:
    """Forget every memoised value (for cold-start measurements)."""
    _CTX.clear()
    _BUBBLE.clear()


class _Context:
    """Tables of one (model, cluster, workload)."""

    def __init__(self, model: ModelSpec, cluster: ClusterSpec, workload: Workload):
        self.model, self.cluster, self.workload = model, cluster, workload
        self.compute: dict = {}  # shape key -> {piece: (F, B, W, attn_fwd)}
        self.comm: dict = {}  # (comm key, stage) -> StageComm
        self.parts: dict = {}  # (pp, vpp, schedule) -> Partition
        self.core: dict = {}  # core key -> _Core
        self.plan: dict = {}  # plan -> (step, peak, bubble)
        self.dp: dict = {}  # DP key -> per-rank DPComm
        self.states: dict = {}  # DP key -> per-rank state bytes
        self.rest: dict = {}  # core key -> per-rank activations + workspace bytes


def _context(model, cluster, workload) -> _Context:
    key = (model, id(cluster), workload)
    ctx = _CTX.get(key)
    if ctx is None or ctx.cluster is not cluster:
        if len(_CTX) > 16:
            _CTX.clear()
        ctx = _CTX[key] = _Context(model, cluster, workload)
    return ctx


# ---------------------------------------------------------------------------------------
# Per-shape scalars


def _partition(ctx: _Context, plan: Plan, balanced: bool = False) -> tuple[Partition, int]:
    """The simulator's candidate splits and a small id for memo keys: Megatron's even split
    when the blocks divide (not DualPipe), else the count-balanced split, or with
    ``balanced`` the forward-time-balanced one (the simulator keeps the faster that fits)."""
    key = (plan.pp, plan.vpp, plan.pipeline_schedule)
    if balanced:
        table = _piece_times(ctx, plan, 1.0)
        key += tuple(sorted((p.value, table[p][0]) for p in table))
    hit = ctx.parts.get(key)
    if hit is None:
        model = ctx.model
        even = model.num_layers % (plan.pp * plan.vpp) == 0 and plan.pipeline_schedule not in DUAL
        if even:
            part = partition(model, plan)
        elif balanced:
            table = _piece_times(ctx, plan, 1.0)
            part = partition(model, plan, {p: table[p][0] for p in table})
        else:
            part = partition(model, plan, {Piece.DENSE: 1.0, Piece.MOE: 1.0, Piece.HEAD: 1.0, Piece.MTP: 1.0})
        hit = ctx.parts[key] = (part, len(ctx.parts))
    return hit


def _piece_times(ctx: _Context, plan: Plan, share: float) -> dict:
    key = (plan.tp, plan.cp, plan.ep, plan.expert_tp, plan.micro_batch_size, plan.recompute,
           plan.sequence_parallel and plan.tp > 1, plan.attention_kernel, share)
    table = ctx.compute.get(key)
    if table is None:
        # A canonical plan: compute depends only on the fields of ``key``.
        canon = plan.model_copy(update={"pp": 1, "vpp": 1, "dp": 1, "zero_stage": ZeroStage.NONE,
                                        "pipeline_schedule": PipelineSchedule.ONE_F_ONE_B})
        table = {}
        for piece in set(model_pieces(ctx.model)):
            t, attn = _piece_compute(ctx.model, canon, ctx.workload, ctx.cluster.gpu, piece, share)
            table[piece] = (t.forward_s, t.backward_input_s, t.backward_weight_s, attn)
        ctx.compute[key] = table
    return table


def _stage_comm(ctx: _Context, plan: Plan, layout, stage: int) -> StageComm:
    key = (plan.tp, plan.cp, plan.ep, plan.expert_tp, plan.dp, plan.pp, plan.micro_batch_size,
           plan.sequence_parallel, plan.rank_order, stage)
    comm = ctx.comm.get(key)
    if comm is None:
        comm = ctx.comm[key] = StageComm(ctx.model, ctx.cluster, plan, ctx.workload, layout, stage)
    return comm


@dataclass
class _Core:
    """What a plan's step time needs, except ZeRO (per rank r, chunk c of the partition)."""

    num_micro: int
    p2p: float
    chunk_rank: np.ndarray
    f_in: np.ndarray  # compute + exposed CP (gated by a ZeRO-3 gather)
    f_out: np.ndarray  # TP + EP (after it)
    b_in: np.ndarray
    b_out: np.ndarray
    w: np.ndarray
    pair: np.ndarray | None  # DualPipe F&B (None elsewhere)
    dense_params: np.ndarray  # per rank
    expert_params: np.ndarray
    first_chunk: np.ndarray  # per rank, index of its first own chunk
    counts: tuple  # schedule structure (see _structure)
    even: bool  # Megatron's even split (else count-balanced)
    part: Partition
    pid: int


def _core_key(plan: Plan, pid: int) -> tuple:
    return (pid, plan.tp, plan.cp, plan.ep, plan.expert_tp, plan.dp, plan.pp, plan.vpp, plan.pipeline_schedule,
            plan.micro_batch_size, plan.recompute, plan.sequence_parallel, plan.attention_kernel, plan.rank_order)


def _core(ctx: _Context, plan: Plan, balanced: bool) -> _Core:
    part, pid = _partition(ctx, plan, balanced)
    key = _core_key(plan, pid)
    core = ctx.core.get(key)
    if core is not None:
        return core
    model, cluster, workload = ctx.model, ctx.cluster, ctx.workload
    layout = rank_layout(plan)
    dual = plan.pipeline_schedule in DUAL
    share = 1.0
    if dual and plan.ep > 1:
        share = 1.0 - C.compute_constants()["ep_overlap_communication_sms"] / cluster.gpu.num_sms
    table = _piece_times(ctx, plan, share)
    n = len(part.chunks)
    f_in, f_out, b_in, b_out, w, pair = (np.zeros(n) for _ in range(6))
    for chunk in part.chunks:
        c = chunk.index
        comp = np.zeros(4)
        for piece in chunk.pieces:
            comp += table[piece]
        cm = _stage_comm(ctx, plan, layout, chunk.rank).chunk(chunk)
        attn = comp[3]
        cp_f = max(0.0, cm.cp_forward_s - attn)
        cp_b = max(0.0, cm.cp_backward_s - 2 * attn)
        f_in[c], f_out[c] = comp[0] + cp_f, cm.tp_forward_s + cm.ep_forward_s
        b_in[c], b_out[c] = comp[1] + cp_b, cm.tp_backward_s + cm.ep_backward_s
        w[c] = comp[2]
        if dual:
            busy = comp[0] + comp[1] + comp[2]
            a2a = cm.ep_forward_s + cm.ep_backward_s
            pair[c] = max(busy, a2a) + cm.tp_forward_s + cm.tp_backward_s + cp_f + cp_b
    dense = np.zeros(plan.pp)
    expert = np.zeros(plan.pp)
    first = np.zeros(plan.pp, dtype=int)
    for r in range(plan.pp):
        own = part.chunks_of_rank(r)
        first[r] = own[0].index
        for chunk in own:
            for piece in chunk.pieces:
                prm = piece_params(model, plan, piece)
                dense[r] += prm.dense
                expert[r] += prm.expert
    m = plan.num_microbatches(workload)
    core = _Core(
        num_micro=m, p2p=pp_p2p_s(cluster, plan, workload, layout, model),
        chunk_rank=np.array([c.rank for c in part.chunks]), f_in=f_in, f_out=f_out, b_in=b_in, b_out=b_out,
        w=w, pair=pair if dual else None, dense_params=dense, expert_params=expert, first_chunk=first,
        counts=_structure(plan.pipeline_schedule, m, plan.pp, plan.vpp),
        even=model.num_layers % (plan.pp * plan.vpp) == 0 and not dual,
        part=part, pid=pid,
    )
    ctx.core[key] = core
    return core


_STRUCT: dict = {}


def _structure(schedule: PipelineSchedule, m: int, pp: int, vpp: int) -> tuple:
    """Per rank and chunk, how many times the rank runs the chunk's F, B (alone or in BW)
    and W alone, and its F / BW halves inside F&B pairs: arrays (pp, chunks) each.

    DualPipe(V): compiled at 2pp and 2pp + 2 micro-batches and extrapolated linearly (every
    further micro-batch pair adds overlapped pairs to step 4 only)."""
    key = (schedule, m, pp, vpp)
    hit = _STRUCT.get(key)
    if hit is not None:
        return hit
    if schedule in DUAL and m > 2 * pp + 2:
        a, b = _structure(schedule, 2 * pp, pp, vpp), _structure(schedule, 2 * pp + 2, pp, vpp)
        k = (m - 2 * pp) / 2
        out = tuple(x + k * (y - x) for x, y in zip(a, b, strict=True))
    else:
        prog = _compiled(schedule, m, pp, vpp)
        nch = prog.layout.num_chunks
        cf, cb, cw, pf, pb = (np.zeros((pp, nch)) for _ in range(5))
        for r, hist in enumerate(prog.histograms):
            for did, count in hist:
                if did >= 4 * nch:
                    fc, bc = divmod(did - 4 * nch, nch)
                    pf[r, fc] += count
                    pb[r, bc] += count
                    continue
                code, c = divmod(did, nch)
                if code == _F:
                    cf[r, c] += count
                elif code == _B:
                    cb[r, c] += count
                elif code == _W:
                    cw[r, c] += count
                else:
                    cb[r, c] += count
                    cw[r, c] += count
        out = (cf, cb, cw, pf, pb)
    _STRUCT[key] = out
    return out


# ---------------------------------------------------------------------------------------
# The uniform-pipeline bubble


def _q(x: float) -> float:
    """Round a ratio to ~1 % (two significant digits in log space, with a small floor)."""
    if x <= 1e-4:
        return 0.0
    return round(math.exp(round(math.log(x) * 100) / 100), 6)


def _uniform(schedule, pp, vpp, m, f, b, w, k, p) -> tuple[float, np.ndarray]:
    """(bubble, per-rank lag behind the makespan) of ``m`` micro-batches through ``pp`` ranks
    whose chunks all take F = ``f`` (=1), B, W, overlap factor k, p2p ``p`` (units of F)."""
    nch = 2 * pp if schedule is PipelineSchedule.DUALPIPEV else pp * vpp
    pair = k * (f + b + w) if schedule in DUAL else None
    tl = simulate_pipeline(schedule, [ChunkTimes(f, b, w, pair)] * nch, m, pp, vpp, p)
    busy = max(ph.busy_s for ph in tl.phases)
    return tl.makespan_s - busy, tl.makespan_s - np.array(tl.rank_end_s)


def _bubble(schedule, pp, vpp, m, b, w, k, p) -> tuple[float, np.ndarray]:
    """Memoised bubble and per-rank lag, in units of the chunk forward time."""
    if pp == 1:
        return 0.0, np.zeros(1)
    key = (schedule, pp, vpp, m, b, w, k, p)
    hit = _BUBBLE.get(key)
    if hit is None:
        m0, m1 = 2 * pp, 4 * pp
        if m <= m1:
            hit = _uniform(schedule, pp, vpp, m, 1.0, b, w, k, p)
        else:
            b0, _ = _bubble(schedule, pp, vpp, m0, b, w, k, p)
            b1, lag = _bubble(schedule, pp, vpp, m1, b, w, k, p)
            hit = (b1 + (b1 - b0) * (m - m1) / (m1 - m0), lag)
        _BUBBLE[key] = hit
    return hit


# ---------------------------------------------------------------------------------------
# Per plan


def _plan_row(ctx: _Context, plan: Plan) -> tuple:
    """(step, peak, bubble) as the simulator picks the split: the even one, else the faster
    of the count- and forward-balanced splits among those that fit."""
    rows = [_split_row(ctx, plan, False)]
    if not _core(ctx, plan, False).even:
        rows.append(_split_row(ctx, plan, True))
    cap = ctx.cluster.gpu.hbm_capacity_bytes
    fitting = [r for r in rows if r[1] <= cap]
    return min(fitting or rows, key=lambda r: r[0])


def _split_row(ctx: _Context, plan: Plan, balanced: bool) -> tuple:
    """(ranks' busy, ranks' lag, bubble, ranks' tail (exposed DP + optimizer), memory peak)
    of one plan: shape-level memo lookups and a few small array operations."""
    core = _core(ctx, plan, balanced)
    cluster, workload = ctx.cluster, ctx.workload
    pp, m, sched = plan.pp, core.num_micro, plan.pipeline_schedule
    zero = plan.zero_stage
    dp = _dp_comm(ctx, plan, core)
    # Chunk times as the simulator builds them (ZeRO-3's prefetched gather gates F and B).
    rank = core.chunk_rank
    nown = np.bincount(rank, minlength=pp).astype(float)
    if part_mirrored := sched is PipelineSchedule.DUALPIPE:
        nown = np.full(pp, 2.0)
    gather = np.array([d.per_microbatch_gather_s for d in dp])
    scatter = np.array([d.per_microbatch_scatter_s for d in dp])
    g = (gather / nown)[rank]
    s = (scatter / nown)[rank]
    fwd = np.maximum(core.f_in, g) + core.f_out
    bwd = np.maximum(core.b_in, g) + core.b_out
    wgt = np.maximum(core.w, s)
    cf, cb, cw, pf, pb = core.counts
    if sched in DUAL:
        serial = fwd + bwd + wgt
        kfac = np.where(serial > 0, core.pair / np.where(serial > 0, serial, 1.0), 1.0)
        busy = cf @ fwd + cb @ bwd + cw @ wgt + pf @ (fwd * kfac) + pb @ ((bwd + wgt) * kfac)
    else:
        kfac = None
        busy = cf @ fwd + cb @ bwd + cw @ wgt
    if not core.even:
        # Unevenly split chunks (e.g. 96 blocks over 64 interleaved chunks of 1 or 2 blocks)
        # stall the steady state in ways no uniform pipeline shows, and DualPipe(V)'s ranks
        # end at very different times (the DP tail follows): run the event simulation.
        pairs = core.pair if core.pair is not None else [None] * len(fwd)
        times = [ChunkTimes(float(a), float(b), float(c), None if d is None else float(d))
                 for a, b, c, d in zip(fwd, bwd, wgt, pairs, strict=True)]
        tl = simulate_pipeline(sched, times, m, pp, plan.vpp, core.p2p)
        return _finish(ctx, plan, core, dp, bwd, wgt, tl.makespan_s, tl.makespan_s - np.array(tl.rank_end_s),
                       tl.phases[tl.critical_rank].bubble_s)
    crit = int(np.argmax(busy))
    # Uniform pipeline of the busiest rank's mean chunk.
    own = rank == crit
    if part_mirrored:
        own = own.copy()
        own[pp - 1 - crit] = True
    f0 = fwd[own].mean()
    if f0 <= 0:
        f0 = 1e-12
    b_r, w_r = bwd[own].mean() / f0, wgt[own].mean() / f0
    k_r = 1.0
    if kfac is not None:
        tot = (fwd[own] + bwd[own] + wgt[own]).sum()
        k_r = float((kfac[own] * (fwd[own] + bwd[own] + wgt[own])).sum() / tot) if tot > 0 else 1.0
    bub, lag = _bubble(sched, pp, plan.vpp, m, _q(b_r), _q(w_r), _q(k_r), _q(core.p2p / f0))
    bubble = bub * f0
    return _finish(ctx, plan, core, dp, bwd, wgt, busy.max() + bubble, lag * f0, bubble)


def _finish(ctx, plan, core, dp, bwd, wgt, makespan, lag, bubble) -> tuple:
    cluster, workload, zero, m = ctx.cluster, ctx.workload, plan.zero_stage, core.num_micro
    # DP gradient sync not hidden by the last backward, and the optimizer step.
    last_bw = bwd[core.first_chunk] + wgt[core.first_chunk]
    step = np.array([d.step_s for d in dp])
    exposed = np.maximum(0.0, step - last_bw)
    sharded = zero >= ZeroStage.OPTIMIZER
    local = core.dense_params / (plan.dp * plan.cp if sharded else 1) + core.expert_params / (plan.edp if sharded else 1)
    gpu = cluster.gpu
    opt = local * _optimizer_bytes_per_param(workload) / (gpu.hbm_bandwidth_bytes_per_s * gpu.efficiency.hbm_fraction)
    step_time = float(np.max(makespan - lag + exposed + opt))
    peak = _memory(ctx, plan, core)
    return step_time, peak, bubble


def _dp_key(plan: Plan, pid: int) -> tuple:
    return (pid, plan.tp, plan.cp, plan.ep, plan.expert_tp, plan.dp, plan.pp, plan.vpp, plan.pipeline_schedule,
            plan.rank_order, plan.zero_stage)


def _dp_comm(ctx: _Context, plan: Plan, core: _Core) -> list:
    """Per-rank ``dp_step_comm``: independent of micro-batch, recompute and sequence
    parallelism, so memoised without them."""
    key = _dp_key(plan, core.pid)
    hit = ctx.dp.get(key)
    if hit is None:
        layout = rank_layout(plan)
        hit = ctx.dp[key] = [
            dp_step_comm(ctx.cluster, plan, ctx.workload, layout, r, core.dense_params[r], core.expert_params[r])
            for r in range(plan.pp)
        ]
    return hit


def _states(ctx: _Context, plan: Plan, core: _Core) -> np.ndarray:
    """Per rank, weights + gradients + optimizer bytes (``stage_memory``'s states part)."""
    key = _dp_key(plan, core.pid)
    hit = ctx.states.get(key)
    if hit is None:
        precision = ctx.workload.precision
        out = [sum(state_bytes(ctx.model, plan, precision, core.part, r)) for r in range(plan.pp)]
        hit = ctx.states[key] = np.array(out)
    return hit


def _memory(ctx: _Context, plan: Plan, core: _Core) -> float:
    """Max over ranks of ``stage_memory``: activations + workspace do not depend on ZeRO
    (memoised per core key), the states do not depend on the micro-batch shape."""
    core_key = _core_key(plan, core.pid)
    m = core.num_micro
    rest = ctx.rest.get(core_key)
    if rest is None:
        part = core.part
        model, workload, gpu = ctx.model, ctx.workload, ctx.cluster.gpu
        rest = np.zeros(plan.pp)
        for r in range(plan.pp):
            mem = stage_memory(model, plan, workload, part, r, gpu, inflight_microbatches(plan, m, r))
            rest[r] = mem.activations_bytes + mem.workspace_bytes
        ctx.rest[core_key] = rest
    return float(np.max(rest + _states(ctx, plan, core)))


def estimate(model: ModelSpec, cluster: ClusterSpec, workload: Workload, plans: Sequence[Plan]) -> FastEstimates:
    """Fast step time and peak memory of every plan (see the module docstring for what is
    approximated). Plans must be valid (:func:`planner.specs.compat.check_plan`); results
    are aligned with ``plans``."""
    ctx = _context(model, cluster, workload)
    memo = ctx.plan
    rows = []
    for plan in plans:
        row = memo.get(plan)
        if row is None:
            row = memo[plan] = _plan_row(ctx, plan)
        rows.append(row)
    arr = np.array(rows, dtype=float).reshape(len(rows), 3)
    peak = arr[:, 1]
    return FastEstimates(
        step_time_s=arr[:, 0], memory_peak_bytes=peak,
        fits=peak <= cluster.gpu.hbm_capacity_bytes, bubble_s=arr[:, 2],
    )
