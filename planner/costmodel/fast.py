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
   own functions and memoised across calls; combined with each split's piece counts once
   per distinct (shape, split), then gathered per plan.
2. Per plan, as arrays over (plans, chunks) or (plans, ranks): chunk times exactly as
   ``simulate`` builds them (CP hidden behind attention, ZeRO-3 gathers gating F and B,
   DualPipe's F&B pairs with the EP all-to-all overlapped, and Megatron-Core's combined 1F1B
   (``ep_comm_overlap``: its merged programs, the pair's SM tax, one more micro-batch in
   flight) where :func:`planner.costmodel.ep_overlap.applies`), each rank's exposed DP gradient
   sync and optimizer step, and memory per rank (:mod:`~planner.costmodel.fast_memory`).
3. The pipeline in two stages (:mod:`~planner.costmodel.fast_pipeline`):

   - every plan gets a *lower bound*: the longest of a few dependency paths of its
     schedule's program (per rank: the chain into its first operation + all its operations
     + the chain out of its last; the longest chains into its last operation under three
     reference duration mixes), a few matrix products per program. Any path of the
     max-plus recursion bounds the makespan from below, so bound <= replay always
     (tests/test_fast.py checks it against ``simulate_pipeline`` at every m);
   - the simulator's replay (its compiled programs, evaluated for all selected plans at
     once) then runs only for plans that could rank among the ``exact_top`` fastest that
     fit (:func:`~planner.costmodel.fast_refine.refine`): every other plan's bound is above
     the k-th replayed step time, so the estimate's top-k are exact and in the same order
     as with every plan replayed.
     ``FastEstimates.exact`` tells which plans were replayed; ``exact_top=None`` replays all.
