"""Strict JSON for every file roiedge writes; non-finite floats as the strings "inf", "-inf", "nan".

JSON has no Infinity or NaN (RFC 8259), yet Python's ``json`` writes them by default, and jq,
JavaScript's ``JSON.parse`` and other strict parsers then reject the whole file. roiedge's reports
hold such values legitimately: an output that matches its reference exactly has an SNR of +inf, a
mean over nothing is NaN. :func:`dumps` writes them as the strings ``"inf"``, ``"-inf"`` and
``"nan"`` (not null: +inf and -inf mean opposite things) with ``allow_nan=False``, and numpy
scalars and arrays as plain numbers and lists; :func:`loads` turns those three strings back into
floats, so a reader that compares the values numerically gets floats. Imports numpy only.
"""

from __future__ import annotations

import json
import math
from typing import Any, Callable

import numpy as np

#: The strings that stand for the non-finite floats in roiedge's JSON files.
NON_FINITE = {"inf": math.inf, "-inf": -math.inf, "nan": math.nan}


def finite(value: Any) -> Any:
    """``value`` with non-finite floats as "inf"/"-inf"/"nan", numpy scalars/arrays as Python.

    Recurses into dicts, lists and tuples (tuples become lists); anything else is unchanged.
    """
    if isinstance(value, float):
        if math.isfinite(value):
            return value
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, dict):
        return {key: finite(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(item) for item in value]
    if isinstance(value, (np.generic, np.ndarray)):
        return finite(value.tolist())
    return value


def dumps(value: Any, *, default: Callable[[Any], Any] | None = None, **kwargs: Any) -> str:
    """``json.dumps`` of :func:`finite` ``(value)`` with ``allow_nan=False``.

    ``default`` (as in ``json.dumps``) turns other objects into JSON-able ones; its results go
    through :func:`finite` too. Other keyword arguments (``indent``, ``sort_keys``...) pass on.
    """
    hook = None if default is None else (lambda item: finite(default(item)))
    return json.dumps(finite(value), allow_nan=False, default=hook, **kwargs)


def dump_bytes(value: Any, *, indent: int | None = 2, **kwargs: Any) -> bytes:
    """:func:`dumps` with ``indent`` and a final newline, UTF-8: a JSON file's content."""
    return (dumps(value, indent=indent, **kwargs) + "\n").encode("utf-8")


def restore(value: Any) -> Any:
    """The inverse of :func:`finite` for parsed JSON: "inf"/"-inf"/"nan" strings -> floats."""
    if isinstance(value, str):
        return NON_FINITE.get(value, value)
    if isinstance(value, dict):
        return {key: restore(item) for key, item in value.items()}
    if isinstance(value, list):
        return [restore(item) for item in value]
    return value


def loads(text: str | bytes) -> Any:
    """Parse a JSON document written by :func:`dumps`, the non-finite markers back as floats.

    Files from before the strict writer (bare ``Infinity``/``NaN``) still parse.
    """
    return restore(json.loads(text))
