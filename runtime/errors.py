"""User-facing errors of the runtime: one line that names the thing, what was seen, what was expected."""

from __future__ import annotations

import sys
import unicodedata
from typing import Any, TextIO


class RoiedgeError(Exception):
    """A mistake in the user's input or files (CLIs print it on one line and exit 2)."""


class ArtifactError(RoiedgeError):
    """An artifact or manifest is missing, corrupt, or from an incompatible version."""


def printable(text: object) -> str:
    """``str(text)`` safe for a terminal: control, format and surrogate characters escaped.

    A hostile file name can hold escape sequences (set the title, clear the screen), bidi
    overrides or undecodable bytes (``os.fsdecode``'s surrogates, which ``print`` cannot encode);
    each such character is shown as ``\\xNN`` (a raw byte or C0/C1 control) or ``\\uNNNN``.
    Every CLI print of a user-controlled string goes through here.
    """
    text = str(text)
    if text.isprintable():
        return text
    out = []
    for char in text:
        code = ord(char)
        if not unicodedata.category(char).startswith(("Cc", "Cf", "Cs", "Zl", "Zp")):
            out.append(char)
        elif 0xDC80 <= code <= 0xDCFF:  # an undecodable byte under surrogateescape
            out.append(f"\\x{code - 0xDC00:02x}")
        elif code <= 0xFF:
            out.append(f"\\x{code:02x}")
        else:
            out.append(f"\\u{code:04x}")
    return "".join(out)


def one_line(error: BaseException) -> str:
    """``error``'s message on one line, terminal-safe: whitespace runs as one space, controls escaped."""
    return printable(" ".join(str(error).split()))


def say(*parts: Any, file: TextIO | None = None) -> None:
    """``print`` for every CLI line a user sees: each line through :func:`printable`."""
    text = " ".join(str(part) for part in parts)
    print("\n".join(printable(line) for line in text.split("\n")), file=file or sys.stdout)
