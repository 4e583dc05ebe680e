"""Plans the cost model refuses, in the fast estimate: memo entries for refused shapes and
the per-call record of which plans they refuse.

``simulate`` raises :data:`REFUSALS` for some valid plans it does not price (e.g. an EP
group over more nodes than the node-limited routing serves: ``hwmodels.alltoall``);
planner/search/plan.py counts such plans as ``costmodel.<field>``. The fast estimate marks
them instead of raising: a plan is refused when pricing any of its shapes raises. A refused
shape is memoised like a price (:class:`Refused`), so it is tried once and every plan of that
shape follows it.
"""

from __future__ import annotations

import numpy as np

from planner.errors import PlannerError, SpecError, UnsupportedError

__all__ = ["REFUSALS", "Refusals", "Refused", "attempt", "value"]

REFUSALS = (SpecError, UnsupportedError)
"""What the cost model raises for a valid plan it does not price."""


class Refused:
    """A memo entry for a shape the cost model refused: its error."""

    __slots__ = ("error",)

    def __init__(self, error: Exception):
        self.error = error


def attempt(price, *args):
    """``price(*args)``, or :class:`Refused` when the cost model refuses it."""
    try:
        return price(*args)
    except REFUSALS as exc:
        return Refused(exc)


def value(hit):
    """A memo entry's value; a refusal's error raised again (without its old traceback)."""
    if type(hit) is Refused:
        raise hit.error.with_traceback(None)
    return hit


class Refusals:
    """Which plans of one call the cost model refuses: ``code`` per plan (-1: priced, else
    an index into ``errors``, the distinct errors by type and message)."""

    def __init__(self, n: int):
        self.code = np.full(n, -1, dtype=np.int64)
        self.errors: list[PlannerError] = []
        self._ids: dict[tuple, int] = {}

    def mark(self, plans: np.ndarray, error: PlannerError) -> None:
        key = (type(error), str(error))
        k = self._ids.get(key)
        if k is None:
            k = self._ids[key] = len(self.errors)
            self.errors.append(error)
        plans = plans[self.code[plans] < 0]  # the first refusal found stays
        self.code[plans] = k

    def price(self, fn, keys: list, inv: np.ndarray, plans: np.ndarray, shape: tuple) -> np.ndarray:
        """``np.stack([fn(*key) for key in keys])`` (each of ``shape``); a refused key gets
        zeros and marks ``plans[inv == u]`` (``inv``: each plan row's key)."""
        out = np.zeros((len(keys), *shape))
        for u, key in enumerate(keys):
            try:
                out[u] = fn(*key)
            except REFUSALS as exc:
                self.mark(plans[inv == u], exc)
        return out

    def take(self, priced: tuple[np.ndarray, dict], ids: np.ndarray, inv: np.ndarray,
             plans: np.ndarray) -> np.ndarray:
        """:meth:`price` from values priced beforehand (``priced``: values and {id: refusal},
        :meth:`planner.costmodel.fast_keys.Keys.priced`): the rows ``ids`` (the keys, in
        :meth:`price`'s order), marking ``plans[inv == k]`` for each refused key k in turn."""
        values, errors = priced
        if errors:
            for k, f in enumerate(ids.tolist()):
                if f in errors:
                    self.mark(plans[inv == k], errors[f])
        return values[ids]
