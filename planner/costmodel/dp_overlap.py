"""How much of each pipeline rank's once-per-step data-parallel communication the step
exposes: the gradient reduction after the rank's last operation, the parameter all-gather
after the optimizer step, and the delay an overlapped ZeRO-1/2 all-gather adds to the first
forwards. One vectorised function, used by the simulator (one row), the fast estimate (many
rows) and the search's replay, so all agree exactly.

The step ends in a barrier over every rank: the optimizer clips the gradients by their global
norm, an all-reduce over all model-parallel ranks, pipeline stages included, once every
rank's gradients are reduced (Megatron-LM ``--clip-grad``, default 1.0, whose norm the
distributed optimizer all-reduces over its model-parallel group; TorchTitan's
``clip_grad_norm_`` all-reduces over the pipeline mesh too; DeepSeek-V3 clips at 1.0, V3
report §4.2). So the step is ``max_r(end_r + reduction exposed_r) + max_r(optimizer_r +
gather_r)``: each rank's optimizer step, and its ZeRO-1/2 parameter all-gather when not
overlapped with the next forwards, start after the slowest rank's reduction.

Gradient reduction (Megatron-Core ``overlap_grad_reduce``; DeepSeek LLM §2.4: "the backward
of the last micro-batch overlaps the ZeRO-1 reduce-scatter"). A model chunk's gradient
buckets go out as its last backward produces them, so the chunk's share of the reduction
(its share of the rank's parameters) starts when that backward starts and the shares run one
after another on one stream:

- one chunk per rank (1F1B, zero-bubble; DualPipe and DualPipeV, whose two chunks are taken
  as one, reduced behind the backward of the rank's first chunk as DeepSeek describes):
  ``max(0, reduction - (b + w))`` of that chunk;
- interleaved 1F1B: in the last group of ``pp`` micro-batches the rank runs the backward of
  chunk v (its v-th, in model order) for ``pp`` micro-batches, then of v - 1, ..., then of 0
  (Megatron-LM's ``microbatch_group_size_per_vp_stage = pp``), so chunk v's last backward
  starts ``b_v + w_v + pp * sum_{u < v} (b_u + w_u)`` before the rank ends, counting no idle
  time in that cool-down (which would only hide more).

ZeRO-1/2's parameter all-gather follows the optimizer step unless ``overlap_param_gather``: the
next step then gathers chunk by chunk in model order, each chunk needed by the end of its
first forward. Rank r's first forward of chunk v ends ``t0_r + pp * sum_{u < v} f_u + f_v``
after the step starts, with ``t0_r`` the first forwards of the ranks before it (and their
p2p sends; DualPipe: 0, both ends start at once); what the gather of chunks 0..v has not
finished by then delays the step.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from planner.specs.plan import DUAL_SCHEDULES, PipelineSchedule, Plan, Workload


def plan_exposure(
    plan: Plan, workload: Workload, own: Sequence[Sequence[int]], fwd: Sequence[float], bwd: Sequence[float],
    chunk_params: Sequence[float], reduce_s: Sequence[float], gather_s: Sequence[float], p2p_s: float,
) -> tuple[np.ndarray, np.ndarray, float]:
    """:func:`dp_exposure` of one plan (the simulator's and the search's replay, alike):
    ``own[r]`` rank r's chunks in model order (:meth:`Partition.chunks_of_rank`), ``fwd``,
    ``bwd`` (b + w) and ``chunk_params`` per chunk index, ``reduce_s`` and ``gather_s`` per
    rank. Returns the reduction exposed and the gather after the barrier per rank, and the
    step delay."""
    interleaved = plan.pipeline_schedule is PipelineSchedule.INTERLEAVED
    own = [list(o) if interleaved else list(o[:1]) for o in own]
    f = np.array([[fwd[c] for c in o] for o in own])[None]
    b = np.array([[bwd[c] for c in o] for o in own])[None]
    share = np.ones_like(f)
    if interleaved:
        held = [sum(chunk_params[c] for c in o) for o in own]
        share = np.array([[chunk_params[c] / h if h > 0 else 1.0 / len(o) for c in o]
                          for o, h in zip(own, held, strict=True)])[None]
    dual = plan.pipeline_schedule in DUAL_SCHEDULES
    exposed, after, delay = dp_exposure(interleaved, f, b, share, np.array([reduce_s], dtype=float),
                                        np.array([gather_s], dtype=float), workload.overlap_param_gather,
                                        np.array([p2p_s]), staggered=not dual)
    return exposed[0], after[0], float(delay[0])


def dp_exposure(
    interleaved: bool, fwd: np.ndarray, bwd: np.ndarray, share: np.ndarray, reduce_s: np.ndarray,
    gather_s: np.ndarray, overlap_gather: bool, p2p_s: np.ndarray, staggered: bool = True,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(reduction exposed after each rank's last operation (rows, pp), gather after the
    optimizer barrier (rows, pp), step delay (rows,)): the step is ``max_r(end_r + exposed_r)
    + max_r(optimizer_r + after_r) + delay`` (the module docstring).

    ``fwd``, ``bwd`` (b + w) and ``share`` (of the rank's parameters) are (rows, pp, V): the
    rank's chunks in model order (V = vpp when ``interleaved``, else 1: the rank's first
    chunk with share 1); ``reduce_s``, ``gather_s`` (rows, pp); ``p2p_s`` (rows,).
    ``staggered``: rank r starts after the first forwards of ranks < r (False: DualPipe)."""
    rows, pp, chunks = fwd.shape
    if interleaved:
        before = np.cumsum(bwd, axis=2) - bwd  # sum over u < v of (b + w)_u
        ready = -bwd - pp * before
        stream = np.full((rows, pp), -np.inf)
        for v in range(chunks - 1, -1, -1):
            stream = np.maximum(stream, ready[:, :, v]) + reduce_s * share[:, :, v]
    else:
        stream = reduce_s - bwd[:, :, 0]
    exposed = np.maximum(0.0, stream)
    if not overlap_gather:
        return exposed, np.array(gather_s, dtype=float), np.zeros(rows)
    start = np.zeros((rows, pp))
    if staggered and pp > 1:
        start[:, 1:] = np.cumsum(fwd[:, :-1, 0] + p2p_s[:, None], axis=1)
    if interleaved:
        first_end = start[:, :, None] + pp * (np.cumsum(fwd, axis=2) - fwd) + fwd
        lack = (gather_s[:, :, None] * np.cumsum(share, axis=2) - first_end).max(axis=2)
    else:  # one chunk: all of the gather by the end of its first forward
        lack = gather_s - start - fwd[:, :, 0]
    return exposed, np.zeros((rows, pp)), np.maximum(0.0, lack.max(axis=1))
