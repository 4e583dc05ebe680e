"""Event simulation of pipeline-parallel schedules: what each rank computes, and when.

Each rank runs a fixed *program*: the operations in the order the schedule's reference
implementation issues them. An operation starts when its rank is free and its inputs are
there: ``F`` needs the previous chunk's ``F`` of its micro-batch; ``B``/``BW`` need the next
chunk's backward (the last chunk: its own ``F``, the loss); ``W`` needs its ``B``; an ``FB``
pair needs both. ``p2p_s`` is added when producer and consumer sit on different ranks; it
occupies no compute stream (sends are asynchronous). A cycle raises :class:`DeadlockError`.

Schedules (each builder below cites its source): 1F1B and interleaved 1F1B as Megatron-LM
issues them (Narayanan et al. 2021, arXiv 2104.04473), ZB1P as ZB-H1 (Qi et al. 2023, arXiv
2401.10241), DualPipe and DualPipeV as the eight phases of ``DualPipe.step`` and
``DualPipeV.step`` (DeepSeek-V3 §3.2.1; github.com/deepseek-ai/DualPipe).

Left out: the reference code's batching of sends (data is ready when its producer ends) and
searched schedules (ZB-2p, ZB-V). Programs are compiled once per (schedule, micro-batches,
pp, vpp) and cached: a search that varies only the times pays only for the time loop.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import astuple, dataclass, field
from enum import StrEnum
from functools import cached_property, lru_cache

from planner.errors import SpecError
from planner.specs.plan import DUAL_SCHEDULES, PipelineSchedule


class DeadlockError(ValueError):
    """Operation orders in which some rank waits for work that can never happen."""


@dataclass(frozen=True, slots=True)
class ChunkTimes:
    """Seconds of one model chunk for one micro-batch on its rank (exposed comm included)."""

    forward_s: float
    backward_input_s: float
    """"B": backward for inputs, including activation recomputation."""
    backward_weight_s: float
    """"W": backward for weights."""
    overlapped_fb_s: float | None = None
    """DualPipe(V): this chunk's forward overlapped with its own full backward (``F&B``, V3
    Table 2); None = F + B + W. Chunks a (forward) and b (backward) pair in
    ``F_a k_a + (B_b + W_b) k_b``, ``k_c = F&B_c / (F_c + B_c + W_c)``: each chunk's overlap
    factor applies to its own work (exact for a == b and without overlap)."""

    def __post_init__(self) -> None:
        for name in ("forward_s", "backward_input_s", "backward_weight_s", "overlapped_fb_s"):
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and value >= 0.0):
                raise SpecError(name, value, "must be a finite number of seconds >= 0")

    @property
    def overlap_factor(self) -> float:
        """F&B / (F + B + W); 1 = no overlap."""
        serial = self.forward_s + self.backward_input_s + self.backward_weight_s
        return 1.0 if self.overlapped_fb_s is None or serial == 0.0 else self.overlapped_fb_s / serial


class EventKind(StrEnum):
    """What one operation on a rank computes."""

    F = "F"
    """Forward of one chunk for one micro-batch."""
    B = "B"
    """Backward for inputs only; its W runs later (zero-bubble split)."""
    W = "W"
    """Backward for weights of an earlier B."""
    BW = "BW"
    """Full backward (B then W in one pass); the input gradient leaves at its end."""
    FB = "FB"
    """DualPipe overlapped pair: F of one micro-batch with BW of another."""


_F, _B, _W, _BW, _FB = range(5)  # codes of the hot loop, in EventKind order
# Combined 1F1B's steady state (ep_overlap): a forward and a full backward that each take
# their share of an F&B pair (F k, (B + W) k), shown as F and BW.
_FO, _BWO = 5, 6
_KINDS = (*EventKind, EventKind.F, EventKind.BW)


@dataclass(frozen=True, slots=True)
class Op:
    """One entry of a rank's program (for FB, ``backward_*`` is the backward half)."""

    kind: EventKind
    microbatch: int
    chunk: int
    backward_microbatch: int = -1
    backward_chunk: int = -1


