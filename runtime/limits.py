"""The one table of input limits: every size a user file may claim is checked here before it is read.

Each limit is a policy choice (not a property of the code), so each lives once, in ``LIMITS``, with
what it bounds; the README's "Limits" table lists the same rows. ``check`` raises a one-line
``LimitError`` naming the thing, what was seen and the limit; ``bad_number`` is the one check of a
numeric CLI flag (NaN, inf, out of range). Numpy-free and TensorFlow-free.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import numbers

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
    Limit("annotations_per_image", 1000, "boxes", "COCO annotations of one image"),
    # The detector config (runtime/config.py): every size and count a manifest may claim.
    Limit("config_image_side", 4096, "pixels", "DetectorConfig.image_size, each side"),
    Limit("config_classes", 1000, "classes", "DetectorConfig.class_names"),
    Limit("config_name_chars", 200, "characters", "one class name"),
    Limit("config_category_id", 2**31 - 1, "", "a dataset category id (>= 0)"),
    Limit("config_list", 10_000, "items", "any list field of a detector config"),
    Limit("config_stride", 256, "pixels", "DetectorConfig.stride"),
    Limit("config_channels", 4096, "channels", "DetectorConfig.feature_channels"),
    Limit("config_anchors", 64, "anchors", "anchors per feature-map cell (sizes x ratios)"),
    Limit("config_anchors_total", 1_000_000, "anchors", "anchors over the whole feature map"),
    Limit("config_anchor_ratio", 100, "", "anchor aspect ratios, in [1/value, value]"),
    Limit("config_box_scale", 1000, "", "DetectorConfig.box_coder_scales, each"),
    Limit("config_pre_nms", 12_000, "boxes", "DetectorConfig.rpn_pre_nms_top_n"),
    Limit("config_proposals", 2000, "proposals", "DetectorConfig.num_proposals"),
    Limit("config_pool_side", 64, "bins", "DetectorConfig.pool_size, each side"),
    Limit("config_samples_per_bin", 16, "samples", "DetectorConfig.samples_per_bin"),
    Limit("config_detections", 1000, "detections", "DetectorConfig.max_detections"),
    # Numeric CLI flags (checked by bad_number before any work starts).
    Limit("flag_images", 100_000, "images", "images a CLI flag asks to read, make or score"),
    Limit("flag_threads", 1024, "threads", "a --threads flag"),
    Limit("flag_runs", 100_000, "runs", "timed or warm-up runs a benchmark flag asks for"),
    Limit(
        "flag_copies", 64, "interpreters", "copies of one artifact a --head-copies flag asks for"
    ),
    Limit("flag_batch", 1024, "images", "images in one training batch (--batch-size)"),
    Limit("train_jitter", 64, "copies", "jittered copies of each true box (--jitter-per-gt)"),
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


def bad_number(
    flag: str,
    value: object,
    low: float,
    high: float | None = None,
    *,
    low_open: bool = False,
    limit_name: str | None = None,
) -> str | None:
    """Why numeric flag ``value`` is refused, in one line, or None if it is fine.

    Refused: a non-number or bool, NaN or infinity, a value below ``low`` (or equal to it when
    ``low_open``), above ``high``, or above LIMITS ``limit_name`` (named in the message). Run
    before the work the flag feeds: a NaN or a huge count otherwise reaches TensorFlow (a crash
    or gigabytes) or a comparison that is never true.
    """
    if limit_name is not None:
        high = limit(limit_name)
    integer = isinstance(value, numbers.Integral)
    kind = "an integer" if integer else "a finite number"
    if low_open:
        wanted = f"> {low}" if high is None else f"in ({low}, {high:,}]"
    else:
        wanted = f">= {low}" if high is None else f"{low} to {high:,}"
    if limit_name is not None:
        wanted += f" ({LIMITS[limit_name].what}; LIMITS {limit_name}, runtime/limits.py)"
    bad = (
        isinstance(value, bool)
        or not isinstance(value, numbers.Real)
        or not math.isfinite(value)
        or value < low
        or (low_open and value == low)
        or (high is not None and value > high)
    )
    return f"{flag} is {value!r}; expected {kind} {wanted}" if bad else None


def flag_type(low: int, limit_name: str | None = None):
    """An argparse ``type=`` for an integer flag: refused (exit 2, one ``error:`` line after
    argparse's usage line) unless an integer >= ``low`` and within LIMITS ``limit_name``.

    For the runtime CLIs, whose flags go straight to the interpreters: 10**9 threads or head
    copies would otherwise be handed on (a bad_alloc blamed on a healthy artifact, or a hang).
    """

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r}; expected an integer") from None
        why = bad_number("", value, low, limit_name=limit_name)
        if why is not None:
            raise argparse.ArgumentTypeError(why.removeprefix(" is "))
        return value

    return parse
