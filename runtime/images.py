"""Reading images for the detector and drawing its detections (Pillow, imported lazily)."""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from runtime import limits
from runtime.errors import RoiedgeError, one_line
from runtime.safe_files import open_regular

# Distinct, readable box colours, cycled by class id.
_COLOURS = ((230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180))


#: Smallest image side the detector accepts (bilinear resizing needs two samples per axis).
MIN_SIDE = 2


#: Image file suffixes (case-insensitive) picked up from a folder: by ``detect`` and by the
#: export's ``--calibration`` folder alike; the loader decodes each of them.
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")


def load_image(source: Any) -> np.ndarray:
    """A path, PIL image or HxWx3 array -> HxWx3 uint8 RGB array, in the frame a viewer shows.

    EXIF orientation is applied; 16- and 32-bit integer images are scaled (not clipped) to 8 bits;
    palette, CMYK, grayscale and alpha modes are converted to RGB. Unreadable files, decompression
    bombs (over ``PIL.Image.MAX_IMAGE_PIXELS``), images under 2x2 and wrongly shaped arrays raise
    a one-line RoiedgeError naming them.
    """
    return open_image(source)[0]


def open_image(
    source: Any, reduce_to: tuple[int, int] | None = None
) -> tuple[np.ndarray, tuple[int, int]]:
    """Like :func:`load_image`, plus the image's full (height, width) in its displayed frame.

    With ``reduce_to`` (H, W), a JPEG is decoded at the smallest 1/2, 1/4 or 1/8 scale still at
    least that size (``Image.draft``): an 8000x6000 photo then never exists at full size in memory.
    """
    if isinstance(source, (str, os.PathLike)):
        return _open_path(Path(source), reduce_to)
    if hasattr(source, "convert") and hasattr(source, "size"):  # a PIL image
        array = _to_rgb(source, "PIL image")
        return array, array.shape[:2]
    array = np.asarray(source)
    if array.ndim != 3 or array.shape[-1] != 3 or array.dtype != np.uint8:
        raise RoiedgeError(
            f"image array has shape {array.shape} and dtype {array.dtype}; expected HxWx3 uint8 RGB"
        )
    _check_size(array.shape[0], array.shape[1], "image array")
    return array, array.shape[:2]


def _check_size(height: int, width: int, what: str) -> None:
    if height < MIN_SIDE or width < MIN_SIDE:
        raise RoiedgeError(
            f"{what} is {width}x{height} pixels; expected at least {MIN_SIDE}x{MIN_SIDE}"
        )


def _check_pixels(path: Path, width: int, height: int) -> None:
    """Refuse an image whose header claims more than LIMITS ``image_pixels``, before decoding."""
    bound = limits.limit("image_pixels")
    if width * height > bound:
        raise RoiedgeError(
            f"{path}: refused as a decompression bomb ({width}x{height} = {width * height:,} "
            f"pixels to decode); expected at most {bound:,} (LIMITS image_pixels)"
        )


def _open_path(path: Path, reduce_to: tuple[int, int] | None) -> tuple[np.ndarray, tuple[int, int]]:
    import warnings

    from PIL import Image, ImageOps, UnidentifiedImageError

    if not os.path.lexists(path):
        raise RoiedgeError(f"{path}: image not found")
    try:
        with warnings.catch_warnings(), open_regular(path, "image") as handle:
            # Pillow only warns between MAX_IMAGE_PIXELS and twice that; refuse both alike.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(handle) as image:
                width, height = image.size
                _check_size(height, width, str(path))
                drafted = reduce_to is not None and image.format == "JPEG"
                if not drafted:  # before getexif: a PNG's getexif() decodes the whole image
                    _check_pixels(path, width, height)
                orientation = image.getexif().get(0x0112, 1)  # EXIF Orientation
                transposed = orientation in (5, 6, 7, 8)
                full = (width, height) if transposed else (height, width)
                if drafted:
                    want_h, want_w = reduce_to
                    # draft() takes (width, height) in the stored frame.
                    want = (want_h, want_w) if transposed else (want_w, want_h)
                    image.draft("RGB", want)
                _check_pixels(path, *image.size)  # what will be decoded, from the header
                image = ImageOps.exif_transpose(image)
                return _to_rgb(image, str(path)), full
    except FileNotFoundError:
        raise RoiedgeError(f"{path}: image not found") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        seen = one_line(error).split(",")[0]  # "Image size (N pixels) exceeds ..."
        raise RoiedgeError(
            f"{path}: refused as a decompression bomb ({seen}); expected at most "
            f"PIL.Image.MAX_IMAGE_PIXELS = {Image.MAX_IMAGE_PIXELS} pixels"
        ) from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, EOFError) as error:
        raise RoiedgeError(
            f"{path}: cannot read it as an image ({type(error).__name__}); "
            "expected a PNG, JPEG or other Pillow-readable file"
        ) from None


