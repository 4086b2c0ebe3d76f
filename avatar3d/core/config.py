"""Frozen dataclass configs, written as JSON and read back by a strict loader.

Every stage's config is a frozen dataclass whose field docstrings are the command-line help
(tyro). What a stage writes next to its output (a run's config.json, a dataset's manifest) is read
back here: unknown keys and values of the wrong type are a one-line :class:`UserError`, never
silently dropped or coerced.
"""
from __future__ import annotations

import math
from dataclasses import fields, is_dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from avatar3d.errors import UserError

T = TypeVar("T")


def dataclass_from_json(cls: type[T], obj: Any, where: str) -> T:
    """Build dataclass ``cls`` from a JSON object, recursively. Keys left out keep ``cls()``'s
    defaults; unknown or mistyped keys -> UserError naming ``where`` and the key."""
    if not isinstance(obj, dict):
        raise UserError(f"{where}: expected a JSON object for {cls.__name__}")
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(obj) - set(known))
    if unknown:
        raise UserError(f"{where}: unknown {cls.__name__} keys {unknown}")
    kwargs = {}
    defaults = cls()
    for name, value in obj.items():
        default = getattr(defaults, name)
        if is_dataclass(default):
            kwargs[name] = dataclass_from_json(type(default), value, f"{where}.{name}")
        elif isinstance(default, bool) or not isinstance(default, (int, float, str)):
            kwargs[name] = value
        elif isinstance(default, float) and isinstance(value, (int, float)) and not isinstance(value, bool):
            kwargs[name] = float(value)
        elif type(value) is not type(default):
            raise UserError(f"{where}.{name}: expected {type(default).__name__}, got {value!r}")
        else:
            kwargs[name] = value
    return cls(**kwargs)


def json_safe(obj: Any) -> Any:
    """``obj`` as plain JSON values, recursively: dataclass instances as objects of their fields,
    dict keys as strings, tuples as lists, paths as strings, numpy scalars and arrays as numbers
    and lists, and every non-finite float (NaN, inf: not JSON) as None."""
    if is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: json_safe(getattr(obj, f.name)) for f in fields(obj)}
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, np.generic):
        return json_safe(obj.item())
    if isinstance(obj, np.ndarray):
        return json_safe(obj.tolist())
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj
