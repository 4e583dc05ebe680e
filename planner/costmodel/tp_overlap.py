"""Transformer Engine's TP communication overlap (``Workload.tp_comm_overlap``): what the
sequence-parallel all-gathers and reduce-scatters of a transformer block cost when each runs
under the Linear GEMM next to it (TE userbuffers; NeMo's and Megatron-Bridge's
``tp_comm_overlap``, Megatron-LM's ``--tp-comm-overlap``).

For a collective of ``C`` seconds alone (:class:`~planner.costmodel.comm.StageComm`'s price)
and the GEMM it meets, ``G`` seconds as the compute model prices it (every SM) and ``G'`` as
the overlap runs it, on the SMs the communication kernels leave (``G / (1 - num_sm /
num_sms)``), the pair adds to the compute already counted

- ring exchange: ``(G' - G) + max(0, C - G' (tp-1)/tp)``: the local chunk computes first and
  each of the tp-1 others arrives while the one before it computes;
- pipeline: ``(G' - G) + C/n + max(0, (C - G') (n-1)/n)``: each chunk's reduce-scatter runs
  under the next chunk's GEMM, the last one's after it (n = ``num_splits``);
- bulk: ``(G' - G) + max(0, C - G')``: the whole collective under the whole GEMM;

and hides the rest of ``C``. Which GEMM each collective meets, the method and the SMs are
data/costmodel/tp_overlap.yaml (NeMo's userbuffers configurations). The GEMMs are priced at
every SM: under DualPipe with EP, whose compute runs on fewer (``compute_share``), the
overlap is priced as if it had them all (a schedule that TE userbuffers do not run with).

Only Transformer Engine Linear layers overlap: attention's QKV and output projection and a
dense MLP's FC1 and FC2. A MoE block's experts (TE GroupedLinear) do not, so it hides its
attention half's collectives and exposes its MoE half's; an MLA block (no column-parallel
QKV Linear: its down-projections are replicated) exposes its attention input's all-gather.

The GEMM's chunks (tp of m/tp rows, or ``num_splits``) are priced as the whole GEMM: the
compute model's per-dimension efficiency curve (fitted to whole GEMMs) would charge a
512-row FP8 chunk a third more, which no measurement of the overlapped kernels supports.

Not monotone: a collective much shorter than the slowdown of its GEMM (a pipeline or bulk
slot takes ``num_sm`` SMs for the whole GEMM) costs more overlapped than exposed: a pipeline
slot on 24 of 132 SMs (G' = 1.22 G) loses once ``C`` is below 0.29 ``G`` (0.22 G > 3C/4); a
ring exchange (no SMs) never loses. With ``C`` near ``G`` or above, every slot saves.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from enum import StrEnum

import yaml

from planner.costmodel import compute as C
from planner.costmodel.ops import Op, OpKind, Shard, attention_ops, dense_ffn_ops
from planner.costmodel.partition import Piece
from planner.presets import data_root
from planner.specs.hardware import GPUSpec
from planner.specs.model import ModelSpec
from planner.specs.plan import Plan, Precision, Recompute, Workload


class Method(StrEnum):
    """How a userbuffers slot overlaps its collective (TE ``method``)."""

    RING_EXCHANGE = "ring_exchange"
    PIPELINE = "pipeline"
    BULK = "bulk"


@dataclass(frozen=True)
class Slot:
    method: Method
    num_sm: int
    """SMs the communication kernels take from the GEMM."""


@functools.cache
def overlap_constants() -> tuple[int, dict[str, Slot]]:
    """(num_splits, slots by name) of data/costmodel/tp_overlap.yaml."""
    raw = yaml.safe_load((data_root() / "costmodel" / "tp_overlap.yaml").read_text())
    slots = {name: Slot(Method(v["method"]), int(v["num_sm"])) for name, v in raw["slots"].items()}
    return int(raw["num_splits"]), slots


def applies(plan: Plan, workload: Workload) -> bool:
    """The workload asks for the overlap and the plan can run it (sequence parallel, tp > 1)."""
    return workload.tp_comm_overlap and plan.sequence_parallel and plan.tp > 1


def overlapped_s(method: Method, comm_s: float, gemm_s: float, slowed_gemm_s: float,
                 chunks: int) -> tuple[float, float]:
    """(seconds added to the compute already counted, seconds of the collective hidden) of a
    collective of ``comm_s`` run under a GEMM of ``gemm_s`` that the overlap turns into
    ``slowed_gemm_s`` (cut into ``chunks``, on fewer SMs); see the module docstring."""
    if method is Method.BULK:
        exposed = max(0.0, comm_s - slowed_gemm_s)
    elif method is Method.RING_EXCHANGE:
        exposed = max(0.0, comm_s - slowed_gemm_s * (chunks - 1) / chunks)
    else:
        exposed = comm_s / chunks + max(0.0, (comm_s - slowed_gemm_s) * (chunks - 1) / chunks)
    return slowed_gemm_s - gemm_s + exposed, comm_s - exposed


_FORWARD, _DGRAD, _WGRAD = 0, 1, 2
_AG, _RS = "all-gather", "reduce-scatter"
# (slot, GEMM op names (the first present), GEMM phase, collective, forward (0) / backward (1) TP)
_ATTENTION = (
    ("qkv_fprop", ("qkv",), _FORWARD, _AG, 0),
    ("proj_fprop", ("out_proj",), _FORWARD, _RS, 0),
    ("proj_dgrad", ("out_proj",), _DGRAD, _AG, 1),
    ("qkv_wgrad", ("qkv",), _WGRAD, _RS, 1),
)
_MLP = (
    ("fc1_fprop", ("ffn_up_gate", "ffn_up"), _FORWARD, _AG, 0),
    ("fc2_fprop", ("ffn_down",), _FORWARD, _RS, 0),
    ("fc2_dgrad", ("ffn_down",), _DGRAD, _AG, 1),
    ("fc1_wgrad", ("ffn_up_gate", "ffn_up"), _WGRAD, _RS, 1),
)


@dataclass(frozen=True)
class BlockTP:
    """TP seconds of one transformer block for one micro-batch under the overlap."""

    forward_s: float
    """Added to the forward: exposed collectives and the overlapped GEMMs' slowdown."""
    backward_s: float
    forward_hidden_s: float
    backward_hidden_s: float