4. The split, as ``simulate`` picks it: Megatron's even split when the blocks divide and the
   schedule is not DualPipe(V); otherwise every candidate split (forward-time and count
   balanced, and Megatron-Bridge's filled split where the blocks allow it) is priced and the
   fastest that fits is kept (on the bounds, for plans not replayed: their memory may then
   be another split's; the fits verdict cannot differ).

Plans the cost model refuses (``simulate`` raises :data:`~planner.costmodel.fast_refusals.
REFUSALS` for them, e.g. an EP group over more nodes than the node-limited routing serves)
are marked, not raised: ``FastEstimates.refusal`` / ``refused(i)`` (step time inf, memory
NaN, fits False), each refused shape tried once (:mod:`~planner.costmodel.fast_refusals`).

Differences from ``simulate``, on replayed plans: the pipeline extrapolation beyond
:func:`fast_pipeline.exact_limit` micro-batches (see that module), and the sharing rules of
:mod:`~planner.costmodel.fast_shapes` (e.g. collectives on groups equal up to a symmetry of
the cluster cost the same), which tests/test_fast.py checks through exact agreement with
``simulate`` on H100/H800/A100 fat-trees, Fire-Flyer PCIe nodes and NVL72 racks; with every
plan replayed, the search's whole llama3-70b / 1024 H100 and DeepSeek-V3 / 2048 H800 spaces
give bit-identical step times and memory to the previous per-(degrees, stage) pricing. On
the others, the bound's gap to the replay (benchmarks/bench_fast.py, plans that fit):
llama3-70b / 1024 H100, 5,772 plans: median 0.30 %, 90th percentile 4.7 %, max 13.2 %;
DeepSeek-V3 / 2048 H800, 768 plans: median 3.6 %, 90th percentile 7.7 %, max 15.1 % (the
bound follows fixed paths; uneven chunks and DualPipe's pairs move the real critical path
off them).

Speed (benchmarks/bench_fast.py, 2 CPU cores shared with other work, single-threaded BLAS,
best of 5; the machine's speed drifts by up to 2x between runs): new plans over warm shape
tables, llama3-70b / 1024 H100: 53,400-93,900 plans/s on the 5,772-plan grid (47,200-82,100
through Plan objects), 47,300-83,900 on the search's whole 37,224-plan space; DeepSeek-V3 /
2048 H800: 9,800-29,300 on the 768-plan grid, 68,100-129,700 on the search's whole
379,800-plan space (360 refused). Per call the Python overhead is per group, so each group's
shape keys come from one pass over all rows (:mod:`~planner.costmodel.fast_keys`) and every
group's replays run in merged wave loops (:func:`fast_pipeline.pipelines`). Cold (every memo
empty, a fresh process): 2,100-4,600, 350-680, 4,000-6,400 and 6,800-11,000 plans/s, bound
by one-time work per shape: compiling the schedule programs and their paths, the DP/ZeRO
collectives per (stage form, bytes), the compute per piece shape and the splits. Top-20
agreement with ``simulate``: 0.000 %, 0.245-0.351 % (median 0.007-0.009 %), 0.000 % and
0.000 %; 72-78, 27-34, 175-180 and 54-55 plans with pp > 1
replayed. With two OpenBLAS threads on the same shared cores the warm figures halve (the
path products are small matrices).
"""

from __future__ import annotations

import functools
import operator
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from planner.costmodel import compute as C
from planner.costmodel import ep_overlap, fast_memory, fast_pipeline
from planner.costmodel.comm import pp_blocking_transfers
from planner.costmodel.dp_overlap import dp_exposure
from planner.costmodel.fast_keys import Keys, PartRows, unique_rows
from planner.costmodel.fast_memory import stage_memory
from planner.costmodel.fast_refine import refine
from planner.costmodel.fast_refusals import REFUSALS, Refusals
from planner.costmodel.fast_shapes import (
    KERNELS, PIECES, RECOMPUTES, SCHEDULES, Shapes, with_full_recompute,
)
from planner.costmodel.simulate import _optimizer_bytes_per_param, dualpipe_pair_s
from planner.errors import PlannerError, UnsupportedError
from planner.specs.hardware import ClusterSpec
from planner.specs.model import ModelSpec
from planner.specs.plan import (
    DEFAULT_RANK_ORDER, DUAL_SCHEDULES, PipelineP2P, PipelineSchedule, Plan, Recompute, Workload,
)

__all__ = ["EXACT_TOP", "FastEstimates", "clear_caches", "estimate", "estimate_table"]

COLUMNS = ("tp", "cp", "pp", "vpp", "ep", "etp", "dp", "mb", "zero", "sp", "rec", "sched", "kernel", "order")
"""Integer plan columns: ``rec``, ``sched``, ``kernel`` index RECOMPUTES, SCHEDULES, KERNELS;
``order`` indexes the context's rank orders (0 = the default)."""
_C = {name: k for k, name in enumerate(COLUMNS)}
EXACT_TOP = 20
"""Default ``exact_top``: issue #5 checks the estimate's top-20 against ``simulate``."""
_DUAL_CODES = [SCHEDULES.index(s) for s in DUAL_SCHEDULES]
_FIELDS = operator.attrgetter("tp", "cp", "pp", "vpp", "ep", "etp", "dp", "micro_batch_size", "zero_stage",
                              "sequence_parallel", "recompute", "pipeline_schedule", "attention_kernel",
                              "rank_order")
"""The Plan fields of :data:`COLUMNS` (``etp`` None: ``tp``, as ``Plan.expert_tp``)."""
_REC, _SCHED, _KERNEL = ({v: k for k, v in enumerate(vs)} for vs in (RECOMPUTES, SCHEDULES, KERNELS))


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
    exact: np.ndarray
    """Step time and bubble come from the simulator's pipeline replay (bool); elsewhere they
    are lower bounds (the module docstring), every one above the replayed top-k's."""
    refusal: np.ndarray
    """Per plan, -1 where the cost model prices it, else the index in ``refusals`` of the
    error it raised (``simulate`` raises it too); such a plan has step time inf, memory and
    bubble NaN, fits False and exact False."""
    refusals: tuple[PlannerError, ...] = ()
    """The distinct refusals (:mod:`~planner.costmodel.fast_refusals`), each once."""

    def __len__(self) -> int:
        return len(self.step_time_s)

    @property
    def supported(self) -> np.ndarray:
        """The cost model prices the plan (bool)."""
        return self.refusal < 0

    def refused(self, i: int) -> PlannerError | None:
        """The error the cost model raised for plan ``i`` (None where it prices it); its rule
        as planner/search/plan.py counts it is ``costmodel.<error.field>`` (SpecError)."""
        code = int(self.refusal[i])
        return None if code < 0 else self.refusals[code]


_CTX: dict = {}


def clear_caches() -> None:
    """Forget every memoised value (for cold-start measurements)."""
    _CTX.clear()
    fast_pipeline.clear()
    fast_memory.clear()


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


def estimate(model: ModelSpec, cluster: ClusterSpec, workload: Workload, plans: Sequence[Plan],
             exact_top: int | None = EXACT_TOP) -> FastEstimates:
    """Fast step time and peak memory of every plan (valid plans, as
    :func:`planner.specs.compat.check_plan` accepts them); results aligned with ``plans``.
    The layer split is the simulator's own choice: a plan that fixes ``pipeline_layers``
    is refused (price it with :func:`~planner.costmodel.simulate.simulate`).

    ``exact_top``: the pipeline is replayed exactly for every plan that could rank among the
    ``exact_top`` fastest that fit, the others get a lower bound (``FastEstimates.exact``);
    None replays every plan."""
    fixed = next((p for p in plans if p.pipeline_layers is not None), None)
    if fixed is not None:
        raise UnsupportedError(
            f"the fast estimate prices the simulator's own layer split; plan with pipeline_layers "
            f"{list(fixed.pipeline_layers)} needs simulate()"
        )
    offloaded = next((p for p in plans if p.cpu_offloading_num_layers), None)
    if offloaded is not None:
        raise UnsupportedError(
            f"the fast estimate does not price activation offloading; plan with cpu_offloading_num_layers "
            f"{offloaded.cpu_offloading_num_layers} needs simulate()"
        )
    ctx = _context(model, cluster, workload)
    orders = ctx.orders
    if not plans:
        return _estimate(ctx, np.zeros((0, len(COLUMNS)), dtype=np.int64), exact_top)
    # Column by column (one attribute fetch per plan, then C-level conversions).
    tp, cp, pp, vpp, ep, etp, dp, mb, zero, sp, rec, sched, kernel, order = zip(*map(_FIELDS, plans),
                                                                                 strict=True)
    orders.extend(o for o in dict.fromkeys(order) if o not in orders)
    codes = {o: k for k, o in enumerate(orders)}
    etp = [t if e is None else e for t, e in zip(tp, etp, strict=True)]  # Plan.expert_tp
    n = len(plans)
    cols = [np.array(v, dtype=np.int64) for v in (tp, cp, pp, vpp, ep, etp, dp, mb, zero, sp)]
    cols += [np.fromiter(map(lut.__getitem__, v), np.int64, n)
             for lut, v in ((_REC, rec), (_SCHED, sched), (_KERNEL, kernel), (codes, order))]
    return _estimate(ctx, np.stack(cols, axis=1), exact_top)


def estimate_table(model: ModelSpec, cluster: ClusterSpec, workload: Workload, table,
                   exact_top: int | None = EXACT_TOP) -> FastEstimates:
    """:func:`estimate` for a :class:`~planner.search.space.CandidateTable` (flash
    attention), without building Plan objects: its ``order`` column indexes
    :data:`~planner.search.space.RANK_ORDERS`, mapped to this context's orders."""
    from planner.search.space import RANK_ORDERS  # here: the estimate alone needs no search package

    ctx = _context(model, cluster, workload)
    n = len(table)
    codes = np.unique(table.order)
    for code in codes.tolist():
        if RANK_ORDERS[code] not in ctx.orders:
            ctx.orders.append(RANK_ORDERS[code])
    remap = np.zeros(int(codes.max()) + 1 if n else 1, dtype=np.int64)
    for code in codes.tolist():
        remap[code] = ctx.orders.index(RANK_ORDERS[code])
    cols = {"kernel": np.zeros(n, dtype=np.int64), "order": remap[np.asarray(table.order, dtype=np.int64)]}
    return _estimate(ctx, np.stack([np.asarray(cols[c] if c in cols else getattr(table, c), dtype=np.int64)
                                    for c in COLUMNS], axis=1).reshape(n, len(COLUMNS)), exact_top)


def _estimate(ctx: _Context, keys: np.ndarray, exact_top: int | None) -> FastEstimates:
    if exact_top is not None and exact_top < 1:
        raise ValueError(f"exact_top must be >= 1 or None, not {exact_top}")
    memo = (keys.tobytes(), exact_top)
    hit = ctx.calls.get(memo)
    if hit is None:
        empty = np.zeros(0)
        refused = Refusals(len(keys))
        found = _evaluate(ctx, keys, exact_top, refused) if len(keys) else (empty, empty, empty, empty.astype(bool))
        hit = (*found, refused.code, tuple(refused.errors))
        if len(ctx.calls) > 64:
            ctx.calls.clear()
        ctx.calls[memo] = hit
    step, peak, bubble, exact, code, errors = hit
    return FastEstimates(step_time_s=step, memory_peak_bytes=peak,
                         fits=peak <= ctx.shapes.cluster.gpu.hbm_capacity_bytes, bubble_s=bubble, exact=exact,
                         refusal=code, refusals=errors)


def _evaluate(ctx: _Context, keys: np.ndarray, exact_top: int | None, refused: Refusals) -> tuple:
    sh = ctx.shapes
    model = sh.model
    col = {name: keys[:, k] for k, name in enumerate(COLUMNS)}
    tp, pp, vpp, sched = col["tp"], col["pp"], col["vpp"], col["sched"]
    n = len(keys)
    dual = np.isin(sched, _DUAL_CODES)
    even = (model.num_layers % (pp * vpp) == 0) & ~dual
    sp_eff = col["sp"] * (tp > 1)
    # DualPipe(V) with EP gives the all-to-all SMs (simulate's compute share).
    shared = (dual & (col["ep"] > 1)).astype(np.int64)
    # Rows: every plan with its first split (even, or count-balanced), then the uneven plans
    # again with the forward-balanced split, then with the filled split where there is one.
    second = np.flatnonzero(~even)
    plan_of = np.concatenate([np.arange(n), second, second])
    slot = np.repeat([0, 1, 2], [n, len(second), len(second)])
    pids = np.empty(len(plan_of), dtype=np.int64)
    # The forward-balanced split reads the pieces' forward times: an id per distinct times
    # (0: even split), then the splits per (pp, vpp, schedule, id).
    fwd_key = [col[c][second] for c in ("tp", "cp", "ep", "etp", "mb")] + [sp_eff[second], col["rec"][second],
                                                                            col["kernel"][second]]
    fid = np.zeros(n, dtype=np.int64)
    uniq, inv = unique_rows(*fwd_key)
    ids = np.zeros(len(uniq), dtype=np.int64)
    for u, row in enumerate(uniq.tolist()):
        try:
            ids[u] = sh.forward_id(*row)
        except REFUSALS as exc:
            refused.mark(second[inv == u], exc)
    fid[second] = ids[inv]
    uniq, inv = unique_rows(pp, vpp, sched, fid)
    # Per (pp, vpp, schedule, times): the pid of the split each row slot prices.
    slot_pid = np.full((3, len(uniq)), -1, dtype=np.int64)
    even_u = np.zeros(len(uniq), dtype=bool)
    even_u[inv] = even  # a (pp, vpp, schedule) is even or not for all its plans
    for u, row in enumerate(uniq.tolist()):
        if row[3] == 0 and not even_u[u]:  # refused forward times
            continue
        try:
            splits = sh.splits(*row)
        except REFUSALS as exc:
            refused.mark(np.flatnonzero(inv == u), exc)
            continue
        # (even,) or (forward-balanced, count[, filled]); slot 0 is count (or even)
        slot_pid[0, u] = splits[min(1, len(splits) - 1)].pid
        slot_pid[1, u] = splits[0].pid
        if len(splits) > 2:
            slot_pid[2, u] = splits[2].pid
    pids[:n] = slot_pid[0, inv]
    pids[n:] = slot_pid[slot[n:], np.tile(inv[second], 2)]
    if (pids < 0).any():  # rows without a split (refused, or no filled split) are left out
        keep = pids >= 0
        plan_of, pids, slot = plan_of[keep], pids[keep], slot[keep]
    out = np.zeros((len(plan_of), 3))
    groups = []
    # Megatron-Core's combined 1F1B (ep_overlap.merges, per distinct row) runs other programs.
    full = (col["rec"] == RECOMPUTES.index(Recompute.FULL)).astype(np.int64)
    merged = np.zeros(n, dtype=np.int64)
    if sh.workload.ep_comm_overlap and model.moe is not None:
        uniq, inv = unique_rows(col["ep"], col["rec"], pp, sched)
        merged = np.array([ep_overlap.merges(True, e, RECOMPUTES[r], p, SCHEDULES[s]) for e, r, p, s in uniq.tolist()],
                          dtype=np.int64)[inv]
    uniq, inv = unique_rows(pp[plan_of], vpp[plan_of], sched[plan_of], merged[plan_of])
    order = np.argsort(inv, kind="stable")  # rows by group (each group's rows in order)
    rows_of = plan_of[order]
    m = sh.workload.global_batch_size // (col["dp"] * col["mb"])
    found = Keys({**{name: v[rows_of] for name, v in col.items()}, "plan": rows_of, "pid": pids[order],
                  "sp_eff": sp_eff[rows_of], "shared": shared[rows_of], "full": full[rows_of],
                  "m": m[rows_of]},
                 inv[order], len(uniq))
    for u, (p_, v_, s_, merged_) in enumerate(uniq.tolist()):
        rows = order[found.cuts[u]:found.cuts[u + 1]]
        out[rows], replay = _group(ctx, found, u, p_, v_, SCHEDULES[s_], bool(merged_), refused)
        groups.append((rows, replay))
    bad = refused.code[plan_of] >= 0
    out[bad] = (np.inf, np.nan, np.nan)  # never replayed: not "fits"
    cap = sh.cluster.gpu.hbm_capacity_bytes
    exact = refine(out, groups, plan_of, n, out[:, 1] <= cap, (pp[plan_of] == 1) & ~bad, exact_top)
    # The fastest split that fits (the fastest when none fits).
    step, peak, bubble = np.full(n, np.inf), np.full(n, np.nan), np.full(n, np.nan)
    one = slot == 0
    step[plan_of[one]], peak[plan_of[one]], bubble[plan_of[one]] = out[one].T
    # simulate lists forward-balanced, count, filled: the earlier wins a tie.
    for s_, earlier in ((1, True), (2, False)):
        alt_rows = np.flatnonzero(slot == s_)
        alt, who = out[alt_rows], plan_of[alt_rows]
        fit0, fit1 = peak[who] <= cap, alt[:, 1] <= cap
        faster = alt[:, 0] <= step[who] if earlier else alt[:, 0] < step[who]
        take = (fit1 & ~fit0) | ((fit1 == fit0) & faster)
        idx = who[take]
        step[idx], peak[idx], bubble[idx] = alt[take].T
    gone = refused.code >= 0
    step[gone], peak[gone], bubble[gone], exact[gone] = np.inf, np.nan, np.nan, False
    return step, peak, bubble, exact


def _group(ctx: _Context, found: Keys, u: int, pp: int, vpp: int, schedule: PipelineSchedule, merged: bool,
           refused: Refusals) -> tuple[np.ndarray, _Replay]:
    """(rows, 3) step, peak memory and bubble of group ``u``'s rows (sharing (pp, vpp,
    schedule) and whether they run combined 1F1B, ``merged``; ``found``: their columns and
    keys), step and bubble as
    :func:`fast_pipeline.bounds`' lower bounds; and what their replay needs. Shapes the cost
    model refuses mark their plans in ``refused`` (their rows: meaningless)."""
    sh = ctx.shapes
    workload, cluster = sh.workload, sh.cluster
    rows_ = slice(found.cuts[u], found.cuts[u + 1])
    c = {name: v[rows_] for name, v in found.col.items()}
    keys_of = functools.partial(found.local, u)
    plans = c["plan"]
    g = len(plans)
    m = c["m"]
    edp = c["tp"] * c["cp"] * c["dp"] // (c["ep"] * c["etp"])
    dual = schedule in DUAL_SCHEDULES
    uniq, inv = keys_of("parts")
    parts = PartRows(sh, uniq[:, 0], inv)
    chunk_rank = parts.get("chunk_rank")  # (g, chunks)
    first = parts.get("first_chunk")  # (g, pp)
    num_own = parts.get("num_own")
    rows = np.arange(g)[:, None]

    # Each table is priced per distinct shape, then combined with the split's piece counts
    # per distinct (shape, split) and gathered per row (the keys: fast_keys.Keys).
    # Compute per chunk: (g, chunks, 4) = F, B, W, attention core.
    share = 1.0 - C.compute_constants()["ep_overlap_communication_sms"] / cluster.gpu.num_sms
    uniq, inv = keys_of("compute")
    tables = refused.take(found.priced("compute", lambda *row: sh.compute(*row[:8], share if row[8] else 1.0),
                                       (len(PIECES), 4)), uniq[:, 0], inv, plans)
    combo, where = keys_of("compute_split", (0, "compute"), (1, "parts"))  # (compute, split)
    comp = np.einsum("unk,ukj->unj", parts.stacked("counts")[combo[:, 1]], tables[combo[:, 0]])[where]
    # TP/CP/EP per chunk: (g, chunks, 7, the last: TP repeated by full recomputation); the p2p time per row.
    uniq, inv = keys_of("stage")
    keys = [(t, cp_, ep, etp, dp, pp, ctx.orders[order], mb, sp)
            for t, cp_, ep, etp, dp, order, mb, sp in uniq.tolist()]
    stages = refused.price(sh.stage_comm, keys, inv, plans, (pp, len(PIECES), 7))
    p2p = np.zeros(len(keys))
    if pp > 1:
        p2p = refused.price(lambda t, cp_, ep, etp, dp, pp_, order, mb, sp: sh.p2p(t, cp_, dp, pp_, order, mb, sp),
                            keys, inv, plans, ())
    p2p = p2p[inv]
    # Full recomputation repeats each block's forward TP and EP in backward (StageComm.piece):
    # the tables of those rows follow the plain ones.
    stages = np.concatenate([stages, with_full_recompute(stages)])
    split, where = keys_of("stage_split", (1, "stage"), (2, "parts"))  # (full, stage key, split)
    combo = np.stack([split[:, 1] + len(keys) * split[:, 0], split[:, 2]], axis=1)
    on_rank = stages[combo[:, 0][:, None], parts.stacked("chunk_rank")[combo[:, 1]]]
    comm = np.einsum("unk,unkj->unj", parts.stacked("counts")[combo[:, 1]], on_rank)[where]
    # Parameters per rank (the simulator's: pieces of the rank's chunks), DP/ZeRO per rank.
    uniq, inv = keys_of("params")
    params = refused.take(found.priced("params", sh.piece_params, (len(PIECES), 2)), uniq[:, 0], inv,
                          plans)  # (u, pieces, 2)
    combo, where = keys_of("params_split", (0, "params"), (1, "parts"))  # (params, split)
    held = parts.stacked("rank_counts")[combo[:, 1]]
    rank_params = np.einsum("urk,ukj->urj", held, params[combo[:, 0]])[where]  # (g, pp, 2)
    param_rows = (combo, where, params)
    # ZeRO-3 units: pieces with parameters on the rank (each gathered by its own collective).
    units = np.einsum("urk,uk->ur", held, (params[combo[:, 0]].sum(axis=2) > 0).astype(float))[where]
    deg, _ = keys_of("degrees")
    uniq, inv = keys_of("dp", (0, "degrees"))  # (degrees, ZeRO, split)
    first_row = np.empty(len(uniq), dtype=np.int64)
    first_row[inv[::-1]] = np.arange(g)[::-1]
    degrees = [(t, cp_, ep, etp, dp, pp, ctx.orders[order]) for t, cp_, ep, etp, dp, order in deg.tolist()]
    dpc, errors = sh.dp_table(degrees, uniq[:, 0], uniq[:, 1], uniq[:, 2],
                              schedule is PipelineSchedule.DUALPIPE, rank_params[first_row], units[first_row])
    for k, error in errors.items():
        refused.mark(plans[inv == k], error)
    dpc = dpc[inv]  # (g, pp, 4)

    # Chunk times as simulate's _RankCosts.chunk_times builds them.
    attn = comp[:, :, 3]
    cp_f = np.maximum(0.0, comm[:, :, 2] - attn)
    cp_b = np.maximum(0.0, comm[:, :, 3] - 2 * attn)
    gather = (dpc[:, :, 2] / num_own)[rows, chunk_rank]
    scatter = (dpc[:, :, 3] / num_own)[rows, chunk_rank]
    fwd = np.maximum(comp[:, :, 0] + cp_f, gather) + comm[:, :, 0] + comm[:, :, 4]
    bwd = np.maximum(comp[:, :, 1] + cp_b, gather) + comm[:, :, 1] + comm[:, :, 5]
    wgt = np.maximum(comp[:, :, 2], scatter)
    overlap = np.ones_like(fwd)
    if dual or merged:  # F&B pairs: ZeRO-3 traffic shares the network with the all-to-all
        busy = comp[:, :, 0] + comp[:, :, 1] + comp[:, :, 2] + cp_f + cp_b
        serial = fwd + bwd + wgt
        # Combined 1F1B: compute beside the all-to-all runs on the SMs its kernels leave.
        tax = ep_overlap.comm_sm_tax(cluster.gpu) if merged else 0.0
        pair = dualpipe_pair_s(busy, comm[:, :, 4] + comm[:, :, 5], 2 * gather + scatter,
                               comm[:, :, 0] + comm[:, :, 1], serial,
                               C.compute_constants()["dualpipe_pair_compute_busy_fraction"], tax)
        overlap = np.where(serial > 0, pair / np.where(serial > 0, serial, 1.0), 1.0)
    if workload.pipeline_p2p is PipelineP2P.DEEPSPEED and pp > 1:  # blocking: inside F and B (simulate)
        waits = p2p[:, None] * pp_blocking_transfers(pp)
        fwd, bwd, p2p = fwd + waits, bwd + waits, np.zeros_like(p2p)
    # Exposed DP gradient sync (beyond the rank's last backward) and the optimizer step.
    interleaved = schedule is PipelineSchedule.INTERLEAVED
    if interleaved:  # chunk v * pp + r is rank r's v-th
        combo, where, params = param_rows
        chunk_params = np.einsum("unk,uk->un", parts.stacked("counts")[combo[:, 1]],
                                 params[combo[:, 0]].sum(axis=2))[where]  # (g, chunks)

        def by_rank(x):
            return x.reshape(g, vpp, pp).transpose(0, 2, 1)
        held_total = rank_params.sum(axis=2)
        share = by_rank(chunk_params) / np.where(held_total > 0, held_total, 1.0)[:, :, None]
        share = np.where(held_total[:, :, None] > 0, share, 1.0 / vpp)
        f_own, bw_own = by_rank(fwd), by_rank(bwd + wgt)
    else:
        f_own, bw_own = fwd[rows, first][:, :, None], (bwd + wgt)[rows, first][:, :, None]
        share = np.ones_like(f_own)
    exposed, gathers, delay = dp_exposure(interleaved, f_own, bw_own, share, dpc[:, :, 0], dpc[:, :, 1],
                                 workload.overlap_param_gather, p2p, staggered=not dual)
    sharded = (c["zero"] >= 1)[:, None]
    local = np.where(sharded, rank_params[:, :, 0] / (c["dp"] * c["cp"])[:, None]
                     + rank_params[:, :, 1] / edp[:, None], rank_params.sum(axis=2))
    gpu = cluster.gpu
    opt = local * _optimizer_bytes_per_param(workload) / (gpu.hbm_bandwidth_bytes_per_s * gpu.efficiency.hbm_fraction)
    # The optimizer waits for every rank's reduction (dp_overlap's barrier).
    replay = _Replay(schedule, pp, vpp, m, fwd.T, bwd.T, wgt.T, overlap.T, p2p, exposed,
                     (opt + gathers).max(axis=1) + delay, merged)
    step, bubble = replay.run(None, exact=False)
    peak = stage_memory(sh, c, keys_of, parts, m, edp, pp, vpp, schedule, found, refused, merged).max(axis=1)
    return np.stack([step, peak, bubble], axis=1), replay


@dataclass(frozen=True)
class _Replay:
    """What the pipeline of one (schedule, pp, vpp, merged) group needs, per row: ``fwd``,
    ``bwd``, ``wgt``, ``overlap`` (chunks, rows), ``m`` and ``p2p`` (rows,), ``after``
    (rows, pp) each rank's gradient reduction exposed beyond its last operation, ``post``
    (rows,) what follows the optimizer barrier (the slowest rank's step and gather, and the
    next forwards' gather delay); ``merged``: combined 1F1B."""

    schedule: PipelineSchedule
    pp: int
    vpp: int
    m: np.ndarray
    fwd: np.ndarray
    bwd: np.ndarray
    wgt: np.ndarray
    overlap: np.ndarray
    p2p: np.ndarray
    after: np.ndarray
    post: np.ndarray
    merged: bool = False

    def run(self, sel: np.ndarray | None, exact: bool) -> tuple[np.ndarray, np.ndarray]:
        """(step, bubble) of rows ``sel`` (all when None): the simulator's replay when
        ``exact``, else :func:`fast_pipeline.bounds`' lower bounds."""
        s = slice(None) if sel is None else sel
        how = fast_pipeline.pipeline if exact else fast_pipeline.bounds
        return self.finish(s, *how(*self.args(s)))

    def args(self, s) -> tuple:
        """The pipeline arguments of rows ``s`` (:func:`fast_pipeline.pipeline`)."""
        return (self.schedule, self.pp, self.vpp, self.m[s], self.fwd[:, s], self.bwd[:, s], self.wgt[:, s],
                self.overlap[:, s], self.p2p[s], self.merged)

    def finish(self, s, ends: np.ndarray, busy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(step, bubble) of rows ``s`` from their rank ends and busy seconds (pp, rows)."""
        bubble = np.maximum(0.0, ends.max(axis=0) - busy.max(axis=0))
        return (ends.T + self.after[s]).max(axis=1) + self.post[s], bubble