@dataclass(frozen=True, slots=True)
class Event:
    """One simulated operation; for FB the plain fields describe the forward half."""

    rank: int
    kind: EventKind
    microbatch: int
    """Global id; DualPipe's reverse-direction micro-batches are the second half."""
    chunk: int
    """Model chunk, in model order as in :mod:`planner.costmodel.partition`."""
    direction: int
    """0, or 1 for DualPipe micro-batches entering at the last rank."""
    start_s: float
    end_s: float
    backward_microbatch: int = -1
    backward_chunk: int = -1


@dataclass(frozen=True, slots=True)
class RankPhases:
    """Seconds of one rank in the makespan; the five phases sum to the makespan."""

    forward_s: float
    """Forward passes run alone."""
    backward_input_s: float
    """Backward passes run alone: every B (input gradients, its W deferred) and every BW
    (a full backward, input and weight gradients in one pass, as 1F1B runs them all)."""
    backward_weight_s: float
    """Deferred weight-gradient passes (zero-bubble W) run alone."""
    overlapped_fb_s: float
    """DualPipe F&B pairs."""
    bubble_s: float
    """Idle: pipeline fill and drain, waiting for inputs."""

    @property
    def busy_s(self) -> float:
        return self.forward_s + self.backward_input_s + self.backward_weight_s + self.overlapped_fb_s


@dataclass(frozen=True, slots=True)
class Layout:
    """Rank ``chunk_ranks[d][c]`` runs chunk c of direction d; micro-batch m has direction
    ``microbatch_direction[m]``."""

    chunk_ranks: tuple[tuple[int, ...], ...]
    microbatch_direction: tuple[int, ...]

    @property
    def num_chunks(self) -> int:
        return len(self.chunk_ranks[0])


@dataclass(frozen=True)
class PipelineTimeline:
    """One simulated pipeline step (no DP communication, no optimizer)."""

    makespan_s: float
    """From 0 (the first forward) to the end of the last operation on any rank."""
    phases: tuple[RankPhases, ...]
    """Per rank; each partitions ``makespan_s``."""
    critical_rank: int
    """The rank with the most busy time (lowest index on ties): its compute bounds the
    step, so its idle time is what the schedule adds. 1F1B/ZB1P with equal chunks: all
    ranks tie, rank 0. DualPipe: the outer ranks, which overlap the fewest F&B pairs."""
    inflight_peak: tuple[int, ...]
    """Per rank, the most (micro-batch, chunk) activations alive at once: from a forward's
    start to the end of its backward for inputs (W's smaller share left out); 1F1B: pp - r."""
    rank_end_s: tuple[float, ...]
    """When each rank's last operation ends (its data-parallel gradient sync can follow)."""
    _program: _Compiled = field(repr=False, compare=False)
    _times: tuple[tuple[float, ...], ...] = field(repr=False, compare=False)

    @cached_property
    def events(self) -> tuple[Event, ...]:
        """Every operation, rank by rank in program order (built on first use)."""
        direction = self._program.layout.microbatch_direction
        out = []
        for r, (ops, times) in enumerate(zip(self._program.ops, self._times, strict=True)):
            for k, (code, mb, c, bmb, bc) in enumerate(ops):
                start, end = times[2 * k], times[2 * k + 1]
                out.append(Event(r, _KINDS[code], mb, c, direction[mb], start, end, bmb, bc))
        return tuple(out)

    def activation_peak(self, chunk_weights: Sequence[float]) -> tuple[float, ...]:
        """Per rank, the peak of ``sum(chunk_weights[chunk])`` over live activations
        (e.g. activation bytes per micro-batch of each chunk)."""
        return _peaks(self._program.ops, chunk_weights)


def _peaks(programs: Sequence[Sequence[RawOp]], weights: Sequence[float]) -> tuple[float, ...]:
    # A rank's operations never overlap in time, so the live set follows program order: a
    # forward allocates at its start, a backward frees at its end (an FB pair holds both).
    peaks = []
    for ops in programs:
        level = peak = 0.0
        for code, _, c, _, bc in ops:
            if code == _F or code == _FB or code == _FO:
                level += weights[c]
                peak = max(peak, level)
            if code == _FB:
                level -= weights[bc]
            elif code == _B or code == _BW or code == _BWO:
                level -= weights[c]
        peaks.append(peak)
    return tuple(peaks)


