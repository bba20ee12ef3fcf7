"""User-facing errors of the runtime: one line that names the thing, what was seen, what was expected."""


class RoiedgeError(Exception):
    """A mistake in the user's input or files (CLIs print it on one line and exit 2)."""


class ArtifactError(RoiedgeError):
    """An artifact or manifest is missing, corrupt, or from an incompatible version."""


def one_line(error: BaseException) -> str:
    """``error``'s message on one line: runs of whitespace (wrapped text, newlines) as one space."""
    return " ".join(str(error).split())
