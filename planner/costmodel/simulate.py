"""``simulate(model, cluster, plan, workload) -> StepReport``: the decomposed cost model.

One pure function over three frozen inputs (DESIGN.md §3-4):

1. check the plan against the model, workload and cluster (exit-2 rules);
2. cut the model into pipeline chunks (:mod:`~planner.costmodel.partition`), balanced by
   forward time when the blocks don't divide evenly;
3. price each chunk's forward (F), backward-input (B) and backward-weight (W) compute for
   one micro-batch (:mod:`~planner.costmodel.compute`) and its TP/CP/EP communication
   (:mod:`~planner.costmodel.comm`), with the overlap rules below;
4. run the pipeline schedule as an event simulation (:mod:`~planner.costmodel.schedules`);
5. add each rank's data-parallel communication not hidden (see below) and the optimizer
   step; the slowest rank sets the step time;
6. memory per rank (:mod:`~planner.costmodel.memory`); over capacity = status OOM.

Overlap rules (what hides what):

- TP and the embedding/head all-reduces: exposed (Megatron's default, no TP comm overlap);
  under ``Workload.tp_comm_overlap`` a block's sequence-parallel collectives hide behind the
  TE Linear GEMMs next to them, whose SMs they share (:mod:`~planner.costmodel.tp_overlap`).
- CP ring exchange: hidden behind the attention core it feeds, exposed beyond it.
- EP dispatch/combine: exposed under 1F1B, interleaved and zero-bubble; under DualPipe and
  DualPipeV a forward and a backward chunk run as an overlapped pair whose time is the
  larger of their summed compute and summed all-to-all (V3 §3.2.1), with the SMs given to
  communication taken from compute (V3 §3.5.1); chunks outside pairs expose it.
- PP p2p: a dependency delay between chunks; the schedule hides it where there is slack.
  Under DeepSpeed's blocking p2p (``Workload.pipeline_p2p``) each forward and backward waits
  out its own transfers instead (:func:`~planner.costmodel.comm.pp_blocking_transfers`).
- Activation offloading (``Plan.cpu_offloading_num_layers``): each offloaded block's copy to
  the host hides behind the next block's forward, the copy back behind its backward; the
  rest is exposed in F and B (:mod:`~planner.costmodel.offload`).
- DP gradient reduction: each chunk's share starts with that chunk's last backward (Megatron
  ``overlap_grad_reduce``: buckets go out as soon as their gradients are final), so one chunk
  per rank hides it behind the last backward and interleaving behind the backward of the
  earlier chunks too; every rank's optimizer step waits for the slowest rank's reduction
  (the gradient clipping's global-norm barrier) and ZeRO-1/2's parameter all-gather follows
  the step, or runs under the next forwards (``Workload.overlap_param_gather``) and delays
  them by what it lacks
  (:mod:`~planner.costmodel.dp_overlap`; DualPipe reduces over both copies of each chunk,
  :func:`~planner.costmodel.comm.dp_step_comm`); ZeRO-3 gathers and reduce-scatters every micro-batch, one unit at a time, hidden behind
  compute up to its duration; the report counts that traffic under DP, hidden or exposed.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import replace

import numpy as np

from planner.costmodel import compute as C
from planner.costmodel import ep_overlap
from planner.costmodel.comm import StageComm, dp_step_comm, pp_blocking_transfers, pp_p2p_s
from planner.costmodel.dp_overlap import plan_exposure
from planner.costmodel.flops import flops_per_token_train
from planner.costmodel.memory import (
    activation_bytes, adam_moment_bytes, inflight_microbatches, piece_params, stage_memory,
)
from planner.costmodel.offload import offload_costs
from planner.costmodel.partition import (
    Chunk, Partition, Piece, model_pieces, partition, rule_partition, split_rules, splits_evenly,
)
from planner.costmodel.report import Dim, StageReport, Status, StepReport, TimeBreakdown
from planner.costmodel.schedules import ChunkTimes, simulate_pipeline
from planner.hwmodels.placement import rank_layout
from planner.specs.compat import check_plan
from planner.specs.hardware import ClusterSpec, Dtype
from planner.specs.model import ModelSpec
from planner.specs.plan import DUAL_SCHEDULES, PipelineP2P, Plan, Workload, ZeroStage


def _optimizer_bytes_per_param(workload: Workload) -> float:
    """HBM bytes one Adam update moves per locally-updated parameter: read the FP32 gradient
    (4), read+write the FP32 master (8), read+write both moments (4 x their format's bytes:
    16 in FP32, 8 in BF16 as DeepSeek-V3 keeps them, §3.3.3), write the 16-bit weight (2)."""
    return 4.0 + 8.0 + 4.0 * adam_moment_bytes(workload) + 2.0


def piece_compute(model, plan, workload, gpu, piece, compute_share) -> tuple[C.PieceTime, float]:
    """PieceTime of one piece and its attention-core forward seconds (memoised per call
    signature: every rank of a plan shares them)."""
    # GPUSpec holds dicts (unhashable): key on its identity and keep it alive in the entry
    # so that the id cannot be reused by another spec while cached.
    key = (model, plan, workload, id(gpu), piece, compute_share, tuple(C.compute_constants().values()))
    hit = _PIECE_CACHE.get(key)
    if hit is None or hit[0] is not gpu:
        ops = C.piece_ops(model, plan, workload, piece)
        time = C.piece_time(ops, gpu, workload.precision, plan.recompute, compute_share)
        attn = sum(C.op_forward_s(op, gpu, workload.precision, compute_share)
                   for op in ops if op.kind is C.OpKind.ATTENTION)
        if len(_PIECE_CACHE) > 4096:
            _PIECE_CACHE.clear()
        hit = _PIECE_CACHE[key] = (gpu, time, attn)
    return hit[1], hit[2]


_PIECE_CACHE: dict = {}


def dualpipe_pair_s(compute_s, a2a_s, zero3_s, tp_s, serial_s, busy_fraction, comm_sm_tax=0.0):
    """Seconds of one chunk's forward overlapped with its own backward (DualPipe's F&B,
    scalars or arrays): the compute stream (with the CP exchange its attention does not
    hide) against the network (the EP all-to-all and the ZeRO-3 traffic sharing it), plus
    the TP collectives, which stall both. A pair that hides all-to-all computes only
    ``busy_fraction`` of its span (data/costmodel/compute.yaml,
    ``dualpipe_pair_compute_busy_fraction``), and it never takes longer than the chunk's F, B
    and W run one after another (``serial_s``, each with its communication exposed).
    ``comm_sm_tax``: compute lost per second of all-to-all it runs beside, where the
    all-to-all kernels take their SMs only while they run (Megatron's combined 1F1B; 0 for
    DualPipe, whose compute is priced on the SMs it leaves for the whole step)."""
    compute_s = compute_s + np.minimum(compute_s, a2a_s) * comm_sm_tax
    stalled = compute_s / np.where(a2a_s > 0, busy_fraction, 1.0)
    return np.minimum(np.maximum(stalled, a2a_s + zero3_s) + tp_s, serial_s)


class _RankCosts:
    """Per-rank chunk timings, communication and parameter counts."""

    def __init__(self, model, cluster, plan, workload, layout, part: Partition, rank: int):
        gpu = cluster.gpu
        self.rank = rank
        self.chunks = part.chunks_of_rank(rank)
        # F&B pairs: DualPipe's, or Megatron-Core's combined 1F1B (ep_overlap.applies). Only
        # DualPipe gives the all-to-all SMs for the whole step (V3 §3.2.2); Megatron's
        # dispatch kernels take theirs only while they run, which the pair's busy fraction
        # (dualpipe_pair_s) stands for.
        self.paired = plan.pipeline_schedule in DUAL_SCHEDULES or ep_overlap.applies(model, plan, workload)
        dual_ep = plan.pipeline_schedule in DUAL_SCHEDULES and plan.ep > 1
        constants = C.compute_constants()
        sms = constants["ep_overlap_communication_sms"]
        self.compute_share = 1.0 - sms / gpu.num_sms if dual_ep else 1.0
        # Combined 1F1B: compute beside the all-to-all runs on the SMs its kernels leave.
        self.comm_sm_tax = ep_overlap.comm_sm_tax(gpu) if self.paired and not dual_ep else 0.0
        self.pair_busy_fraction = constants["dualpipe_pair_compute_busy_fraction"]
        self.comm = StageComm(model, cluster, plan, workload, layout, rank)
        self.model, self.plan, self.workload, self.gpu, self.cluster = model, plan, workload, gpu, cluster
        self.dense_params = self.expert_params = 0.0
        self.chunk_params: dict[int, float] = {}
        units = 0
        for chunk in self.chunks:
            held = 0.0
            for piece in chunk.pieces:
                params = piece_params(model, plan, piece)
                self.dense_params += params.dense
                self.expert_params += params.expert
                held += params.total
                units += params.total > 0
            self.chunk_params[chunk.index] = held
        self.dp = dp_step_comm(cluster, plan, workload, layout, rank, self.dense_params, self.expert_params,
                               zero3_units=units)
        self.zero3_gather_s = self.dp.per_microbatch_gather_s
        self.zero3_scatter_s = self.dp.per_microbatch_scatter_s

    def chunk_times(self, chunk: Chunk) -> tuple[ChunkTimes, dict]:
        plan, wl = self.plan, self.workload
        comp = C.ZERO_TIME
        attn_fwd = 0.0
        for piece in chunk.pieces:
            time, attn = piece_compute(self.model, plan, wl, self.gpu, piece, self.compute_share)
            comp = comp + time
            attn_fwd += attn
        offload = None
        if plan.cpu_offloading_num_layers:  # the pieces' times and bytes are memoised
            pieces = set(chunk.pieces)
            times = {p: piece_compute(self.model, plan, wl, self.gpu, p, self.compute_share)[0]
                     for p in pieces}
            kept = {p: activation_bytes(self.model, plan, wl, p) for p in pieces}
            offload = offload_costs(self.cluster, plan, chunk, kept, times)
        comm = self.comm.chunk(chunk)
        # CP ring exchange hides behind the attention core it feeds (backward ~2x forward).
        cp_f = max(0.0, comm.cp_forward_s - attn_fwd)
        cp_b = max(0.0, comm.cp_backward_s - 2 * attn_fwd)
        # ZeRO-3: parameters all-gathered before forward and again before backward, gradients
        # reduce-scattered after it, prefetched behind the compute (and CP exchange) they feed.
        share = 1.0 / len(self.chunks)
        gather = self.zero3_gather_s * share
        # The gather gates F and B; the reduce-scatter follows the weight gradients (W).
        scatter = self.zero3_scatter_s * share
        fwd = max(comp.forward_s + cp_f, gather) + comm.tp_forward_s + comm.ep_forward_s
        bwd = max(comp.backward_input_s + cp_b, gather) + comm.tp_backward_s + comm.ep_backward_s
        if offload is not None:  # the compute stream waits for copies it could not hide
            fwd += offload.forward_exposed_s
            bwd += offload.backward_exposed_s
        wgrad = max(comp.backward_weight_s, scatter)
        zero3_exposed = (max(0.0, gather - comp.forward_s - cp_f) + max(0.0, gather - comp.backward_input_s - cp_b)
                         + max(0.0, scatter - comp.backward_weight_s))
        pair = None
        ep_hidden = 0.0
        if self.paired:
            busy = comp.forward_s + comp.backward_input_s + comp.backward_weight_s
            # ZeRO-3's gathers (F and B) and reduce-scatter (W) share the network with the
            # all-to-all and hide behind the same compute; the CP exchange not hidden by its
            # attention stalls the compute stream (busy + cp_f + cp_b never rises with FLOP/s).
            a2a = comm.ep_forward_s + comm.ep_backward_s
            pair = float(dualpipe_pair_s(busy + cp_f + cp_b, a2a, 2 * gather + scatter,
                                         comm.tp_forward_s + comm.tp_backward_s, fwd + bwd + wgrad,
                                         self.pair_busy_fraction, self.comm_sm_tax))
            ep_hidden = min(busy, a2a)
        info = {
            "compute": comp,
            "comm": comm,
            "cp_exposed": (cp_f, cp_b),
            "cp_hidden": (comm.cp_forward_s - cp_f, comm.cp_backward_s - cp_b),
            "ep_hidden_in_pair": ep_hidden,
            "zero3": (zero3_exposed, 2 * gather + scatter - zero3_exposed),
            "offload": offload,
        }
        return ChunkTimes(fwd, bwd, wgrad, pair), info


def _dp_exposure(plan: Plan, workload: Workload, ranks: list[_RankCosts], chunk_times: list[ChunkTimes],
                 p2p_s: float) -> tuple[np.ndarray, np.ndarray, float]:
    """Per rank, the gradient reduction exposed after its last operation and the parameter
    gather after the optimizer barrier; the step's delay
    (:func:`~planner.costmodel.dp_overlap.plan_exposure`)."""
    chunk_params = [0.0] * len(chunk_times)
    for rc in ranks:
        for index, held in rc.chunk_params.items():
            chunk_params[index] = held
    return plan_exposure(plan, workload, [[c.index for c in rc.chunks] for rc in ranks],
                         [t.forward_s for t in chunk_times],
                         [t.backward_input_s + t.backward_weight_s for t in chunk_times], chunk_params,
                         [rc.dp.reduce_s for rc in ranks], [rc.dp.gather_s for rc in ranks], p2p_s)


def piece_chunk_times(model: ModelSpec, cluster: ClusterSpec, plan: Plan, workload: Workload) -> dict[Piece, ChunkTimes]:
    """Per piece of ``model``, the times of a chunk holding only that piece on the first
    pipeline rank, communication and overlap included as :func:`simulate` prices them (its
    F&B pair too under DualPipe): what one more such piece costs a chunk."""
    layout = rank_layout(plan)
    costs = _RankCosts(model, cluster, plan, workload, layout, partition(model, plan), 0)
    return {piece: costs.chunk_times(Chunk(0, 0, (piece,)))[0] for piece in set(model_pieces(model))}


def simulate(model: ModelSpec, cluster: ClusterSpec, plan: Plan, workload: Workload) -> StepReport:
    """Predict one training step of ``plan`` (see the module docstring).

    The layer-to-stage split is the plan's ``pipeline_layers`` when given; otherwise the
    runtime's choice: Megatron's even split when the blocks divide evenly (and the schedule
    is not DualPipe), else the fastest among those that fit in memory of a split balanced by
    forward time, one balanced by block count and Megatron-Bridge's filled split
    (:func:`~planner.costmodel.partition.filled_counts`; the report's ``pipeline_layers``
    and its note say which). A split fitted to memory is :func:`planner.costmodel.partition_solver.fit_pipeline_layers`."""
    check_plan(model, workload, plan, cluster.num_gpus)
    layout = rank_layout(plan)
    if splits_evenly(model, plan) or plan.pipeline_layers is not None:
        return _simulate_partition(model, cluster, plan, workload, layout, partition(model, plan), [])
    piece_cost = {
        piece: piece_compute(model, plan, workload, cluster.gpu, piece, 1.0)[0].forward_s
        for piece in set(model_pieces(model))
    }
    reports = [
        _simulate_partition(model, cluster, plan, workload, layout, rule_partition(model, plan, rule, piece_cost),
                            [rule.note])
        for rule in split_rules(model, plan)
    ]
    fitting = [r for r in reports if r.status is Status.OK]
    return min(fitting or reports, key=lambda r: r.step_time_s)


def _simulate_partition(
    model: ModelSpec, cluster: ClusterSpec, plan: Plan, workload: Workload, layout, part: Partition,
    messages: list[str],
) -> StepReport:
    ranks = [_RankCosts(model, cluster, plan, workload, layout, part, r) for r in range(plan.pp)]
    chunk_times: list[ChunkTimes] = []
    infos: dict[int, dict] = {}
    for chunk in part.chunks:
        times, info = ranks[chunk.rank].chunk_times(chunk)
        chunk_times.append(times)
        infos[chunk.index] = info
    num_micro = plan.num_microbatches(workload)
    merged = ep_overlap.applies(model, plan, workload)
    p2p = pp_p2p_s(cluster, plan, workload, layout, model)
    sched_times, sched_p2p, waits = chunk_times, p2p, np.zeros(len(chunk_times))
    if workload.pipeline_p2p is PipelineP2P.DEEPSPEED:
        # Blocking transfers sit inside each forward and backward (1F1B: chunk = stage), so
        # nothing is left to delay the dependent chunk.
        waits = p2p * pp_blocking_transfers(plan.pp)
        sched_times = [replace(t, forward_s=t.forward_s + w, backward_input_s=t.backward_input_s + w)
                       for t, w in zip(chunk_times, waits, strict=True)]
        sched_p2p = 0.0
    timeline = simulate_pipeline(plan.pipeline_schedule, sched_times, num_micro, plan.pp, plan.vpp, sched_p2p,
                                 ep_overlap=merged)

    # Data-parallel sync and optimizer per rank: every rank's optimizer step waits for the
    # slowest rank's gradient reduction (the global-norm barrier, planner.costmodel.dp_overlap).
    rank_end = timeline.rank_end_s
    exposures, gathers, delay = _dp_exposure(plan, workload, ranks, sched_times, sched_p2p)
    ends, posts, tails = [], [], []
    for rc in ranks:
        dp = rc.dp
        dense_shard = plan.dp * plan.cp if plan.zero_stage >= ZeroStage.OPTIMIZER else 1
        expert_shard = plan.edp if plan.zero_stage >= ZeroStage.OPTIMIZER else 1
        local = rc.dense_params / dense_shard + rc.expert_params / expert_shard
        eff = cluster.gpu.efficiency
        opt = local * _optimizer_bytes_per_param(workload) / (cluster.gpu.hbm_bandwidth_bytes_per_s * eff.hbm_fraction)
        ends.append(rank_end[rc.rank] + float(exposures[rc.rank]))
        posts.append(opt + float(gathers[rc.rank]))
        tails.append((opt, dp.step_s))
    critical = max(range(plan.pp), key=lambda r: ends[r])
    after = max(range(plan.pp), key=lambda r: posts[r])
    step = max(ends) + posts[after] + delay
    makespan = timeline.makespan_s
    tail = max(0.0, step - makespan)
    dp_total = tails[critical][1]
    optimizer_s = min(tails[after][0], tail)
    dp_exposed_s = tail - optimizer_s

    phases = timeline.phases[critical]
    breakdown = TimeBreakdown(
        forward_s=phases.forward_s,
        backward_input_s=phases.backward_input_s,
        backward_weight_s=phases.backward_weight_s,
        overlapped_fb_s=phases.overlapped_fb_s,
        bubble_s=phases.bubble_s,
        dp_exposed_s=dp_exposed_s,
        optimizer_s=optimizer_s,
    )

    # Communication per step on the critical rank.
    exposed = {d: 0.0 for d in Dim}
    hidden = {d: 0.0 for d in Dim}
    compute_s = recompute_s = 0.0
    # Each chunk of a rank runs every micro-batch, or half of them under DualPipe's mirror.
    runs = num_micro if not part.mirrored else num_micro / 2
    for chunk in part.chunks_of_rank(critical):
        info = infos[chunk.index]
        comm, comp = info["comm"], info["compute"]
        compute_s += runs * (comp.forward_s + comp.backward_input_s + comp.backward_weight_s)
        recompute_s += runs * comp.recompute_s
        exposed[Dim.TP] += runs * (comm.tp_forward_s + comm.tp_backward_s)
        hidden[Dim.TP] += runs * comm.tp_hidden_s
        exposed[Dim.CP] += runs * sum(info["cp_exposed"])
        hidden[Dim.CP] += runs * sum(info["cp_hidden"])
        a2a = runs * (comm.ep_forward_s + comm.ep_backward_s)
        hidden_ep = runs * info["ep_hidden_in_pair"]
        hidden[Dim.EP] += min(a2a, hidden_ep)
        exposed[Dim.EP] += a2a - min(a2a, hidden_ep)
        exposed[Dim.DP] += runs * info["zero3"][0]
        hidden[Dim.DP] += runs * info["zero3"][1]
    # One activation out and one gradient back per chunk run; blocking ones wait in F and B.
    own = part.chunks_of_rank(critical)
    exposed[Dim.PP] = 2 * runs * sum(float(waits[c.index]) for c in own)
    hidden[Dim.PP] = 2 * sched_p2p * runs * len(own)
    exposed[Dim.DP] += dp_exposed_s
    hidden[Dim.DP] += max(0.0, dp_total - dp_exposed_s)

    # Memory per rank.
    host = cluster.node.host
    host_share = None if host is None or host.memory_capacity_bytes is None else (
        host.memory_capacity_bytes / cluster.node.gpus_per_node)
    for info in infos.values():
        if (offload := info["offload"]) is not None:
            messages.append(
                f"activation offloading: {plan.cpu_offloading_num_layers} blocks, "
                f"{offload.bytes_per_microbatch / 2**30:.1f} GiB per micro-batch to the host and back at "
                f"{offload.rate_bytes_per_s / 1e9:.0f} GB/s; exposed {offload.forward_exposed_s * 1e3:.1f} ms "
                f"forward, {offload.backward_exposed_s * 1e3:.1f} ms backward per micro-batch"
            )
    stages = []
    for rc in ranks:
        inflight = inflight_microbatches(plan, num_micro, rc.rank, merged)
        mem = stage_memory(model, plan, workload, part, rc.rank, cluster.gpu, inflight, host_share)
        own = part.chunks_of_rank(rc.rank)
        pieces = Counter(p.value for c in own for p in c.pieces)
        stages.append(
            StageReport(
                rank=rc.rank,
                pieces=dict(pieces),
                forward_s=sum(chunk_times[c.index].forward_s for c in own),
                backward_input_s=sum(chunk_times[c.index].backward_input_s for c in own),
                backward_weight_s=sum(chunk_times[c.index].backward_weight_s for c in own),
                memory=mem,
            )
        )
    peak = max(st.memory.total_bytes for st in stages)
    capacity = cluster.gpu.hbm_capacity_bytes
    status = Status.OK if all(st.memory.fits for st in stages) else Status.OOM
    if status is Status.OOM:
        worst = max(stages, key=lambda st: st.memory.total_bytes)
        for st in stages:
            mem = st.memory
            if mem.host_capacity_bytes is not None and mem.host_offload_bytes > mem.host_capacity_bytes:
                messages.append(
                    f"out of host memory: pipeline rank {st.rank} offloads {mem.host_offload_bytes / 2**30:.1f} GiB "
                    f"per GPU, its share of the node's host memory is {mem.host_capacity_bytes / 2**30:.1f} GiB; "
                    "offload fewer blocks (cpu_offloading_num_layers)"
                )
        messages.append(
            f"out of memory: pipeline rank {worst.rank} needs {worst.memory.total_bytes / 2**30:.1f} GiB "
            f"of {capacity / 2**30:.1f} GiB"
        )

    tokens = workload.tokens_per_step
    peak_flops = cluster.gpu.peak(Dtype.BF16)
    gpus = plan.world_size
    mfu = {
        causal: flops_per_token_train(model, workload.seq_length, causal) * tokens / (step * gpus * peak_flops)
        for causal in (True, False)
    }
    return StepReport(
        status=status,
        step_time_s=step,
        breakdown=breakdown,
        comm_exposed_s=exposed,
        comm_hidden_s=hidden,
        compute_s=compute_s,
        recompute_s=recompute_s,
        tokens_per_s_per_gpu=tokens / step / gpus,
        mfu_causal=mfu[True],
        mfu_noncausal=mfu[False],
        mfu_peak_flops_per_s=peak_flops,
        stages=stages,
        memory_peak_bytes=peak,
        memory_capacity_bytes=capacity,
        num_microbatches=num_micro,
        pipeline_layers=tuple(chunk.num_blocks for chunk in part.chunks),
        messages=messages,
        timeline=timeline,
    )
