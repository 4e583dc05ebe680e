"""A numpy twin of :func:`planner.costmodel.compute.piece_time`, bit-identical, for the search.

The plan search prices each piece's ops (:func:`compute.piece_ops`) under every recompute
mode and SM share it meets: tens of thousands of :func:`compute.piece_time` calls, a Python
loop over ~30 ops each. :class:`OpArrays` turns one ops tuple into arrays once (each op's
numerator, the rate it would run at with all SMs, its kind, launches and host floors);
:meth:`OpArrays.times` then prices one SM share for all three recompute modes at once.

Why bit-identical (tests/test_compute_vec.py checks ``==`` on random shapes): every
per-op value is the same IEEE operations in the same order as compute.py's
(``flops / (peak * eff * share)`` as ``flops / ((peak * eff) * share)``, the left-to-right
product Python evaluates; attention backward ``(ratio * flops) / ((peak * fraction) *
share)``), the launch terms are :func:`compute.with_launches_s`'s sum or max, and each
phase is summed in op order with ``np.add.accumulate`` (a sequential sum, as piece_time's
``+=``; an op outside a sum adds an exact 0.0). Efficiencies come from compute.py's own
:func:`~compute.gemm_rate`, so the model is defined once.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from planner.costmodel import compute as C
from planner.specs.hardware import Dtype, GPUSpec, LaunchMode
from planner.specs.plan import Precision, Recompute


def _sequential_sum(values: np.ndarray) -> np.ndarray:
    """Sums along the last axis in order (x0 + x1 + ...), as a Python ``+=`` loop adds."""
    if values.shape[-1] == 0:
        return np.zeros(values.shape[:-1])
    return np.add.accumulate(values, axis=-1)[..., -1]


def _selective_share(op: C.Op) -> float:
    """What :func:`compute.piece_time` multiplies a selectively recomputed op's forward by."""
    return op.recompute_share if op.recompute_selective else 0.0


