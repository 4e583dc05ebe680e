"""How close the simulator's step times have come to published measurements, by GPU,
architecture and precision, so that a prediction can say how far to trust it.

``data/validation/accuracy.yaml`` summarises ``planner validate`` on the case files shipped in
``data/validation/`` (the public cases and the extra ones): per (GPU, dense/MoE, precision),
per GPU and overall, the number of published runs, the median absolute percentage error of
those that fit and the share within 15% (a run the model reports out of memory counts as a
miss, as in ``planner validate``). :func:`accuracy_for` picks the most specific of those
groups with at least :data:`MIN_RUNS` runs for a (cluster, model, workload); ``planner
simulate`` and ``planner plan`` quote it beside the prediction.

The file is generated, never edited: ``python -m planner.validation.accuracy`` rewrites it
after a change of the model (tests/test_accuracy.py fails while it is stale). The figures
are in-sample for the modelling choices made while looking at these cases; the one fitted
constant's leave-one-source-out error is ``planner calibrate --from-cases``'.
"""

from __future__ import annotations

import statistics
import sys
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import yaml

from planner.presets import data_root
from planner.specs import ClusterSpec, ModelSpec, Workload
from planner.validation.cases import case_inputs, read_cases
from planner.validation.run import WITHIN, CaseStatus, run_cases, score

CASE_FILES = ("public_cases.csv", "extra_cases.csv")
"""The case files of data/validation/ the table summarises."""
MIN_RUNS = 3
"""Fewest runs a group needs before :func:`accuracy_for` quotes it."""


@dataclass(frozen=True)
class Accuracy:
    """The published runs of one group and how close the model came to them."""

    group: str
    """What the runs share, e.g. ``h100-sxm-80gb, moe, bf16``, ``b200`` or ``all``."""
    runs: int
    median_ape: float | None
    """Median |predicted - measured| / measured over the runs that fit."""
    within: float
    """Share of the runs predicted (fitting) within 15%."""

    def line(self) -> str:
        median = "n/a" if self.median_ape is None else f"{self.median_ape:.1%}"
        return (f"{self.runs} published runs ({self.group}): median |error| {median}, "
                f"{round(self.within * self.runs)} of {self.runs} within {WITHIN:.0%} "
                f"(data/validation/accuracy.yaml)")


def _groups(cluster: ClusterSpec, model: ModelSpec, workload: Workload) -> tuple[str, str]:
    """The two groups a run belongs to: (GPU, dense/MoE, precision) and the GPU alone."""
    gpu = cluster.gpu.name
    arch = "moe" if model.moe is not None else "dense"
    return f"{gpu}, {arch}, {workload.precision.value}", gpu


def build_table(folder: Path | None = None) -> dict:
    """The table of :data:`CASE_FILES` in ``folder`` (default: the shipped data), as written
    to accuracy.yaml: {"files": [...], "groups": {group: {runs, median_ape, within}}}."""
    folder = folder or data_root() / "validation"
    members: dict[str, list[tuple[float | None, bool]]] = {}
    for name in CASE_FILES:
        rows = read_cases(folder / name)
        summary = score(rows, run_cases(rows))
        for row, case in zip(rows, summary.cases, strict=True):
            if case.measured is None or case.status in (CaseStatus.ERROR, CaseStatus.UNSUPPORTED):
                continue
            inputs = case_inputs(row)
            outcome = (case.ape, case.ape is not None and case.ape <= WITHIN)
            for group in (*_groups(inputs.cluster, inputs.model, inputs.workload), "all"):
                members.setdefault(group, []).append(outcome)
    groups = {}
    for group, outcomes in sorted(members.items()):
        apes = [ape for ape, _ in outcomes if ape is not None]
        groups[group] = {
            "runs": len(outcomes),
            "median_ape": round(statistics.median(apes), 4) if apes else None,
            "within": round(sum(hit for _, hit in outcomes) / len(outcomes), 4),
        }
    return {"files": [f"data/validation/{name}" for name in CASE_FILES], "groups": groups}


@cache
def _table() -> dict:
    path = data_root() / "validation" / "accuracy.yaml"
    return yaml.safe_load(path.read_text()) if path.exists() else {"groups": {}}


def accuracy_for(cluster: ClusterSpec, model: ModelSpec, workload: Workload) -> Accuracy | None:
    """The most specific group of the shipped table with at least :data:`MIN_RUNS` runs:
    same GPU, architecture and precision; else same GPU (whatever its count); else None (a
    GPU no published run used says nothing of the others)."""
    groups = _table()["groups"]
    specific, general = _groups(cluster, model, workload)
    for group in (specific, general):
        entry = groups.get(group)
        if entry is not None and (entry["runs"] >= MIN_RUNS or group == general):
            return Accuracy(group, entry["runs"], entry["median_ape"], entry["within"])
    return None


def main() -> None:
    """Rewrite data/validation/accuracy.yaml from the shipped case files."""
    table = build_table()
    header = ("# Generated by `python -m planner.validation.accuracy` (planner/validation/accuracy.py):\n"
              "# planner validate on the files below, grouped by GPU, dense/MoE and precision. Do not edit.\n")
    path = data_root() / "validation" / "accuracy.yaml"
    path.write_text(header + yaml.safe_dump(table, sort_keys=False))
    print(f"wrote {path} ({table['groups']['all']['runs']} runs)", file=sys.stderr)


if __name__ == "__main__":
    main()


__all__ = ["Accuracy", "CASE_FILES", "MIN_RUNS", "accuracy_for", "build_table", "main"]
