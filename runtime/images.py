"""Reading images for the detector and drawing its detections (Pillow, imported lazily)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from runtime.errors import RoiedgeError

# Distinct, readable box colours, cycled by class id.
_COLOURS = ((230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180))


def load_image(source: Any) -> np.ndarray:
    """A path, PIL image or HxWx3 array -> HxWx3 uint8 RGB array (grayscale/RGBA are converted).

    Unreadable files and wrongly shaped arrays raise a one-line RoiedgeError naming them.
    """
    if isinstance(source, (str, os.PathLike)):
        from PIL import Image, UnidentifiedImageError

        path = Path(source)
        try:
            with Image.open(path) as image:
                return np.asarray(image.convert("RGB"), dtype=np.uint8)
        except FileNotFoundError:
            raise RoiedgeError(f"{path}: image not found") from None
        except (UnidentifiedImageError, OSError, ValueError) as error:
            raise RoiedgeError(
                f"{path}: cannot read it as an image ({type(error).__name__}); "
                "expected a PNG, JPEG or other Pillow-readable file"
            ) from None
    if hasattr(source, "convert") and hasattr(source, "size"):  # a PIL image
        return np.asarray(source.convert("RGB"), dtype=np.uint8)
    array = np.asarray(source)
    if array.ndim != 3 or array.shape[-1] != 3 or array.dtype != np.uint8:
        raise RoiedgeError(
            f"image array has shape {array.shape} and dtype {array.dtype}; expected HxWx3 uint8 RGB"
        )
    return array


def resize(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """HxWx3 uint8 -> ``size`` (H, W) x3 uint8, bilinear; returned unchanged if already that size."""
    if tuple(image.shape[:2]) == tuple(size):
        return image
    from PIL import Image

    resized = Image.fromarray(image).resize((int(size[1]), int(size[0])), Image.BILINEAR)
    return np.asarray(resized, dtype=np.uint8)


def draw_detections(image: np.ndarray, detections: Sequence[Any]) -> Any:
    """A PIL image of ``image`` (HxWx3 uint8) with each detection's box and "name score" label.

    ``detections`` are :class:`runtime.processing.Detection` (box y1, x1, y2, x2 in pixels).
    """
    from PIL import Image, ImageDraw

    canvas = Image.fromarray(np.asarray(image, dtype=np.uint8)).convert("RGB")
    draw = ImageDraw.Draw(canvas)
    width = max(1, round(min(canvas.size) / 160))
    for detection in detections:
        y1, x1, y2, x2 = detection.box
        colour = _COLOURS[detection.class_id % len(_COLOURS)]
        draw.rectangle((x1, y1, x2, y2), outline=colour, width=width)
        label = f"{detection.class_name} {detection.score:.2f}"
        left, top, right, bottom = draw.textbbox((x1, y1), label)
        top_y = y1 - (bottom - top) - 2 if y1 - (bottom - top) - 2 >= 0 else y1
        draw.rectangle(
            (x1, top_y, x1 + (right - left) + 2, top_y + (bottom - top) + 2), fill=colour
        )
        draw.text((x1 + 1, top_y), label, fill=(255, 255, 255))
    return canvas


def save_image(image: Any, path: os.PathLike) -> Path:
    """Write a PIL image atomically; the format follows the suffix (PNG if none)."""
    import io

    from runtime.manifest import atomic_write_bytes

    path = Path(path)
    buffer = io.BytesIO()
    image.save(buffer, format=(path.suffix.lstrip(".") or "png").upper().replace("JPG", "JPEG"))
    atomic_write_bytes(path, buffer.getvalue())
    return path
