"""Loading specs from the shipped presets in ``data/`` or from user YAML files.

``load_model("deepseek-v3")`` reads ``data/models/deepseek-v3.yaml``; a path such as
``my-model.yaml`` reads that file. Clusters name their GPU (``gpu: h800-sxm-80gb``), which
is resolved from ``data/hardware/gpus``. Friendly units are converted by
:mod:`planner.units`. Every failure is a :class:`~planner.errors.SpecError` whose single
line names the file, the field path as written, the value and the rule.

The data folder is ``planner/data`` inside an installed wheel and the top-level ``data/``
of a source checkout.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from planner.errors import SpecError, UnknownPresetError
from planner.specs import ClusterSpec, GPUSpec, ModelSpec, Plan, Workload
from planner.specs._base import RULE_ERROR_TYPE
from planner.units import to_si

S = TypeVar("S", bound=BaseModel)

_KIND_DIRS = {
    "model": ("models",),
    "gpu": ("hardware", "gpus"),
    "cluster": ("hardware", "clusters"),
}


@cache
def data_root() -> Path:
    """The folder holding the presets (wheel layout first, then the source tree)."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "data", here.parent / "data"):
        if (candidate / "models").is_dir():
            return candidate
    raise FileNotFoundError(f"preset data not found next to {here}")


def preset_names(kind: str) -> list[str]:
    """Names of the shipped presets of one kind (``model``, ``gpu``, ``cluster``)."""
    folder = data_root().joinpath(*_KIND_DIRS[kind])
    return sorted(p.stem for p in folder.glob("*.yaml"))


def _is_path(ref: str) -> bool:
    return ref.endswith((".yaml", ".yml")) or "/" in ref or Path(ref).is_file()


def _read_yaml(path: Path, field: str) -> dict:
    if not path.is_file():
        raise SpecError(field, str(path), "no such file")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark else "YAML"
        raise SpecError(field, str(path), f"is not valid YAML ({where}: {getattr(exc, 'problem', exc)})") from None
    if not isinstance(data, dict):
        raise SpecError(field, str(path), "must hold a YAML mapping of fields")
    return data


def _read_ref(kind: str, ref: str) -> tuple[dict, str]:
    """The raw mapping for a preset name or a file path, and its display origin."""
    if _is_path(ref):
        path = Path(ref)
        return _read_yaml(path, kind), str(path)
    path = data_root().joinpath(*_KIND_DIRS[kind], f"{ref}.yaml")
    if not path.is_file():
        raise UnknownPresetError(kind, ref, preset_names(kind))
    return _read_yaml(path, kind), path.name


def validate_spec(cls: type[S], data: Any, origin: str | None = None) -> S:
    """Convert friendly units and validate ``data`` as ``cls``; errors become SpecError."""
    si, origins = to_si(data)
    try:
        return cls.model_validate(si)
    except ValidationError as exc:
        raise spec_error(exc, cls, origins, origin) from None


def load_model(ref: str) -> ModelSpec:
    """A model preset by name (``deepseek-v3``) or a ModelSpec YAML file."""
    data, origin = _read_ref("model", ref)
    return validate_spec(ModelSpec, data, origin)


def load_gpu(ref: str) -> GPUSpec:
    data, origin = _read_ref("gpu", ref)
    return validate_spec(GPUSpec, data, origin)


def load_cluster(ref: str, num_gpus: int | None = None) -> ClusterSpec:
    """A cluster preset or file; ``num_gpus`` resizes it to that many GPUs (whole nodes)."""
    data, origin = _read_ref("cluster", ref)
    if isinstance(data.get("gpu"), str):
        data = {**data, "gpu": _read_ref("gpu", data["gpu"])[0]}
    cluster = validate_spec(ClusterSpec, data, origin)
    return cluster if num_gpus is None else cluster.with_num_gpus(num_gpus)


def _plan_document(path: str) -> dict:
    """A plan file's mapping; a ``run_config.yaml`` written by ``--emit`` (model, plan,
    workload, ...) contributes its ``plan:`` section, so either file can be passed as a plan."""
    data = _read_yaml(Path(path), "plan")
    if isinstance(data, dict) and isinstance(data.get("plan"), dict) and "model" in data:
        return dict(data["plan"])
    return data


def load_plan(path: str) -> Plan:
    return validate_spec(Plan, _plan_document(path), path)


def read_plan_fields(path: str) -> dict:
    """A plan file's fields as written (Megatron or short names), not yet validated, so
    that callers can complete them (e.g. dp from the GPU count) before validating once."""
    return dict(_plan_document(path))


def load_workload(path: str) -> Workload:
    return validate_spec(Workload, _read_yaml(Path(path), "workload"), path)


def revalidate(spec: S, **changes: Any) -> S:
    """A validated copy of ``spec`` with ``changes`` (``model_copy`` skips validation)."""
    return validate_spec(type(spec), {**spec.model_dump(), **changes})


# --- error formatting ---------------------------------------------------------------


def _fields_at(cls: type[BaseModel], loc: tuple) -> list[str]:
    """Field names of the spec class found by walking ``loc`` from ``cls``."""
    for part in loc:
        field = cls.model_fields.get(part) if isinstance(part, str) else None
        if field is None:
            return []
        inner = [a for a in getattr(field.annotation, "__args__", (field.annotation,))]
        nested = [a for a in inner if isinstance(a, type) and issubclass(a, BaseModel)]
        if not nested:
            return []
        cls = nested[0]
    return sorted(cls.model_fields)


def spec_error(exc: ValidationError, cls: type[BaseModel], origins: dict, origin: str | None) -> SpecError:
    """One-line SpecError for the first problem in ``exc`` (and a count of the rest)."""
    errors = exc.errors()
    err = errors[0]
    loc = tuple(err["loc"])
    if err["type"] == RULE_ERROR_TYPE:
        ctx = err["ctx"]
        path = loc + tuple(ctx["field"].split("."))
        value, rule = ctx["value"], ctx["rule"]
    elif err["type"] == "extra_forbidden":
        path, value = loc, err["input"]
        allowed = _fields_at(cls, loc[:-1])
        rule = "unknown field" + (f"; allowed: {', '.join(allowed)}" if allowed else "")
    elif err["type"] == "missing":
        path, value, rule = loc, None, "required field is missing"
    else:
        path, value = loc, err["input"]
        rule = err["msg"][:1].lower() + err["msg"][1:]
    if path in origins:
        path, value = origins[path]
    if len(errors) > 1:
        rule += f" (and {len(errors) - 1} more problem{'s' * (len(errors) > 2)})"
    return SpecError(".".join(str(p) for p in path), value, rule, origin=origin)
