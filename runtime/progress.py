"""A tiny progress printer for long loops (tqdm is not on device images; used if present)."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any, TextIO


def progress(
    items: Iterable[Any], total: int, label: str, stream: TextIO | None = None
) -> Iterator[Any]:
    """Yield ``items`` while printing ``label i/total elapsed`` to stderr (one line per item when
    stderr is not a terminal, an updating line when it is)."""
    stream = stream or sys.stderr
    tty = stream.isatty()
    start = time.perf_counter()
    for i, item in enumerate(items, 1):
        yield item
        text = f"{label} {i}/{total} {time.perf_counter() - start:.1f}s"
        stream.write(f"\r{text}" if tty else f"{text}\n")
        stream.flush()
    if tty:
        stream.write("\n")
