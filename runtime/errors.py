"""User-facing errors of the runtime: one line that names the thing, what was seen, what was expected."""


class RoiedgeError(Exception):
    """A mistake in the user's input or files (CLIs print it on one line and exit 2)."""


class ArtifactError(RoiedgeError):
    """An artifact or manifest is missing, corrupt, or from an incompatible version."""
