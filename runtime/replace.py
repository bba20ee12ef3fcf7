"""Replacing outputs without losing them: an exclusive lock beside an output, an atomic swap of
two paths, and the removal of the temp files a killed writer left behind.

``atomic_write_bytes`` (:mod:`runtime.manifest`) replaces one file; these are for what it cannot
do alone: refusing a second writer of the same output (:func:`output_lock`), swapping a whole
directory tree in one step (:func:`exchange_paths`), and cleaning up after ``kill -9``
(:func:`remove_stale`, run while the lock is held, so nothing it removes is still in use).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

from runtime.errors import RoiedgeError

try:
    import fcntl
except ImportError:  # not POSIX: no advisory locks; a second writer is not refused
    fcntl = None  # type: ignore[assignment]

_AT_FDCWD = -100
_RENAME_EXCHANGE = 2


def lock_path(path: os.PathLike | str) -> Path:
    """The lock file of output ``path``: ``.<name>.lock`` beside it (removed when released)."""
    path = Path(path)
    return path.parent / f".{path.name}.lock"


@contextlib.contextmanager
def output_lock(
    path: os.PathLike | str, what: str, holder: str, wait: bool = False, folder: bool = False
) -> Iterator[Path]:
    """Hold an exclusive ``flock`` for writing ``path`` during the ``with`` block; yields what
    is locked: :func:`lock_path` of ``path`` (removed on release), or with ``folder=True`` its
    parent folder itself (nothing is created; serialises every writer in that folder).

    ``wait=False`` refuses at once, in one line naming ``what`` (e.g. "--out") and the path,
    when another ``holder`` (e.g. "export") holds it; ``wait=True`` blocks until it is free.
    The kernel drops the lock when its holder dies, so a killed writer never leaves it held.
    """
    path = Path(path)
    lock = path.parent if folder else lock_path(path)
    while True:
        fd = _open_lock(lock, path, what, folder)
        try:
            if fcntl is not None:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
                except BlockingIOError:
                    raise RoiedgeError(
                        f"{what} {path}: another {holder} is writing it (it holds the lock "
                        f"{lock}); wait for it to finish or choose another {what}"
                    ) from None
            if folder or _same_file(fd, lock):
                break
        except BaseException:
            os.close(fd)
            raise
        # The previous holder removed the file we waited on: lock the one now at that path.
        os.close(fd)
    try:
        yield lock
    finally:
        if not folder:
            # Removed while still held, so nothing is left beside the output; a writer that
            # opened it meanwhile sees it is gone (_same_file) and locks the new one instead.
            with contextlib.suppress(OSError):
                lock.unlink()
        os.close(fd)  # releases the lock


def _open_lock(lock: Path, path: Path, what: str, folder: bool) -> int:
    """A descriptor of ``lock`` (created if it is a lock file), or one line naming ``what``."""
    try:
        lock.parent.mkdir(parents=True, exist_ok=True)
        if folder:
            return os.open(lock, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        return os.open(lock, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o666)
    except OSError as error:
        raise RoiedgeError(
            f"{what} {path}: cannot open its lock {lock} ({error.strerror or type(error).__name__})"
        ) from None


def _same_file(fd: int, path: Path) -> bool:
    """Whether open descriptor ``fd`` is still the file at ``path`` (not unlinked or replaced)."""
    try:
        here = os.stat(path)
    except OSError:
        return False
    held = os.fstat(fd)
    return (here.st_dev, here.st_ino) == (held.st_dev, held.st_ino)


def exchange_paths(first: os.PathLike | str, second: os.PathLike | str) -> bool:
    """Swap two existing paths in one atomic step (Linux ``renameat2(RENAME_EXCHANGE)``).

    Returns False, changing nothing, where the OS or file system cannot (then the caller falls
    back to renames); any other failure is the ``OSError``.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):  # a libc older than glibc 2.28
        return False
    result = renameat2(
        _AT_FDCWD, os.fsencode(first), _AT_FDCWD, os.fsencode(second), _RENAME_EXCHANGE
    )
    if result == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False
    raise OSError(code, os.strerror(code), os.fspath(first), None, os.fspath(second))


def remove_stale(directory: os.PathLike | str, patterns: tuple[str, ...]) -> list[Path]:
    """Remove what matches ``patterns`` (globs) in ``directory``: the temp files and folders of a
    writer killed mid-way. Call only while holding the output's lock; returns what was removed."""
    removed = []
    for pattern in patterns:
        for stale in sorted(Path(directory).glob(pattern)):
            if stale.is_dir() and not stale.is_symlink():
                shutil.rmtree(stale, ignore_errors=True)
            else:
                stale.unlink(missing_ok=True)
            removed.append(stale)
    return removed
