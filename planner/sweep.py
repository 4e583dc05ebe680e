"""What-if studies: :func:`sweep` simulates a grid of variations of one base case.

``sweep(base, grid)`` takes a base (model, cluster, plan, workload) and a grid whose keys
are dotted paths into it, and simulates the cartesian product of the grid's values::

    import planner

    base = planner.SweepBase(
        model=planner.load_model("llama3-70b"),
        cluster=planner.load_cluster("dgx-h100", num_gpus=1024),
        plan=planner.Plan(tp=8, pp=4, dp=32, zero_stage=1, sequence_parallel=True),
        workload=planner.Workload(global_batch_size=2048, seq_length=8192),
    )
    df = planner.sweep(
        base,
        {"cluster.num_gpus": [256, 1024, 4096], "plan.pp": [4, 8]},
        derive=lambda p: {"plan.dp": p.cluster.num_gpus // (p.plan.tp * p.plan.pp)},
    )

Paths:

- ``plan.FIELD``, ``workload.FIELD``, ``model.FIELD``, ``cluster.FIELD``: any field of a spec,
  nested as deep as needed (``cluster.node.nic_bandwidth_bytes_per_s``,
  ``model.moe.num_experts``); every level is rebuilt with :func:`planner.revalidate`, so a
  value that breaks a rule makes that point invalid instead of building a bad spec;
- ``cluster.num_gpus``: resizes the cluster in whole nodes (:meth:`ClusterSpec.with_num_gpus`);
- ``model``, ``cluster``, ``plan``, ``workload``: a whole spec (a preset name is loaded;
  a mapping is validated); applied before the dotted paths of the same point.

``derive(point)`` (optional) is called with each point's :class:`SweepBase` after the grid
values are applied and returns the changes that follow from them, as a ``{path: value}``
mapping (its keys become columns too) or a whole new :class:`SweepBase`.

The result has one row per grid point: the grid values (column = path), the derived values,
``num_gpus`` and ``tokens_per_step``, ``status`` (``ok``, ``oom`` or ``invalid``),
``message`` (why a point is invalid), and every term of the prediction: ``step_time_s``,
``tokens_per_s_per_gpu``, ``mfu_causal``, ``mfu_noncausal``, ``memory_peak_gib``,
``memory_capacity_gib``, ``compute_s``, ``recompute_s``, ``num_microbatches``, the
:class:`~planner.costmodel.report.TimeBreakdown` phases (``forward_s`` ... ``optimizer_s``) and
exposed and hidden communication per dimension (``comm_exposed_tp_s``, ``comm_hidden_ep_s``,
...). Invalid points (a :class:`~planner.errors.PlannerError` while building or simulating
the point) hold NaN in the numeric columns; sweep never raises for them.
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from enum import Enum
from typing import Any

from pydantic import BaseModel

from planner.costmodel.report import Dim, StepReport, TimeBreakdown
from planner.costmodel.simulate import simulate
from planner.errors import PlannerError, SpecError
from planner.presets import load_cluster, load_model, revalidate, validate_spec
from planner.specs import ClusterSpec, ModelSpec, Plan, Workload

GIB = 2**30
PROGRESS_AFTER_S = 1.0
"""Seconds a sweep runs before its progress bar appears."""
_clock = time.monotonic
ROOTS = ("model", "cluster", "plan", "workload")
_ROOT_TYPES: dict[str, type[BaseModel]] = {
    "model": ModelSpec,
    "cluster": ClusterSpec,
    "plan": Plan,
    "workload": Workload,
}

BREAKDOWN_COLUMNS = tuple(TimeBreakdown.model_fields)
COMM_COLUMNS = tuple(
    f"comm_{kind}_{dim.value}_s" for kind in ("exposed", "hidden") for dim in Dim
)
METRIC_COLUMNS = (
    "step_time_s",
    "tokens_per_s_per_gpu",
    "mfu_causal",
    "mfu_noncausal",
    "memory_peak_gib",
    "memory_capacity_gib",
    "compute_s",
    "recompute_s",
    "num_microbatches",
    *BREAKDOWN_COLUMNS,
    *COMM_COLUMNS,
)
"""Numeric columns filled from each point's :class:`StepReport` (NaN for invalid points)."""


@dataclass(frozen=True)
class SweepBase:
    """One case to vary: the four inputs of :func:`planner.simulate`."""

    model: ModelSpec
    cluster: ClusterSpec
    plan: Plan
    workload: Workload

    @classmethod
    def from_mapping(cls, base: Mapping[str, Any]) -> SweepBase:
        """From ``{"model": ..., "cluster": ..., "plan": ..., "workload": ...}``; each value a
        spec, a mapping of its fields, or (model, cluster) a preset name or YAML path."""
        missing = [root for root in ROOTS if root not in base]
        unknown = [key for key in base if key not in ROOTS]
        if missing or unknown:
            raise SpecError(
                "base",
                sorted(base),
                f"needs exactly the keys {', '.join(ROOTS)}"
                + (f" (missing: {', '.join(missing)})" if missing else "")
                + (f" (unknown: {', '.join(map(str, unknown))})" if unknown else ""),
            )
        return cls(**{root: _as_spec(root, base[root]) for root in ROOTS})


def _as_spec(root: str, value: Any) -> BaseModel:
    cls = _ROOT_TYPES[root]
    if isinstance(value, cls):
        return value
    if isinstance(value, str) and root in ("model", "cluster"):
        return load_model(value) if root == "model" else load_cluster(value)
    if isinstance(value, Mapping):
        return validate_spec(cls, dict(value), root)
    raise SpecError(root, value, f"must be a {cls.__name__}, a mapping of its fields"
                    + (" or a preset name" if root in ("model", "cluster") else ""))


def _check_path(base: SweepBase, path: str) -> None:
    """Raise a SpecError (up front, not per point) for a path that names no field."""
    parts = path.split(".")
    if parts[0] not in ROOTS:
        raise SpecError("grid", path, f"must start with one of {', '.join(ROOTS)}")
    if path == "cluster.num_gpus":
        return
    spec: Any = getattr(base, parts[0])
    for i, part in enumerate(parts[1:], start=1):
        if not isinstance(spec, BaseModel) or part not in type(spec).model_fields:
            raise SpecError("grid", path, f"{'.'.join(parts[:i])} has no field '{part}'")
        spec = getattr(spec, part)


def _set_in(spec: BaseModel, parts: Sequence[str], value: Any) -> BaseModel:
    """A revalidated copy of ``spec`` with the field at ``parts`` set to ``value``."""
    head, rest = parts[0], parts[1:]
    if not rest:
        if isinstance(value, BaseModel):
            value = value.model_dump()
        return revalidate(spec, **{head: value})
    child = getattr(spec, head)
    if not isinstance(child, BaseModel):
        raise SpecError(head, child, "is not a spec with fields to set")
    return revalidate(spec, **{head: _set_in(child, rest, value).model_dump()})


def apply_change(point: SweepBase, path: str, value: Any) -> SweepBase:
    """``point`` with the value at the dotted ``path`` replaced (see the module docstring)."""
    root, *rest = path.split(".")
    if root not in ROOTS:
        raise SpecError("grid", path, f"must start with one of {', '.join(ROOTS)}")
    if not rest:
        return replace(point, **{root: _as_spec(root, value)})
    if root == "cluster" and rest == ["num_gpus"]:
        return replace(point, cluster=point.cluster.with_num_gpus(int(value)))
    return replace(point, **{root: _set_in(getattr(point, root), rest, value)})


def _show(value: Any) -> Any:
    """A grid value as a table cell (specs by name)."""
    if isinstance(value, BaseModel):
        return getattr(value, "name", type(value).__name__)
    if isinstance(value, Enum):
        return value.value
    return value


def report_row(report: StepReport) -> dict[str, Any]:
    """The columns of one sweep row filled from a :class:`StepReport` (status, message and
    :data:`METRIC_COLUMNS`); ``planner simulate --format csv`` prints the same columns."""
    row: dict[str, Any] = {
        "status": report.status.value,
        "message": "",
        "step_time_s": report.step_time_s,
        "tokens_per_s_per_gpu": report.tokens_per_s_per_gpu,
        "mfu_causal": report.mfu_causal,
        "mfu_noncausal": report.mfu_noncausal,
        "memory_peak_gib": report.memory_peak_bytes / GIB,
        "memory_capacity_gib": report.memory_capacity_bytes / GIB,
        "compute_s": report.compute_s,
        "recompute_s": report.recompute_s,
        "num_microbatches": report.num_microbatches,
    }
    for name in BREAKDOWN_COLUMNS:
        row[name] = getattr(report.breakdown, name)
    for dim in Dim:
        row[f"comm_exposed_{dim.value}_s"] = report.comm_exposed_s.get(dim, 0.0)
        row[f"comm_hidden_{dim.value}_s"] = report.comm_hidden_s.get(dim, 0.0)
    return row


def _invalid(message: str) -> dict[str, Any]:
    return {"status": "invalid", "message": message, **{name: math.nan for name in METRIC_COLUMNS}}


def _change_error(path: str, value: Any, exc: PlannerError) -> str:
    """``path = value: rule`` when the error is about that very field, else path and error."""
    if isinstance(exc, SpecError) and (path == exc.field or path.endswith("." + exc.field)):
        return f"{path} = {_show(value)!r}: {exc.rule}"
    return f"{path} = {_show(value)!r}: {exc}"


