"""Pipeline schedule simulation (planner.costmodel.schedules).

Closed forms cross-checked: DeepSeek-V3 technical report (arXiv 2412.19437) Table 2 and the
DualPipe README (github.com/deepseek-ai/DualPipe), where F = forward chunk, B = *full*
backward chunk (our B + W), W = weight-gradient chunk, F&B = overlapped pair:

    1F1B      (PP-1)(F+B)
    ZB1P      (PP-1)(F+B-2W)
    DualPipe  (PP/2-1)(F&B+B-3W)      (DualPipeV: the same with PP = 2 pp stages)

and Narayanan et al. 2021 (arXiv 2104.04473) §2.2 for interleaving: bubble fraction
(p-1)/(v m). Times are drawn at random, p2p_s = 0; "exact" means equal to float error,
tolerance 1e-9 relative to the makespan.
"""

from __future__ import annotations

import random
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from planner.costmodel.partition import chunk_rank
from planner.costmodel.schedules import (
    ChunkTimes,
    DeadlockError,
    EventKind,
    Layout,
    Op,
    PipelineTimeline,
    simulate_pipeline,
    simulate_programs,
)
from planner.errors import SpecError
from planner.specs.plan import PipelineSchedule, Plan

S = PipelineSchedule
REL = 1e-9


def chunks(schedule: S, pp: int, vpp: int = 1) -> int:
    return 2 * pp if schedule is S.DUALPIPEV else pp * vpp


def close(a: float, b: float, scale: float) -> bool:
    return abs(a - b) <= REL * max(1.0, scale)


def placement(schedule: S, pp: int, vpp: int) -> list[int]:
    """Rank of each chunk as planner.costmodel.partition places it (forward direction)."""
    if pp == 1:  # Plan rejects DualPipe(V) with pp = 1; everything is on rank 0
        return [0] * chunks(schedule, pp, vpp)
    plan = Plan(pp=pp, vpp=vpp, pipeline_schedule=schedule)
    return [chunk_rank(plan, c) for c in range(chunks(schedule, pp, vpp))]


def check_timeline(t: PipelineTimeline, schedule: S, times, m: int, pp: int, vpp: int, p2p_s: float) -> None:
    """Invariants every simulation must satisfy (tolerance 1e-9 relative)."""
    scale = t.makespan_s
    assert len(t.phases) == pp
    for p in t.phases:  # phases partition the makespan; makespan >= busy time
        total = p.forward_s + p.backward_input_s + p.backward_weight_s + p.overlapped_fb_s + p.bubble_s
        assert close(total, t.makespan_s, scale)
        assert p.busy_s <= t.makespan_s * (1 + REL) + REL and p.bubble_s >= 0.0
    fwd, bwd, wgt = {}, {}, {}
    last_end = [0.0] * pp
    ranks = placement(schedule, pp, vpp)

    def rank_of(mb: int, c: int) -> int:  # DualPipe's second half of micro-batches: reversed
        return pp - 1 - c if schedule is S.DUALPIPE and mb >= m // 2 else ranks[c]

    for e in t.events:
        assert e.start_s >= last_end[e.rank] - REL * max(1.0, scale), "events overlap on a rank"
        last_end[e.rank] = e.end_s
        halves = []
        if e.kind in (EventKind.F, EventKind.FB):
            halves.append((fwd, e.microbatch, e.chunk))
        if e.kind is EventKind.FB:
            halves.append((bwd, e.backward_microbatch, e.backward_chunk))
        elif e.kind in (EventKind.B, EventKind.BW):
            halves.append((bwd, e.microbatch, e.chunk))
        elif e.kind is EventKind.W:
            halves.append((wgt, e.microbatch, e.chunk))
        for table, mb, c in halves:
            assert rank_of(mb, c) == e.rank
            assert (mb, c) not in table
            table[mb, c] = e
        ct = times[e.chunk]
        want = {
            EventKind.F: ct.forward_s,
            EventKind.B: ct.backward_input_s,
            EventKind.W: ct.backward_weight_s,
            EventKind.BW: ct.backward_input_s + ct.backward_weight_s,
        }.get(e.kind)
        if want is not None:
            assert close(e.end_s - e.start_s, want, scale)
    n = len(times)
    assert set(fwd) == set(bwd) == {(mb, c) for mb in range(m) for c in range(n)}
    assert set(wgt) == {k for k, e in bwd.items() if e.kind is EventKind.B}
    assert close(max(last_end), t.makespan_s, scale)
    assert all(close(a, b, scale) for a, b in zip(last_end, t.rank_end_s, strict=True))
    for (mb, c), e in fwd.items():  # dependencies, with p2p_s across ranks
        if c > 0:
            prev = fwd[mb, c - 1]
            assert e.start_s >= prev.end_s + (p2p_s if prev.rank != e.rank else 0.0) - REL * scale
    for (mb, c), e in bwd.items():
        after = bwd[mb, c + 1] if c + 1 < n else fwd[mb, c]
        delay = p2p_s if after.rank != e.rank and c + 1 < n else 0.0
        assert e.start_s >= after.end_s + delay - REL * scale
        if (mb, c) in wgt:
            assert wgt[mb, c].start_s >= e.end_s - REL * scale


