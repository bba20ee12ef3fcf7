"""Ctrl-C and SIGTERM in every CLI (runtime, export, report, train): one line, exit 130 / 143.

``sys.exit(run_main(main))`` turns SIGTERM into a :class:`Terminated` exception in the main
thread, so the same ``finally`` / ``except BaseException`` blocks that clean up after Ctrl-C
(``runtime.manifest.atomic_write_bytes`` temp files, the export's ``.building-*`` directory,
benchmark child processes) also run on SIGTERM; then one line goes to stderr instead of a
traceback. Lives in ``runtime`` because every package may import it.
"""

from __future__ import annotations

import contextlib
import signal
import sys
from collections.abc import Callable
from typing import Any

#: Shell convention: 128 + signal number.
EXIT_SIGINT = 128 + signal.SIGINT
EXIT_SIGTERM = 128 + signal.SIGTERM


class Terminated(BaseException):
    """SIGTERM arrived (a BaseException, like KeyboardInterrupt, so ``except Exception`` skips it)."""


def _raise_terminated(signum: int, frame: Any) -> None:
    raise Terminated()


def run_main(main: Callable[..., int], *args: Any) -> int:
    """``main(*args)``; Ctrl-C -> "interrupted" and 130, SIGTERM -> "terminated" and 143."""
    try:
        previous = signal.signal(signal.SIGTERM, _raise_terminated)
    except ValueError:  # not the main thread: leave signals alone
        previous = None
    try:
        return main(*args)
    except KeyboardInterrupt:
        return _stop("interrupted (Ctrl-C); partial output removed", EXIT_SIGINT)
    except Terminated:
        return _stop("terminated (SIGTERM); partial output removed", EXIT_SIGTERM)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _stop(message: str, code: int) -> int:
    # A second signal while reporting should not print a traceback either.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    with contextlib.suppress(OSError, ValueError):
        sys.stdout.flush()
    print(message, file=sys.stderr)
    return code