RawOp = tuple[int, int, int, int, int]  # Op as (code, microbatch, chunk, bwd microbatch, bwd chunk)


def _one_f_one_b(pp: int, m: int, split_w: bool, merge: bool = False) -> list[list[RawOp]]:
    """1F1B (Megatron-LM), or ZB-H1 with ``split_w`` (Qi et al. 2023, Fig. 3): 1F1B's order, but
    rank r lets r W's wait (it holds pp - r micro-batches, so pp at most) for the cool-down,
    where B's arrive sooner as gradients leave after B, not B + W: (pp-1)(F+B+W) becomes
    (pp-1)(F+B-W), B for inputs, when W <= min(F, B) and m >= pp. ``merge``: combined 1F1B,
    one warm-up forward more and the steady state's F and BW as pairs (:func:`_merged`)."""
    programs = []
    for r in range(pp):
        warm = min(pp - r - 1 + merge, m)
        ops: list[RawOp] = [(_F, i, r, -1, -1) for i in range(warm)]
        pending: list[int] = []
        for i in range(m):
            if i < m - warm:
                ops.append((_F, warm + i, r, -1, -1))
            ops.append((_B if split_w else _BW, i, r, -1, -1))
            pending += [i] if split_w else []
            if len(pending) > r:
                ops.append((_W, pending.pop(0), r, -1, -1))
        ops += [(_W, i, r, -1, -1) for i in pending]
        programs.append(_merged(ops) if merge else ops)
    return programs


def _interleaved(pp: int, vpp: int, m: int, merge: bool = False) -> list[list[RawOp]]:
    """Megatron-LM ``forward_backward_pipelining_with_interleaving``: the k-th forward runs
    virtual chunk ``(k mod pp vpp) // pp`` of micro-batch group ``k // (pp vpp)``; backwards
    the same with the virtual chunks reversed. All forwards first when m == pp. ``merge``:
    the steady state's F and BW pairs become F&B nodes (:func:`_merged`)."""
    group, total = pp * vpp, m * vpp
    programs = []
    for r in range(pp):
        # Combined 1F1B warms up one forward more, so that each merged F and B are of
        # different micro-batches (Megatron-Core get_pp_rank_microbatches:
        # ``num_warmup_microbatches += 1`` under overlap_moe_expert_parallel_comm).
        warm = total if m == pp else min(2 * (pp - r - 1) + (vpp - 1) * pp + merge, total)

        def unit(code: int, k: int) -> RawOp:
            virtual = k % group // pp
            if code == _BW:
                virtual = vpp - 1 - virtual
            return code, k // group * pp + k % pp, virtual * pp + r, -1, -1

        ops = [unit(_F, k) for k in range(warm)]  # then 1F1B over virtual chunks, then cool-down
        for k in range(total):
            if warm + k < total:
                ops.append(unit(_F, warm + k))
            ops.append(unit(_BW, k))
        programs.append(_merged(ops) if merge else ops)
    return programs


def _merged(ops: list[RawOp]) -> list[RawOp]:
    """Megatron-Core's combined 1F1B: every forward directly followed by a full backward
    (the steady state; not the warm-up forwards and cool-down backwards) runs as one F&B
    node. Each half is kept as its own operation priced at its share of the pair (``_FO``:
    F k, ``_BWO``: (B + W) k, k the chunk's overlap factor), so that it waits only for its
    own input: a node waiting for both could deadlock where Megatron's sends and receives
    around the node do not."""
    out: list[RawOp] = []
    for op in ops:
        if op[0] == _BW and out and out[-1][0] == _F:
            out[-1] = (_FO, *out[-1][1:])
            out.append((_BWO, *op[1:]))
        else:
            out.append(op)
    return out


