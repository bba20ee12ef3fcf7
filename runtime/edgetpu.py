"""The Coral Edge TPU side of the TFLite backends: delegate modes, the runtime library, loading it.

Imports nothing but the standard library and :mod:`runtime.errors`; :mod:`runtime.backends`
uses it (and re-exports its names).
"""

from __future__ import annotations

import platform
import sys
from pathlib import Path
from typing import Any

from runtime.errors import RoiedgeError, say

EDGETPU_MODES = ("off", "try", "require")
_EDGETPU_LIBRARY = {
    "Linux": "libedgetpu.so.1",
    "Darwin": "libedgetpu.1.dylib",
    "Windows": "edgetpu.dll",
}


class BackendError(RoiedgeError):
    """A backend is unknown, not installed, or cannot load or run an artifact."""


def edgetpu_mode_for(path: Path, compiled: bool, edgetpu: str) -> str:
    """The delegate mode to use for a model: only an edgetpu_compiler output can use the TPU.

    An uncompiled model under ``try`` runs on the CPU (said on stderr); under ``require`` it is an
    error. A compiled model needs the delegate: its ``edgetpu-custom-op`` has no CPU kernel.
    """
    if compiled:
        return "require"  # edgetpu-custom-op has no CPU kernel: no delegate, no run
    if edgetpu == "off":
        return "off"
    message = (
        f"{path.name} was not compiled by edgetpu_compiler (it has no edgetpu-custom-op), so the "
        "Edge TPU would run none of it"
    )
    if edgetpu == "require":
        raise BackendError(
            f"{path}: {message}; expected the compiled backbone (python -m export edgetpu DIR "
            "adds backbone_rpn/tflite/int8_io_edgetpu)"
        )
    say(f"warning: {message}; running it on the CPU", file=sys.stderr)
    return "off"


def edgetpu_available() -> bool:
    """Whether the Coral Edge TPU runtime library can be loaded here."""
    import ctypes

    try:
        ctypes.CDLL(_EDGETPU_LIBRARY.get(platform.system(), "libedgetpu.so.1"))
    except OSError:
        return False
    return True


def load_edgetpu_delegate(module: Any, required: bool) -> Any:
    """The Coral Edge TPU delegate via ``module.load_delegate``, or None (with a message) if absent.

    With ``required`` a missing delegate raises a BackendError instead of falling back to the CPU.
    """
    import ctypes

    library = _EDGETPU_LIBRARY.get(platform.system(), "libedgetpu.so.1")
    try:
        # Probe with ctypes first: a failed load_delegate leaves a half-built Delegate whose
        # __del__ prints a traceback (ai_edge_litert 2.3).
        ctypes.CDLL(library)
        return module.load_delegate(library)
    except (ValueError, OSError, RuntimeError, AttributeError) as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        message = (
            f"Edge TPU delegate {library} could not be loaded ({reason}); expected the Coral "
            "runtime (libedgetpu) installed and a Coral device attached (a model compiled by "
            "edgetpu_compiler cannot run without it)"
        )
        if required:
            raise BackendError(message) from None
        say(f"warning: {message}; running on the CPU instead", file=sys.stderr)
        return None
