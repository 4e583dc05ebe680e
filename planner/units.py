"""Friendly units in YAML keys, converted to SI once, on load.

A key ending in a friendly-unit suffix is renamed to its SI twin and its value scaled:
``hbm_capacity_gib: 80`` becomes ``hbm_capacity_bytes: 85899345920``. GiB (2**30) is for
capacities, GB (10**9) for bandwidths, each written out in the key; ``gbit`` is 10**9
bits. A mapping value (``peak_tflops: {bf16: 989.4}``) has each of its values scaled.

:func:`to_si` also returns where every renamed key came from, so an error about
``gpu.hbm_capacity_bytes`` can be reported against the ``gpu.hbm_capacity_gib`` the user
wrote, with the value as written.
"""

from __future__ import annotations

from typing import Any

Path = tuple[str | int, ...]

# suffix -> (SI suffix, factor). Longest suffixes first so "_gb_per_s" wins over "_s".
FRIENDLY_SUFFIXES: tuple[tuple[str, str, float], ...] = (
    ("_gbit_per_s", "_bytes_per_s", 1e9 / 8),
    ("_tb_per_s", "_bytes_per_s", 1e12),
    ("_gb_per_s", "_bytes_per_s", 1e9),
    ("_gib_per_s", "_bytes_per_s", 2.0**30),
    ("_pflops", "_flops_per_s", 1e15),
    ("_tflops", "_flops_per_s", 1e12),
    ("_gib", "_bytes", 2.0**30),
    ("_gb", "_bytes", 1e9),
    ("_us", "_s", 1e-6),
    ("_ms", "_s", 1e-3),
)


def _convert_key(key: str) -> tuple[str, float] | None:
    for suffix, si_suffix, factor in FRIENDLY_SUFFIXES:
        if key.endswith(suffix):
            return key[: -len(suffix)] + si_suffix, factor
    return None


def _scale(value: Any, factor: float) -> Any:
    if isinstance(value, dict):
        return {k: _scale(v, factor) for k, v in value.items()}
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            return value  # left for validation to reject with the user's text
    if isinstance(value, (int, float)):
        return value * factor
    return value


def to_si(data: Any, _path: Path = (), _origins: dict | None = None) -> tuple[Any, dict[Path, tuple[Path, Any]]]:
    """Convert friendly-unit keys in nested mappings/lists to SI.

    Returns the converted data and ``{si_path: (written_path, written_value)}`` for every
    renamed key.
    """
    origins = {} if _origins is None else _origins
    if isinstance(data, dict):
        out: dict = {}
        for key, value in data.items():
            converted = _convert_key(key) if isinstance(key, str) else None
            if converted is None:
                out[key] = to_si(value, _path + (key,), origins)[0]
                continue
            si_key, factor = converted
            if si_key in data or si_key in out:
                out[key] = value  # both spellings given: let validation reject the extra key
                continue
            out[si_key] = _scale(value, factor)
            origins[_path + (si_key,)] = (_path + (key,), value)
        return out, origins
    if isinstance(data, list):
        return [to_si(v, _path + (i,), origins)[0] for i, v in enumerate(data)], origins
    return data, origins