def _dualpipe(pp: int, m: int, v_shape: bool) -> list[list[RawOp]]:
    """The eight phases of ``DualPipe.step`` (``DualPipeV.step``) as tokens: ``F0`` forward of
    phase 0, ``B1`` full backward, ``b1`` zero-bubble B (its W queued FIFO like WeightGradStore),
    ``W`` the oldest queued W, ``P01`` the F0 & B1 overlapped pair. DualPipe: rank r has
    half-rank h = min(r, pp-1-r) of H = pp/2, N = m/2 micro-batches per direction, phase p is
    direction ``p ^ (r >= H)`` (direction 0 runs chunk r, 1 chunk pp-1-r), the two middle ranks
    turn. DualPipeV: h = r, H = pp, N = m, phase 0 is chunk r (down the V), phase 1 chunk
    2pp-1-r (back up), the last rank turns."""
    programs = []
    for r in range(pp):
        if v_shape:
            big_h, h, n, turn = pp, r, m, r == pp - 1
            chunk, first = (r, 2 * pp - 1 - r), [0, 0]
        else:
            big_h, h, n = pp // 2, min(r, pp - 1 - r), m // 2
            turn, second = r in (big_h - 1, big_h), r >= pp // 2
            chunk = (pp - 1 - r, r) if second else (r, pp - 1 - r)
            first = [n, 0] if second else [0, n]
        rest, half = big_h - h - 1, (h + 1) // 2
        script = ["F0"] * (2 * rest) + ["F0", "F1"] * (h + 1)  # steps 1-2: nF0, nF0F1
        script += ["b1", "W", "F1"] * rest  # step 3: nB1W1F1
        # step 4, main nF0B1F1B0: the turning ranks do not overlap the first pair
        script += (["F0", "B1"] if turn else ["P01"]) + ["P10"] + ["P01", "P10"] * (n - 2 * big_h + h)
        script += ["B1", "P10"] * rest  # step 5: nB1F1B0
        for i in range(h + 1):  # step 6: nB1B0, zero bubble from the middle on
            script.append("b1" if i > half or (i == half and h % 2) else "B1")
            script.append("b0" if i >= half else "B0")
        script += ["W", "b0"] * rest + ["W"] * (h + 1)  # steps 7-8: nWB0, nW
        nxt = {"F": list(first), "B": list(first)}

        def take(kind: str, phase: str) -> tuple[int, int]:
            p = int(phase)
            nxt[kind][p] += 1
            return nxt[kind][p] - 1, chunk[p]

        ops: list[RawOp] = []
        pending: list[tuple[int, int]] = []
        for tok in script:
            if tok == "W":
                ops.append((_W, *pending.pop(0), -1, -1))
            elif tok[0] == "F":
                ops.append((_F, *take("F", tok[1]), -1, -1))
            elif tok[0] == "P":
                ops.append((_FB, *take("F", tok[1]), *take("B", tok[2])))
            else:
                mb, c = take("B", tok[1])
                ops.append((_B if tok[0] == "b" else _BW, mb, c, -1, -1))
                if tok[0] == "b":
                    pending.append((mb, c))
        programs.append(ops)
    return programs