def uniform(schedule: S, pp: int, vpp: int, f: float, b: float, w: float, fb: float | None = None):
    return [ChunkTimes(f, b, w, fb)] * chunks(schedule, pp, vpp)


# --- DeepSeek-V3 Table 2 / DualPipe README --------------------------------------------


@settings(max_examples=60, deadline=None)
@given(
    pp=st.integers(1, 12),
    m=st.integers(1, 40),
    f=st.floats(0.01, 3),
    b=st.floats(0.01, 3),
    w=st.floats(0.0, 3),
)
def test_1f1b_bubble_is_table2(pp, m, f, b, w):
    """(PP-1)(F+B), B = full backward: exact on every rank, any number of micro-batches."""
    t = simulate_pipeline(S.ONE_F_ONE_B, uniform(S.ONE_F_ONE_B, pp, 1, f, b, w), m, pp)
    for p in t.phases:
        assert close(p.bubble_s, (pp - 1) * (f + (b + w)), t.makespan_s)
    assert t.inflight_peak == tuple(min(pp - r, m) for r in range(pp))


@settings(max_examples=80, deadline=None)
@given(
    pp=st.integers(1, 12),
    extra=st.integers(0, 30),
    f=st.floats(0.01, 3),
    b=st.floats(0.01, 3),
    w=st.floats(0, 1),
)
def test_zb1p_bubble_is_table2(pp, extra, f, b, w):
    """(PP-1)(F+B-2W), B = full backward (= (pp-1)(F + B_input - W), ZB-H1 of Qi et al.),
    exact when W <= min(F, B_input) and m >= pp: the W's a rank holds then fit in its
    cool-down gaps. Peak in flight stays at 1F1B's pp - r (counted to B; pp counted to W)."""
    w = w * min(f, b)
    m = pp + extra
    t = simulate_pipeline(S.ZERO_BUBBLE, uniform(S.ZERO_BUBBLE, pp, 1, f, b, w), m, pp)
    for p in t.phases:
        assert close(p.bubble_s, (pp - 1) * (f + (b + w) - 2 * w), t.makespan_s)
    assert t.inflight_peak == tuple(pp - r for r in range(pp))


@settings(max_examples=60, deadline=None)
@given(pp=st.integers(1, 10), m=st.integers(1, 30), f=st.floats(0, 3), b=st.floats(0, 3), w=st.floats(0, 3))
def test_zb1p_table2_is_a_lower_bound_outside_its_regime(pp, m, f, b, w):
    """With W > min(F, B_input) or m < pp the held W's no longer fit the cool-down gaps
    (or there is no steady phase), so the simulated bubble exceeds the formula; it is never
    below it. Tolerance 1e-9 relative."""
    t = simulate_pipeline(S.ZERO_BUBBLE, uniform(S.ZERO_BUBBLE, pp, 1, f, b, w), m, pp)
    for p in t.phases:
        assert p.bubble_s >= (pp - 1) * (f + b - w) - REL * max(1.0, t.makespan_s)


def dualpipe_regime(draw_f: float, w_frac: float, fb_frac: float) -> tuple[float, float, float, float]:
    """Table 2's DualPipe row assumes the README figure's proportions: B_input = F and W <= F,
    with F&B between max(F, B) and F + B (no overlap)."""
    f = draw_f
    b, w = f, w_frac * f
    lo = max(f, b + w)
    return f, b, w, lo + fb_frac * (f + b + w - lo)


