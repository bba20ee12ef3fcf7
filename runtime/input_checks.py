"""Checks of a caller's input array against the tensor it feeds: no silent change in kind or value.

A cast would drop a complex number's imaginary part, turn strings or bools into numbers and wrap
integers outside the tensor's range (2**32 becomes 0 in int32) and turn finite numbers beyond a
float tensor's range into infinity (1e300 in float32): each is refused in one line instead. Used by :func:`runtime.backends.to_stored` and ``python -m runtime run``. Numpy only.
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


def check_range(array: np.ndarray, dtype: np.dtype, what: str) -> None:
    """Refuse numbers a cast to ``dtype`` would change beyond rounding: integers outside an
    integer tensor's range (2**32 wraps to 0 in int32), finite numbers beyond a float tensor's
    largest value (1e300 becomes inf in float32, 1e5 in float16). NaN and inf stay as given.

    Call after :func:`refuse_kind`; a float array for an integer tensor is the caller's case
    (refused, or quantized with a scale)."""
    if not array.size or np.can_cast(array.dtype, dtype, casting="safe"):
        return
    if dtype.kind == "f":
        finite = array[np.isfinite(array)] if array.dtype.kind == "f" else array
        largest = float(np.abs(finite.astype(np.float64)).max()) if finite.size else 0.0
        if largest > float(np.finfo(dtype).max):
            raise InputError(
                f"{what} has a value of magnitude {largest:.6g}; expected {dtype.name} values "
                f"within +-{float(np.finfo(dtype).max):.6g} (a cast would make it infinite)"
            )
        return
    if array.dtype.kind not in "iu" or dtype.kind not in "iu":
        return
    bounds = np.iinfo(dtype)
    low, high = int(array.min()), int(array.max())
    if low < bounds.min or high > bounds.max:
        raise InputError(
            f"{what} has values {low}..{high}; expected {dtype.name} values in "
            f"[{bounds.min}, {bounds.max}] (a cast would wrap them)"
        )
