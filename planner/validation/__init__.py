"""Validation against published training runs (DESIGN.md §8).

:func:`read_cases` reads a case file in the schema of ``shared/validation/README.md``;
:func:`case_inputs` turns one row into validated specs (empty cells take the documented
defaults of :mod:`planner.validation.cases`, recorded as notes); :func:`run_cases`
simulates every row and :func:`score` computes the error tables that
``planner validate`` prints.
"""

from planner.validation.cases import REQUIRED_COLUMNS, CaseInputs, case_inputs, read_cases
from planner.validation.run import (
    PREDICTION_COLUMNS,
    CaseResult,
    CaseStatus,
    GroupScore,
    Summary,
    run_cases,
    score,
    write_per_case,
    write_predictions,
)

__all__ = [
    "PREDICTION_COLUMNS",
    "REQUIRED_COLUMNS",
    "CaseInputs",
    "CaseResult",
    "CaseStatus",
    "GroupScore",
    "Summary",
    "case_inputs",
    "read_cases",
    "run_cases",
    "score",
    "write_per_case",
    "write_predictions",
]
