"""What each pipeline rank runs under a schedule, summarised for the search's bounds.

The simulator runs a fixed program per rank (:mod:`planner.costmodel.schedules`; compiled
once per (schedule, micro-batches, pp, vpp) and cached there). An operation starts when
its rank is free and its inputs are there: a forward of (micro-batch mb, chunk c) after the
forward of (mb, c-1), a backward after the backward of (mb, c+1) (the last chunk: after its
own forward), a p2p send between ranks in between. So for any operation j of rank r,

    end_r >= ES_j + (what r runs from j on),

where ES_j is the length of j's chain of inputs (each at least its compute with all SMs,
plus the sends). :class:`Programs` stores, for a few positions j of every rank (its first
operation, and the first forward and first backward of each of its chunks and directions),
both terms as coefficients over chunks, so that a bound is a few dot products:

- ``chain_*``: ES_j = chain_forward @ F + chain_backward_input @ B + chain_backward_weight
  @ W + chain_sends * p2p, with F, B, W each chunk's compute. A chain link that runs inside
  a DualPipe F&B pair counts 0 (the pair's share of it is not bounded below by it).
- ``rest_*``: the operations from j on as ``f, b, w`` and DualPipe ``pair`` counts per chunk:
  an F&B pair of chunks a, b costs ``f_a k_a + (b_b + w_b) k_b`` with ``k_c = pair_c /
  (f_c + b_c + w_c) <= 1``, so a paired forward and a paired backward of one chunk cost
  ``pair_c`` together; an excess paired operation matched with an unpaired one of the other
  kind costs at least ``pair_c`` too (``f k + b + w >= pair``); leftovers count 0.
- ``drain_*``: when the rank's last operation is a backward of (mb, c), the backwards of
  chunks c-1..0 of mb still follow on other ranks (1F1B, interleaved).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

# The simulator's own program builders and chunk placement.
from planner.costmodel.schedules import _BWO, _FO, _layout, raw_programs  # _FO, _BWO: combined 1F1B's halves
from planner.specs.plan import DUAL_SCHEDULES, PipelineSchedule

_F, _B, _W, _BW, _FB = range(5)  # the op codes of planner.costmodel.schedules (EventKind order)
PROGRAM_OPS_LIMIT = 4_000
"""Longer programs (many micro-batches) are summarised in closed form instead
(:func:`_closed_form`): compiling them costs more than the bound saves."""


@dataclass(frozen=True)
class Programs:
    """Coefficient arrays of one (schedule, micro-batches, pp, vpp), over (ranks, positions,
    chunks) unless noted; ``valid`` masks the padding of ranks with fewer positions."""

    chain: np.ndarray
    """(3, ranks, positions, chunks): forwards, backwards-for-inputs and weight gradients
    (fused in a BW) on the chain before each position."""
    chain_sends: np.ndarray
    """(ranks, positions)."""
    rest: np.ndarray
    """(4, ranks, positions, chunks): f, b, w and DualPipe pair counts from each position on."""
    valid: np.ndarray
    """(ranks, positions)."""
    drain: np.ndarray
    """(2, ranks, chunks): backwards-for-inputs and fused weight gradients after the rank's
    last operation."""
    drain_sends: np.ndarray
    """(ranks,)."""

    @property
    def chain_forward(self) -> np.ndarray:
        return self.chain[0]

    @property
    def rest_forward(self) -> np.ndarray:
        return self.rest[0]

    @property
    def rest_backward_input(self) -> np.ndarray:
        return self.rest[1]

    @property
    def rest_backward_weight(self) -> np.ndarray:
        return self.rest[2]

    @property
    def rest_pair(self) -> np.ndarray:
        return self.rest[3]

    @property
    def drain_backward_input(self) -> np.ndarray:
        return self.drain[0]

    @property
    def drain_backward_weight(self) -> np.ndarray:
        return self.drain[1]


def _suffix_counts(ops, chunks: int, positions: list[int]) -> np.ndarray:
    """(positions, 6, chunks): unpaired F, B, W, BW and paired forwards and backwards of
    each chunk in ``ops[j:]`` for every j in ``positions``."""
    arr = ops if isinstance(ops, np.ndarray) else np.asarray(ops, dtype=np.int64).reshape(-1, 5)
    code, chunk, back = arr[:, 0], arr[:, 2], arr[:, 4]
    onehot = np.zeros((len(arr) + 1, 6, chunks), dtype=np.int64)
    rows = np.arange(len(arr))
    pair, half_f, half_b = code == _FB, code == _FO, code == _BWO
    plain = ~(pair | half_f | half_b)
    onehot[rows[plain], code[plain], chunk[plain]] = 1  # F, B, W, BW are codes 0..3
    onehot[rows[pair], 4, chunk[pair]] = 1
    onehot[rows[pair], 5, back[pair]] = 1
    onehot[rows[half_f], 4, chunk[half_f]] = 1  # combined 1F1B: each half its own operation
    onehot[rows[half_b], 5, chunk[half_b]] = 1
    suffix = np.cumsum(onehot[::-1], axis=0)[::-1]  # suffix[j] = counts of ops[j:]
    return suffix[positions]


def _rest(counts: np.ndarray) -> np.ndarray:
    """(4, chunks): f, b, w, pair coefficients from :func:`_suffix_counts` rows (module
    docstring)."""
    n_f, n_b, n_w, n_bw, pf, pb = (row.copy() for row in counts)
    pair = np.minimum(pf, pb)
    for c in np.flatnonzero(pf != pb):
        if pf[c] > pb[c]:  # excess paired forwards, each with an unpaired B + W
            x = min(pf[c] - pb[c], n_bw[c] + min(n_b[c], n_w[c]))
            t = min(x, n_bw[c])
            n_bw[c] -= t
            n_b[c] -= x - t
            n_w[c] -= x - t
            pair[c] += x
        else:  # excess paired backwards, each with an unpaired forward
            x = min(pb[c] - pf[c], n_f[c])
            n_f[c] -= x
            pair[c] += x
    return np.stack([n_f, n_b + n_bw, n_w + n_bw, pair]).astype(float)


@lru_cache(maxsize=512)
def programs(schedule: PipelineSchedule, num_microbatches: int, pp: int, vpp: int, merged: bool = False) -> Programs:
    """The coefficients of one schedule's programs; ``merged``: Megatron-Core's combined 1F1B
    (:func:`planner.costmodel.ep_overlap.applies`), whose steady-state forward and backward
    halves count as paired operations."""
    layout = _layout(schedule, pp, vpp, num_microbatches)
    if 2 * num_microbatches * layout.num_chunks > PROGRAM_OPS_LIMIT:
        return _closed_form(schedule, num_microbatches, pp, layout.chunk_ranks, merged)
    return _from_program(schedule, num_microbatches, pp, vpp, merged)


def _closed_form(schedule: PipelineSchedule, m: int, pp: int, where, merged: bool = False) -> Programs:
    """One position per rank, its first operation, from what every schedule guarantees:
    each of the rank's chunks runs ``runs`` forwards and backwards (m / 2 per DualPipe
    direction); without pairs (1F1B, interleaved, ZB) the first operation is micro-batch
    0's forward of the rank's lowest chunk r, after chunks 0..r-1, and under 1F1B and
    interleaved the last is a full backward (BW) of chunk r, before chunks r-1..0. With
    pairs every operation is counted at ``pair`` (``pair <= f + b + w``), and DualPipe's
    chains are left out (combined 1F1B keeps them: its warm-up forwards and cool-down
    backwards, which the chains and drains run through, are never paired)."""
    n = len(where[0])
    runs = np.zeros((pp, 1, n))
    for d, ranks in enumerate(where):
        for c, r in enumerate(ranks):
            runs[r, 0, c] += m // len(where)
    zeros = np.zeros((pp, 1, n))
    chain, sends = zeros.copy(), np.zeros((pp, 1))
    drain_b, drain_x = np.zeros((pp, n)), np.zeros(pp)
    ranks = where[0]
    dual = schedule in DUAL_SCHEDULES
    if not dual:
        for r in range(pp):  # chunk r is rank r's lowest
            chain[r, 0, :r] = 1.0
            sends[r, 0] = sum(ranks[k] != ranks[k + 1] for k in range(r))
            if schedule is not PipelineSchedule.ZERO_BUBBLE:
                drain_b[r, :r] = 1.0
                drain_x[r] = sum(ranks[k] != ranks[k - 1] for k in range(1, r + 1))
    rest = (zeros, zeros, zeros, runs) if dual or merged else (runs, runs, runs, zeros)
    return Programs(np.stack([chain, zeros, zeros]), sends, np.stack(rest), np.ones((pp, 1), dtype=bool),
                    np.stack([drain_b, drain_b]), drain_x)


def _from_program(schedule: PipelineSchedule, num_microbatches: int, pp: int, vpp: int,
                  merged: bool = False) -> Programs:
    layout = _layout(schedule, pp, vpp, num_microbatches)
    ops_of_rank = raw_programs(schedule, num_microbatches, pp, vpp, merged)
    n = layout.num_chunks
    where = np.asarray(layout.chunk_ranks, dtype=np.int64)  # (directions, chunks)
    direction = np.asarray(layout.microbatch_direction, dtype=np.int64)
    # up[d, k]: chunk k sends to chunk k+1 across ranks in direction d; down[d, k]: k to k-1.
    up = np.zeros(where.shape, dtype=np.int64)
    up[:, :-1] = where[:, :-1] != where[:, 1:]
    down = np.zeros(where.shape, dtype=np.int64)
    down[:, 1:] = where[:, 1:] != where[:, :-1]
    arrays = [np.asarray(ops, dtype=np.int64).reshape(-1, 5) for ops in ops_of_rank]
    # A link that runs paired (FB, or a half FO / BWO) counts 0 on a chain.
    forward_kind = np.full((len(direction), n), -1, dtype=np.int64)  # (mb, chunk): F, FB or FO
    backward_kind = np.full((len(direction), n), -1, dtype=np.int64)  # B, BW, FB or BWO
    for arr in arrays:
        code, mb, c, bmb, bc = arr.T
        f = (code == _F) | (code == _FB) | (code == _FO)
        forward_kind[mb[f], c[f]] = code[f]
        b = (code == _B) | (code == _BW) | (code == _BWO)
        backward_kind[mb[b], c[b]] = code[b]
        backward_kind[bmb[code == _FB], bc[code == _FB]] = _FB

    def forwards(mb: int, lo: int, hi: int, into: np.ndarray) -> int:
        """Forwards of mb on chunks lo..hi-1 (each feeding the next) into ``into[0]``;
        returns the sends between them and chunk hi."""
        into[0, lo:hi] += forward_kind[mb, lo:hi] == _F
        return int(up[direction[mb], lo:hi].sum())

    def backwards(mb: int, lo: int, hi: int, into: np.ndarray) -> int:
        """Backwards of mb on chunks hi-1..lo (lo >= 1; each feeding the one below; B, and W
        where fused) into ``into[1:]``; returns the sends between them and chunk lo-1."""
        kind = backward_kind[mb, lo:hi]
        into[1, lo:hi] += (kind == _B) | (kind == _BW)
        into[2, lo:hi] += kind == _BW
        return int(down[direction[mb], lo:hi].sum())

    rows: list[list[tuple[np.ndarray, int, np.ndarray]]] = []
    for arr in arrays:
        code, mb, c, bmb, bc = arr.T
        # The rank's first forward of each (direction, chunk) and first backward of each,
        # in program order (a pair's forward before its backward).
        fwd = np.flatnonzero((code == _F) | (code == _FB) | (code == _FO))
        bwd = np.flatnonzero((code == _B) | (code == _BW) | (code == _FB) | (code == _BWO))
        paired = code[bwd] == _FB
        bm, b = np.where(paired, bmb[bwd], mb[bwd]), np.where(paired, bc[bwd], c[bwd])
        heads = []
        for kind, at, m_, k_ in (("F", fwd, mb[fwd], c[fwd]), ("B", bwd, bm, b)):
            _, first = np.unique(direction[m_] * n + k_, return_index=True)
            heads += [(int(at[i]), kind, int(m_[i]), int(k_[i])) for i in first]
        heads.sort(key=lambda h: (h[0], h[1] != "F"))
        suffix = _suffix_counts(arr, n, [j for j, *_ in heads])
        mine = []
        for (_, kind, m, k), counts in zip(heads, suffix, strict=True):
            chain = np.zeros((3, n))
            if kind == "F":
                sends = forwards(m, 0, k, chain)
            else:  # forward to the loss chunk (whose backward follows its own forward), back to k
                sends = forwards(m, 0, n - 1, chain) + backwards(m, k + 1, n, chain)
                chain[0, n - 1] += forward_kind[m, n - 1] == _F
            mine.append((chain, sends, _rest(counts)))
        rows.append(mine)
    width = max(len(r) for r in rows)
    shape = (pp, width, n)
    chain, rest = np.zeros((3,) + shape), np.zeros((4,) + shape)
    sends, valid = np.zeros((pp, width)), np.zeros((pp, width), dtype=bool)
    for r, mine in enumerate(rows):
        for j, (ch, x, rs) in enumerate(mine):
            chain[:, r, j], sends[r, j], rest[:, r, j], valid[r, j] = ch, x, rs, True
    drain, drain_x = np.zeros((3, pp, n)), np.zeros(pp)
    for r, ops in enumerate(ops_of_rank):
        code, mb, c, bmb, bc = ops[-1]
        if code == _FB:
            mb, c = bmb, bc
        if code in (_B, _BW, _FB, _BWO) and c > 0:  # the backwards of chunks c-1..0 follow
            drain_x[r] = backwards(mb, 1, c, drain[:, r]) + down[direction[mb], c]
            kind = backward_kind[mb, 0]
            drain[1, r, 0] += kind in (_B, _BW)
            drain[2, r, 0] += kind == _BW
    return Programs(chain, sends, rest, valid, drain[1:], drain_x)


__all__ = ["Programs", "programs"]
