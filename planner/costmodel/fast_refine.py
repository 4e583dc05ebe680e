"""Which plans of a fast-estimate call get the simulator's pipeline replay.

:mod:`~planner.costmodel.fast` gives every plan a lower bound of its step time first; the
exact replay then runs only for plans that could rank among the ``exact_top`` fastest that
fit (:func:`refine`), all groups' selections replayed together
(:func:`planner.costmodel.fast_pipeline.pipelines`).
"""

from __future__ import annotations

import numpy as np

from planner.costmodel import fast_pipeline

__all__ = ["FIRST_ROUND_MARGIN", "refine"]

FIRST_ROUND_MARGIN = 0.04
"""The first replay round takes every plan whose bound is within this fraction above the
``exact_top``-th least bound: about the bound's gap to the replay on the best plans
(benchmarks/bench_fast.py: median 0.1-3 %), so that one round usually finds them all (a
second round makes it safe either way). Measured: 1,807 waves replayed on the dense set
(3,028 with no margin, 2,388 at 7 %), 1,778 on the MoE set (3,302)."""


def refine(out: np.ndarray, groups: list, plan_of: np.ndarray, n: int, fits: np.ndarray, pipeless: np.ndarray,
           exact_top: int | None) -> np.ndarray:
    """Replace the lower bounds in ``out`` (rows: step, peak, bubble) by the simulator's
    replay for every plan that could be among the ``exact_top`` fastest that fit (all plans
    when None); returns which plans were replayed. ``groups``: (rows, replay) per group,
    ``replay`` with ``args(sel)`` and ``finish(sel, ends, busy)`` (``fast._Replay``);
    ``plan_of``: each row's plan (of ``n``); ``fits``, ``pipeless``: per row.

    A plan's bound is the least bound of its splits that fit; one-stage plans' bounds are
    exact. Rounds: replay the plans whose bound is within :data:`FIRST_ROUND_MARGIN` of the
    ``exact_top``-th least, take the k-th least exact step time among replayed plans that
    fit, replay every plan whose bound is not above it, again until none is left. Bounds
    never exceed the replay, so every plan left unreplayed is slower than the k-th: the
    estimate's top-k are the replayed (exact) ones."""
    replayed = pipeless.copy()  # one stage: the bound is the replay
    if exact_top is None:
        todo = ~replayed
    else:
        bound = np.full(n, np.inf)
        np.minimum.at(bound, plan_of[fits], out[fits, 0])
        first = np.sort(bound)[min(exact_top, n) - 1] * (1.0 + FIRST_ROUND_MARGIN)
        todo = (bound[plan_of] <= first) & fits & ~replayed
    while todo.any():
        work = [(rows, replay, np.flatnonzero(todo[rows])) for rows, replay in groups]
        work = [w for w in work if w[2].size]
        # Every group's selection replayed together (fast_pipeline.pipelines).
        found = fast_pipeline.pipelines([replay.args(sel) for _, replay, sel in work])
        for (rows, replay, sel), (ends, busy) in zip(work, found, strict=True):
            out[rows[sel], 0], out[rows[sel], 2] = replay.finish(sel, ends, busy)
        replayed |= todo
        if exact_top is None:
            break
        value = np.full(n, np.inf)
        done = replayed & fits
        np.minimum.at(value, plan_of[done], out[done, 0])
        finite = np.sort(value[np.isfinite(value)])
        kth = finite[exact_top - 1] if len(finite) >= exact_top else np.inf
        todo = fits & ~replayed & (bound[plan_of] <= kth)
    plan_done = np.zeros(n, dtype=bool)
    plan_done[plan_of[replayed]] = True
    plan_done[plan_of[fits & ~replayed]] = False
    return plan_done
