"""The validator's choice of TorchTitan's op-level SAC (``op_sac``) for a TorchTitan row whose
recompute is ``selective`` (reconcile.selective_ladder), before Megatron's module sets."""

from __future__ import annotations

import csv

from planner import load_model
from planner.presets import revalidate
from planner.specs import Plan, RecomputeModule
from planner.validation.cases import case_inputs
from planner.validation.reconcile import selective_ladder


def _extra_row(case_id: str) -> dict:
    with open("data/validation/extra_cases.csv") as fh:
        return next(r for r in csv.DictReader(fh) if r["case_id"] == case_id)


def test_validator_tries_op_sac_first_on_torchtitan_selective_rows() -> None:
    row = _extra_row("torchtitan-h100-llama31-8b-bf16-8gpu")
    inputs = case_inputs(row)
    assert inputs.selective_sets == ((RecomputeModule.OP_SAC,), None,
                                     (RecomputeModule.LAYERNORM, RecomputeModule.MLP))
    assert any("op-level SAC" in note for note in inputs.notes)
    # The same row without TorchTitan in its source and notes: Megatron's sets.
    other = case_inputs({**row, "source": "some Megatron run", "notes": ""})
    assert other.selective_sets == selective_ladder(other.model)
    assert not any("op-level SAC" in note for note in other.notes)


def test_models_op_sac_does_not_price_keep_megatrons_sets() -> None:
    plan = Plan(recompute="selective")
    for name in ("mixtral-8x7b", "deepseek-v2-lite"):
        model = load_model(name)
        assert selective_ladder(model, plan, torchtitan=True) == selective_ladder(model)
    dense = load_model("llama3-8b")
    unfused = revalidate(plan, attention_kernel="unfused")
    assert selective_ladder(dense, unfused, torchtitan=True) == selective_ladder(dense)
    assert selective_ladder(dense, plan, torchtitan=True)[0] == (RecomputeModule.OP_SAC,)
