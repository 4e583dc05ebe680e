"""Run validation cases through the simulator and score the predictions.

:func:`run_cases` gives one :class:`CaseResult` per row, in row order; one bad row never
stops the others. Status:

- ``ok``: simulated and fits in memory;
- ``oom``: simulated, but some stage needs more memory than the GPU has (the predicted time
  is still written: it is what the plan would take with enough memory);
- ``unsupported``: valid input outside what the planner models
  (:class:`~planner.errors.UnsupportedError`, e.g. a GPU with no cluster preset);
- ``error``: the row breaks a rule (:class:`~planner.errors.SpecError`: an empty required
  cell, tp not dividing heads, ...) or the simulator failed (the exception type and text).

Score: the absolute percentage error ``APE = |predicted - measured| / measured`` of each
``ok`` case with a measured ``step_time_s``. :func:`score` reports the median APE over those
cases and the share of *all* cases with a measured time that are ``ok`` and within 15%
(a case that fails or is OOM counts as a miss), overall, per ``source`` and per
``confidence``.
"""

from __future__ import annotations

import csv
import math
import statistics
from dataclasses import asdict, dataclass
from enum import StrEnum
from pathlib import Path
from typing import Callable, Iterable

from planner.errors import SpecError, UnsupportedError
from planner.presets import revalidate
from planner.specs import Recompute
from planner.validation.cases import CaseInputs, case_inputs

PREDICTION_COLUMNS = ("case_id", "predicted_step_time_s", "status", "message")
PER_CASE_COLUMNS = ("case_id", "source", "measured", "predicted", "ape", "status", "message")
WITHIN = 0.15
"""The tolerance of the "within" share (15%)."""


class CaseStatus(StrEnum):
    OK = "ok"
    OOM = "oom"
    UNSUPPORTED = "unsupported"
    ERROR = "error"


@dataclass(frozen=True)
class CaseResult:
    """One output row of ``planner validate``."""

    case_id: str
    predicted_step_time_s: float | None
    status: CaseStatus
    message: str


Simulate = Callable[..., object]
"""``simulate(model, cluster, plan, workload) -> StepReport``."""


def default_simulate() -> Simulate:
    """The planner's simulator, imported on first use. Without it every case that converts
    is reported ``unsupported`` with the reason, and the output is still written."""
    try:
        from planner.costmodel.simulate import simulate
    except Exception as exc:  # noqa: BLE001  (missing, or a broken import of it)
        reason = UnsupportedError(f"the simulator is not available ({type(exc).__name__}: {exc})")

        def simulate(*_args, **_kwargs):
            raise reason

    return simulate


def run_cases(rows: Iterable[dict[str, str]], simulate: Simulate | None = None,
              progress: Callable[[int, int], None] | None = None) -> list[CaseResult]:
    """Predict every row; a failing row becomes an ``unsupported`` or ``error`` result.
    ``progress(done, total)`` is called after each row."""
    simulate = simulate or default_simulate()
    rows = list(rows)
    results = []
    for row in rows:
        results.append(_run_one(row, simulate))
        if progress is not None:
            progress(len(results), len(rows))
    return results


def _run_one(row: dict[str, str], simulate: Simulate) -> CaseResult:
    case_id = (row.get("case_id") or "").strip()
    notes: list[str] = []
    try:
        inputs = case_inputs(row)
        notes = list(inputs.notes)
        report = _simulate_fitting(inputs, simulate, notes)
    except UnsupportedError as exc:
        return CaseResult(case_id, None, CaseStatus.UNSUPPORTED, _join([*notes, str(exc)]))
    except SpecError as exc:
        return CaseResult(case_id, None, CaseStatus.ERROR, _join([*notes, str(exc)]))
    except Exception as exc:  # noqa: BLE001  (one bad row must not stop the others)
        return CaseResult(case_id, None, CaseStatus.ERROR, _join([*notes, f"{type(exc).__name__}: {exc}"]))
    status = CaseStatus(getattr(report.status, "value", report.status))
    time_s = float(report.step_time_s)
    predicted = time_s if math.isfinite(time_s) and time_s > 0 else None
    if status is CaseStatus.OOM:
        gib = 2**30
        notes.append(
            f"OOM: peak {report.memory_peak_bytes / gib:.1f} GiB > capacity "
            f"{report.memory_capacity_bytes / gib:.1f} GiB"
        )
    return CaseResult(case_id, predicted, status, _join([*notes, *report.messages]))


