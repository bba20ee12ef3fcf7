"""The detector configuration: every number the device needs for pre- and post-processing.

One frozen dataclass, ``DetectorConfig``, serialised only here (``to_dict``/``from_dict``). The Keras
side (training, evaluation) and the device runtime read the same values, so a detector's behaviour is
fully described by its weights plus this config. Numpy-free and TensorFlow-free.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from runtime.errors import RoiedgeError

SCHEMA_VERSION = 1


class ConfigError(RoiedgeError):
    """A detector config is malformed or from an incompatible version."""


@dataclasses.dataclass(frozen=True)
class DetectorConfig:
    """Geometry, anchors, box coding and post-processing thresholds of one detector.

    Coordinates everywhere are ``[y1, x1, y2, x2]``; "pixels" means image pixels of the ``image``
    tensor (``image_size`` = (H, W)), "normalized" means pixels divided by (H, W).
    Class ids 0..K-1 index ``class_names``; the head's class_scores column 0 is background, so
    column ``c + 1`` is class id ``c``.
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
    schema_version: int = SCHEMA_VERSION

    def __post_init__(self) -> None:
        _check(
            len(self.image_size) == 2 and all(int(v) > 0 for v in self.image_size),
            "image_size",
            self.image_size,
            "two positive ints (H, W)",
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

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (tuples become lists)."""
        return {
            field.name: _jsonable(getattr(self, field.name)) for field in dataclasses.fields(self)
        }

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
        kwargs: dict[str, Any] = {}
        for name, value in data.items():
            default = getattr(cls, name, None)
            try:
                if isinstance(default, tuple):
                    item_type = type(default[0]) if default else float
                    value = tuple(item_type(v) for v in value)
                elif isinstance(default, bool):
                    value = bool(value)
                elif isinstance(default, (int, float)):
                    value = type(default)(value)
            except (TypeError, ValueError):
                raise ConfigError(
                    f"{source}: {name}={value!r} has the wrong type; expected like {default!r}"
                ) from None
            kwargs[name] = value
        try:
            return cls(**kwargs)
        except ConfigError as error:
            raise ConfigError(f"{source}: {error}") from None


def _jsonable(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def _check(ok: bool, name: str, value: Any, expected: str) -> None:
    if not ok:
        raise ConfigError(f"DetectorConfig.{name}={value!r} is invalid; expected {expected}")
