"""Importing a user's custom-objects ``.py`` file, the one way both Keras loaders do it
(``export --keras-model --custom-objects`` and a detector card's ``custom_objects``).

The file is the user's own code, run once to define (and register) their layers: any exception it
raises, a ``sys.exit`` or an ``os._exit`` is a one-line :class:`RoiedgeError` naming the file,
never an export that ends 0 with nothing written; a FIFO, device or folder is named as such, never
opened. TensorFlow-free.
"""

from __future__ import annotations

import importlib.util
import inspect
import os
import re
import sys
from pathlib import Path
from typing import Any

from runtime.errors import RoiedgeError
from runtime.safe_files import regular_file


class _ExitCalled(BaseException):
    """``os._exit`` called by a custom-objects file while it is imported."""

    def __init__(self, code: object) -> None:
        super().__init__(code)
        self.code = code


def _refuse_exit(code: object = 0) -> None:
    raise _ExitCalled(code)


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def import_custom_objects(path: Path, what: str, module_name: str) -> dict[str, Any]:
    """Import ``path`` as module ``module_name``; its classes and public functions by name.

    Classes (registration happens on import) and the plain functions the file defines (custom
    activations, losses, Lambda helpers saved by name): Keras looks both up by name. ``what``
    names the file in errors (e.g. "--custom-objects", "card custom_objects").
    """
    path = Path(path)
    if not path.exists():
        raise RoiedgeError(f"{what} {path}: no such file (expected a .py file)")
    regular_file(path, what)
    name = re.sub(r"[^A-Za-z0-9_]", "_", module_name)
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise RoiedgeError(f"{what} {path}: not an importable Python file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    # os._exit skips every handler: while the file runs it raises instead, so an
    # ``os._exit(0)`` cannot end an export as 0 with nothing written.
    real_exit, os._exit = os._exit, _refuse_exit
    try:
        spec.loader.exec_module(module)
    except Exception as error:  # the user's code: any exception is their file's problem
        raise RoiedgeError(
            f"{what} {path}: importing it failed ({type(error).__name__}: {_first_line(error)})"
        ) from None
    except (SystemExit, _ExitCalled) as error:  # must not end the export as 0
        call = "os._exit" if isinstance(error, _ExitCalled) else "sys.exit"
        raise RoiedgeError(
            f"{what} {path}: importing it called {call}({error.code!r}); a custom-objects file "
            "must only define classes and functions"
        ) from None
    finally:
        os._exit = real_exit
    return {
        key: value
        for key, value in vars(module).items()
        if isinstance(value, type)
        or (inspect.isfunction(value) and value.__module__ == name and not key.startswith("_"))
    }
