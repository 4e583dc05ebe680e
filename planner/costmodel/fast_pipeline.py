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
times and busy time (tests/test_fast.py checks equality to 1e-9).

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
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from planner.costmodel.schedules import ChunkTimes, _compiled, simulate_pipeline
from planner.specs.plan import PipelineSchedule

_F, _B, _W, _BW, _FB = range(5)  # schedules' operation codes (duration id = code * n + chunk)


@dataclass(frozen=True)
class _Program:
    """One compiled schedule as waves of independent operations.

    Slots: ``2 k`` / ``2 k + 1`` are the simulator's (forward end / input gradient of key
    k), then one per rank (its last end), a constant 0 and a write-only sink."""

    pp: int
    num_slots: int
    waves: tuple[tuple, ...]
    """Per wave: needs (ops, 3) slots, crossing flags (ops, 3, 1) or None, duration row
    (ops,), made slots (ops,), second made slots (FB pairs, or None), rank slots (ops,)."""
    dur_rows: np.ndarray
    """(durations, 2) rows of the base matrix [F; B; W; F k; (B + W) k; 0] summed per duration."""
    counts: np.ndarray
    """(pp, durations): how often each rank runs each duration (busy = counts @ durations)."""


_PROGRAMS: dict = {}


def clear() -> None:
    _PROGRAMS.clear()


def _program(schedule: PipelineSchedule, m: int, pp: int, vpp: int) -> _Program:
    key = (schedule, m, pp, vpp)
    hit = _PROGRAMS.get(key)
    if hit is not None:
        return hit
    prog = _compiled(schedule, m, pp, vpp)
    n = prog.layout.num_chunks
    base = 2 * n * len(prog.layout.microbatch_direction)
    zero, sink = base + pp, base + pp + 1
    # Waves: the start times of a run with positive durations group the operations so that
    # none depends on another of its group (a dependant starts after its producer ends);
    # F, BW and F&B take 1 (B and W alone 1/2), so 1F1B's waves are its dependency levels.
    unit = [ChunkTimes(1.0, 0.5, 0.5, 1.0)] * n
    tl = simulate_pipeline(schedule, unit, m, pp, vpp, 0.0)
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
    waves = []
    for w in np.split(arr[:, 1:].astype(np.int64), cut):
        cross = w[:, 3:6, None].astype(float)
        second = w[:, 8] if (w[:, 8] != sink).any() else None
        waves.append((np.ascontiguousarray(w[:, 0:3]), cross if cross.any() else None, np.ascontiguousarray(w[:, 6]),
                      np.ascontiguousarray(w[:, 7]), second, np.ascontiguousarray(w[:, 9])))
    dur_rows = np.full((len(dids), 2), 5 * n, dtype=np.int64)  # row 5n of the base is 0
    for did, d in dids.items():
        if did >= 4 * n:
            fc, bc = divmod(did - 4 * n, n)
            dur_rows[d] = (3 * n + fc, 4 * n + bc)
        else:
            code, c = divmod(did, n)
            dur_rows[d] = (n + c, 2 * n + c) if code == _BW else (code * n + c, 5 * n)
    counts = np.zeros((pp, len(dids)))
    for r, hist in enumerate(prog.histograms):
        for did, count in hist:
            counts[r, dids[did]] += count
    hit = _PROGRAMS[key] = _Program(pp, base + pp + 2, tuple(waves), dur_rows, counts)
    return hit


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


def pipeline(schedule: PipelineSchedule, pp: int, vpp: int, m: np.ndarray, fwd: np.ndarray, bwd: np.ndarray,
             wgt: np.ndarray, overlap: np.ndarray, p2p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rank ends and busy seconds, (pp, plans), of plans sharing (schedule, pp, vpp).

    ``fwd``, ``bwd``, ``wgt``, ``overlap`` are (chunks, plans): ChunkTimes' F, B, W and
    overlap factor (F&B / (F + B + W); 1 without overlap); ``m`` and ``p2p`` (plans,)."""
    base = np.vstack([fwd, bwd, wgt, fwd * overlap, (bwd + wgt) * overlap, np.zeros((1, fwd.shape[1]))])
    ends = np.empty((pp, fwd.shape[1]))
    busy = np.empty_like(ends)
    limit, period = exact_limit(schedule, pp)
    for mm in np.unique(m[m <= limit]):
        sel = np.flatnonzero(m == mm)
        ends[:, sel], busy[:, sel] = _run(_program(schedule, int(mm), pp, vpp), base[:, sel], p2p[sel])
    sel = np.flatnonzero(m > limit)
    if sel.size:
        b, p = base[:, sel], p2p[sel]
        e1, u1 = _run(_program(schedule, limit - period, pp, vpp), b, p)
        e2, u2 = _run(_program(schedule, limit, pp, vpp), b, p)
        k = (m[sel] - limit) / period
        # Ranks are coupled: every rank's end ends up growing at the fastest rank's rate.
        ends[:, sel] = e2 + k * (e2 - e1).max(axis=0)
        busy[:, sel] = u2 + k * (u2 - u1)
    return ends, busy
