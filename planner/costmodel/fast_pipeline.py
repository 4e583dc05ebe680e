"""The pipeline part of the fast estimate: the simulator's schedules, evaluated for many
plans at once with numpy.

:func:`planner.costmodel.schedules.simulate_pipeline` runs one plan's programs op by op
in Python. Its result is a max-plus expression of the chunk times: an operation starts at
the latest of its rank's previous end and its inputs' ends (+ p2p when they cross ranks),
and the dependency graph depends only on (schedule, micro-batches, pp, vpp), not on the
times. So the same compiled programs (``schedules._compiled``: same operation order, same
dependency rules) are grouped into *waves* of operations that depend on no other operation
of their wave, and each wave is evaluated for every plan of a group in a few numpy calls
(``(operations, plans)`` arrays). Per plan and rank this gives exactly the simulator's end
times and busy time (tests/test_fast.py checks equality to 1e-9). :func:`pipelines` replays
the programs of several groups and micro-batch counts in one merged loop over wave indices
(:func:`_run_merged`: the same arithmetic per operation and plan, so bit-identical ends):
one numpy pass per wave index instead of one per wave of each program.

Micro-batch counts beyond :func:`exact_limit` are extrapolated from two exact runs
(``m1 = limit - q`` and ``m2 = limit``; q = one schedule period: pp micro-batches for
interleaved, 4 for DualPipe, 2 for DualPipeV, 1F1B and ZB1P): past its warm-up a schedule
repeats a fixed pattern (max-plus periodicity) and, the ranks being coupled, every rank's
end then grows at one rate, taken as the fastest rank's between m1 and m2. The limits
(6 pp interleaved, 3 pp + q DualPipe(V), 4 pp + 2 otherwise) are where the warm-up had ended
on every realistic case measured. Residual against ``simulate_pipeline`` at the real m on
the extrapolated plans of the candidate sets of benchmarks/bench_fast.py and
tests/test_fast.py (~1,400 plans): 0.26 % of the makespan at most (1F1B), 0.001 % for the
other schedules. Chunk times far more uneven than a real split's (random 1-2x chunks, 30 %
of them doubled: tests/test_fast.py) take longer to settle: up to 4 % at pp 8. Busy time is
linear in m (exact).

:func:`bounds` is the cheap first stage: per program a few dependency paths (:func:`_paths`)
as count vectors over the program's durations, so a lower bound of every rank's end for all
plans is one matrix product plus a max per rank (no wave loop). The makespan of a max-plus
recursion is its longest path, so any path is a lower bound; the paths are picked as the
longest under reference duration mixes. Near-uniform chunks: within 3 % of the makespan
(tests/test_fast.py); real candidate sets: see :mod:`~planner.costmodel.fast`.
"""

from __future__ import annotations

import functools
import itertools
from dataclasses import dataclass

import numpy as np

from planner.costmodel.schedules import ChunkTimes, _compiled, simulate_pipeline
from planner.specs.plan import DUAL_SCHEDULES, PipelineSchedule

_F, _B, _W, _BW, _FB = range(5)  # schedules' operation codes (duration id = code * n + chunk)


@dataclass(frozen=True)
class _Program:
    """One compiled schedule as waves of independent operations.

    Slots: ``2 k`` / ``2 k + 1`` are the simulator's (forward end / input gradient of key
    k), then one per rank (its last end), a constant 0 and a write-only sink."""

    pp: int
    num_slots: int
    ops: np.ndarray
    """(operations, 9) in wave order: prev, need1, need2 slots, crossing x3, duration row,
    made slot, second made slot, rank slot (:attr:`waves` splits it at ``cut``)."""
    cut: np.ndarray
    dur_rows: np.ndarray
    """(durations, 2) rows of the base matrix (:func:`_base`) summed per duration (-1: its 0 row)."""
    counts: np.ndarray
    """(pp, durations): how often each rank runs each duration (busy = counts @ durations)."""
    full: tuple
    """Paths of :func:`_paths` at this m (counts, crossings, ..., ``starts``: see :func:`_by_end`)."""
    ext: tuple
    """The extrapolatable paths, without their rank's own operations (+ which rank's)."""

    @functools.cached_property
    def waves(self) -> tuple[tuple, ...]:
        """Per wave: needs (ops, 3) slots, crossing flags (ops, 3, 1) or None, duration row
        (ops,), made slots (ops,), second made slots (FB pairs, or None), rank slots (ops,).
        Built on the first replay (the bounds need only the paths)."""
        sink = self.num_slots - 1
        waves = []
        for w in np.split(self.ops, self.cut):
            cross = w[:, 3:6, None].astype(float)
            second = w[:, 8] if (w[:, 8] != sink).any() else None
            waves.append((np.ascontiguousarray(w[:, 0:3]), cross if cross.any() else None,
                          np.ascontiguousarray(w[:, 6]), np.ascontiguousarray(w[:, 7]), second,
                          np.ascontiguousarray(w[:, 9])))
        return tuple(waves)

    @functools.cached_property
    def wave_of(self) -> np.ndarray:
        """(operations,): each operation's wave index (for :func:`_run_merged`)."""
        wave = np.zeros(len(self.ops), dtype=np.int64)
        wave[self.cut] = 1
        return np.cumsum(wave)


