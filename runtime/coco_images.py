"""The ``images[]`` of a COCO instances file: ids and file paths (``detect --data VAL.json``).

TF-free and numpy-free. ``detect --data`` runs on exactly the dataset's images and writes each
one's own ``id`` into ``--json``, so pycocotools scores the results against the user's
annotations whatever the ids are (gaps, 0-based, any order). ``models.coco`` reads the same
entries through :func:`image_entries` before it validates sizes and annotations.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple

from runtime.errors import RoiedgeError
from runtime.safe_files import read_json


class CocoImageEntry(NamedTuple):
    """One ``images[]`` entry: its id, the file (resolved against the images folder) and the
    declared height/width (None when absent)."""

    image_id: int
    path: Path
    height: Any
    width: Any


def entry_name(source: Path, kind: str, index: int, item: Any) -> str:
    """``source: kind[index] (id X)``, how every dataset message names an entry."""
    ident = item.get("id") if isinstance(item, dict) else None
    return f"{source}: {kind}[{index}]" + ("" if ident is None else f" (id {ident})")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def image_entries(items: Any, source: Path, root: Path) -> list[CocoImageEntry]:
    """Validate ``images[]`` (a list of objects with a unique integer ``id`` and a ``file_name``)
    -> entries in file order; one-line RoiedgeError naming ``source`` and the entry otherwise."""
    if not isinstance(items, list):
        raise RoiedgeError(
            f"{source}: 'images' is {type(items).__name__}; expected a list 'images' "
            "(COCO instances format)"
        )
    if not items:
        raise RoiedgeError(f"{source}: empty dataset (no images); expected entries in images[]")
    entries: list[CocoImageEntry] = []
    seen: set[int] = set()
    for index, item in enumerate(items):
        where = entry_name(source, "images", index, item)
        if not isinstance(item, dict):
            raise RoiedgeError(f"{where}: {type(item).__name__}; expected an object")
        ident = item.get("id")
        if not _is_int(ident):
            raise RoiedgeError(f"{where}: id {ident!r}; expected an integer id")
        if ident in seen:
            raise RoiedgeError(f"{where}: id {ident} repeats; expected unique image ids")
        seen.add(ident)
        name = item.get("file_name")
        if not (isinstance(name, str) and name != ""):
            raise RoiedgeError(f"{where}: file_name {name!r}; expected a file name")
        entries.append(CocoImageEntry(ident, root / name, item.get("height"), item.get("width")))
    return entries


def read_coco_images(
    path: Path | str, images_dir: Path | str | None = None
) -> list[CocoImageEntry]:
    """The images of COCO file ``path``; ``file_name`` is relative to ``images_dir`` (default:
    the JSON's folder). Files are not opened here (``detect`` reports an unreadable one)."""
    source = Path(path)
    data = read_json(source, "COCO dataset")
    if not isinstance(data, dict):
        raise RoiedgeError(
            f"{source}: a JSON {type(data).__name__}; expected an object (COCO instances format)"
        )
    root = Path(images_dir) if images_dir is not None else source.parent
    return image_entries(data.get("images"), source, root)