def gemm_phase_s(op: Op, gpu: GPUSpec, precision: Precision, phase: int, share: float = 1.0) -> float:
    """Seconds of ``op``'s forward, dgrad or wgrad GEMM (``phase`` 0, 1, 2) on ``share`` of the
    SMs (:func:`planner.costmodel.compute.piece_time`)."""
    t = C.piece_time((op,), gpu, precision, Recompute.NONE, share)
    return (t.forward_s, t.backward_input_s, t.backward_weight_s)[phase]


def block_tp(model: ModelSpec, plan: Plan, workload: Workload, gpu: GPUSpec, piece: Piece,
             all_gather_s: float, reduce_scatter_s: float) -> BlockTP:
    """TP seconds of a block ``piece`` (dense, MoE, or an MTP module's block) whose every
    sequence-parallel collective takes ``all_gather_s`` or ``reduce_scatter_s`` alone: 2
    all-gathers and 2 reduce-scatters per half in forward and in backward, overlapped where
    a TE Linear meets them (module docstring)."""
    s = Shard.of(plan, workload)
    ops = attention_ops(model, plan, s, workload.precision)
    mlp = piece is Piece.DENSE or (piece is Piece.MTP and model.moe is None)
    if mlp:
        ops += dense_ffn_ops(model, plan, s, workload.precision)
    gemms = {op.name: op for op in ops if op.kind is OpKind.GEMM}
    num_splits, slots = overlap_constants()
    added, hidden = [0.0, 0.0], [0.0, 0.0]
    for name, op_names, phase, collective, tp_phase in _ATTENTION + (_MLP if mlp else ()):
        comm_s = all_gather_s if collective == _AG else reduce_scatter_s
        op = next((gemms[n] for n in op_names if n in gemms), None)
        if op is None:  # no TE Linear meets it (MLA's attention input)
            added[tp_phase] += comm_s
            continue
        slot = slots[name]
        chunks = {Method.RING_EXCHANGE: plan.tp, Method.PIPELINE: num_splits, Method.BULK: 1}[slot.method]
        gemm_s = gemm_phase_s(op, gpu, workload.precision, phase)
        slowed_s = gemm_phase_s(op, gpu, workload.precision, phase, 1.0 - slot.num_sm / gpu.num_sms)
        cost, hid = overlapped_s(slot.method, comm_s, gemm_s, slowed_s, chunks)
        added[tp_phase] += cost
        hidden[tp_phase] += hid
    if not mlp:  # the MoE half: an all-gather before and a reduce-scatter after, exposed
        added[0] += all_gather_s + reduce_scatter_s
        added[1] += all_gather_s + reduce_scatter_s
    return BlockTP(added[0], added[1], hidden[0], hidden[1])


__all__ = ["BlockTP", "Method", "Slot", "applies", "block_tp", "gemm_phase_s", "overlap_constants",
           "overlapped_s"]