def _by_end(counts: np.ndarray, cross: np.ndarray, to: np.ndarray, pp: int, own: np.ndarray | None = None) -> tuple:
    """Distinct paths sorted by the rank whose last end they reach: (counts, crossings, own
    ranks or None, each rank's first row (pp,))."""
    key = np.hstack([counts, cross[:, None], to[:, None], (to if own is None else own)[:, None]])
    _, keep = np.unique(key, axis=0, return_index=True)
    rows = keep[np.argsort(to[keep], kind="stable")]
    bounds = np.searchsorted(to[rows], np.arange(pp + 1))
    assert (np.diff(bounds) > 0).all(), "every rank has a path (_bound_run's reduceat needs it)"
    return (np.ascontiguousarray(counts[rows]), cross[rows], None if own is None else own[rows], bounds[:-1])


_PROGRAMS: dict = {}


def clear() -> None:
    _PROGRAMS.clear()


def _program(schedule: PipelineSchedule, m: int, pp: int, vpp: int, merged: bool = False) -> _Program:
    """The compiled program of (schedule, m, pp, vpp), ``merged``: Megatron-Core's combined
    1F1B (``schedules.raw_programs`` with ``ep_overlap``)."""
    key = (schedule, m, pp, vpp, merged)
    hit = _PROGRAMS.get(key)
    if hit is not None:
        return hit
    prog = _compiled(schedule, m, pp, vpp, merged)
    n = prog.layout.num_chunks
    base = 2 * n * len(prog.layout.microbatch_direction)
    zero, sink = base + pp, base + pp + 1
    # Waves: the start times of a run with positive durations group the operations so that
    # none depends on another of its group (a dependant starts after its producer ends);
    # F, BW and F&B take 1 (B and W alone 1/2), so 1F1B's waves are its dependency levels.
    unit = [ChunkTimes(1.0, 0.5, 0.5, 1.0)] * n
    tl = simulate_pipeline(schedule, unit, m, pp, vpp, 0.0, ep_overlap=merged)
    dids: dict[int, int] = {}
    rows = []
    for r, steps in enumerate(prog.steps):
        prev = base + r
        times = tl._times[r]
        for i, (needs, makes, did) in enumerate(steps):
            d = dids.setdefault(did, len(dids))
            slots = [prev] + [s for s, _ in needs] + [zero] * (2 - len(needs))
            cross = [0] + [int(c) for _, c in needs] + [0] * (2 - len(needs))
            outs = list(makes) + [sink] * (2 - len(makes)) + [base + r]
            rows.append((times[2 * i], *slots, *cross, d, *outs))
    arr = np.array(rows)
    arr = arr[np.argsort(arr[:, 0], kind="stable")]
    cut = np.flatnonzero(np.diff(arr[:, 0])) + 1
    dur_rows = np.full((len(dids), 2), -1, dtype=np.int64)  # the base's last row is 0
    for did, d in dids.items():
        if did >= 4 * n + n * n:  # a half of a combined-1F1B pair: F k or (B + W) k
            half, c = divmod(did - 4 * n - n * n, n)
            dur_rows[d] = (3 * n + half * n + c, -1)
        elif did >= 4 * n:
            fc, bc = divmod(did - 4 * n, n)
            dur_rows[d] = (3 * n + fc, 4 * n + bc)
        else:
            code, c = divmod(did, n)
            dur_rows[d] = (n + c, 2 * n + c) if code == _BW else (code * n + c, -1)
    counts = np.zeros((pp, len(dids)))
    for r, hist in enumerate(prog.histograms):
        for did, count in hist:
            counts[r, dids[did]] += count
    (chains, chain_x, chain_to), (ext, ext_x, ext_to) = _paths(arr, cut, len(dids), n, dur_rows, base, pp)
    own = np.arange(2 * pp) % pp  # ext path i leaves out rank i % pp's operations
    full = _by_end(np.vstack([chains, ext + counts[own]]), np.concatenate([chain_x, ext_x]),
                   np.concatenate([chain_to, ext_to]), pp)
    hit = _PROGRAMS[key] = _Program(pp, base + pp + 2, arr[:, 1:].astype(np.int64), cut, dur_rows, counts, full,
                                    _by_end(ext, ext_x, ext_to, pp, own))
    return hit


