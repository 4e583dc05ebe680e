"""Fit the one calibrated constant of the compute model on validation cases, honestly.

``sustained_kernel_fraction`` (data/costmodel/compute.yaml) is the share of kernel
microbenchmark throughput that kernels sustain inside a training step. :func:`calibrate`
scores a grid of values on a case file and reports two things: the in-sample best value
(what to ship) and the leave-one-source-out (LOSO) error, where each source is predicted
with the value fitted on all the other sources. The LOSO figure is the accuracy claim;
the in-sample one is not.

With ``gpus``, only the cases on those GPU presets are run, and the value tried is each
GPU's own (``GPUEfficiency.sustained_kernel_fraction``, set in its preset) rather than the
shared constant, which every GPU without its own value keeps.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field

from planner.costmodel import compute
from planner.errors import SpecError
from planner.validation.run import WITHIN, CaseStatus, default_simulate, run_cases

DEFAULT_GRID = (0.60, 0.65, 0.70, 0.75, 0.80, 0.85, 0.90, 0.95, 1.00)


@dataclass(frozen=True)
class Calibration:
    best_fraction: float
    """In-sample best value (minimum median APE over all cases)."""
    in_sample_median_ape: float
    loso_median_ape: float
    loso_within: float
    """Share of all cases predicted within 15% by the value fitted without their source."""
    per_source: dict[str, tuple[float, float]] = field(default_factory=dict)
    """source -> (value fitted on the other sources, held-out median APE)."""
    cases: int = 0
    """Rows fitted on (after the ``gpus`` filter)."""


def _predict(rows, fraction: float, progress=None, per_gpu: bool = False) -> list[float | None]:
    if per_gpu:
        simulate = default_simulate()

        def with_fraction(model, cluster, plan, workload):
            gpu = cluster.gpu
            efficiency = gpu.efficiency.model_copy(update={"sustained_kernel_fraction": fraction})
            cluster = cluster.model_copy(update={"gpu": gpu.model_copy(update={"efficiency": efficiency})})
            return simulate(model, cluster, plan, workload)

        results = run_cases(rows, with_fraction, progress=progress)
    else:
        constants = compute.compute_constants()
        saved = constants["sustained_kernel_fraction"]
        constants["sustained_kernel_fraction"] = fraction
        try:
            results = run_cases(rows, progress=progress)
        finally:
            constants["sustained_kernel_fraction"] = saved
    return [r.predicted_step_time_s if r.status is CaseStatus.OK else None for r in results]


def rows_on(rows: list[dict[str, str]], gpus: tuple[str, ...]) -> list[dict[str, str]]:
    """The rows whose ``gpu`` cell names one of ``gpus`` (case-insensitive)."""
    wanted = {g.strip().lower() for g in gpus}
    return [row for row in rows if (row.get("gpu") or "").strip().lower() in wanted]


def _apes(rows, preds) -> list[float]:
    out = []
    for row, pred in zip(rows, preds):
        measured = row.get("step_time_s")
        if pred and measured:
            out.append(abs(pred - float(measured)) / float(measured))
    return out


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else float("inf")


def calibrate(rows: list[dict[str, str]], grid: tuple[float, ...] = DEFAULT_GRID,
              progress: Callable[[int, int], None] | None = None,
              gpus: tuple[str, ...] = ()) -> Calibration:
    """Score ``grid`` on ``rows`` (the schema of data/validation) and cross-validate by source;
    ``progress(done, total)`` after each case of each grid value. ``gpus``: fit those GPU
    presets' own value on their rows only (:func:`rows_on`)."""
    if gpus:
        rows = rows_on(rows, gpus)
        if not rows:
            raise SpecError("--gpu", ",".join(gpus), "no case of the file runs on that GPU")
    total = len(grid) * len(rows)

    def step(k: int):
        return None if progress is None else (lambda done, _: progress(k * len(rows) + done, total))

    table = {value: _predict(rows, value, step(k), per_gpu=bool(gpus)) for k, value in enumerate(grid)}
    best = min(grid, key=lambda v: _median(_apes(rows, table[v])))
    by_source: dict[str, list[int]] = defaultdict(list)
    for i, row in enumerate(rows):
        by_source[row.get("source", "")].append(i)
    loso: list[float | None] = [None] * len(rows)
    per_source = {}
    for source, held in by_source.items():
        held_set = set(held)
        train = [i for i in range(len(rows)) if i not in held_set]
        fit = min(grid, key=lambda v: _median(_apes([rows[i] for i in train], [table[v][i] for i in train])))
        for i in held:
            loso[i] = table[fit][i]
        per_source[source] = (fit, _median(_apes([rows[i] for i in held], [loso[i] for i in held])))
    apes = _apes(rows, loso)
    return Calibration(
        best_fraction=best,
        in_sample_median_ape=_median(_apes(rows, table[best])),
        loso_median_ape=_median(apes),
        loso_within=sum(a <= WITHIN for a in apes) / len(rows) if rows else 0.0,
        per_source=per_source,
        cases=len(rows),
    )