def _layout(schedule: PipelineSchedule, pp: int, vpp: int, m: int) -> Layout:
    if schedule is PipelineSchedule.DUALPIPE:  # direction 1: chunk c on rank pp-1-c
        return Layout((tuple(range(pp)), tuple(range(pp - 1, -1, -1))), (0,) * (m // 2) + (1,) * (m - m // 2))
    if schedule is PipelineSchedule.DUALPIPEV:
        return Layout((tuple(range(pp)) + tuple(range(pp - 1, -1, -1)),), (0,) * m)
    return Layout((tuple(c % pp for c in range(pp * vpp)),), (0,) * m)


@dataclass(frozen=True)
class _Compiled:
    """Programs resolved to slots of a ``done`` array of times (slot 2k: end of F of key
    k = mb * num_chunks + chunk; 2k+1: its input gradient ready). A step is
    ((slot needed, crosses ranks)..., slots produced, duration id)."""

    layout: Layout
    ops: tuple[tuple[RawOp, ...], ...]
    steps: tuple[tuple[tuple[tuple[tuple[int, bool], ...], tuple[int, ...], int], ...], ...]
    histograms: tuple[tuple[tuple[int, int], ...], ...]
    """Per rank, (duration id, count): phase sums need no loop over operations."""
    pairs: frozenset[tuple[int, int]]  # (forward chunk, backward chunk) of the FB pairs
    inflight: tuple[int, ...]


def _compile(programs: Sequence[Sequence[RawOp]], layout: Layout) -> _Compiled:
    n, where, direction = layout.num_chunks, layout.chunk_ranks, layout.microbatch_direction
    steps, histograms, pairs = [], [], set()
    for r, prog in enumerate(programs):
        rank_steps, hist = [], {}
        for code, mb, c, bmb, bc in prog:
            needs, makes = [], []
            if code == _F or code == _FB or code == _FO:
                key = mb * n + c
                makes.append(2 * key)
                if c > 0:
                    needs.append((2 * key - 2, where[direction[mb]][c - 1] != r))
            # duration ids: F, B, W, BW of chunk c at code * n + c; pairs after 4n; the
            # overlapped halves (combined 1F1B) after 4n + n * n
            if code == _FB:
                did = 4 * n + c * n + bc
            elif code >= _FO:
                did = 4 * n + n * n + (code - _FO) * n + c
            else:
                did = code * n + c
            if code == _FB:
                pairs.add((c, bc))
                mb, c = bmb, bc
            key = mb * n + c
            if code == _W:
                needs.append((2 * key + 1, False))
            elif code != _F and code != _FO:
                makes.append(2 * key + 1)
                if c + 1 < n:
                    needs.append((2 * key + 3, where[direction[mb]][c + 1] != r))
                else:  # the loss chunk: the backward starts from its own forward
                    needs.append((2 * key, False))
            rank_steps.append((tuple(needs), tuple(makes), did))
            hist[did] = hist.get(did, 0) + 1
        steps.append(tuple(rank_steps))
        histograms.append(tuple(sorted(hist.items())))
    ops = tuple(tuple(p) for p in programs)
    inflight = tuple(round(x) for x in _peaks(ops, [1.0] * n))
    return _Compiled(layout, ops, tuple(steps), tuple(histograms), frozenset(pairs), inflight)


def raw_programs(schedule: PipelineSchedule, m: int, pp: int, vpp: int,
                 ep_overlap: bool = False) -> list[list[RawOp]]:
    """Each rank's operations (code, micro-batch, chunk, backward micro-batch, backward
    chunk) in program order, before they are compiled into event steps. ``ep_overlap``:
    Megatron-Core's combined 1F1B (:mod:`planner.costmodel.ep_overlap`) for 1F1B and the
    interleaved schedule: one warm-up forward more, then the steady state's pairs (on one
    stage, forward i + 1 with backward i)."""
    return _raw_programs(PipelineSchedule(schedule), m, pp, vpp, ep_overlap)


@lru_cache(maxsize=256)
def _raw_programs(schedule: PipelineSchedule, m: int, pp: int, vpp: int, ep_overlap: bool) -> list[list[RawOp]]:
    if schedule is PipelineSchedule.ONE_F_ONE_B:
        return _one_f_one_b(pp, m, split_w=False, merge=ep_overlap)
    if schedule is PipelineSchedule.ZERO_BUBBLE:
        return _one_f_one_b(pp, m, split_w=True)
    if schedule is PipelineSchedule.INTERLEAVED:
        return _interleaved(pp, vpp, m, merge=ep_overlap)
    return _dualpipe(pp, m, v_shape=schedule is PipelineSchedule.DUALPIPEV)


@lru_cache(maxsize=256)
def _compiled(schedule: PipelineSchedule, m: int, pp: int, vpp: int, ep_overlap: bool = False) -> _Compiled:
    schedule = PipelineSchedule(schedule)
    return _compile(raw_programs(schedule, m, pp, vpp, ep_overlap), _layout(schedule, pp, vpp, m))


def _run(prog: _Compiled, chunk_times: Sequence[ChunkTimes], p2p_s: float) -> PipelineTimeline:
    n, pp = prog.layout.num_chunks, len(prog.steps)
    fwd = [t.forward_s for t in chunk_times]
    bwd = [t.backward_input_s for t in chunk_times]
    wgt = [t.backward_weight_s for t in chunk_times]
    k = [t.overlap_factor for t in chunk_times]
    dur = (fwd + bwd + wgt + [b + w for b, w in zip(bwd, wgt, strict=True)] + [0.0] * (n * n)
           + [f * x for f, x in zip(fwd, k, strict=True)]
           + [(b + w) * x for b, w, x in zip(bwd, wgt, k, strict=True)])
    for fc, bc in prog.pairs:
        dur[4 * n + fc * n + bc] = fwd[fc] * k[fc] + (bwd[bc] + wgt[bc]) * k[bc]
    done = [-1.0] * (2 * n * len(prog.layout.microbatch_direction))  # -1: not yet
    waiters: dict[int, list[int]] = {}  # slot -> ranks blocked on it
    ptr, free, ready = [0] * pp, [0.0] * pp, list(range(pp))  # ready: ranks that may advance
    times: list[list[float]] = [[] for _ in range(pp)]  # start, end, start, end, ...
    while ready:
        r = ready.pop()
        steps, i, t_free, out = prog.steps[r], ptr[r], free[r], times[r]
        while i < len(steps):
            needs, makes, did = steps[i]
            start = t = t_free
            for slot, cross in needs:
                t = done[slot]
                if t < 0.0:
                    break
                t += p2p_s * cross
                if t > start:
                    start = t
            if t < 0.0:  # blocked on ``slot``
                waiters.setdefault(slot, []).append(r)
                break
            end = start + dur[did]
            out += (start, end)
            for slot in makes:
                done[slot] = end
                if slot in waiters:
                    ready += waiters.pop(slot)
            t_free = end
            i += 1
        ptr[r], free[r] = i, t_free
    stuck = [r for r in range(pp) if ptr[r] < len(prog.steps[r])]
    if stuck:
        what = [(r, ptr[r], _KINDS[prog.ops[r][ptr[r]][0]].value, *prog.ops[r][ptr[r]][1:]) for r in stuck]
        raise DeadlockError(f"programs deadlock; blocked (rank, op, kind, mb, chunk, bwd mb/chunk): {what}")
    makespan = max(free, default=0.0)
    phases = []
    for hist in prog.histograms:
        sums = [0.0] * 4  # forward, backward input, weight, overlapped pairs
        for did, count in hist:
            code, c = divmod(did, n)
            # A full backward (BW) is one backward pass: it counts as backward, as DualPipe
            # profiles label it (ISCA'25 Table 4's 1B); 1W is the deferred W passes only.
            sums[1 if code == _BW else min(code, 3)] += count * dur[did]
        phases.append(RankPhases(*sums, bubble_s=max(0.0, makespan - sum(sums))))
    most = max(p.busy_s for p in phases)
    critical = next(r for r, p in enumerate(phases) if p.busy_s >= most * (1.0 - 1e-12))
    spans = tuple(map(tuple, times))
    return PipelineTimeline(makespan, tuple(phases), critical, prog.inflight, tuple(free), prog, spans)


def check_schedule(schedule: PipelineSchedule, num_microbatches: int, pp: int, vpp: int = 1) -> None:
    """Raise :class:`SpecError` (a ValueError) naming the rule the arguments break."""
    m = num_microbatches
    if pp < 1 or m < 1:
        raise SpecError(*(("pp", pp) if pp < 1 else ("num_microbatches", m)), "must be >= 1")
    if schedule is PipelineSchedule.INTERLEAVED:
        if vpp < 2:
            raise SpecError("vpp", vpp, "the interleaved schedule needs vpp >= 2")
        if m % pp:
            # Megatron-Core forward_backward_pipelining_with_interleaving: the last group of
            # microbatch_group_size_per_vp_stage (default pp) micro-batches must be full or
            # hold >= pp, which for the default means m a multiple of pp.
            raise SpecError("num_microbatches", m, f"interleaved needs a multiple of pp ({pp}) (Megatron-Core, "
                            "microbatch_group_size_per_vp_stage = pp)")
    elif vpp != 1:
        raise SpecError("vpp", vpp, f"vpp > 1 needs the interleaved schedule, not {schedule.value!r}")
    if schedule is PipelineSchedule.DUALPIPE and pp % 2:
        raise SpecError("pp", pp, "DualPipe needs an even number of stages (V3 §3.2.1)")
    if schedule is PipelineSchedule.DUALPIPE and m % 2:
        raise SpecError("num_microbatches", m, "DualPipe needs an even number of micro-batches (V3 §3.2.1)")
    if schedule in DUAL_SCHEDULES and m < 2 * pp:
        raise SpecError("num_microbatches", m, f"{schedule.value} needs >= 2 * pp = {2 * pp} micro-batches")


def _check_times(chunk_times: Sequence[ChunkTimes], expected: int, p2p_s: float) -> None:
    if len(chunk_times) != expected:
        raise SpecError("chunk_times", f"{len(chunk_times)} chunks", f"the schedule runs {expected} chunks")
    if not (math.isfinite(p2p_s) and p2p_s >= 0.0):
        raise SpecError("p2p_s", p2p_s, "must be a finite number of seconds >= 0")


def simulate_pipeline(
    schedule: PipelineSchedule,
    chunk_times: Sequence[ChunkTimes],
    num_microbatches: int,
    pp: int,
    vpp: int = 1,
    p2p_s: float = 0.0,
    ep_overlap: bool = False,
) -> PipelineTimeline:
    """Simulate one step: ``chunk_times[c]`` is model chunk c (as many as
    :func:`planner.costmodel.partition.num_chunks`: pp, pp * vpp interleaved, 2 pp DualPipeV),
    ``p2p_s`` the activation/gradient send time between chunks on different ranks;
    ``ep_overlap``: :func:`raw_programs`' combined 1F1B (F&B nodes priced with the chunks'
    ``overlapped_fb_s``)."""
    # The caches key on the schedule; a plain string hashes like its member and would share
    # (and poison) the entry, while the ``is`` tests below fail for it.
    schedule = PipelineSchedule(schedule)
    check_schedule(schedule, num_microbatches, pp, vpp)
    prog = _compiled(schedule, num_microbatches, pp, vpp, ep_overlap)
    _check_times(chunk_times, prog.layout.num_chunks, p2p_s)
    return _run(prog, chunk_times, p2p_s)


def simulate_programs(
    programs: Sequence[Sequence[Op]], chunk_times: Sequence[ChunkTimes], layout: Layout, p2p_s: float = 0.0
) -> PipelineTimeline:
    """Simulate hand-written programs, one per rank of ``layout``: each (micro-batch, chunk)
    needs one forward and one backward (B, BW or the half of an FB), each B one W later.
    Raises :class:`DeadlockError` when the orders cannot all finish."""
    _check_times(chunk_times, layout.num_chunks, p2p_s)
    m, n = len(layout.microbatch_direction), layout.num_chunks
    where, direction = layout.chunk_ranks, layout.microbatch_direction
    count: Counter[tuple[str, int, int]] = Counter()
    for r, prog in enumerate(programs):
        for op in prog:
            parts = [(op.kind.value, op.microbatch, op.chunk)]
            if op.kind is EventKind.FB:
                parts = [("F", op.microbatch, op.chunk), ("BW", op.backward_microbatch, op.backward_chunk)]
            for kind, mb, c in parts:
                if not (0 <= mb < m and 0 <= c < n) or where[direction[mb]][c] != r:
                    raise SpecError(f"programs[{r}]", op, "names a chunk not placed on this rank")
                count[kind if kind in ("F", "W") else "back", mb, c] += 1
                count["W", mb, c] -= kind == "B"  # each B owes one W
    once = [key for key, v in count.items() if key[0] != "W" and v == 1]
    if len(once) != 2 * m * n or any(v for key, v in count.items() if key[0] == "W"):
        raise SpecError("programs", "operations", "need one F and one backward per (mb, chunk), a W per B")
    raw = [[(_KINDS.index(o.kind), *astuple(o)[1:]) for o in prog] for prog in programs]
    return _run(_compile(raw, layout), chunk_times, p2p_s)