def _run_point(
    base: SweepBase,
    keys: Sequence[str],
    values: Sequence[Any],
    derive: Callable[[SweepBase], Mapping[str, Any] | SweepBase | None] | None,
) -> dict[str, Any]:
    row: dict[str, Any] = {key: _show(v) for key, v in zip(keys, values, strict=True)}
    # whole-spec replacements first, so that "cluster.num_gpus" applies to the new cluster;
    # then the top-level fields of one spec together (one revalidation: a schedule and the
    # vpp it needs change at once), then deeper paths one by one.
    order = sorted(range(len(keys)), key=lambda i: "." in keys[i])
    point = base
    joint: dict[str, dict[str, int]] = {}
    for i in order:
        root, _, rest = keys[i].partition(".")
        if rest and "." not in rest and keys[i] != "cluster.num_gpus":
            joint.setdefault(root, {})[rest] = i
            continue
        try:
            point = apply_change(point, keys[i], values[i])
        except PlannerError as exc:
            return {**row, **_invalid(_change_error(keys[i], values[i], exc))}
    for root, fields in joint.items():
        update = {name: (v.model_dump() if isinstance(v := values[i], BaseModel) else v) for name, i in fields.items()}
        try:
            point = replace(point, **{root: revalidate(getattr(point, root), **update)})
        except PlannerError as exc:
            i = next((j for name, j in fields.items() if isinstance(exc, SpecError) and name == exc.field),
                     next(iter(fields.values())))
            return {**row, **_invalid(_change_error(keys[i], values[i], exc))}
    if derive is not None:
        try:
            derived = derive(point)
        except PlannerError as exc:
            return {**row, **_invalid(f"derive: {exc}")}
        if isinstance(derived, SweepBase):
            point = derived
        elif derived:
            for path, value in derived.items():
                row[path] = _show(value)
                try:
                    point = apply_change(point, path, value)
                except PlannerError as exc:
                    return {**row, **_invalid(_change_error(path, value, exc) + " (derived)")}
    row["num_gpus"] = point.cluster.num_gpus
    row["tokens_per_step"] = point.workload.tokens_per_step
    try:
        report = simulate(point.model, point.cluster, point.plan, point.workload)
    except PlannerError as exc:
        return {**row, **_invalid(str(exc))}
    return {**row, **report_row(report)}


def whole_dp(num_gpus: int, tp: int, cp: int, pp: int, hint: str = "") -> int:
    """The data-parallel degree that fills ``num_gpus``: GPUs / (tp * cp * pp), or a
    SpecError (with ``hint`` appended) where no whole dp fits."""
    denom = tp * cp * pp
    if num_gpus % denom:
        raise SpecError("tp * cp * pp", denom, f"must divide the GPUs ({num_gpus}) so that a whole dp fits{hint}")
    return num_gpus // denom


def derive_dp(point: SweepBase) -> dict[str, int]:
    """A ``derive`` for :func:`sweep`: the data-parallel degree that fills the point's GPUs
    (:func:`whole_dp`); a point where no whole dp fits is invalid."""
    p = point.plan
    return {"plan.dp": whole_dp(point.cluster.num_gpus, p.tp, p.cp, p.pp)}


def _points(grid: Mapping[str, Sequence[Any]]) -> Iterable[tuple[Any, ...]]:
    return itertools.product(*(list(values) for values in grid.values()))


def sweep(
    base: SweepBase | Mapping[str, Any],
    grid: Mapping[str, Sequence[Any]],
    *,
    derive: Callable[[SweepBase], Mapping[str, Any] | SweepBase | None] | None = None,
    progress: bool = True,
):
    """Simulate every point of the cartesian product of ``grid`` applied to ``base``.

    Returns a :class:`pandas.DataFrame`, one row per point in grid order (the last key
    varies fastest); see the module docstring for paths, ``derive`` and the columns.
    A progress bar (rich, on stderr) appears when ``progress`` and the sweep has run
    for more than a second. Raises :class:`~planner.errors.SpecError` only for a bad
    base or a grid key that names no field; a bad value makes its row ``invalid``.
    """
    import pandas as pd

    if not isinstance(base, SweepBase):
        base = SweepBase.from_mapping(base)
    for key, values in grid.items():
        _check_path(base, key)
        if isinstance(values, (str, bytes)) or not isinstance(values, Iterable):
            raise SpecError("grid", key, "values must be a list (or other sequence) of values")
    keys = list(grid)
    points = list(_points(grid))
    rows: list[dict[str, Any]] = []
    start = _clock()
    bar = task = None
    try:
        for i, values in enumerate(points):
            rows.append(_run_point(base, keys, values, derive))
            if progress and bar is None and _clock() - start > PROGRESS_AFTER_S and i + 1 < len(points):
                from rich.console import Console
                from rich.progress import Progress

                bar = Progress(console=Console(stderr=True), transient=True)
                bar.start()
                task = bar.add_task("sweep", total=len(points), completed=i + 1)
            elif bar is not None:
                bar.update(task, completed=i + 1)
    finally:
        if bar is not None:
            bar.stop()
    df = pd.DataFrame(rows)
    leading = [c for c in df.columns if c not in ("status", "message", *METRIC_COLUMNS)]
    trailing = [c for c in ("status", *METRIC_COLUMNS, "message") if c in df.columns]
    return df[leading + trailing]


__all__ = ["METRIC_COLUMNS", "SweepBase", "apply_change", "derive_dp", "report_row", "sweep", "whole_dp"]
