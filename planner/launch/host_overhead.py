"""Host (framework) time per kernel launch, measured for ``planner calibrate --device``: the
GPU spec's ``launch`` block (:class:`~planner.specs.hardware.LaunchOverhead`).

CPU, synchronous (eager PyTorch finishes each op before the host issues the next, so the
host time adds to every op): the reference runtime that ``planner launch`` runs issues
several framework ops per kernel the compute model counts (an RMSNorm is one memory-bound
op in :mod:`planner.costmodel.compute` and six torch ops plus their autograd nodes here),
so a loop of tiny torch ops would undercount it. The probe is the runtime itself: forward
and backward of the reference model (:mod:`planner.model`) of each preset in
:data:`PROBE_MODELS` on one sequence of :data:`PROBE_SEQ` tokens, where the device work is
small, and

    overhead = (measured - compute-model device time of those pieces) / their launches,

launches counted by :func:`planner.costmodel.compute.op_launches`, device time by the same
compute model with the calibrated throughputs and no launch term. The per-op cost of a
tiny torch op is measured too and written beside it, for comparison.

CUDA, asynchronous (the host queues kernels ahead of the GPU, so an op takes the larger of
its device time and its launch): an in-place add of two one-element tensors, repeated and
synchronised once at the end, per op: the rate at which the host issues one PyTorch op,
about one modelled kernel of a fused framework (Megatron-LM with fused kernels). First run on
an H100 80GB HBM3 on 2026-11-24 (PyTorch 2.11, two processes sharing the one GPU): 9.3 us per
op.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import dataclass

PROBE_MODELS = ("tiny-dense", "tiny-moe-mla")
"""The shipped tiny presets: together every layer kind the runtime has (GQA and MLA
attention, dense FFN, MoE with shared experts, MTP)."""
PROBE_SEQ = 2
"""Tokens of the probe's one sequence (two: the MTP module predicts one token ahead)."""
TINY_OPS = 200
"""In-place adds per timed call of the tiny-op loop."""
REPEATS = 5
"""Timed batches per figure, of which the median is kept (a burst of other load on a shared
machine spoils one batch, not the figure)."""


@dataclass(frozen=True)
class ProbeRow:
    """One probe model: measured forward + backward, the compute model's device time and
    launches for the same pieces."""

    model: str
    measured_s: float
    device_s: float
    launches: int


def measure_rank(cuda: bool, timed: Callable[[Callable[[], None], Callable[[], None]], float]) -> dict:
    """This rank's host timings: ``framework_op_s`` (seconds per tiny torch op) and, on CPU,
    ``launch_probe``: (preset, seconds per forward + backward) per probe model."""
    import torch

    dev = torch.device("cuda", torch.cuda.current_device()) if cuda else torch.device("cpu")
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    x, one = torch.zeros(1, device=dev), torch.ones(1, device=dev)

    def tiny_ops() -> None:
        for _ in range(TINY_OPS):
            x.add_(one)

    def median_s(fn: Callable[[], None]) -> float:
        return statistics.median(timed(fn, sync) for _ in range(REPEATS))

    out: dict = {"framework_op_s": median_s(tiny_ops) / TINY_OPS}
    if not cuda:
        out["launch_probe"] = [(name, median_s(_probe_step(name))) for name in PROBE_MODELS]
    return out


def _probe_step(name: str) -> Callable[[], None]:
    import torch

    from planner.model.deepseek import Transformer
    from planner.presets import load_model

    spec = load_model(name)
    torch.manual_seed(0)
    model = Transformer(spec)
    tokens, targets = torch.randint(0, spec.vocab_size, (2, 1, PROBE_SEQ))

    def step() -> None:
        model.loss(tokens, targets).backward()
        model.zero_grad(set_to_none=True)  # as the optimizer's zero_grad: backward allocates

    return step


def probe_rows(probe: list[tuple[str, float]], gpu) -> list[ProbeRow]:
    """The compute model's device time (``gpu`` without a launch block) and launches of each
    probe model's pieces, one micro-batch of one sequence of PROBE_SEQ tokens."""
    from planner.costmodel import compute as C
    from planner.costmodel.partition import model_pieces
    from planner.presets import load_model
    from planner.specs.plan import Plan, Workload

    plan, workload = Plan(), Workload(global_batch_size=1, seq_length=PROBE_SEQ)
    rows = []
    for name, measured_s in probe:
        spec = load_model(name)
        device_s, launches = 0.0, 0
        for piece in model_pieces(spec):
            ops = C.piece_ops(spec, plan, workload, piece)
            t = C.piece_time(ops, gpu, workload.precision, plan.recompute)
            device_s += t.forward_s + t.backward_input_s + t.backward_weight_s
            launches += sum(sum(C.op_launches(op)) for op in ops)
        rows.append(ProbeRow(name, measured_s, device_s, launches))
    return rows


def fit_overhead_s(rows: list[ProbeRow]) -> float:
    """Host seconds per launch that make the compute model reproduce the probe in total."""
    host_s = sum(r.measured_s - r.device_s for r in rows)
    return max(0.0, host_s / sum(r.launches for r in rows))