@settings(max_examples=60, deadline=None)
@given(
    half=st.integers(1, 8),
    extra=st.integers(0, 20),
    f=st.floats(0.05, 3),
    w_frac=st.floats(0, 1),
    fb_frac=st.floats(0, 1),
)
def test_dualpipe_bubble_is_table2(half, extra, f, w_frac, fb_frac):
    """(PP/2-1)(F&B+B-3W), B = full backward: exact for the two middle half-ranks (the most
    F&B pairs, so the least busy). Half-rank h < PP/2-2 runs (PP/2-2-h) fewer pairs in the same
    makespan, so it idles that many (F+B-F&B) less; the critical (busiest) rank is rank 0.
    In flight: PP+1 on every rank (Table 2)."""
    pp, f, b, w, fb = 2 * half, *dualpipe_regime(f, w_frac, fb_frac)
    m = 2 * (pp + extra)
    t = simulate_pipeline(S.DUALPIPE, uniform(S.DUALPIPE, pp, 1, f, b, w, fb), m, pp)
    table2 = (pp / 2 - 1) * (fb + (b + w) - 3 * w)
    for r, p in enumerate(t.phases):
        h = min(r, pp - 1 - r)
        assert close(p.bubble_s, table2 - max(0, pp // 2 - 2 - h) * (f + b + w - fb), t.makespan_s)
    assert close(max(p.bubble_s for p in t.phases), table2, t.makespan_s)
    assert t.critical_rank == 0
    assert t.inflight_peak == (pp + 1,) * pp


@settings(max_examples=60, deadline=None)
@given(
    pp=st.integers(1, 8),
    extra=st.integers(0, 20),
    f=st.floats(0.05, 3),
    w_frac=st.floats(0, 1),
    fb_frac=st.floats(0, 1),
)
def test_dualpipev_bubble_is_table2(pp, extra, f, w_frac, fb_frac):
    """DualPipeV row (README): the DualPipe formula with PP = 2 pp stages of half size,
    (pp-1)(F&B+B-3W) per chunk; exact for the last two ranks, rank r < pp-2 idles
    (pp-2-r)(F+B-F&B) less. In flight: 2 pp + 1 half-size chunks = PP+1 stages (Table 2)."""
    f, b, w, fb = dualpipe_regime(f, w_frac, fb_frac)
    m = 2 * pp + extra
    t = simulate_pipeline(S.DUALPIPEV, uniform(S.DUALPIPEV, pp, 1, f, b, w, fb), m, pp)
    table2 = (pp - 1) * (fb + (b + w) - 3 * w)
    for r, p in enumerate(t.phases):
        assert close(p.bubble_s, table2 - max(0, pp - 2 - r) * (f + b + w - fb), t.makespan_s)
    assert t.inflight_peak == (2 * pp + 1,) * pp


@settings(max_examples=80, deadline=None)
@given(
    half=st.integers(1, 8),
    extra=st.integers(0, 12),
    f=st.floats(0.05, 3),
    ratio=st.floats(0.3, 3),
    w_frac=st.floats(0, 1),
    fb_frac=st.floats(0, 1),
)
def test_dualpipe_table2_is_a_bound_when_b_differs_from_f(half, extra, f, ratio, w_frac, fb_frac):
    """Outside B_input = F the formula is a bound, not exact, for our replay of dualpipe.py:
    an upper bound of the largest per-rank bubble when B_input >= F (W <= F), a lower bound
    when B_input <= F (W <= B_input). The README figure (F=1, B=2, W=1, F&B=3, i.e.
    B_input = F) sits on the exact line. Tolerance 1e-9 relative."""
    pp, b = 2 * half, f * ratio
    w = w_frac * min(f, b)
    lo = max(f, b + w)
    fb = lo + fb_frac * (f + b + w - lo)
    t = simulate_pipeline(S.DUALPIPE, uniform(S.DUALPIPE, pp, 1, f, b, w, fb), 2 * (pp + extra), pp)
    worst, table2 = max(p.bubble_s for p in t.phases), (pp / 2 - 1) * (fb + (b + w) - 3 * w)
    tol = REL * max(1.0, t.makespan_s)
    if b >= f:
        assert worst <= table2 + tol
    else:
        assert worst >= table2 - tol


def test_dualpipe_readme_example():
    """README figure: 8 ranks, 20 micro-batches, F=1, B=2 (B_input=1, W=1), F&B=3
    (Victarry/PP-Schedule-Visualization#1 reproduces the figure with these values):
    Table 2 gives (8/2-1)(3+2-3) = 6 for the middle ranks."""
    t = simulate_pipeline(S.DUALPIPE, uniform(S.DUALPIPE, 8, 1, 1.0, 1.0, 1.0, 3.0), 20, 8)
    assert [round(p.bubble_s, 9) for p in t.phases] == [6.0] * 8  # F+B-F&B = 0: all ranks alike
    assert t.makespan_s == pytest.approx(20 * (1 + 2) + 6, rel=REL)


def test_dualpipe_phase_counts_follow_dualpipe_py():
    """Per half-rank h of dualpipe.py (seeds-digest §2.4): zero-bubble B's = nB1W1F1 + the
    second half of nB1B0 + nWB0 = (PP/2-h-1) + (h+1) + (PP/2-h-1), each matched by one W, the
    last h+1 of them (nW) ending the program; overlapped pairs = 2 nF0B1F1B0 + nB1F1B0, one
    fewer on the two middle ranks (their first pair runs un-overlapped)."""
    pp, m = 8, 24
    t = simulate_pipeline(S.DUALPIPE, uniform(S.DUALPIPE, pp, 1, 1.0, 1.0, 0.5, 2.0), m, pp)
    big_h, n = pp // 2, m // 2
    for r in range(pp):
        h = min(r, pp - 1 - r)
        kinds = [e.kind for e in t.events if e.rank == r]
        turn = h == big_h - 1
        assert kinds.count(EventKind.FB) == 2 * (n - pp + h + 1) + (big_h - h - 1) - turn
        zb = (big_h - h - 1) + (h + 1) + (big_h - h - 1)  # steps 3, 6 (second half), 7
        assert kinds.count(EventKind.B) == kinds.count(EventKind.W) == zb
        assert kinds[-(h + 1) :] == [EventKind.W] * (h + 1)  # step 8: nW


# --- interleaved 1F1B ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "pp,vpp,m", [(2, 2, 4), (4, 2, 8), (4, 2, 16), (4, 4, 4), (8, 3, 64), (8, 2, 8), (6, 3, 12)]
)
def test_interleaved_divides_the_bubble_by_vpp(pp, vpp, m):
    """Narayanan et al. 2021 §2.2: with v chunks per rank the bubble is (p-1)(F+B)/v, i.e. a
    fraction (p-1)/(v m) of the ideal m (F+B). Same model, chunks of 1/vpp the work. Exact."""
    rng = random.Random(pp * 100 + vpp * 10 + m)
    f, b, w = rng.uniform(0.1, 2), rng.uniform(0.1, 2), rng.uniform(0, 1)
    plain = simulate_pipeline(S.ONE_F_ONE_B, uniform(S.ONE_F_ONE_B, pp, 1, f, b, w), m, pp)
    small = uniform(S.INTERLEAVED, pp, vpp, f / vpp, b / vpp, w / vpp)
    inter = simulate_pipeline(S.INTERLEAVED, small, m, pp, vpp)
    assert close(inter.phases[0].bubble_s, plain.phases[0].bubble_s / vpp, inter.makespan_s)
    assert close(inter.phases[0].bubble_s / (m * (f + b + w)), (pp - 1) / (vpp * m), 1.0)
    # Megatron's warm-up: rank r holds 2 (pp-r-1) + (vpp-1) pp + 1 chunk activations
    # (all m vpp when m == pp).
    want = tuple(m * vpp if m == pp else 2 * (pp - r - 1) + (vpp - 1) * pp + 1 for r in range(pp))
    assert inter.inflight_peak == want


# --- invariants and properties --------------------------------------------------------------


@st.composite
def configs(draw):
    schedule = draw(st.sampled_from(list(S)))
    vpp = 1
    if schedule is S.DUALPIPE:
        pp = 2 * draw(st.integers(1, 5))
        m = 2 * draw(st.integers(pp, pp + 6))
    elif schedule is S.DUALPIPEV:
        pp = draw(st.integers(1, 8))
        m = draw(st.integers(2 * pp, 2 * pp + 9))
    elif schedule is S.INTERLEAVED:
        pp, vpp = draw(st.integers(1, 6)), draw(st.integers(2, 4))
        m = pp * draw(st.integers(1, 4))
    else:
        pp, m = draw(st.integers(1, 8)), draw(st.integers(1, 20))
    n = chunks(schedule, pp, vpp)
    comp = st.floats(0.0, 2.0)
    base = [draw(st.tuples(comp, comp, comp)) for _ in range(n)]
    factor = draw(st.floats(0.4, 1.0))  # overlapped pair / serial, per chunk
    times = [ChunkTimes(f, b, w, factor * (f + b + w)) for f, b, w in base]
    p2p = draw(st.sampled_from([0.0, 0.01, 0.3, 1.5]))
    return schedule, pp, vpp, m, times, p2p


@settings(max_examples=120, deadline=None)
@given(configs())
def test_invariants_hold_for_every_schedule(cfg):
    """Never crashes; phases partition the makespan; makespan >= each rank's busy time;
    events never overlap on a rank; every dependency (+ p2p_s across ranks) is respected;
    each (micro-batch, chunk) has one F and one backward on its partition.py rank."""
    schedule, pp, vpp, m, times, p2p = cfg
    t = simulate_pipeline(schedule, times, m, pp, vpp, p2p)
    check_timeline(t, schedule, times, m, pp, vpp, p2p)
    assert max(p.busy_s for p in t.phases) == pytest.approx(t.phases[t.critical_rank].busy_s, rel=REL)
    assert t.activation_peak([1.0] * len(times)) == tuple(float(x) for x in t.inflight_peak)


@settings(max_examples=120, deadline=None)
@given(configs(), st.integers(0, 10_000), st.floats(0.0, 2.0))
def test_makespan_is_monotone_in_every_time(cfg, pick, delta):
    """Longer F, B, W of any chunk, a larger F&B (overlap factor kept per chunk, so a pair
    of two chunks only grows), or a larger p2p_s never shortens the step: every start is a
    max of ends, every end a start plus a duration (max-plus). Tolerance 1e-9 relative."""
    schedule, pp, vpp, m, times, p2p = cfg
    before = simulate_pipeline(schedule, times, m, pp, vpp, p2p).makespan_s
    n = len(times)
    which, c = pick % 5, pick // 5 % n
    if which == 4:
        p2p += delta
    else:
        t = times[c]
        k = t.overlap_factor
        grown = [t.forward_s, t.backward_input_s, t.backward_weight_s]
        if which < 3:
            grown[which] += delta
        else:
            k += delta
        times = list(times)
        times[c] = ChunkTimes(*grown, k * sum(grown))
    after = simulate_pipeline(schedule, times, m, pp, vpp, p2p).makespan_s
    assert after >= before - REL * max(1.0, before)


def test_p2p_on_one_microbatch_is_a_round_trip():
    """pp = 2, one micro-batch: F0, send, F1, BW1, send, BW0 (exact)."""
    times = [ChunkTimes(1.0, 2.0, 0.5), ChunkTimes(1.5, 1.0, 0.25)]
    t = simulate_pipeline(S.ONE_F_ONE_B, times, 1, 2, p2p_s=0.2)
    assert t.makespan_s == pytest.approx(1.0 + 0.2 + 1.5 + 1.25 + 0.2 + 2.5, rel=REL)


def test_uneven_stages_the_heavy_rank_is_critical():
    """A last stage twice as heavy bounds 1F1B: makespan >= m (F+B+W) of that stage, and
    it is the critical rank."""
    times = [ChunkTimes(1.0, 1.0, 0.5)] * 3 + [ChunkTimes(2.0, 2.0, 1.0)]
    t = simulate_pipeline(S.ONE_F_ONE_B, times, 12, 4)
    assert t.critical_rank == 3 and t.makespan_s >= 12 * 5.0
    check_timeline(t, S.ONE_F_ONE_B, times, 12, 4, 1, 0.0)


def test_activation_peak_weights_chunks():
    """DualPipe rank r holds chunks r and pp-1-r: with weight 1 for chunk 0 only, rank 0's
    (and rank pp-1's) peak counts the forward-direction micro-batches alone."""
    pp = 4
    t = simulate_pipeline(S.DUALPIPE, uniform(S.DUALPIPE, pp, 1, 1.0, 1.0, 0.5, 2.0), 16, pp)
    peak = t.activation_peak([1.0, 0.0, 0.0, 0.0])
    assert peak[1] == peak[2] == 0.0 and 1.0 <= peak[0] <= pp and 1.0 <= peak[3] <= pp
    assert t.activation_peak([1.0] * pp) == (pp + 1.0,) * pp


def test_overlapped_pair_mixes_the_two_chunks():
    """F&B of chunks a (forward) and b (backward): F_a k_a + (B_b + W_b) k_b, k = F&B/(F+B+W)."""
    a, b = ChunkTimes(1.0, 1.0, 0.0, 1.5), ChunkTimes(2.0, 1.0, 1.0, 5.0)
    t = simulate_pipeline(S.DUALPIPE, [a, b], 4, 2)
    pairs = [e for e in t.events if e.kind is EventKind.FB]
    assert pairs
    for e in pairs:
        fa, ba = (a, b) if e.chunk == 0 else (b, a)
        backward = ba.backward_input_s + ba.backward_weight_s
        want = fa.forward_s * fa.overlap_factor + backward * ba.overlap_factor
        assert e.end_s - e.start_s == pytest.approx(want, rel=REL)


# --- rejections ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "schedule,m,pp,vpp,rule",
    [
        (S.DUALPIPE, 12, 3, 1, "even number of stages"),
        (S.DUALPIPE, 17, 4, 1, "even number of micro-batches"),
        (S.DUALPIPE, 6, 4, 1, ">= 2 * pp = 8"),
        (S.DUALPIPEV, 7, 4, 1, ">= 2 * pp = 8"),
        (S.INTERLEAVED, 6, 4, 2, "multiple of pp (4)"),
        (S.INTERLEAVED, 8, 4, 1, "vpp >= 2"),
        (S.ONE_F_ONE_B, 8, 4, 2, "needs the interleaved schedule"),
        (S.ZERO_BUBBLE, 0, 4, 1, ">= 1"),
    ],
)
def test_rejections_name_the_rule(schedule, m, pp, vpp, rule):
    n = max(1, chunks(schedule, pp, vpp))
    with pytest.raises(ValueError) as err:
        simulate_pipeline(schedule, [ChunkTimes(1.0, 1.0, 0.5)] * n, m, pp, vpp)
    assert isinstance(err.value, SpecError) and rule in str(err.value)