_REFERENCE = np.array([[1.0, 1.0, 1.0, 2.4], [1.0, 2.0, 1.0, 3.2], [1.0, 1.0, 0.3, 1.8]])
"""Reference durations (F, B, W, F&B pair; BW = B + W) that pick the candidate paths: balanced,
backward-heavy (recompute), weight-gradient-light. Any path is a valid bound; these only pick
likely critical ones."""


def _paths(arr: np.ndarray, cut: np.ndarray, num_dids: int, n: int, dur_rows: np.ndarray, base: int,
           pp: int) -> tuple:
    """Dependency paths of a program whose lengths bound the rank ends from below.

    ``arr``: the operations in topological order (unit start, prev, need1, need2, cross x3,
    duration, made1, made2, rank slot), ``cut`` the wave boundaries. Returns
    (``full``, ``ext``), each (counts (paths, durations), crossings (paths,), rank whose last
    end the path reaches (paths,)):

    - ``full``: per reference of :data:`_REFERENCE` and rank r, the longest chain into r's
      last operation under that reference; plus ``ext``'s paths with r's operations added;
    - ``ext``: per rank r, ``head_r`` (longest chain into r's first operation) and ``head_r``
      + ``tail_r`` (longest chain out of r's last), under the first reference, without r's
      own operations: counted apart so that the busy time can be extrapolated in m.
    """
    ops = arr[:, 1:].astype(np.int64)
    k, nref = len(ops), len(_REFERENCE)
    pair = (dur_rows[:, 0] >= 3 * n) & (dur_rows[:, 1] >= 0)
    half = (dur_rows[:, 0] >= 3 * n) & (dur_rows[:, 1] < 0)  # combined 1F1B: 5 = F k, 6 = (B + W) k
    kind = np.where(pair, 3, np.where(half, 5 + (dur_rows[:, 0] - 3 * n) // n,
                                      np.where(dur_rows[:, 1] >= 0, 4, dur_rows[:, 0] // n)))
    bw = _REFERENCE[:, 1:2] + _REFERENCE[:, 2:3]
    k_ref = _REFERENCE[:, 3:4] / (_REFERENCE[:, 0:1] + bw)  # the pair's overlap factor
    ref = np.hstack([_REFERENCE, bw, _REFERENCE[:, 0:1] * k_ref, bw * k_ref])  # (refs, F B W FB BW FO BWO)
    weight = ref[:, kind[ops[:, 6]]].T  # (k, refs)
    rank = ops[:, 9] - base
    did = np.append(ops[:, 6], num_dids)  # row k: no operation (a dummy duration column)
    # Producers: the rank's previous operation, and the makers of the two needed slots.
    slot_op = np.full(base + pp + 2, k)  # F/B key slots, rank slots, zero, sink
    for col in (7, 8):
        slot_op[ops[:, col]] = np.arange(k)
    slot_op[base + pp + 1] = k  # the sink
    by_rank = np.argsort(rank, kind="stable")
    prev = np.full(k, k)
    same = rank[by_rank[1:]] == rank[by_rank[:-1]]
    prev[by_rank[1:][same]] = by_rank[:-1][same]
    prod = np.stack([prev, slot_op[ops[:, 1]], slot_op[ops[:, 2]]], axis=1)  # (k, 3); k = none
    cross = ops[:, 3:6].astype(float)
    cross[prod == k] = 0.0
    waves = list(zip(np.concatenate([[0], cut]), np.concatenate([cut, [k]]), strict=True))
    # Longest chains into each operation (ends), and the critical producer per reference.
    end = np.zeros((k + 1, nref))
    for a, b in waves:
        end[a:b] = end[prod[a:b]].max(axis=1) + weight[a:b]
    pick = end[prod].argmax(axis=1)  # (k, refs)
    pred = np.take_along_axis(prod, pick, axis=1)
    pred_x = np.take_along_axis(cross, pick, axis=1)
    into = np.zeros((k + 1, nref, num_dids + 1))  # counts of the chain ending at (with) o
    into_x = np.zeros((k + 1, nref))
    refs = np.arange(nref)
    for a, b in waves:
        into[a:b] = into[pred[a:b], refs]
        into[np.arange(a, b)[:, None], refs, did[a:b, None]] += 1.0
        into_x[a:b] = into_x[pred[a:b], refs] + pred_x[a:b]
    # Longest chains out of each operation under the first reference.
    src = prod.T.ravel()
    dst = np.tile(np.arange(k), 3)
    ex = cross.T.ravel()
    keep = src < k
    src, dst, ex = src[keep], dst[keep], ex[keep]
    order = np.argsort(src, kind="stable")
    src, dst, ex = src[order], dst[order], ex[order]
    slot = np.arange(len(src)) - np.searchsorted(src, src)
    width = int(slot.max(initial=0)) + 1
    succ = np.full((k, width), k)
    succ_x = np.zeros((k, width))
    succ[src, slot], succ_x[src, slot] = dst, ex
    rem = np.zeros(k + 1)
    for a, b in reversed(waves):
        rem[a:b] = weight[a:b, 0] + rem[succ[a:b]].max(axis=1)
    pick = rem[succ].argmax(axis=1)
    nxt = succ[np.arange(k), pick]
    nxt_x = succ_x[np.arange(k), pick]
    out = np.zeros((k + 1, num_dids + 1))  # counts of the chain after o (without o)
    out_x = np.zeros(k + 1)
    last_rank = np.append(rank, -1)
    for a, b in reversed(waves):
        s = nxt[a:b]
        out[a:b] = out[s]
        out[np.arange(a, b), did[s]] += 1.0
        out_x[a:b] = out_x[s] + nxt_x[a:b]
        last_rank[a:b] = np.where(s < k, last_rank[s], rank[a:b])
    first = np.array([by_rank[rank[by_rank] == r][0] for r in range(pp)])
    last = np.array([by_rank[rank[by_rank] == r][-1] for r in range(pp)])
    head, head_x = into[pred[first, 0], 0], into_x[pred[first, 0], 0]
    ext = (np.vstack([head, head + out[last]])[:, :num_dids], np.concatenate([head_x, head_x + out_x[last]]),
           np.concatenate([np.arange(pp), last_rank[last]]))
    chains = into[last].reshape(pp * nref, -1)[:, :num_dids]
    full = (chains, into_x[last].reshape(-1), np.repeat(np.arange(pp), nref))
    return full, ext


def _run(prog: _Program, base: np.ndarray, p2p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(rank ends, rank busy), each (pp, plans), of one program for plans with the base
    duration matrix ``base`` (5 n + 1, plans) and p2p seconds (plans,)."""
    dur = base[prog.dur_rows[:, 0]] + base[prog.dur_rows[:, 1]]
    done = np.zeros((prog.num_slots, base.shape[1]))
    for needs, cross, drow, made, second, rank in prog.waves:
        t = done[needs]
        if cross is not None:
            t += cross * p2p
        start = t.max(axis=1)
        start += dur[drow]
        done[made] = start
        if second is not None:
            done[second] = start
        done[rank] = start
    first_rank = prog.num_slots - 2 - prog.pp
    return done[first_rank:first_rank + prog.pp], prog.counts @ dur


MERGE_ELEMENTS = 400_000
"""Most (operation, plan) elements replayed in one merged wave loop (:func:`_run_many`):
about 30 MB of index and duration arrays; a larger job runs alone with :func:`_run`."""


def _run_many(jobs: list[tuple[_Program, np.ndarray, np.ndarray]]) -> list[tuple[np.ndarray, np.ndarray]]:
    """:func:`_run` of each (program, base, p2p) job. Jobs of at most :data:`MERGE_ELEMENTS`
    operations x plans are replayed together, in batches under that budget
    (:func:`_run_merged`: one numpy pass per wave index for all their programs instead of one
    per wave of each program); the same operations on the same values, so the same ends."""
    out: list = [None] * len(jobs)
    size = [len(prog.ops) * base.shape[1] for prog, base, _ in jobs]
    batch: list[int] = []
    used = 0
    for j in sorted(range(len(jobs)), key=size.__getitem__):
        if size[j] > MERGE_ELEMENTS:
            out[j] = _run(*jobs[j])
            continue
        if used + size[j] > MERGE_ELEMENTS:
            out = _place(out, batch, _run_merged([jobs[i] for i in batch]))
            batch, used = [], 0
        batch.append(j)
        used += size[j]
    return _place(out, batch, _run_merged([jobs[i] for i in batch])) if batch else out


def _place(out: list, where: list[int], values: list) -> list:
    for j, value in zip(where, values, strict=True):
        out[j] = value
    return out


def _run_merged(jobs: list[tuple[_Program, np.ndarray, np.ndarray]]) -> list[tuple[np.ndarray, np.ndarray]]:
    """:func:`_run` of several jobs in one wave loop over flat arrays: job j's slot s for its
    plan c is ``done[off_j + s * P_j + c]``; elements (operation, plan) sorted by wave index
    (each job's operations already are), so wave w of every job is one contiguous slice.
    Per element the same arithmetic as :func:`_run` (needed ends, + p2p where crossing, max,
    + duration), so bit-identical ends."""
    plans = np.array([base.shape[1] for _, base, _ in jobs])
    slots = np.array([prog.num_slots for prog, _, _ in jobs])
    durs = [base[prog.dur_rows[:, 0]] + base[prog.dur_rows[:, 1]] for prog, base, _ in jobs]
    off = np.concatenate([[0], np.cumsum(slots * plans)])
    doff = np.concatenate([[0], np.cumsum([d.size for d in durs])])
    poff = np.concatenate([[0], np.cumsum(plans)])
    order = np.argsort(np.concatenate([prog.wave_of for prog, _, _ in jobs]), kind="stable")
    ops = np.concatenate([prog.ops for prog, _, _ in jobs])[order]
    job = np.repeat(np.arange(len(jobs)), [len(prog.ops) for prog, _, _ in jobs])[order]
    # Per operation (in wave order): its slots and duration as flat indices of its plan 0.
    width = plans[job]
    need = (ops[:, 0:3] * width[:, None] + off[job, None]).T
    made = (ops[:, 7:10] * width[:, None] + off[job, None]).T
    crossing = ops[:, 3:6].T > 0
    at_dur = doff[job] + ops[:, 6] * width
    at_p2p = poff[job]
    # Per element (operation, plan c): the same + c.
    ends = np.cumsum(width)
    op = np.repeat(np.arange(len(ops)), width)
    col = np.arange(ends[-1]) - np.repeat(ends - width, width)
    need, made = np.take(need, op, axis=1) + col, np.take(made, op, axis=1) + col
    p2p = np.take(np.concatenate([p for _, _, p in jobs]), np.take(at_p2p, op) + col)
    cross = np.where(np.take(crossing, op, axis=1), p2p, 0.0)
    dur = np.take(np.concatenate([d.ravel() for d in durs]), np.take(at_dur, op) + col)
    wave = np.take(np.concatenate([prog.wave_of for prog, _, _ in jobs])[order], op)
    cuts = np.searchsorted(wave, np.arange(wave[-1] + 2)).tolist()
    done = np.zeros(off[-1])
    for a, b in itertools.pairwise(cuts):
        t = done[need[:, a:b]]
        t += cross[:, a:b]
        start = t.max(axis=0)
        start += dur[a:b]
        done[made[:, a:b]] = start
    out = []
    for j, (prog, _, _) in enumerate(jobs):
        first = off[j] + (prog.num_slots - 2 - prog.pp) * plans[j]
        out.append((done[first:first + prog.pp * plans[j]].reshape(prog.pp, plans[j]), prog.counts @ durs[j]))
    return out


def _base(schedule: PipelineSchedule, fwd: np.ndarray, bwd: np.ndarray, wgt: np.ndarray,
          overlap: np.ndarray, merged: bool = False) -> np.ndarray:
    """The base duration matrix [F; B; W; F k; (B + W) k; 0] (rows 3n.. only for the F&B
    pairs of DualPipe(V) and the halves of combined 1F1B's, ``merged``); a program's
    duration is the sum of two of its rows."""
    zero = np.zeros((1, fwd.shape[1]))
    if schedule in DUAL_SCHEDULES or merged:
        return np.vstack([fwd, bwd, wgt, fwd * overlap, (bwd + wgt) * overlap, zero])
    return np.vstack([fwd, bwd, wgt, zero])


def bound_limit(schedule: PipelineSchedule, pp: int, merged: bool = False) -> tuple[int, int]:
    """(limit, period) of :func:`bounds`: its own programs up to ``limit`` micro-batches, the
    ``ext`` paths of the limit's program beyond (2 pp + one period: the warm-up and cool-down
    chains are complete; tests/test_fast.py checks the bound at every m up to 3x
    :func:`exact_limit`). Combined 1F1B's interleaved programs (``merged``) start one period
    later: at m = pp every forward runs first and nothing pairs, so the busy time is linear in
    m only from 2 pp."""
    if schedule is PipelineSchedule.INTERLEAVED:
        return (3 if merged else 2) * pp, pp
    period = 4 if schedule is PipelineSchedule.DUALPIPE else 2
    return 2 * pp + period, period


def exact_limit(schedule: PipelineSchedule, pp: int) -> tuple[int, int]:
    """(limit, period): micro-batch counts up to ``limit`` are simulated exactly, larger ones
    extrapolated from ``limit - period`` and ``limit`` (see the module docstring)."""
    if schedule is PipelineSchedule.INTERLEAVED:
        return 6 * pp, pp
    if schedule is PipelineSchedule.DUALPIPE:
        return 3 * pp + 4, 4
    if schedule is PipelineSchedule.DUALPIPEV:
        return 3 * pp + 2, 2
    return 4 * pp + 2, 2


def _per_m(schedule: PipelineSchedule, pp: int, vpp: int, m: np.ndarray, fwd, bwd, wgt, overlap, p2p, limit: int,
           run, beyond, merged: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(pp, plans) pairs from ``run(program, base, p2p)`` per micro-batch count up to
    ``limit``, and from ``beyond(program at limit - period, program at limit, base, p2p, k)``
    (k = (m - limit) / period) for the plans past it."""
    base = _base(schedule, fwd, bwd, wgt, overlap, merged)
    first = np.empty((pp, fwd.shape[1]))
    second = np.empty_like(first)
    whole = len(m)

    def cols(sel):  # the plans' base columns and p2p (no copy when they are all the plans)
        return (base, p2p) if len(sel) == whole else (base[:, sel], p2p[sel])

    for mm in np.unique(m[m <= limit[0]]):
        sel = np.flatnonzero(m == mm)
        first[:, sel], second[:, sel] = run(_program(schedule, int(mm), pp, vpp, merged), *cols(sel))
    sel = np.flatnonzero(m > limit[0])
    if sel.size:
        lim, period = limit
        first[:, sel], second[:, sel] = beyond(_program(schedule, lim - period, pp, vpp, merged),
                                               _program(schedule, lim, pp, vpp, merged), *cols(sel),
                                               (m[sel] - lim) / period)
    return first, second


def pipeline(schedule: PipelineSchedule, pp: int, vpp: int, m: np.ndarray, fwd: np.ndarray, bwd: np.ndarray,
             wgt: np.ndarray, overlap: np.ndarray, p2p: np.ndarray, merged: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Rank ends and busy seconds, (pp, plans), of plans sharing (schedule, pp, vpp).

    ``fwd``, ``bwd``, ``wgt``, ``overlap`` are (chunks, plans): ChunkTimes' F, B, W and
    overlap factor (F&B / (F + B + W); 1 without overlap); ``m`` and ``p2p`` (plans,);
    ``merged``: Megatron-Core's combined 1F1B (1F1B and interleaved only)."""
    return pipelines([(schedule, pp, vpp, m, fwd, bwd, wgt, overlap, p2p, merged)])[0]


def pipelines(requests: list[tuple]) -> list[tuple[np.ndarray, np.ndarray]]:
    """:func:`pipeline` of each (schedule, pp, vpp, m, fwd, bwd, wgt, overlap, p2p, merged)
    request, their programs (one per request and micro-batch count) replayed together
    (:func:`_run_many`)."""
    jobs, place = [], []
    for i, (schedule, pp, vpp, m, fwd, bwd, wgt, overlap, p2p, merged) in enumerate(requests):
        base = _base(schedule, fwd, bwd, wgt, overlap, merged)
        lim, period = exact_limit(schedule, pp)
        for mm in np.unique(m[m <= lim]).tolist():
            sel = np.flatnonzero(m == mm)
            jobs.append((_program(schedule, mm, pp, vpp, merged), base[:, sel], p2p[sel]))
            place.append((i, sel, None))
        sel = np.flatnonzero(m > lim)
        if sel.size:
            for mm in (lim - period, lim):
                jobs.append((_program(schedule, mm, pp, vpp, merged), base[:, sel], p2p[sel]))
            place.append((i, sel, (m[sel] - lim) / period))
    done = iter(_run_many(jobs))
    out = [(np.empty((pp, len(m))), np.empty((pp, len(m)))) for _, pp, _, m, *_ in requests]
    for i, sel, k in place:
        ends, busy = out[i]
        if k is None:
            ends[:, sel], busy[:, sel] = next(done)
        else:  # ranks are coupled: every rank's end ends up growing at the fastest rank's rate
            (e1, u1), (e2, u2) = next(done), next(done)
            ends[:, sel], busy[:, sel] = e2 + k * (e2 - e1).max(axis=0), u2 + k * (u2 - u1)
    return out


def _bound_run(prog: _Program, base: np.ndarray, p2p: np.ndarray, busy: np.ndarray | None = None,
               dur: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(rank end lower bounds, rank busy), each (pp, plans): per rank the longest of the
    program's paths that reach its last end; with ``busy`` (an extrapolated busy time) the
    ``ext`` paths only."""
    if dur is None:  # the program's durations (already there for an extrapolation)
        dur = base[prog.dur_rows[:, 0]] + base[prog.dur_rows[:, 1]]
    if busy is None:
        counts, cross, _, rows = prog.full
        busy = prog.counts @ dur
        length = counts @ dur
    else:
        counts, cross, own, rows = prog.ext
        length = counts @ dur + busy[own]
    length += cross[:, None] * p2p
    return np.maximum.reduceat(length, rows, axis=0), busy


def bounds(schedule: PipelineSchedule, pp: int, vpp: int, m: np.ndarray, fwd: np.ndarray, bwd: np.ndarray,
           wgt: np.ndarray, overlap: np.ndarray, p2p: np.ndarray, merged: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Lower bounds of :func:`pipeline`'s rank ends, and the busy seconds, (pp, plans), in a
    few matrix products per program instead of one numpy pass per wave.

    Each rank's end is at least the length of any dependency path that ends at its last
    operation (the simulator's max-plus recursion dominates every path): the paths of
    :func:`_paths`. Beyond :func:`bound_limit` the ``ext`` paths of the limit's program are
    used with the busy time extrapolated (linear in m, exact): the warm-up and cool-down
    chains are the same for every m past it. Arguments as :func:`pipeline`."""

    def beyond(p1, p2, b, p, k):
        u1 = p1.counts @ (b[p1.dur_rows[:, 0]] + b[p1.dur_rows[:, 1]])
        d2 = b[p2.dur_rows[:, 0]] + b[p2.dur_rows[:, 1]]
        u2 = p2.counts @ d2
        return _bound_run(p2, b, p, u2 + k * (u2 - u1), d2)

    return _per_m(schedule, pp, vpp, m, fwd, bwd, wgt, overlap, p2p, bound_limit(schedule, pp, merged), _bound_run,
                  beyond, merged)
