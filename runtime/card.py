"""The detector card: one JSON file saying how a user's two Keras models make a detector.

A third-party two-stage detector (keras-frcnn first) is two models, ``backbone_rpn`` (image ->
RPN scores, RPN deltas, feature map) and ``head`` (feature map + RoIs -> class scores, box deltas),
plus conventions on which implementations differ: channel order, anchors, delta coding, what the
head's RoI input holds, background column, class selection, rounding. :class:`DetectorCard` holds
them all; :func:`parse_card` is the one place a card is read and validated (unknown keys are errors,
every error is one line naming the key, what was seen and what was expected). numpy-free and
TensorFlow-free: the device reads the card back from the manifest. ``docs/detector_card.md``
describes every key.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

from runtime import strict_json
from runtime.errors import RoiedgeError
from runtime.safe_files import read_json

SCHEMA_VERSION = 1
#: manifest.detector of a card export: {CARD_KEY: card.to_dict()}.
CARD_KEY = "card"

RPN_SCORE_LAYOUTS = ("[1,H,W,A]", "[1,H*W*A]", "[1,H*W*A,1]")
RPN_DELTA_LAYOUTS = ("[1,H,W,4A]", "[1,H*W*A,4]")
HEAD_DELTA_LAYOUTS = ("[1,N,4K]", "[N,K,4]", "[1,N,4]")
DELTA_ORDERS = ("xywh", "yxhw")
ROI_FORMATS = ("feature_xywh", "normalized_yxyx")


class CardError(RoiedgeError):
    """A detector card is malformed, or disagrees with its models."""


@dataclasses.dataclass(frozen=True)
class Preprocess:
    """Image -> model input: ``(pixel[channels] - mean) / std`` after ``resize`` to image_size."""

    channels: str = "RGB"
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)
    resize: str = "stretch"


@dataclasses.dataclass(frozen=True)
class Anchors:
    """Anchors per feature cell: ``sizes`` (image pixels) x ``ratios``.

    ``ratio_side`` "w/h": ratio r = width/height, w = size*sqrt(r), h = size/sqrt(r) ("h/w" the
    other way round). ``order``: "size_major" (anchor a = size_i * len(ratios) + ratio_j) or
    "ratio_major". Centres at ``stride * (cell + centre_offset)``.
    """

    stride: int
    sizes: tuple[float, ...]
    ratios: tuple[float, ...]
    ratio_side: str = "w/h"
    order: str = "size_major"
    centre_offset: float = 0.5

    @property
    def per_cell(self) -> int:
        """A, anchors per feature-map cell."""
        return len(self.sizes) * len(self.ratios)


@dataclasses.dataclass(frozen=True)
class Rpn:
    """The backbone_rpn model's outputs and the proposal step.

    ``outputs``: the Keras model's output order, a permutation of scores/deltas/features.
    ``scores``: "probability" (sigmoid applied in the model) or "logit". Deltas are divided by
    ``delta_scales`` (in ``delta_order``). ``pre_nms_top_n`` None = every anchor enters NMS.
    ``min_size`` in image pixels (feature_xywh RoIs: boxes under one feature pixel are dropped).
    """

    outputs: tuple[str, ...] = ("scores", "deltas", "features")
    scores_layout: str = "[1,H,W,A]"
    deltas_layout: str = "[1,H,W,4A]"
    scores: str = "probability"
    delta_order: str = "xywh"
    delta_scales: tuple[float, float, float, float] = (1.0, 1.0, 1.0, 1.0)
    pre_nms_top_n: int | None = None
    post_nms_top_n: int = 300
    nms_iou: float = 0.7
    min_size: float = 0.0


@dataclasses.dataclass(frozen=True)
class Rois:
    """What the head's RoI input holds: ``format`` "feature_xywh" ([1,N,4] x, y, w, h in feature
    pixels, keras-frcnn) or "normalized_yxyx" ([N,4] or [1,N,4] corners / image size);
    ``integer``: rounded to whole feature pixels; ``num_rois``: fixed RoIs per head call (the
    runtime chunks and pads); ``box_indexes``: the head has a third input of batch indexes."""

    format: str = "feature_xywh"
    integer: bool = True
    num_rois: int = 32
    box_indexes: bool = False


@dataclasses.dataclass(frozen=True)
class Head:
    """The head model and how its outputs become boxes.

    ``inputs``/``outputs``: the Keras model's order. ``background``: "first" or "last" class
    column. ``class_selection``: "argmax" (one class per RoI, keras-frcnn) or "per_class".
    ``deltas_layout``: "[1,N,4K]" (K = classes without background), "[N,K,4]" or "[1,N,4]"
    (class-agnostic). ``round_to_feature_pixels``: decoded boxes rounded to whole feature pixels
    (keras-frcnn's apply_regr); ``clip``: decoded boxes clipped to the image.
    """

    model: str
    inputs: tuple[str, ...] = ("features", "rois")
    outputs: tuple[str, ...] = ("class_scores", "box_deltas")
    scores: str = "softmax"
    background: str = "last"
    class_selection: str = "argmax"
    deltas_layout: str = "[1,N,4K]"
    delta_order: str = "xywh"
    delta_scales: tuple[float, float, float, float] = (1.0, 1.0, 1.0, 1.0)
    round_to_feature_pixels: bool = False
    clip: bool = True


@dataclasses.dataclass(frozen=True)
class Postprocess:
    """Final detections: score >= ``score_threshold``, per-class NMS at ``nms_iou``, the
    ``max_detections`` best."""

    score_threshold: float = 0.5
    nms_iou: float = 0.5
    max_detections: int = 100


@dataclasses.dataclass(frozen=True)
class DetectorCard:
    """Everything about a third-party two-stage detector that is not in its weights.

    Paths (``backbone_rpn``, ``head.model``, ``custom_objects``) are as written in the card,
    relative to the card's folder (:meth:`resolve` makes them absolute). ``image_size`` (H, W).
    ``category_ids[i]`` is the dataset id of ``class_names[i]`` (written in COCO results).
    """

    backbone_rpn: str
    head: Head
    image_size: tuple[int, int]
    preprocess: Preprocess
    class_names: tuple[str, ...]
    category_ids: tuple[int, ...]
    anchors: Anchors
    rpn: Rpn
    rois: Rois
    postprocess: Postprocess
    custom_objects: str | None = None
    schema_version: int = SCHEMA_VERSION

    @property
    def num_classes(self) -> int:
        """K, object classes without background."""
        return len(self.class_names)

    @property
    def coco_ids(self) -> tuple[int, ...]:
        """category_ids (the name DetectorConfig's resolved ids go by)."""
        return self.category_ids

    @property
    def score_threshold(self) -> float:
        """postprocess.score_threshold (the name DetectorConfig uses)."""
        return self.postprocess.score_threshold

    @property
    def max_detections(self) -> int:
        """postprocess.max_detections (the name DetectorConfig uses)."""
        return self.postprocess.max_detections

    @property
    def unclipped_boxes(self) -> bool:
        """True when boxes may leave the image (head.clip false, as in keras-frcnn)."""
        return not self.head.clip

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict in the card's own key layout (parse_card reads it back)."""
        return _jsonable(dataclasses.asdict(self))

    def resolve(self, folder: Path) -> dict[str, Path | None]:
        """Absolute paths of backbone_rpn, head and custom_objects, relative to ``folder``."""
        return {
            "backbone_rpn": folder / self.backbone_rpn,
            "head": folder / self.head.model,
            "custom_objects": folder / self.custom_objects if self.custom_objects else None,
        }


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def is_card(detector: dict[str, Any]) -> bool:
    """True when a manifest's ``detector`` section holds a card (a card export)."""
    return isinstance(detector, dict) and set(detector) == {CARD_KEY}


def read_card(path: Path) -> DetectorCard:
    """Load and validate a card file; CardError naming the file on any problem."""
    path = Path(path)
    if not path.exists():
        raise CardError(f"--detector {path}: no such file (expected a detector card .json)")
    try:
        data = read_json(path, "--detector")
    except RoiedgeError as error:
        raise CardError(str(error)) from None
    return parse_card(data, source=str(path))


# --------------------------------------------------------------------------------------- parsing


class _Reader:
    """Reads one JSON object section; every error names ``source`` and the dotted key."""

    def __init__(self, data: Any, where: str, source: str) -> None:
        self.where, self.source = where, source
        if not isinstance(data, dict):
            self.fail(where, data, "a JSON object")
        self.data = data
        self.seen: set[str] = set()

    def fail(self, key: str, value: Any, expected: str):
        shown = _shown(value)
        if len(shown) > 80:
            shown = shown[:77] + "..."
        raise CardError(f"{self.source}: {key} is {shown}; expected {expected}")

    def key(self, name: str) -> str:
        return f"{self.where}.{name}" if self.where else name

    def get(self, name: str, default: Any = ..., *, required: bool = False) -> Any:
        self.seen.add(name)
        if name not in self.data:
            if required or default is ...:
                raise CardError(f"{self.source}: {self.key(name)} is missing; it is required")
            return default
        return self.data[name]

    def choice(self, name: str, options: tuple[str, ...], default: Any = ...) -> str:
        value = self.get(name, default)
        if value not in options:
            self.fail(self.key(name), value, f"one of {', '.join(map(strict_json.dumps, options))}")
        return value

    def number(self, name: str, default: Any = ..., *, low=None, high=None, integer=False):
        value = self.get(name, default)
        if value is None and default is None:
            return None
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        ok = ok and math.isfinite(value) and (not integer or float(value).is_integer())
        ok = ok and (low is None or value >= low) and (high is None or value <= high)
        if not ok:
            kind = "an integer" if integer else "a number"
            bounds = "" if low is None else f" >= {low}"
            bounds += "" if high is None else f" and <= {high}"
            self.fail(self.key(name), value, f"{kind}{bounds}")
        return int(value) if integer else float(value)

    def boolean(self, name: str, default: Any = ...) -> bool:
        value = self.get(name, default)
        if not isinstance(value, bool):
            self.fail(self.key(name), value, "true or false")
        return value

    def numbers(self, name: str, length=None, default: Any = ..., *, positive=False) -> tuple:
        value = self.get(name, default)
        ok = isinstance(value, (list, tuple)) and (length is None or len(value) == length)
        ok = ok and len(value) > 0
        ok = ok and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
            for v in value
        )
        ok = ok and (not positive or all(v > 0 for v in value))
        if not ok:
            count = f"{length} " if length else "a non-empty list of "
            self.fail(self.key(name), value, f"{count}{'positive ' if positive else ''}numbers")
        return tuple(float(v) for v in value)

    def text(self, name: str, default: Any = ...) -> str | None:
        value = self.get(name, default)
        if value is None and default is None:
            return None
        if not isinstance(value, str) or not value:
            self.fail(self.key(name), value, "a non-empty string")
        return value

    def order(self, name: str, allowed: tuple[str, ...], default: tuple[str, ...]) -> tuple:
        value = self.get(name, list(default))
        if not isinstance(value, list) or sorted(value) != sorted(allowed):
            self.fail(self.key(name), value, f"a list ordering {', '.join(allowed)}")
        return tuple(value)

    def section(self, name: str) -> _Reader:
        return _Reader(self.get(name, required=True), self.key(name), self.source)

    def done(self) -> None:
        unknown = sorted(set(self.data) - self.seen)
        if unknown:
            raise CardError(
                f"{self.source}: unknown key {self.key(unknown[0])}"
                f"{f' (and {len(unknown) - 1} more)' if len(unknown) > 1 else ''}; "
                f"expected keys of {self.where or 'the card'}: {', '.join(sorted(self.seen))}"
            )


def _shown(value: Any) -> str:
    """A value as the card had it (JSON), or its repr when it is not JSON."""
    try:
        return strict_json.dumps(value)
    except (TypeError, ValueError):
        return repr(value)


def parse_card(data: Any, source: str = "detector card") -> DetectorCard:
    """Validate a card's JSON object into a DetectorCard; one-line CardError on any problem."""
    top = _Reader(data, "", source)
    version = top.get("schema_version", required=True)
    if version != SCHEMA_VERSION:
        top.fail("schema_version", version, str(SCHEMA_VERSION))
    backbone_rpn = top.text("backbone_rpn")
    custom_objects = top.text("custom_objects", None)
    size = top.get("image_size")
    if not (
        isinstance(size, list)
        and len(size) == 2
        and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in size)
    ):
        top.fail("image_size", size, "[H, W], two positive integers")

    pre = top.section("preprocess")
    preprocess = Preprocess(
        channels=pre.choice("channels", ("RGB", "BGR")),
        mean=pre.numbers("mean", 3),
        std=pre.numbers("std", 3, positive=True),
        resize=pre.choice("resize", ("stretch", "keep_aspect_pad")),
    )
    pre.done()

    names = top.get("class_names")
    if not (
        isinstance(names, list) and names and all(isinstance(n, str) and n for n in names)
    ) or len(set(names)) != len(names):
        top.fail("class_names", names, "a non-empty list of distinct names")
    ids = top.get("category_ids", list(range(1, len(names) + 1)))
    if not (
        isinstance(ids, list)
        and len(ids) == len(names)
        and all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in ids)
        and len(set(ids)) == len(ids)
    ):
        top.fail("category_ids", ids, f"{len(names)} distinct non-negative integers")

    anc = top.section("anchors")
    anchors = Anchors(
        stride=anc.number("stride", low=1, integer=True),
        sizes=anc.numbers("sizes", positive=True),
        ratios=anc.numbers("ratios", positive=True),
        ratio_side=anc.choice("ratio_side", ("w/h", "h/w"), "w/h"),
        order=anc.choice("order", ("size_major", "ratio_major"), "size_major"),
        centre_offset=anc.number("centre_offset", 0.5, low=0.0, high=1.0),
    )
    anc.done()

    rp = top.section("rpn")
    layouts = _Reader(rp.get("layouts", {}), rp.key("layouts"), source)
    rpn = Rpn(
        outputs=rp.order("outputs", ("scores", "deltas", "features"), Rpn.outputs),
        scores_layout=layouts.choice("scores", RPN_SCORE_LAYOUTS, Rpn.scores_layout),
        deltas_layout=layouts.choice("deltas", RPN_DELTA_LAYOUTS, Rpn.deltas_layout),
        scores=rp.choice("scores", ("probability", "logit"), "probability"),
        delta_order=rp.choice("delta_order", DELTA_ORDERS),
        delta_scales=rp.numbers("delta_scales", 4, positive=True),
        pre_nms_top_n=rp.number("pre_nms_top_n", None, low=1, integer=True),
        post_nms_top_n=rp.number("post_nms_top_n", low=1, integer=True),
        nms_iou=rp.number("nms_iou", low=0.0, high=1.0),
        min_size=rp.number("min_size", 0.0, low=0.0),
    )
    layouts.done()
    rp.done()

    ro = top.section("rois")
    rois = Rois(
        format=ro.choice("format", ROI_FORMATS),
        integer=ro.boolean("integer", False),
        num_rois=ro.number("num_rois", low=1, integer=True),
        box_indexes=ro.boolean("box_indexes", False),
    )
    ro.done()

    hd = top.section("head")
    wanted_inputs = (
        ("features", "rois", "box_indexes") if rois.box_indexes else ("features", "rois")
    )
    head = Head(
        model=hd.text("model"),
        inputs=hd.order("inputs", wanted_inputs, wanted_inputs),
        outputs=hd.order("outputs", ("class_scores", "box_deltas"), Head.outputs),
        scores=hd.choice("scores", ("softmax",), "softmax"),
        background=hd.choice("background", ("first", "last")),
        class_selection=hd.choice("class_selection", ("argmax", "per_class")),
        deltas_layout=hd.choice("deltas_layout", HEAD_DELTA_LAYOUTS),
        delta_order=hd.choice("delta_order", DELTA_ORDERS),
        delta_scales=hd.numbers("delta_scales", 4, positive=True),
        round_to_feature_pixels=hd.boolean("round_to_feature_pixels", False),
        clip=hd.boolean("clip", True),
    )
    hd.done()
    if head.round_to_feature_pixels and rois.format != "feature_xywh":
        top.fail("head.round_to_feature_pixels", True, 'false unless rois.format is "feature_xywh"')

    po = top.section("postprocess")
    postprocess = Postprocess(
        score_threshold=po.number("score_threshold", low=0.0, high=1.0),
        nms_iou=po.number("nms_iou", low=0.0, high=1.0),
        max_detections=po.number("max_detections", low=1, integer=True),
    )
    po.done()
    top.done()
    card = DetectorCard(
        backbone_rpn=backbone_rpn,
        head=head,
        image_size=(size[0], size[1]),
        preprocess=preprocess,
        class_names=tuple(names),
        category_ids=tuple(ids),
        anchors=anchors,
        rpn=rpn,
        rois=rois,
        postprocess=postprocess,
        custom_objects=custom_objects,
    )
    if rpn.pre_nms_top_n is not None and rpn.pre_nms_top_n < rpn.post_nms_top_n:
        top.fail(
            "rpn.pre_nms_top_n", rpn.pre_nms_top_n, f">= rpn.post_nms_top_n ({rpn.post_nms_top_n})"
        )
    return card


def card_from_manifest(detector: dict[str, Any], source: str) -> DetectorCard:
    """The card a card export recorded in its manifest's ``detector`` section."""
    return parse_card(detector[CARD_KEY], source=source)


def card_to_json(card: DetectorCard) -> dict[str, Any]:
    """The card as a JSON object in its file layout (rpn.layouts nested), which
    :func:`parse_card` reads back to an equal card (the manifest records it so)."""
    data = card.to_dict()
    rpn = data["rpn"]
    rpn["layouts"] = {"scores": rpn.pop("scores_layout"), "deltas": rpn.pop("deltas_layout")}
    return data
