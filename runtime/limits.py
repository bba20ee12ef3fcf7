"""The one table of input limits: every size a user file may claim is checked here before it is read.

Each limit is a policy choice (not a property of the code), so each lives once, in ``LIMITS``, with
what it bounds; the README's "Limits" table lists the same rows. ``check`` raises a one-line
``LimitError`` naming the thing, what was seen and the limit. Numpy-free and TensorFlow-free.
"""

from __future__ import annotations

import dataclasses

from runtime.errors import RoiedgeError


class LimitError(RoiedgeError):
    """A user file or argument claims more than a documented limit allows."""


@dataclasses.dataclass(frozen=True)
class Limit:
    """One documented bound: ``name`` (the key in ``LIMITS``), its ``value`` and ``unit``."""

    name: str
    value: int
    unit: str
    what: str


def _table(*limits: Limit) -> dict[str, Limit]:
    return {limit.name: limit for limit in limits}


# Add a row here (and to the README's Limits table) for every new bound; nothing else holds numbers.
LIMITS: dict[str, Limit] = _table(
    Limit("image_pixels", 50_000_000, "pixels", "decoded size of one image (H x W)"),
    Limit("json_bytes", 512 * 1024 * 1024, "bytes", "one JSON file (COCO dataset, manifest, card)"),
    Limit("json_depth", 64, "levels", "nesting depth of one JSON document"),
    Limit(
        "npz_bytes", 1024**3, "bytes", "an .npz: its members' declared sizes together, each array"
    ),
    Limit(
        "keras_bytes", 1024**3, "bytes", "a .keras archive: its members' declared sizes together"
    ),
    Limit("archive_members", 10_000, "members", "files inside one .npz or .keras archive"),
    Limit("model_bytes", 2 * 1024**3, "bytes", "one .tflite or .onnx artifact file"),
)


def limit(name: str) -> int:
    """The value of limit ``name`` (a key of ``LIMITS``)."""
    return LIMITS[name].value


def check(name: str, seen: int, what: str) -> None:
    """Raise ``LimitError`` when ``seen`` exceeds limit ``name``; ``what`` names the thing checked."""
    bound = LIMITS[name]
    if seen > bound.value:
        raise LimitError(
            f"{what}: {seen:,} {bound.unit} is over the limit of {bound.value:,} {bound.unit} "
            f"({bound.what}; runtime/limits.py)"
        )
