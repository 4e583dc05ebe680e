"""The distinct shape keys of one fast-estimate call, found once for all its rows.

:func:`planner.costmodel.fast._evaluate` prices its rows group by group (one group per
(pp, vpp, schedule)): each table of :class:`~planner.costmodel.fast_shapes.Shapes` per
distinct key of the group's rows, then combined with the splits per distinct (key, split).
Finding those keys with one ``unique_rows`` per table and group (13 per group, a few
hundred rows each) was most of the per-group Python overhead. :class:`Keys` finds each
table's keys for every group in one ``unique_rows`` over all rows, with the group as the
leading column: a group's keys are then one contiguous slice, in the order its own
``unique_rows`` gave them (increasing in the key's columns), so every table is priced and
combined in the same order, with the same values.

Also here: :func:`unique_rows` (the distinct rows of integer columns, how every key of the
estimate is found) and :class:`PartRows` (a group's splits as per-row arrays).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from planner.costmodel.fast_refusals import REFUSALS

if TYPE_CHECKING:
    from planner.costmodel.fast_shapes import Shapes

__all__ = ["Keys", "PartRows", "unique_rows"]


def unique_rows(*cols: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distinct rows of the stacked (non-negative integer) columns in increasing
    (lexicographic) order, and per input row the index of its distinct row: one mixed-radix
    key per row, sorted once (``np.unique(key, return_index=True, return_inverse=True)``'s
    result in fewer numpy passes), the distinct rows gathered column by column."""
    radix = [int(c.max(initial=0)) + 1 for c in cols]
    if np.prod(np.array(radix, dtype=float)) >= 2.0**62:
        uniq, inverse = np.unique(np.stack(cols, axis=1), axis=0, return_inverse=True)
        return uniq, inverse.reshape(-1)
    key = np.zeros(len(cols[0]), dtype=np.int64)
    for c, r in zip(cols, radix, strict=True):
        key = key * r + c
    order = np.argsort(key, kind="stable")
    ordered = key[order]
    new = np.empty(len(key), dtype=bool)
    new[:1] = True
    np.not_equal(ordered[1:], ordered[:-1], out=new[1:])
    inverse = np.empty(len(key), dtype=np.int64)
    inverse[order] = np.cumsum(new) - 1
    first = order[new]
    return np.stack([c[first] for c in cols], axis=1), inverse


class PartRows:
    """Per-row arrays of the partitions of some rows (of one (pp, vpp, schedule)): each
    :class:`PartInfo` attribute stacked once per distinct partition ``uniq`` (pids), then
    gathered per row (``inv``: each row's index in ``uniq``)."""

    def __init__(self, shapes: Shapes, uniq: np.ndarray, inv: np.ndarray):
        self.inv = inv
        self.infos = [shapes.part(p) for p in uniq.tolist()]
        self._stacked: dict[str, np.ndarray] = {}

    def stacked(self, name: str) -> np.ndarray:
        """The attribute per distinct partition (in ``uniq``'s order), stacked."""
        hit = self._stacked.get(name)
        if hit is None:
            hit = self._stacked[name] = np.stack([getattr(info, name) for info in self.infos])
        return hit

    def get(self, name: str) -> np.ndarray:
        return self.stacked(name)[self.inv]

    def kinds(self, row: int) -> list:
        return self.infos[self.inv[row]].kinds


class Keys:
    """Per table kind, the distinct keys of every group's rows (rows sorted by group:
    ``cuts[u]:cuts[u + 1]`` are group u's). ``col``: the rows' integer columns, with
    ``sp_eff`` (sequence parallelism where tp > 1), ``shared`` (DualPipe(V) with EP),
    ``full`` (full recomputation), ``m`` (micro-batches) and ``pid`` (split)."""

    def __init__(self, col: dict[str, np.ndarray], group: np.ndarray, groups: int):
        self.col = col
        self.cuts = np.searchsorted(group, np.arange(groups + 1)).tolist()
        self._groups = groups
        self._keys: dict[str, tuple] = {}
        self._free: dict[str, np.ndarray] = {}
        self._priced: dict[str, tuple] = {}
        c = col
        self._add("parts", group, c["pid"])
        parts = self._inv("parts")
        self._add_free("compute", group, c["tp"], c["cp"], c["ep"], c["etp"], c["mb"], c["sp_eff"], c["rec"],
                       c["kernel"], c["shared"])
        self._add("compute_split", group, self._inv("compute"), parts)
        self._add("stage", group, c["tp"], c["cp"], c["ep"], c["etp"], c["dp"], c["order"], c["mb"],
                  c["sp_eff"])
        self._add("stage_split", group, c["full"], self._inv("stage"), parts)
        self._add_free("params", group, c["tp"], c["ep"], c["etp"])
        self._add("params_split", group, self._inv("params"), parts)
        self._add("degrees", group, c["tp"], c["cp"], c["ep"], c["etp"], c["dp"], c["order"])
        self._add("dp", group, self._inv("degrees"), c["zero"], c["pid"])
        self._add("rank_params", group, c["tp"], c["ep"], c["etp"], c["pid"])
        self._add_free("acts", group, c["tp"], c["cp"], c["ep"], c["etp"], c["mb"], c["sp"], c["rec"])
        self._add("m", group, c["m"])
        self._add("acts_split", group, self._inv("acts"), parts, self._inv("m"))

    def _add(self, name: str, group: np.ndarray, *cols: np.ndarray) -> None:
        uniq, inv = unique_rows(group, *cols)
        cuts = np.searchsorted(uniq[:, 0], np.arange(self._groups + 1)).tolist()
        self._keys[name] = (uniq[:, 1:], inv, cuts)

    def _add_free(self, name: str, group: np.ndarray, *cols: np.ndarray) -> None:
        """A kind priced once per call (:meth:`priced`): its local keys are indices into the
        call's distinct keys (in the same increasing order as the columns)."""
        self._free[name], free = unique_rows(*cols)
        self._add(name, group, free)

    def _inv(self, name: str) -> np.ndarray:
        return self._keys[name][1]

    def first(self, name: str, u: int) -> int:
        """The global index of group ``u``'s first ``name`` key."""
        return self._keys[name][2][u]

    def local(self, u: int, name: str, *refs: tuple[int, str]) -> tuple[np.ndarray, np.ndarray]:
        """Group ``u``'s distinct ``name`` keys and each of its rows' key index among them
        (what ``unique_rows`` of the group's columns gives); ``refs``: (column, kind) of
        key columns that hold another kind's key index, made group-local."""
        uniq, inv, cuts = self._keys[name]
        a, b = cuts[u], cuts[u + 1]
        uniq = uniq[a:b]
        if refs:
            uniq = uniq.copy()
            for k, ref in refs:
                uniq[:, k] -= self.first(ref, u)
        return uniq, inv[self.cuts[u]:self.cuts[u + 1]] - a

    def priced(self, name: str, price, shape: tuple) -> tuple[np.ndarray, dict]:
        """(values, {key: refusal}) of ``price(*key)`` (each of ``shape``; zeros where the
        cost model refuses it) for every distinct ``name`` key of the call, priced once
        (memoised per call); :meth:`Refusals.take` gathers a group's."""
        hit = self._priced.get(name)
        if hit is None:
            keys = self._free[name].tolist()
            values = np.zeros((len(keys), *shape))
            errors = {}
            for f, key in enumerate(keys):
                try:
                    values[f] = price(*key)
                except REFUSALS as exc:
                    errors[f] = exc
            hit = self._priced[name] = (values, errors)
        return hit
