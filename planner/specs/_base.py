"""Base class for every spec, and the one way specs report a broken rule.

Specs are pydantic v2 models that are frozen (what-if studies copy them with
``model_copy(update=...)``), reject unknown fields, and validate on construction.
A cross-field rule raises :func:`rule_error`, which carries the field, the value and
the rule so the CLI can print one line such as
``moe.top_k = 300: must be <= moe.num_experts (256)``.
"""

from __future__ import annotations

from enum import Enum
from typing import Any

from pydantic import BaseModel, ConfigDict
from pydantic_core import PydanticCustomError

RULE_ERROR_TYPE = "spec_rule"


class Spec(BaseModel):
    """Frozen, strict-about-fields base of all input specs."""

    model_config = ConfigDict(
        frozen=True,
        extra="forbid",
        validate_default=True,
        populate_by_name=True,
        use_attribute_docstrings=True,
    )

    def model_copy(self, *, update: dict[str, Any] | None = None, deep: bool = False) -> Any:
        """pydantic's copy (no validation), except that a string given for an enum field becomes
        that enum's member, or raises ValueError naming the enum: the cost model compares enum
        members by identity, so a bare string would silently take neither branch. Other rules
        are not re-checked: use :func:`planner.presets.revalidate` for that."""
        if update:
            fields = type(self).model_fields
            update = dict(update)
            for name, value in update.items():
                kind = fields[name].annotation if name in fields else None
                if isinstance(value, str) and isinstance(kind, type) and issubclass(kind, Enum) \
                        and not isinstance(value, kind):
                    update[name] = kind(value)
        return super().model_copy(update=update, deep=deep)


def rule_error(field: str, value: Any, rule: str) -> PydanticCustomError:
    """An error for a cross-field rule; ``field`` is relative to the spec raising it."""
    return PydanticCustomError(
        RULE_ERROR_TYPE,
        "{field} = {value}: {rule}",
        {"field": field, "value": value, "rule": rule},
    )
