"""Ctrl-C and SIGTERM in every CLI (runtime, export, report, train): one line, exit 130 / 143.

``sys.exit(run_main(main))`` turns SIGTERM into a :class:`Terminated` exception in the main
thread, so the same ``finally`` / ``except BaseException`` blocks that clean up after Ctrl-C
(``runtime.manifest.atomic_write_bytes`` temp files, the export's ``.building-*`` directory,
benchmark child processes) also run on SIGTERM; then one line goes to stderr instead of a
traceback. Lives in ``runtime`` because every package may import it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from collections.abc import Callable
from typing import Any

#: Shell convention: 128 + signal number.
EXIT_SIGINT = 128 + signal.SIGINT
EXIT_SIGTERM = 128 + signal.SIGTERM
#: Delay before a swallowed signal is sent again (see _redeliver_swallowed_signals).
_REDELIVERY_DELAY_S = 0.01


class Terminated(BaseException):
    """SIGTERM arrived (a BaseException, like KeyboardInterrupt, so ``except Exception`` skips it)."""


def _raise_terminated(signum: int, frame: Any) -> None:
    raise Terminated()


def _redeliver_swallowed_signals(previous_hook: Callable[[Any], None]) -> Callable[[Any], None]:
    """A ``sys.unraisablehook`` that re-sends a signal whose exception was swallowed.

    A signal handler's exception raised while a ``__del__`` runs (TensorFlow's
    ``AtomicFunction.__del__`` during garbage collection, say) is "ignored" by CPython: it goes
    to the unraisable hook and the program carries on, so an export finished with exit 0 after
    SIGTERM. The signal is sent again from a short-lived thread, a moment later: raised inside
    this hook its handler would run (and be swallowed) right here; sent later it reaches the main
    flow, or lands in another destructor and comes back through this hook.
    """

    def hook(unraisable: Any) -> None:
        if isinstance(unraisable.exc_value, Terminated):
            signum = signal.SIGTERM
        elif isinstance(unraisable.exc_value, KeyboardInterrupt):
            signum = signal.SIGINT
        else:
            previous_hook(unraisable)
            return
        resend = threading.Timer(_REDELIVERY_DELAY_S, os.kill, (os.getpid(), signum))
        resend.daemon = True
        resend.start()

    return hook


def run_main(main: Callable[..., int], *args: Any) -> int:
    """``main(*args)``; Ctrl-C -> "interrupted" and 130, SIGTERM -> "terminated" and 143."""
    try:
        previous = signal.signal(signal.SIGTERM, _raise_terminated)
    except ValueError:  # not the main thread: leave signals alone
        previous = None
    previous_hook = sys.unraisablehook
    if previous is not None:
        sys.unraisablehook = _redeliver_swallowed_signals(previous_hook)
    try:
        return main(*args)
    except KeyboardInterrupt:
        return _stop("interrupted (Ctrl-C); partial output removed", EXIT_SIGINT)
    except Terminated:
        return _stop("terminated (SIGTERM); partial output removed", EXIT_SIGTERM)
    finally:
        sys.unraisablehook = previous_hook
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
