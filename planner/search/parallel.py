"""One search in two processes: the best-first of plan.py over two halves of the plan groups.

The best-first search (:meth:`planner.search.plan._Search._best_first`) takes the groups of
plans in the order of their level-0 bounds. Here that sorted order is dealt out alternately
to this process and to a forked copy of it (same tables and caches, copied on write), and
each runs the best-first over its half on its own core. While they run they share one
thing: each process's k best feasible step times so far, in a shared array, so that each
prunes against the k-th best of both.

Why the result is the one-process result: the k-th smallest of the union of what the two
have simulated only falls as they go on, so it is never below the k-th best of the final
merged list; a plan pruned because its lower bound is above it is strictly slower than the
final k-th plan and cannot be in the merged top k (ties are never pruned). The merged list
is ranked by (step time, candidate index) as always. Only the counts of how the candidates
were decided (pruned per rule, simulated) depend on timing.

Torn reads of the shared array are harmless: a process adds one plan at a time to its
sorted list, i.e. inserts one time, and writes its slots in increasing index order; a slot
only ever falls, and a read in the middle of a write sees the old list with the new time
inserted and the old largest ones not yet shifted in: distinct plans' times, so the k-th
smallest of what is read is at least the true current one.

Two processes are used where ``os.fork`` exists, at least two CPUs are usable and at least
:data:`MIN_CANDIDATES` candidates survive level 0 (below that the fork costs more than it
saves); ``workers=1`` forces one process, ``workers=2`` two.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import sys
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

MIN_CANDIDATES = 20_000
"""Fewest candidates left after level 0 for which a search forks a second process."""


@dataclass
class Half:
    """What the forked process found, sent back to the parent."""

    feasible: list = field(default_factory=list)  # (step, candidate, report)
    simulated: int = 0
    rejected: dict = field(default_factory=dict)  # candidate -> rule
    shortfall: object = None
    pruned: Counter = field(default_factory=Counter)
    bounds: dict = field(default_factory=dict)  # candidate -> (time bound, memory bound), feasible ones


def usable_cpus() -> int:
    """CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def workers_for(requested: int | None, survivors: int) -> int:
    """How many processes to use: ``requested`` (1 or 2; 2 falls back to 1 without
    ``os.fork``), or by default 2 where it pays (module docstring)."""
    if requested is not None and requested not in (1, 2):
        raise ValueError(f"workers = {requested}: must be 1 or 2")
    if not hasattr(os, "fork"):
        return 1
    if requested is not None:
        return requested
    # By default only on Linux: macOS system libraries are not fork-safe (CPython itself
    # defaults to spawn there).
    linux = sys.platform.startswith("linux")
    return 2 if linux and usable_cpus() >= 2 and survivors >= MIN_CANDIDATES else 1


def best_first(search, survivors: np.ndarray, pruned: Counter, workers: int | None) -> None:
    """``search._best_first(survivors, pruned)``, in one process or two (module docstring)."""
    if workers_for(workers, len(survivors)) == 1:
        search._best_first(survivors, pruned)
        return
    ctx = multiprocessing.get_context("fork")
    shared = np.frombuffer(ctx.RawArray("d", 2 * search.top_k + 1), dtype=np.float64)
    shared[:-1] = np.inf  # the k best step times of each process
    shared[-1] = 0.0  # candidates the child has decided (for the progress bar)
    receive, send = ctx.Pipe(duplex=False)
    pid = os.fork()
    if pid == 0:  # pragma: no cover  (the child; coverage is not collected there)
        receive.close()
        _child(search, survivors, shared, send)
    send.close()
    finished = False
    half: object = None
    try:
        search.share(shared, slot=0)
        search._best_first(survivors, pruned, part=(0, 2))
        try:
            half = receive.recv()
        except EOFError:  # the child died without a word (killed, out of memory)
            half = None
        finished = True
    finally:
        receive.close()
        if not finished:
            os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        search.share(None, slot=0)
    if isinstance(half, BaseException):
        raise half
    if half is None:  # do the child's half here, against this process's k best
        search._best_first(survivors, pruned, part=(1, 2))
        return
    _merge(search, half, pruned)


def _child(search, survivors: np.ndarray, shared: np.ndarray, send) -> None:  # pragma: no cover
    code = 0
    try:
        search.share(shared, slot=1)
        half = Half(pruned=Counter())
        search._best_first(survivors, half.pruned, part=(1, 2))
        half.feasible, half.simulated = search.feasible, search.simulated
        half.rejected, half.shortfall = search.rejected, search.shortfall
        half.bounds = {i: (float(search.bound[i]), float(search.memory[i])) for _, i, _ in search.feasible}
        payload: object = half
    except BaseException as exc:  # noqa: BLE001  (sent to the parent, which raises it)
        payload = exc
    try:
        send.send(payload)
    except Exception as exc:  # noqa: BLE001  (e.g. an exception that does not pickle)
        try:
            send.send(RuntimeError(f"search worker failed: {type(exc).__name__}: {exc}; {payload!r}"))
        except Exception:  # noqa: BLE001
            code = 1
    finally:
        os._exit(code)


def _merge(search, half: Half, pruned: Counter) -> None:
    search.feasible.extend(half.feasible)
    search.feasible.sort(key=lambda x: (x[0], x[1]))
    search.simulated += half.simulated
    search.rejected.update(half.rejected)
    if half.shortfall is not None and half.shortfall.bytes < search.shortfall.bytes:
        search.shortfall = half.shortfall
    pruned.update(half.pruned)
    for i, (bound, memory) in half.bounds.items():
        search.bound[i], search.memory[i] = bound, memory


__all__ = ["Half", "MIN_CANDIDATES", "best_first", "usable_cpus", "workers_for"]