def _simulate_fitting(inputs: CaseInputs, simulate: Simulate, notes: list[str]):
    """Simulate each recompute candidate in order, ``selective`` as each module set of
    ``inputs.selective_sets`` (:func:`~planner.validation.reconcile.selective_ladder`); keep
    the first that is not OOM (all OOM: the first, reported OOM). Where ``inputs.offload``
    and nothing recomputed is OOM, the fewest offloaded blocks that fit replace that choice
    when faster."""
    recomputes = inputs.recompute_candidates or (inputs.plan.recompute,)
    candidates = [
        (recompute, modules)
        for recompute in recomputes
        for modules in (inputs.selective_sets if recompute is Recompute.SELECTIVE else (None,))
    ]
    first = None
    fitted = False
    for recompute, modules in candidates:
        plan = revalidate(inputs.plan, recompute=recompute, recompute_modules=modules)
        report = simulate(inputs.model, inputs.cluster, plan, inputs.workload)
        first = first or (report, recompute, modules)
        if not _oom(report):
            fitted = True
            break
    else:
        report, recompute, modules = first
    if inputs.offload and _oom(first[0]):
        offloaded = _fewest_offload(inputs, simulate)
        if offloaded is not None and (not fitted or offloaded[0].step_time_s < report.step_time_s):
            alternative = f"{recompute.value} recompute" if fitted else "no recompute that fits"
            notes.append(f"recompute: took none with activation offloading of {offloaded[1]} blocks, the fewest "
                         f"that fit (faster than {alternative}; the run fitted)")
            return offloaded[0]
    if len(candidates) > 1:
        took = recompute.value + (f" ({' '.join(modules)})" if modules else "")
        first_set = inputs.selective_sets[0]
        skipped = "the default modules are" if first_set is None else " ".join(first_set) + " is"
        notes.append(f"recompute: took {took}" + (f" ({skipped} out of memory; the run fitted)"
                                                 if modules and modules != first_set else ""))
    return report


def _oom(report) -> bool:
    return getattr(report.status, "value", report.status) == CaseStatus.OOM


def _fewest_offload(inputs: CaseInputs, simulate: Simulate):
    """(report, blocks) of the fewest offloaded blocks with which the plan, recomputing
    nothing, fits; None if even the most Megatron-Core allows (all blocks but the last)
    do not. Memory falls as blocks are offloaded, so a bisection finds it."""
    def run(blocks: int):
        plan = revalidate(inputs.plan, recompute=Recompute.NONE, recompute_modules=None,
                          cpu_offloading_num_layers=blocks)
        return simulate(inputs.model, inputs.cluster, plan, inputs.workload)

    low, high = 1, inputs.model.num_layers - 1
    if high < low or _oom(best := run(high)):
        return None
    while low < high:
        middle = (low + high) // 2
        report = run(middle)
        if _oom(report):
            low = middle + 1
        else:
            high, best = middle, report
    return best, high


def _join(parts: list[str]) -> str:
    return "; ".join(" ".join(p.split()) for p in parts if p)


# --- scoring --------------------------------------------------------------------------


@dataclass(frozen=True)
class ScoredCase:
    case_id: str
    source: str
    confidence: str
    measured: float | None
    predicted: float | None
    ape: float | None
    """|predicted - measured| / measured for ``ok`` cases with a measured time."""
    status: CaseStatus
    message: str