def test_bad_times_are_rejected():
    with pytest.raises(SpecError, match="forward_s"):
        ChunkTimes(-1.0, 1.0, 1.0)
    with pytest.raises(SpecError, match="the schedule runs 4 chunks"):
        simulate_pipeline(S.ONE_F_ONE_B, [ChunkTimes(1.0, 1.0, 0.5)] * 3, 8, 4)
    with pytest.raises(SpecError, match="p2p_s"):
        simulate_pipeline(S.ONE_F_ONE_B, [ChunkTimes(1.0, 1.0, 0.5)] * 4, 8, 4, p2p_s=float("nan"))


def test_a_cyclic_order_is_a_deadlock_not_a_hang():
    """Rank 0 wants micro-batch 0's gradient before sending micro-batch 1 forward; rank 1
    wants micro-batch 1's forward before sending micro-batch 0's gradient."""
    layout = Layout(chunk_ranks=((0, 1),), microbatch_direction=(0, 0))
    F, BW = EventKind.F, EventKind.BW
    rank0 = [Op(F, 0, 0), Op(BW, 0, 0), Op(F, 1, 0), Op(BW, 1, 0)]
    rank1 = [Op(F, 0, 1), Op(F, 1, 1), Op(BW, 0, 1), Op(BW, 1, 1)]
    times = [ChunkTimes(1.0, 1.0, 0.5)] * 2
    with pytest.raises(DeadlockError, match="deadlock"):
        simulate_programs([rank0, rank1], times, layout)
    fine = [Op(F, 0, 1), Op(BW, 0, 1), Op(F, 1, 1), Op(BW, 1, 1)]
    t = simulate_programs([rank0, fine], times, layout)
    # F00 [0,1] F01 [1,2] BW01 [2,3.5] BW00 [3.5,5] F10 [5,6] F11 [6,7] BW11 [7,8.5] BW10 [8.5,10]
    assert t.makespan_s == pytest.approx(10.0, rel=REL)
    with pytest.raises(SpecError, match="one F and one backward"):
        simulate_programs([rank0, fine[:-1]], times, layout)
    with pytest.raises(SpecError, match="not placed on this rank"):
        simulate_programs([fine, rank0], times, layout)


def test_same_times_same_timeline_and_events_are_cached():
    times = uniform(S.DUALPIPEV, 4, 1, 1.0, 1.0, 0.5, 2.0)
    a = simulate_pipeline(S.DUALPIPEV, times, 10, 4)
    b = simulate_pipeline(S.DUALPIPEV, [replace(t) for t in times], 10, 4)
    assert a == b and a.events is a.events and a.events == b.events
