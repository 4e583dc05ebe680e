"""Peak memory per pipeline rank for many plans at once: ``memory.state_bytes`` plus
``memory.stage_memory``'s activations and workspace, re-assembled term by term over numpy
arrays from the per-shape primitives of :class:`~planner.costmodel.fast_shapes.Shapes`
(tests/test_fast.py checks it against ``simulate`` to 1e-9)."""

from __future__ import annotations

import numpy as np

from planner.costmodel.fast_keys import Keys, PartRows
from planner.costmodel.fast_shapes import PIECES, Shapes, canonical_plan
from planner.costmodel.memory import _formats, inflight_microbatches, memory_constants, state_bytes_per_param
from planner.costmodel.ops import ep_rank_imbalance
from planner.costmodel.partition import Piece
from planner.specs.plan import DUAL_SCHEDULES, PipelineSchedule, Precision

__all__ = ["stage_memory"]

_HEADS = np.array([p in (Piece.HEAD, Piece.MTP) for p in PIECES])
_INFLIGHT: dict = {}


def clear() -> None:
    _INFLIGHT.clear()


def _inflight(pp: int, vpp: int, schedule: PipelineSchedule, m: int, merged: bool = False) -> tuple[float, ...]:
    """``memory.inflight_microbatches`` of every rank (it reads only these fields), memoised;
    ``merged``: combined 1F1B's."""
    key = (pp, vpp, schedule, m, merged)
    hit = _INFLIGHT.get(key)
    if hit is None:
        plan = canonical_plan(pp=pp, vpp=vpp, sched=schedule)
        hit = _INFLIGHT[key] = tuple(inflight_microbatches(plan, m, r, merged) for r in range(pp))
    return hit


def stage_memory(sh: Shapes, c: dict, local, parts: PartRows, m, edp, pp: int, vpp: int,
                 schedule: PipelineSchedule, found: Keys, refused, merged: bool = False) -> np.ndarray:
    """(rows, pp) bytes per rank: ``memory.state_bytes`` + ``stage_memory``'s activations and
    workspace, term by term over arrays. ``c``: the rows' columns (``c["plan"]`` each row's
    plan); ``local``: their distinct keys (:meth:`~planner.costmodel.fast_keys.Keys.local`
    of their group, ``found``); ``parts``: their splits; shapes the cost model refuses mark
    their plans in ``refused``
    (:class:`~planner.costmodel.fast_refusals.Refusals`); ``merged``: the rows run combined
    1F1B (one more micro-batch in flight, ``memory.inflight_microbatches``)."""
    model, workload = sh.model, sh.workload
    k = memory_constants()
    plans = c["plan"]
    g = len(plans)
    dual = schedule in DUAL_SCHEDULES
    # States (state_bytes): ZeRO shards dense over dp * cp, experts over edp; ZeRO-3 keeps
    # its shard (weights_zero3) and two pieces gathered, ZeRO-2 one piece's gradients unsharded.
    fp8 = workload.precision is Precision.FP8
    uniq, inv = local("rank_params")  # (tp, ep, etp, split)
    uniq = uniq.tolist()
    rp = refused.price(sh.rank_params, uniq, inv, plans, (pp, 3))[inv]  # (g, pp, 3)
    transient = np.zeros((g, pp))
    if fp8:  # the FP8 weight copy of the rank's largest GEMM
        gemm = refused.price(lambda t, ep, etp, pid: [sh.largest_gemm(t, ep, etp, kinds) for kinds in sh.part(pid).kinds],
                             uniq, inv, plans, (pp,))
        transient += gemm[inv]
    transient *= k.fp8_weight_copy_bytes_per_param
    dense, expert, largest = rp[:, :, 0], rp[:, :, 1], rp[:, :, 2]
    total = dense + expert
    shard = dense / (c["dp"] * c["cp"])[:, None] + expert / edp[:, None]
    st = state_bytes_per_param(workload)
    zero = c["zero"][:, None]
    weights = np.where(zero >= 3, np.minimum(total * st.weights, shard * st.weights_zero3 + 2 * largest * st.weights),
                       total * st.weights)
    grads = np.where(zero >= 2, np.minimum(total * st.gradients, (shard + largest) * st.gradients),
                     total * st.gradients)
    optim = np.where(zero >= 1, shard, total) * st.optimizer
    # Activations: the largest working set of the rank's pieces, plus each chunk's share of
    # the micro-batches in flight (heads and MTP hold at most one).
    # Per distinct (activation shape, split, micro-batches), then gathered per row.
    uniq, inv = local("acts")  # (tp, cp, ep, etp, mb, sp, recompute)
    acts = refused.take(found.priced("acts", sh.activations, (len(PIECES), 2)), uniq[:, 0], inv,
                        plans)  # (u, pieces, 2)
    ms = local("m")[0][:, 0]
    # (activations, split, micro-batches)
    combo, where = local("acts_split", (0, "acts"), (1, "parts"), (2, "m"))
    act = acts[combo[:, 0]]
    present = parts.stacked("rank_counts")[combo[:, 1]] > 0
    ws = np.where(present, act[:, None, :, 1], 0.0).max(axis=2)
    inflight = np.array([_inflight(pp, vpp, schedule, mm, merged) for mm in ms.tolist()])[combo[:, 2]]
    alive = inflight[:, :, None] * parts.stacked("shares")[combo[:, 1]]  # (u, pp, own)
    held = (np.where(_HEADS, np.minimum(alive, 1.0)[..., None], alive[..., None])
            * parts.stacked("own_counts")[combo[:, 1]])
    activations = (ws + np.einsum("urjk,uk->ur", held, act[:, :, 0]))[where]
    # Workspace: the FP8 weight copy (above), MoE dispatch/combine buffers, p2p buffers.
    tokens = (workload.seq_length * c["mb"] / c["cp"])[:, None]
    d = model.hidden_size
    if model.moe is not None:
        rank_counts = parts.get("rank_counts")
        moe_rank = (rank_counts[:, :, PIECES.index(Piece.MOE)] + rank_counts[:, :, PIECES.index(Piece.MTP)]) > 0
        # memory.stage_memory: the busiest EP rank's rows (ops.expert_load_factor, per row).
        load = np.where(c["ep"] > 1, ep_rank_imbalance(workload), 1.0)
        rows_ = tokens * model.moe.top_k * (c["etp"] / c["tp"] * load)[:, None]
        sets = k.overlapped_microbatches_dualpipe if dual else 1
        transient += moe_rank * sets * rows_ * d * (_formats(workload).cached + k.activation_bytes)
    if pp > 1:
        seq_div = np.where(c["sp"] == 1, c["tp"], 1)[:, None]
        transient += (4 if dual else 2) * k.activation_bytes * tokens * d / seq_div
    workspace = (k.cuda_context_bytes + k.nccl_buffers_bytes + k.gemm_workspace_bytes + transient
                 + k.fragmentation_fraction * (activations + transient))
    return weights + grads + optim + activations + workspace