@dataclass(frozen=True)
class GroupScore:
    cases: int
    ok: int
    measured: int
    """Cases with a measured step time (the denominator of ``within``)."""
    median_ape: float | None
    """Median APE over the ``ok`` cases with a measured time."""
    within: float | None
    """Share of the measured cases that are ``ok`` with APE <= 15%."""


@dataclass(frozen=True)
class Summary:
    overall: GroupScore
    by_source: dict[str, GroupScore]
    by_confidence: dict[str, GroupScore]
    by_status: dict[str, int]
    cases: list[ScoredCase]

    def as_dict(self) -> dict:
        """JSON-ready: everything but the per-case rows."""
        return {
            "within_tolerance": WITHIN,
            "overall": asdict(self.overall),
            "by_status": self.by_status,
            "by_source": {k: asdict(v) for k, v in self.by_source.items()},
            "by_confidence": {k: asdict(v) for k, v in self.by_confidence.items()},
        }


def _measured(row: dict[str, str]) -> float | None:
    try:
        value = float((row.get("step_time_s") or "").strip())
    except ValueError:
        return None
    return value if math.isfinite(value) and value > 0 else None


def score(rows: list[dict[str, str]], results: list[CaseResult]) -> Summary:
    """APE per case and the summary tables (rows and results in the same order)."""
    cases = []
    for row, res in zip(rows, results, strict=True):
        measured = _measured(row)
        ape = None
        if res.status is CaseStatus.OK and measured and res.predicted_step_time_s is not None:
            ape = abs(res.predicted_step_time_s - measured) / measured
        cases.append(
            ScoredCase(
                case_id=res.case_id,
                source=(row.get("source") or "").strip() or "(no source)",
                confidence=(row.get("confidence") or "").strip() or "(none)",
                measured=measured,
                predicted=res.predicted_step_time_s,
                ape=ape,
                status=res.status,
                message=res.message,
            )
        )
    return Summary(
        overall=_group(cases),
        by_source=_grouped(cases, "source"),
        by_confidence=_grouped(cases, "confidence"),
        by_status={s.value: sum(c.status is s for c in cases) for s in CaseStatus},
        cases=cases,
    )


def _group(cases: list[ScoredCase]) -> GroupScore:
    apes = [c.ape for c in cases if c.ape is not None]
    measured = [c for c in cases if c.measured is not None]
    return GroupScore(
        cases=len(cases),
        ok=sum(c.status is CaseStatus.OK for c in cases),
        measured=len(measured),
        median_ape=statistics.median(apes) if apes else None,
        within=sum(c.ape is not None and c.ape <= WITHIN for c in measured) / len(measured) if measured else None,
    )


def _grouped(cases: list[ScoredCase], key: str) -> dict[str, GroupScore]:
    groups: dict[str, list[ScoredCase]] = {}
    for case in cases:
        groups.setdefault(getattr(case, key), []).append(case)
    return {name: _group(members) for name, members in sorted(groups.items())}


# --- output files ---------------------------------------------------------------------


def _num(value: float | None) -> str:
    return "" if value is None else f"{value:.6g}"


def write_predictions(path: str | Path, results: list[CaseResult]) -> None:
    """PRED.csv: ``case_id,predicted_step_time_s,status,message``."""
    with open(path, "w", newline="", encoding="utf-8") as out:
        writer = csv.writer(out)
        writer.writerow(PREDICTION_COLUMNS)
        for r in results:
            writer.writerow([r.case_id, _num(r.predicted_step_time_s), r.status.value, r.message])


def write_per_case(path: str | Path, summary: Summary) -> None:
    """per_case.csv: measured vs predicted and the APE of every case."""
    with open(path, "w", newline="", encoding="utf-8") as out:
        writer = csv.writer(out)
        writer.writerow(PER_CASE_COLUMNS)
        for c in summary.cases:
            writer.writerow(
                [c.case_id, c.source, _num(c.measured), _num(c.predicted), _num(c.ape), c.status.value, c.message]
            )
