"""A tiny progress printer for long loops (tqdm is not on device images)."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any, TextIO


def progress(
    items: Iterable[Any], total: int, label: str, stream: TextIO | None = None
) -> Iterator[Any]:
    """Yield ``items``, updating a ``label i/total elapsed`` line on stderr when it is a terminal.

    Silent when stderr is redirected, so logs and error output stay clean.
    """
    stream = stream or sys.stderr
    if not stream.isatty():
        yield from items
        return
    start = time.perf_counter()
    try:
        for i, item in enumerate(items, 1):
            stream.write(f"\r{label} {i}/{total} {time.perf_counter() - start:.1f}s ")
            stream.flush()
            yield item
    finally:
        stream.write("\r\033[K")
        stream.flush()
