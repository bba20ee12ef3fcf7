"""COCO instances datasets: read, validate, and resize them exactly as the runtime resizes photos.

A dataset is one COCO instances JSON file: ``images[]`` (``id``, ``file_name`` relative to the JSON's
folder or to ``images_dir``, ``width``, ``height``), ``annotations[]`` (``image_id``, ``category_id``,
``bbox`` [x, y, w, h] in pixels, optional ``iscrowd`` and ``area``) and ``categories[]`` (``id``,
``name``). Class ids 0..K-1 are the categories ordered by id. Boxes here are ``[y1, x1, y2, x2]``
(the project's order); every mistake is a one-line :class:`DatasetError` naming the file and entry.
Images load through :func:`runtime.images.load_image` and are resized with
:func:`runtime.images.resize`, the runtime's own functions, so training sees what ``detect`` sees.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from models.data import Batch
from runtime import limits, strict_json
from runtime.coco_images import entry_name, image_entries
from runtime.errors import RoiedgeError
from runtime.images import load_image, open_image, resize
from runtime.safe_files import read_json, regular_file

#: A box may overhang its image by this many pixels (float rounding of annotation tools);
#: it is clipped to the image. Anything further out is an error.
BOX_SLACK = 0.01


class DatasetError(RoiedgeError):
    """A COCO dataset file or one of its entries is malformed (exit 2)."""


class CocoImage(NamedTuple):
    """One image of a dataset with its annotations in original pixels.

    ``boxes`` [n,4] float32 (y1, x1, y2, x2); ``labels`` [n] int32 class ids 0..K-1; ``crowd`` [n]
    bool; ``areas`` [n] float64 (the annotation's ``area``, or the box area when absent).
    """

    image_id: int
    path: Path
    height: int
    width: int
    boxes: np.ndarray
    labels: np.ndarray
    crowd: np.ndarray
    areas: np.ndarray


class CocoDataset(NamedTuple):
    """A validated dataset: class names (categories by id) and its images in file order."""

    source: Path
    class_names: tuple[str, ...]
    category_ids: tuple[int, ...]
    images: tuple[CocoImage, ...]

    @property
    def num_annotations(self) -> int:
        return int(sum(len(image.boxes) for image in self.images))


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _require(ok: bool, where: str, seen: Any, expected: str) -> None:
    if not ok:
        raise DatasetError(f"{where}: {seen}; expected {expected}")


def _image_size(path: Path) -> tuple[int, int]:
    """(height, width) of ``path`` as the runtime's loader sees it (one-line error otherwise)."""
    try:
        return tuple(load_image(path).shape[:2])
    except RoiedgeError as error:
        raise DatasetError(str(error)) from None


def load_coco(
    path: Path | str, images_dir: Path | str | None = None, require_annotations: bool = True
) -> CocoDataset:
    """Read and validate a COCO instances JSON; image files are checked to exist and be readable.

    ``require_annotations=False`` accepts a dataset without boxes (calibration images only).
    """
    source = Path(path)
    if not source.exists():
        raise DatasetError(f"{source}: no such dataset file (expected a COCO instances .json)")
    try:  # a FIFO, device or folder is named as what it is, never opened
        regular_file(source, "COCO dataset")
    except RoiedgeError as error:
        raise DatasetError(str(error)) from None
    try:  # size, nesting depth, NaN tokens and duplicate keys checked before it is used
        data = read_json(source, "COCO dataset")
    except RoiedgeError as error:
        raise DatasetError(str(error)) from None
    _require(isinstance(data, dict), str(source), f"a JSON {type(data).__name__}", "an object")
    for key in ("images", "annotations", "categories"):
        _require(
            isinstance(data.get(key), list),
            str(source),
            f"'{key}' is {type(data.get(key)).__name__}",
            f"a list '{key}' (COCO instances format)",
        )
    root = Path(images_dir) if images_dir is not None else source.parent

    categories: dict[int, str] = {}
    for i, cat in enumerate(data["categories"]):
        where = entry_name(source, "categories", i, cat)
        _require(isinstance(cat, dict), where, type(cat).__name__, "an object")
        _require(
            isinstance(cat.get("id"), int) and not isinstance(cat.get("id"), bool),
            where,
            f"id {cat.get('id')!r}",
            "an integer id",
        )
        _require(
            isinstance(cat.get("name"), str) and cat["name"].strip() != "",
            where,
            f"name {cat.get('name')!r}",
            "a non-empty name",
        )
        _require(cat["id"] not in categories, where, f"id {cat['id']} repeats", "unique ids")
        # Two classes of one name would be one row of every per-class table and one label.
        _require(
            cat["name"] not in categories.values(),
            where,
            f"name {cat['name']!r} repeats",
            "unique category names",
        )
        categories[cat["id"]] = cat["name"]
    if not categories:
        raise DatasetError(f"{source}: no categories; expected at least one in categories[]")
    category_ids = tuple(sorted(categories))
    class_of = {cid: k for k, cid in enumerate(category_ids)}

    try:
        entries = image_entries(data["images"], source, root)
    except RoiedgeError as error:
        raise DatasetError(str(error)) from None
    headers: list[tuple[int, Path, int, int]] = []
    index_of: dict[int, int] = {}
    for i, entry in enumerate(entries):
        where = entry_name(source, "images", i, data["images"][i])
        file = entry.path
        try:
            height, width = _image_size(file)
        except DatasetError as error:
            raise DatasetError(f"{where}: {error}") from None
        for key, declared, actual in (
            ("height", entry.height, height),
            ("width", entry.width, width),
        ):
            _require(
                declared is None or declared == actual,
                where,
                f"{key} {declared!r} but {file} is {width}x{height} (WxH)",
                "the declared size to match the file",
            )
        index_of[entry.image_id] = len(headers)
        headers.append((entry.image_id, file, height, width))

    per_image: list[list[tuple[list[float], int, bool, float]]] = [[] for _ in headers]
    seen_ann_ids: set[Any] = set()
    for i, ann in enumerate(data["annotations"]):
        where = entry_name(source, "annotations", i, ann)
        _require(isinstance(ann, dict), where, type(ann).__name__, "an object")
        ann_id = ann.get("id")
        _require(
            ann_id is None or (isinstance(ann_id, int) and not isinstance(ann_id, bool)),
            where,
            f"id {ann_id!r}",
            "an integer annotation id",
        )
        _require(
            ann_id is None or ann_id not in seen_ann_ids,
            where,
            f"id {ann_id} repeats",
            "unique annotation ids",
        )
        seen_ann_ids.add(ann_id)
        image_id = ann.get("image_id")
        _require(
            isinstance(image_id, int) and not isinstance(image_id, bool) and image_id in index_of,
            where,
            f"image_id {image_id!r} is not in images[]",
            "the id of an entry of images[]",
        )
        cid = ann.get("category_id")
        _require(
            isinstance(cid, int) and not isinstance(cid, bool) and cid in class_of,
            where,
            f"unknown category_id {cid!r}",
            f"one of the categories' ids {list(category_ids)}",
        )
        bbox = ann.get("bbox")
        _require(
            isinstance(bbox, list) and len(bbox) == 4 and all(_number(v) for v in bbox),
            where,
            f"bbox {bbox!r}",
            "[x, y, w, h], four finite numbers in pixels",
        )
        x, y, w, h = (float(v) for v in bbox)
        _, file, height, width = headers[index_of[image_id]]
        _require(w > 0 and h > 0, where, f"bbox {bbox} has non-positive size", "w > 0 and h > 0")
        _require(
            x >= -BOX_SLACK
            and y >= -BOX_SLACK
            and x + w <= width + BOX_SLACK
            and y + h <= height + BOX_SLACK,
            where,
            f"bbox {bbox} lies outside image {file.name} ({width}x{height} WxH)",
            "0 <= x, 0 <= y, x + w <= width, y + h <= height",
        )
        crowd = ann.get("iscrowd", 0)
        _require(crowd in (0, 1, False, True), where, f"iscrowd {crowd!r}", "0 or 1")
        area = ann.get("area", w * h)
        _require(_number(area) and area >= 0, where, f"area {area!r}", "a non-negative number")
        y1, x1 = max(y, 0.0), max(x, 0.0)
        y2, x2 = min(y + h, float(height)), min(x + w, float(width))
        per_image[index_of[image_id]].append(
            ([y1, x1, y2, x2], class_of[cid], bool(crowd), float(area))
        )
        boxes_here = len(per_image[index_of[image_id]])
        _require(
            boxes_here <= limits.limit("annotations_per_image"),
            where,
            f"box {boxes_here:,} of image_id {image_id} ({file.name})",
            f"at most {limits.limit('annotations_per_image'):,} boxes per image "
            "(LIMITS annotations_per_image, runtime/limits.py)",
        )
    if require_annotations and not any(not c for anns in per_image for _, _, c, _ in anns):
        raise DatasetError(
            f"{source}: empty dataset (no non-crowd annotations); expected boxes in annotations[]"
        )

    images = []
    for (ident, file, height, width), anns in zip(headers, per_image):
        images.append(
            CocoImage(
                image_id=ident,
                path=file,
                height=height,
                width=width,
                boxes=np.asarray([a[0] for a in anns], np.float32).reshape(-1, 4),
                labels=np.asarray([a[1] for a in anns], np.int32),
                crowd=np.asarray([a[2] for a in anns], bool),
                areas=np.asarray([a[3] for a in anns], np.float64),
            )
        )
    return CocoDataset(
        source, tuple(categories[c] for c in category_ids), category_ids, tuple(images)
    )


def load_resized(path: Path, size: tuple[int, int]) -> tuple[np.ndarray, tuple[int, int]]:
    """One image file -> (uint8 RGB [H,W,3] at ``size`` = (H, W) as the runtime resizes it,
    the original (height, width)). Decoded as ``python -m runtime detect`` decodes it: a large
    JPEG at the smallest 1/2, 1/4, 1/8 scale still at least ``size`` (runtime.images.open_image),
    so what is trained, scored and reported on is what the device sees."""
    pixels, (height, width) = open_image(path, reduce_to=tuple(size))
    return resize(pixels, tuple(size)), (int(height), int(width))


def scale_to(size: tuple[int, int], height: int, width: int) -> np.ndarray:
    """Multipliers [4] taking original-pixel boxes (y1, x1, y2, x2) to ``size`` = (H, W) pixels.

    The runtime resizes the whole photo to the model size and multiplies its boxes back by the
    inverse, so pixel edges map linearly: y * H / height, x * W / width.
    """
    sy, sx = size[0] / height, size[1] / width
    return np.asarray([sy, sx, sy, sx], np.float32)


def resized_batch(dataset: CocoDataset, size: tuple[int, int], progress=None) -> Batch:
    """Every image at ``size`` = (H, W) with its non-crowd boxes in those pixels (training input)."""
    images, boxes, labels = [], [], []
    for item in dataset.images:
        try:
            pixels, (height, width) = load_resized(item.path, size)
        except RoiedgeError as error:
            raise DatasetError(f"{dataset.source}: image id {item.image_id}: {error}") from None
        keep = ~item.crowd
        images.append(pixels)
        boxes.append(item.boxes[keep] * scale_to(size, height, width))
        labels.append(item.labels[keep])
        if progress is not None:
            progress.update(1)
    return Batch(np.stack(images), boxes, labels)


def ground_truth(dataset: CocoDataset) -> list[dict[str, np.ndarray]]:
    """Per image, ``boxes`` (original pixels), ``class_ids``, ``crowd``, ``areas`` for mAP."""
    return [
        {"boxes": i.boxes, "class_ids": i.labels, "crowd": i.crowd, "areas": i.areas}
        for i in dataset.images
    ]


def write_coco(
    path: Path,
    files: Sequence[str],
    sizes: Sequence[tuple[int, int]],
    annotations: Sequence[Sequence[tuple[Sequence[float], int, bool]]],
    class_names: Sequence[str],
) -> Path:
    """Write a COCO instances JSON: per image its file name, (height, width) and annotations
    ``(box [y1, x1, y2, x2] pixels, class id 0..K-1, crowd)``; category ids are 1..K."""
    from runtime.manifest import atomic_write_bytes

    images, anns = [], []
    for index, (name, (height, width), objects) in enumerate(zip(files, sizes, annotations)):
        images.append({"id": index + 1, "file_name": name, "height": height, "width": width})
        for (y1, x1, y2, x2), cls, crowd in objects:
            w, h = float(x2 - x1), float(y2 - y1)
            anns.append(
                {
                    "id": len(anns) + 1,
                    "image_id": index + 1,
                    "category_id": int(cls) + 1,
                    "bbox": [float(x1), float(y1), w, h],
                    "area": w * h,
                    "iscrowd": int(bool(crowd)),
                }
            )
    categories = [{"id": k + 1, "name": name} for k, name in enumerate(class_names)]
    content = {"images": images, "annotations": anns, "categories": categories}
    atomic_write_bytes(Path(path), strict_json.dump_bytes(content, indent=None))
    return Path(path)
