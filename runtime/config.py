"""The detector configuration: every number the device needs for pre- and post-processing.

One frozen dataclass, ``DetectorConfig``, serialised only here (``to_dict``/``from_dict``). The Keras
side (training, evaluation) and the device runtime read the same values, so a detector's behaviour is
fully described by its weights plus this config. Numpy-free and TensorFlow-free.
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Any

from runtime import limits
from runtime.errors import RoiedgeError

SCHEMA_VERSION = 1
#: DetectorConfig.backbone of the built-in backbone (left out of to_dict, as older configs have it).
DEFAULT_BACKBONE = "tiny"


class ConfigError(RoiedgeError):
    """A detector config is malformed or from an incompatible version."""


@dataclasses.dataclass(frozen=True)
class DetectorConfig:
    """Geometry, anchors, box coding and post-processing thresholds of one detector.

    Coordinates everywhere are ``[y1, x1, y2, x2]``; "pixels" means image pixels of the ``image``
    tensor (``image_size`` = (H, W)), "normalized" means pixels divided by (H, W).
    Class ids 0..K-1 index ``class_names``; the head's class_scores column 0 is background, so
    column ``c + 1`` is class id ``c``. ``coco_ids[c]`` is class ``c``'s id in the dataset
    the detector was trained on (COCO ``categories[].id``; ``category_ids``, None = 1..K), the
    ``category_id`` that ``detect --json`` writes. Every field is bounded (``config_*`` rows of LIMITS).
    """

    image_size: tuple[int, int] = (160, 160)
    class_names: tuple[str, ...] = ("circle", "rectangle", "triangle")
    stride: int = 8
    feature_channels: int = 64
    anchor_sizes: tuple[float, ...] = (16.0, 32.0, 56.0, 96.0)
    anchor_ratios: tuple[float, ...] = (0.5, 1.0, 2.0)
    box_coder_scales: tuple[float, float, float, float] = (10.0, 10.0, 5.0, 5.0)
    rpn_pre_nms_top_n: int = 300
    rpn_nms_iou: float = 0.7
    rpn_min_size: float = 2.0
    num_proposals: int = 64
    pool_size: tuple[int, int] = (7, 7)
    samples_per_bin: int = 2
    score_threshold: float = 0.05
    nms_iou: float = 0.5
    max_detections: int = 20
    #: The dataset's ids of the classes; None means 1..K (COCO's convention), see ``coco_ids``.
    category_ids: tuple[int, ...] | None = None
    #: The feature extractor the detector was trained with (``models.backbones``; "tiny" = the
    #: built-in one). Descriptive only: the runtime runs whatever graph the artifacts hold.
    backbone: str = DEFAULT_BACKBONE
    schema_version: int = SCHEMA_VERSION

    def __post_init__(self) -> None:
        if self.category_ids is not None:
            _check_category_ids(self.category_ids, self.class_names)
            if self.category_ids == tuple(range(1, len(self.class_names) + 1)):
                # One spelling of the default, so replace(class_names=...) keeps meaning 1..K.
                object.__setattr__(self, "category_ids", None)
        _check(
            len(self.image_size) == 2 and all(int(v) > 0 for v in self.image_size),
            "image_size",
            self.image_size,
            "two positive ints (H, W)",
        )
        _check(
            isinstance(self.backbone, str) and re.fullmatch(r"[a-z0-9_]{1,40}", self.backbone),
            "backbone",
            self.backbone,
            "a name of 1-40 characters a-z, 0-9, _",
        )
        _check(len(self.class_names) >= 1, "class_names", self.class_names, "at least one name")
        _check(self.stride > 0, "stride", self.stride, "a positive int")
        _check(
            all(v % self.stride == 0 for v in self.image_size),
            "image_size",
            self.image_size,
            f"multiples of stride {self.stride}",
        )
        _check(len(self.anchor_sizes) >= 1, "anchor_sizes", self.anchor_sizes, "at least one size")
        _check(
            len(self.anchor_ratios) >= 1, "anchor_ratios", self.anchor_ratios, "at least one ratio"
        )
        _check(
            len(self.box_coder_scales) == 4,
            "box_coder_scales",
            self.box_coder_scales,
            "four floats (y, x, h, w)",
        )
        _check(self.num_proposals > 0, "num_proposals", self.num_proposals, "a positive int")
        _check(
            self.rpn_pre_nms_top_n >= self.num_proposals,
            "rpn_pre_nms_top_n",
            self.rpn_pre_nms_top_n,
            f">= num_proposals ({self.num_proposals})",
        )
        _check(len(self.pool_size) == 2, "pool_size", self.pool_size, "two ints")
        _check(self.samples_per_bin >= 1, "samples_per_bin", self.samples_per_bin, ">= 1")
        for name in ("rpn_nms_iou", "nms_iou", "score_threshold"):
            value = getattr(self, name)
            _check(0.0 <= value <= 1.0, name, value, "a float in [0, 1]")
        _check(self.max_detections > 0, "max_detections", self.max_detections, "a positive int")
        _check_bounds(self)

    @property
    def coco_ids(self) -> tuple[int, ...]:
        """The category id of each class id 0..K-1: ``category_ids``, or 1..K when None."""
        if self.category_ids is None:
            return tuple(range(1, self.num_classes + 1))
        return self.category_ids

    @property
    def num_classes(self) -> int:
        """K, the number of object classes (without background)."""
        return len(self.class_names)

    @property
    def feature_size(self) -> tuple[int, int]:
        """(h, w) of the feature map: image_size // stride."""
        return (self.image_size[0] // self.stride, self.image_size[1] // self.stride)

    @property
    def anchors_per_location(self) -> int:
        """A, anchors per feature-map cell (sizes x ratios)."""
        return len(self.anchor_sizes) * len(self.anchor_ratios)

    @property
    def num_anchors(self) -> int:
        """h * w * A, the length of rpn_scores / rpn_deltas."""
        h, w = self.feature_size
        return h * w * self.anchors_per_location

    @property
    def rpn_pre_nms_count(self) -> int:
        """Anchors that enter the RPN's NMS: ``rpn_pre_nms_top_n``, or every anchor when the
        feature map has fewer (a small ``image_size``), as the runtime's top-k takes them."""
        return min(self.rpn_pre_nms_top_n, self.num_anchors)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (tuples become lists).

        ``category_ids`` is left out when it is the default 1..K: such a config reads the same
        in runtimes from before the field existed (schema_version stays 1: the key is optional
        and its absence means 1..K); any other ids make an older runtime refuse the unknown key
        instead of writing wrong ids. ``backbone`` likewise is left out when it is "tiny".
        """
        data = {
            field.name: _jsonable(getattr(self, field.name)) for field in dataclasses.fields(self)
        }
        if data["category_ids"] is None:
            del data["category_ids"]
        if data["backbone"] == DEFAULT_BACKBONE:
            del data["backbone"]
        return data

    @classmethod
    def from_dict(cls, data: Any, source: str = "detector config") -> DetectorConfig:
        """Parse a dict from ``to_dict``; one-line ConfigError naming ``source`` on any mismatch."""
        if not isinstance(data, dict):
            raise ConfigError(f"{source}: expected a JSON object, got {type(data).__name__}")
        version = data.get("schema_version")
        if version != SCHEMA_VERSION:
            raise ConfigError(
                f"{source}: schema_version {version!r} is not supported; expected {SCHEMA_VERSION}"
            )
        known = {field.name: field for field in dataclasses.fields(cls)}
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise ConfigError(
                f"{source}: unknown keys {unknown}; expected keys from {sorted(known)}"
            )
        kwargs = {name: _typed(name, value, source) for name, value in data.items()}
        try:
            return cls(**kwargs)
        except (ConfigError, limits.LimitError) as error:
            raise ConfigError(f"{source}: {error}") from None


#: The JSON type of each field: "int", "float", "str" or a tuple of one of them.
_TYPES = {
    "image_size": ("int",),
    "class_names": ("str",),
    "stride": "int",
    "feature_channels": "int",
    "anchor_sizes": ("float",),
    "anchor_ratios": ("float",),
    "box_coder_scales": ("float",),
    "rpn_pre_nms_top_n": "int",
    "rpn_nms_iou": "float",
    "rpn_min_size": "float",
    "num_proposals": "int",
    "pool_size": ("int",),
    "samples_per_bin": "int",
    "score_threshold": "float",
    "nms_iou": "float",
    "max_detections": "int",
    "category_ids": ("int",),
    "backbone": "str",
    "schema_version": "int",
}


def _scalar(kind: str, value: Any) -> Any:
    """``value`` as a JSON ``kind``, or None when it is not one (bools are no numbers)."""
    if isinstance(value, bool):
        return None
    if kind == "int":
        return value if isinstance(value, int) else None
    if kind == "float":
        if isinstance(value, (int, float)) and math.isfinite(value):
            return float(value)
        return None
    return value if isinstance(value, str) else None


def _typed(name: str, value: Any, source: str) -> Any:
    """A field's JSON value checked for type (no silent int("5") or int(2.7)) -> Python value."""
    kind = _TYPES[name]
    if isinstance(kind, tuple):
        items = [_scalar(kind[0], v) for v in value] if isinstance(value, list) else None
        if items is not None and len(items) > limits.limit("config_list"):
            limits.check("config_list", len(items), f"{source}: {name}")
        if items is None or any(item is None for item in items):
            shown = repr(value)[:60]
            raise ConfigError(
                f"{source}: {name}={shown} has the wrong type; expected a list of {kind[0]}s"
            )
        return tuple(items)
    typed = _scalar(kind, value)
    if typed is None:
        raise ConfigError(
            f"{source}: {name}={repr(value)[:60]} has the wrong type; expected a finite {kind}"
        )
    return typed


def _check_category_ids(ids: Any, names: tuple[str, ...]) -> None:
    _check(
        isinstance(ids, tuple) and all(isinstance(v, int) and not isinstance(v, bool) for v in ids),
        "category_ids",
        ids,
        "a tuple of ints",
    )
    _check(len(ids) == len(names), "category_ids", ids, f"one id per class name ({len(names)})")
    _check(len(set(ids)) == len(ids), "category_ids", ids, "unique ids")
    _check(
        all(0 <= v <= limits.limit("config_category_id") for v in ids),
        "category_ids",
        ids,
        f"ids in [0, {limits.limit('config_category_id')}]",
    )


def _check_bounds(config: DetectorConfig) -> None:
    """Every size and count of ``config`` within its LIMITS row: nothing edited into a blow-up."""
    what = "DetectorConfig"
    for side in config.image_size:
        limits.check("config_image_side", side, f"{what}.image_size")
    limits.check("config_classes", config.num_classes, f"{what}.class_names (count)")
    for name in config.class_names:
        limits.check("config_name_chars", len(name), f"{what}.class_names entry {name[:20]!r}")
    limits.check("config_stride", config.stride, f"{what}.stride")
    limits.check("config_channels", config.feature_channels, f"{what}.feature_channels")
    _check(config.feature_channels > 0, "feature_channels", config.feature_channels, "> 0")
    limits.check("config_anchors", config.anchors_per_location, f"{what} anchors per location")
    limits.check("config_anchors_total", config.num_anchors, f"{what} anchors in all")
    longest = max(config.image_size)
    for size in config.anchor_sizes:
        _check(
            0 < size <= 4 * longest, "anchor_sizes", config.anchor_sizes, f"in (0, {4 * longest}]"
        )
    top = limits.limit("config_anchor_ratio")
    for ratio in config.anchor_ratios:
        _check(
            1 / top <= ratio <= top, "anchor_ratios", config.anchor_ratios, f"in [1/{top}, {top}]"
        )
    for scale in config.box_coder_scales:
        _check(
            0 < scale <= limits.limit("config_box_scale"),
            "box_coder_scales",
            config.box_coder_scales,
            f"in (0, {limits.limit('config_box_scale')}]",
        )
    limits.check("config_pre_nms", config.rpn_pre_nms_top_n, f"{what}.rpn_pre_nms_top_n")
    limits.check("config_proposals", config.num_proposals, f"{what}.num_proposals")
    _check(
        0 <= config.rpn_min_size <= longest,
        "rpn_min_size",
        config.rpn_min_size,
        f"in [0, {longest}]",
    )
    for side in config.pool_size:
        _check(side >= 1, "pool_size", config.pool_size, "positive ints")
        limits.check("config_pool_side", side, f"{what}.pool_size")
    limits.check("config_samples_per_bin", config.samples_per_bin, f"{what}.samples_per_bin")
    limits.check("config_detections", config.max_detections, f"{what}.max_detections")


def stage_shapes(config: DetectorConfig) -> dict[str, tuple[tuple[tuple[int, ...], ...], ...]]:
    """The tensor shapes ``config`` implies, per stage: (input shapes, output shapes).

    In the two-stage contract's order (export.stages.STAGE_IO): backbone_rpn image ->
    features, rpn_scores, rpn_deltas; head features, proposals, box_indexes -> class_scores,
    box_deltas. A manifest whose artifacts disagree was edited or mixed with another detector.
    """
    (height, width), (fh, fw) = config.image_size, config.feature_size
    features = (1, fh, fw, config.feature_channels)
    anchors, proposals, k = config.num_anchors, config.num_proposals, config.num_classes
    return {
        "backbone_rpn": (((1, height, width, 3),), (features, (1, anchors), (1, anchors, 4))),
        "head": (
            (features, (proposals, 4), (proposals,)),
            ((proposals, k + 1), (proposals, k, 4)),
        ),
    }


def _jsonable(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def _check(ok: bool, name: str, value: Any, expected: str) -> None:
    if not ok:
        raise ConfigError(f"DetectorConfig.{name}={value!r} is invalid; expected {expected}")