@dataclass(frozen=True)
class OpArrays:
    """One piece's ops as arrays (one entry per op, in order)."""

    numerator: np.ndarray
    """FLOPs (GEMM, attention) or bytes (memory-bound)."""
    rate: np.ndarray
    """FLOP/s or bytes/s with all SMs and the sustained fraction left out
    (``peak * eff``; ``bandwidth * hbm_fraction`` for memory-bound ops)."""
    shared: np.ndarray
    """1 where the rate scales with the SM share (GEMM, attention), else 0."""
    attention: np.ndarray
    """1 for the attention core."""
    attention_backward: np.ndarray
    """Attention backward's ``ratio * flops`` (0 elsewhere)."""
    attention_backward_rate: np.ndarray
    """``peak * attention_backward_fraction`` (1 elsewhere)."""
    memory_backward: np.ndarray
    """A memory-bound op's backward bytes (:meth:`compute.Op.backward_traffic`; 0 elsewhere)."""
    weight_gemm: np.ndarray
    """1 for a GEMM against a weight (B and W each cost its FLOPs at :attr:`backward_rate`)."""
    backward_rate: np.ndarray
    """A weight GEMM's dgrad/wgrad rate (:func:`compute.backward_gemm_rate`; :attr:`rate` elsewhere)."""
    launches: np.ndarray
    """(3, ops): launches in forward, B and W (:func:`compute.op_launches`)."""
    host: np.ndarray
    """(3, ops): host floors in forward, B and W (:func:`compute.expert_host_s`; 0 elsewhere)."""
    selective: np.ndarray
    """The share of the op's forward selective recomputation repeats (0: none)."""
    gpu: GPUSpec

    @classmethod
    def of(cls, ops: tuple[C.Op, ...], gpu: GPUSpec, precision: Precision) -> OpArrays:
        eff = C._efficiency(gpu)
        ratio = C.compute_constants()["attention_backward_flops_ratio"]
        memory_rate = gpu.hbm_bandwidth_bytes_per_s * eff.hbm_fraction
        rows = []  # per op: numerator, rate, shared, attention, attention B, its rate, weight GEMM, selective
        backward_rate = []
        memory_backward = np.array([op.backward_traffic() if op.kind is C.OpKind.MEMORY else 0.0 for op in ops],
                                   dtype=float)
        for op in ops:
            if op.kind is C.OpKind.MEMORY:
                rows.append((op.bytes, memory_rate, 0.0, 0.0, 0.0, 1.0, 0.0, _selective_share(op)))
            elif op.kind is C.OpKind.ATTENTION:
                attention_f, attention_b = C.attention_rates(gpu, op)
                rows.append((op.flops, attention_f, 1.0, 1.0, ratio * op.flops, attention_b, 0.0,
                             _selective_share(op)))
            else:
                fp8 = op.fp8 and precision is Precision.FP8
                dtype = Dtype.FP8 if fp8 else Dtype(C._gemm_dtype(precision))
                gemm_rate = C.gemm_rate(gpu, dtype, op.shape)
                rows.append((op.flops, gemm_rate, 1.0, 0.0, 0.0, 1.0, float(op.weight_grad),
                             _selective_share(op)))
                backward_rate.append(C.backward_gemm_rate(gpu, dtype, op.shape))
                continue
            backward_rate.append(rows[-1][1])
        cols = np.array(rows, dtype=float).reshape(len(ops), 8).T
        launches = np.array([C.op_launches(op) for op in ops], dtype=float).reshape(len(ops), 3).T
        host = np.array([C.expert_host_s(op, gpu, precision) for op in ops], dtype=float)
        numerator, rate, shared, attention, attn_b, attn_rate, weight, selective = cols
        return cls(numerator, rate, shared, attention, attn_b, attn_rate, memory_backward,
                   weight, np.array(backward_rate, dtype=float), launches, host.reshape(len(ops), 3).T,
                   selective, gpu)

    def _with_launches(self, device_s: np.ndarray, launches: np.ndarray) -> np.ndarray:
        """:func:`compute.with_launches_s` elementwise."""
        launch = self.gpu.launch
        if launch is None:
            return device_s
        host_s = launches * launch.overhead_s
        out = device_s + host_s if launch.mode is LaunchMode.SYNCHRONOUS else np.maximum(device_s, host_s)
        return np.where(launches == 0, device_s, out)

    def times(self, compute_share: float = 1.0) -> dict[Recompute, tuple[float, float, float, float]]:
        """Per recompute mode, ``compute.piece_time(ops, gpu, precision, mode,
        compute_share)`` as (forward, backward-input, backward-weight, recompute) seconds,
        and under the key ``None`` the attention core's forward seconds (as summed
        :func:`compute.op_forward_s`) in the first place."""
        share = compute_share * C.sustained_fraction(self.gpu)
        shares = np.where(self.shared > 0, share, 1.0)
        t = self.numerator / (self.rate * shares)
        weight_b = self.numerator / (self.backward_rate * shares)  # dgrad, and alike wgrad
        b_device = np.where(self.weight_gemm > 0, weight_b, 2 * t)
        attention_b = self.attention_backward / (self.attention_backward_rate * compute_share)
        b_device = np.where(self.attention > 0, attention_b, b_device)
        # compute.piece_time: a memory-bound op's backward bytes at the HBM rate
        b_device = np.where(self.shared > 0, b_device, self.memory_backward / self.rate)
        w_device = np.where(self.weight_gemm > 0, weight_b, 0.0)
        # compute.piece_time's max(device, host floor), per phase
        t = np.maximum(t, self.host[0])
        b_device, w_device = np.maximum(b_device, self.host[1]), np.maximum(w_device, self.host[2])
        forward = self._with_launches(t, self.launches[0])
        phases = np.stack([
            forward,
            self._with_launches(b_device, self.launches[1]),
            self._with_launches(w_device, self.launches[2]),
            forward * self.selective,  # selective recompute
            forward * self.attention,  # the attention core's forward
        ])
        fwd, b, w, sel, attn = _sequential_sum(phases).tolist()
        full = fwd  # full recompute repeats every op's forward, in the same order
        out: dict = {
            Recompute.NONE: (fwd, b + 0.0, w, 0.0),
            Recompute.SELECTIVE: (fwd, b + sel, w, sel),
            Recompute.FULL: (fwd, b + full, w, full),
        }
        out[None] = (attn, 0.0, 0.0, 0.0)
        return out


__all__ = ["OpArrays"]
