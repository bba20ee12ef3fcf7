"""Checks of a caller's input array against the tensor it feeds: no silent change in kind or value.

A cast would drop a complex number's imaginary part, turn strings or bools into numbers and wrap
integers outside the tensor's range (2**32 becomes 0 in int32): each is refused in one line
instead. Used by :func:`runtime.backends.to_stored` and ``python -m runtime run``. Numpy only.
"""

from __future__ import annotations

import numpy as np

from runtime.errors import RoiedgeError


class InputError(RoiedgeError):
    """An input array cannot feed its tensor without silently changing its values."""


def refuse_kind(array: np.ndarray, dtype: np.dtype, what: str) -> None:
    """Refuse values a cast to ``dtype`` would silently change in kind.

    Complex (the imaginary part dropped), string, object, structured and date arrays are never
    model inputs; a bool array only feeds a bool tensor and a bool tensor takes only bools.
    """
    kind = array.dtype.kind
    if kind not in "biuf":
        raise InputError(
            f"{what} is {array.dtype}; expected a real number array ({dtype.name} tensor; no "
            "complex, string or object values)"
        )
    if (kind == "b") != (dtype.kind == "b"):
        raise InputError(
            f"{what} is {array.dtype} but the tensor is {dtype.name}; expected "
            f"{'a bool' if dtype.kind == 'b' else 'a number'} array"
        )


def check_int_range(array: np.ndarray, dtype: np.dtype, what: str) -> None:
    """Refuse integers outside ``dtype``'s range (a cast would wrap 2**32 to 0)."""
    if not array.size or np.can_cast(array.dtype, dtype, casting="safe"):
        return
    bounds = np.iinfo(dtype)
    low, high = int(array.min()), int(array.max())
    if low < bounds.min or high > bounds.max:
        raise InputError(
            f"{what} has values {low}..{high}; expected {dtype.name} values in "
            f"[{bounds.min}, {bounds.max}] (a cast would wrap them)"
        )
