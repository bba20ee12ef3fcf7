"""Matplotlib figures as PNG bytes, for the writers that store them atomically."""

from __future__ import annotations

import io
from typing import Any


def png_bytes(figure: Any, dpi: int = 120) -> bytes:
    """``figure`` laid out tightly and rendered as PNG bytes; the figure is closed."""
    import matplotlib.pyplot as plt

    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi)
    plt.close(figure)
    return buffer.getvalue()