def _integer_bits(image: Any) -> int | None:
    """Bits per sample of a 16/32-bit integer image (mode I;16* or I), else None."""
    if image.mode.startswith("I;16"):
        return 16
    if image.mode != "I":
        return None
    if image.format == "PNG":  # PNG stores at most 16 bits; Pillow may still say "I"
        return 16
    tags = getattr(image, "tag_v2", None)
    bits = tags.get(258) if tags is not None else None  # TIFF BitsPerSample
    if isinstance(bits, tuple):
        bits = bits[0]
    return int(bits) if bits in (16, 32) else 32


def _to_rgb(image: Any, what: str) -> np.ndarray:
    """Any PIL image -> HxWx3 uint8 RGB; deep integer images are scaled, not clipped."""
    _check_size(image.size[1], image.size[0], what)
    bits = _integer_bits(image)
    if bits is not None:
        values = np.asarray(image)
        if bits == 32:
            values = values.astype(np.int64) & 0xFFFFFFFF  # int32 storage of unsigned samples
        top = float(2**bits - 1)
        gray = np.round(values.astype(np.float64) * (255.0 / top)).astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=-1)
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        image = image.convert("RGBA")  # drop alpha after resolving the palette's transparency
    return np.asarray(image.convert("RGB"), dtype=np.uint8)


def resize(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """HxWx3 uint8 -> ``size`` (H, W) x3 uint8, bilinear; returned unchanged if already that size."""
    if tuple(image.shape[:2]) == tuple(size):
        return image
    from PIL import Image

    resized = Image.fromarray(image).resize((int(size[1]), int(size[0])), Image.BILINEAR)
    return np.asarray(resized, dtype=np.uint8)


#: ``detect --out`` writes annotated JPEGs at most this many pixels on their longest side.
ANNOTATED_MAX_SIDE = 1280
#: JPEG quality of the annotated images.
ANNOTATED_QUALITY = 90


@functools.lru_cache(maxsize=16)
def _font(pixels: int) -> Any:
    """A label font ``pixels`` high: Pillow's scalable default, or its fixed bitmap font where
    Pillow is older than 10.1 or built without FreeType."""
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=pixels)
    except (TypeError, OSError, ImportError):
        return ImageFont.load_default()


def draw_detections(
    image: np.ndarray, detections: Sequence[Any], max_side: int | None = None
) -> Any:
    """A PIL image of ``image`` (HxWx3 uint8) with each detection's box and "name score" label.

    ``detections`` are :class:`runtime.processing.Detection` (box y1, x1, y2, x2 in pixels of
    ``image``). With ``max_side`` the picture is first shrunk (never enlarged) so its longest
    side is at most that, boxes with it. Line width and label height follow the drawn picture's
    size (a 4000x3000 photo gets labels as readable as a 640x480 one).
    """
    from PIL import Image, ImageDraw

    canvas = Image.fromarray(np.asarray(image, dtype=np.uint8)).convert("RGB")
    factor = 1.0
    if max_side is not None and max(canvas.size) > max_side:
        factor = max_side / max(canvas.size)
        size = (max(1, round(canvas.width * factor)), max(1, round(canvas.height * factor)))
        canvas = canvas.resize(size, Image.Resampling.BILINEAR, reducing_gap=2.0)
    draw = ImageDraw.Draw(canvas)
    width = max(1, round(min(canvas.size) / 160))
    font = _font(max(10, round(max(canvas.size) / 50)))
    for detection in detections:
        y1, x1, y2, x2 = (float(v) * factor for v in detection.box)
        colour = _COLOURS[detection.class_id % len(_COLOURS)]
        draw.rectangle((x1, y1, x2, y2), outline=colour, width=width)
        label = f"{detection.class_name} {detection.score:.2f}"
        left, top, right, bottom = draw.textbbox((x1, y1), label, font=font)
        top_y = y1 - (bottom - top) - 2 if y1 - (bottom - top) - 2 >= 0 else y1
        draw.rectangle(
            (x1, top_y, x1 + (right - left) + 2, top_y + (bottom - top) + 2), fill=colour
        )
        draw.text((x1 + 1, top_y + 1 - (top - y1)), label, fill=(255, 255, 255), font=font)
    return canvas


def save_image(image: Any, path: os.PathLike) -> Path:
    """Write a PIL image atomically; the format follows the suffix (PNG if none)."""
    import io

    from runtime.manifest import atomic_write_bytes

    path = Path(path)
    buffer = io.BytesIO()
    kind = (path.suffix.lstrip(".") or "png").upper().replace("JPG", "JPEG")
    options = {"quality": ANNOTATED_QUALITY} if kind == "JPEG" else {}
    image.save(buffer, format=kind, **options)
    atomic_write_bytes(path, buffer.getvalue())
    return path
