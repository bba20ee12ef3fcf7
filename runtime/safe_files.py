"""The safe readers of user and artifact files: one place per file kind, every limit checked first.

Each reader refuses, in one line naming the file, anything that would hang, blow up memory or
be silently misread: a FIFO, device, socket or directory where a file is expected (checked with
``stat``/``fstat``, never by opening it blocking), a file over its ``runtime.limits`` row, JSON
nested too deep or with duplicate keys or NaN/Infinity tokens, an archive whose members declare
more than their row allows (checked from the central directory before anything is extracted), an
``.npy`` header whose shape claims more than its row or than its member holds, and object, string,
complex or structured arrays. :func:`writable_output` checks an output path before the work that
fills it starts. Imports numpy only.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import re
import stat
import tempfile
import zipfile
import zlib
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from runtime import limits
from runtime.errors import RoiedgeError

_KINDS = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)
#: numpy dtype kinds an array file may hold: bool, signed and unsigned integers, floats.
ARRAY_KINDS = "biuf"


def _kind(mode: int) -> str:
    for test, name in _KINDS:
        if test(mode):
            return name
    return "not a regular file"


def _stat(path: Path, what: str) -> os.stat_result:
    try:
        return path.stat()
    except FileNotFoundError:
        raise RoiedgeError(f"{what} {path}: no such file") from None
    except NotADirectoryError:
        raise RoiedgeError(f"{what} {path}: a parent of it is a file, not a directory") from None
    except ValueError as error:  # an embedded NUL byte
        raise RoiedgeError(f"{what} {path!r}: not a valid path ({error})") from None
    except OSError as error:
        raise RoiedgeError(
            f"{what} {path}: cannot be read ({error.strerror or type(error).__name__})"
        ) from None


def regular_file(path: os.PathLike | str, what: str) -> Path:
    """``path`` as a Path after checking (with ``stat``, never opening it) it is a regular file.

    A missing path, a directory, FIFO, device or socket is a one-line RoiedgeError naming
    ``what`` (e.g. "--inputs", "image") and the path.
    """
    path = Path(path)
    info = _stat(path, what)
    if not stat.S_ISREG(info.st_mode):
        raise RoiedgeError(f"{what} {path}: is {_kind(info.st_mode)}; expected a regular file")
    return path


@contextlib.contextmanager
def open_regular(path: os.PathLike | str, what: str) -> Iterator[BinaryIO]:
    """A binary handle of regular file ``path``: opened without blocking, checked by ``fstat``."""
    with _opened(path, what) as (handle, _, _):
        yield handle


@contextlib.contextmanager
def _opened(path: os.PathLike | str, what: str) -> Iterator[tuple[BinaryIO, int, Path]]:
    """(binary handle, size, path) of a regular file, opened without blocking and re-checked.

    ``O_NONBLOCK`` makes opening a FIFO swapped in after the ``stat`` return at once; ``fstat``
    of the opened descriptor then refuses it, so what is read is the file that was checked.
    """
    path = regular_file(path, what)
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)
    try:
        fd = os.open(path, flags)
    except OSError as error:
        raise RoiedgeError(
            f"{what} {path}: cannot be opened ({error.strerror or type(error).__name__})"
        ) from None
    handle = os.fdopen(fd, "rb")
    with handle:
        info = os.fstat(handle.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise RoiedgeError(f"{what} {path}: is {_kind(info.st_mode)}; expected a regular file")
        yield handle, info.st_size, path


def read_bytes(path: os.PathLike | str, what: str, limit_name: str) -> bytes:
    """The content of regular file ``path``, its size checked against LIMITS ``limit_name`` first."""
    with _opened(path, what) as (handle, size, path):
        limits.check(limit_name, size, f"{what} {path}")
        try:
            data = handle.read(limits.limit(limit_name) + 1)
        except OSError as error:
            raise RoiedgeError(
                f"{what} {path}: cannot be read ({error.strerror or type(error).__name__})"
            ) from None
    limits.check(limit_name, len(data), f"{what} {path}")  # it grew after the fstat
    return data


# ------------------------------------------------------------------------------------------ JSON

_JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")


def json_depth(data: bytes) -> int:
    """Deepest nesting of ``[``/``{`` in JSON text ``data`` (brackets inside strings ignored)."""
    brackets = _JSON_STRING.sub(b"", data).translate(None, _NOT_BRACKETS)
    if not brackets:
        return 0
    codes = np.frombuffer(brackets, dtype=np.uint8)
    steps = np.where((codes == ord("[")) | (codes == ord("{")), 1, -1).astype(np.int64)
    return int(np.cumsum(steps).max())


def _refuse_constant(token: str) -> Any:
    raise ValueError(f"non-standard token {token} (JSON has no NaN or Infinity)")


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(pairs)
    if len(result) != len(pairs):
        seen: set[str] = set()
        duplicate = next(key for key, _ in pairs if key in seen or seen.add(key))
        raise ValueError(f"duplicate key {duplicate[:40]!r} in one object")
    return result


def parse_json(data: bytes | str, what: str) -> Any:
    """Parse JSON text strictly: size, depth, NaN/Infinity and duplicate keys refused in one line.

    ``what`` names the source (e.g. "COCO dataset data/ann.json"). A UTF-8 BOM is allowed.
    """
    raw = data.encode("utf-8") if isinstance(data, str) else bytes(data)
    limits.check("json_bytes", len(raw), what)
    depth = json_depth(raw)
    limits.check("json_depth", depth, f"{what}: nesting")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise RoiedgeError(f"{what}: not UTF-8 text (byte {error.start}); expected JSON") from None
    try:
        return json.loads(text, parse_constant=_refuse_constant, object_pairs_hook=_unique_keys)
    except (ValueError, RecursionError) as error:
        reason = " ".join(str(error).split())[:160] or type(error).__name__
        raise RoiedgeError(f"{what}: not valid JSON ({reason})") from None


def read_json(path: os.PathLike | str, what: str) -> Any:
    """Read and parse a JSON file: :func:`read_bytes` (``json_bytes``), then :func:`parse_json`."""
    data = read_bytes(path, what, "json_bytes")
    return parse_json(data, f"{what} {Path(path)}")


# -------------------------------------------------------------------------------------- archives


def _zip_members(archive: zipfile.ZipFile, where: str, limit_name: str) -> list[zipfile.ZipInfo]:
    infos = archive.infolist()
    limits.check("archive_members", len(infos), f"{where}: member count")
    total = 0
    for info in infos:
        limits.check(limit_name, info.file_size, f"{where}: member {info.filename[:60]!r}")
        total += info.file_size
        limits.check(limit_name, total, f"{where}: members together")
    return infos


_ZIP_ERRORS = (zipfile.BadZipFile, zlib.error, OSError, EOFError, ValueError, NotImplementedError)


@contextlib.contextmanager
def _archive(
    source: os.PathLike | str | bytes, what: str, limit_name: str, kind: str = "zip archive"
) -> Iterator[tuple[zipfile.ZipFile, list[zipfile.ZipInfo], str]]:
    """(open ZipFile, its checked members, "what path") of an archive file or its bytes."""
    with contextlib.ExitStack() as stack:
        if isinstance(source, (bytes, bytearray, memoryview)):
            where = what
            limits.check(limit_name, len(source), where)
            handle: BinaryIO = io.BytesIO(bytes(source))
        else:
            handle, size, path = stack.enter_context(_opened(source, what))
            where = f"{what} {path}"
            limits.check(limit_name, size, where)
        try:
            archive = stack.enter_context(zipfile.ZipFile(handle))
        except _ZIP_ERRORS as error:
            reason = " ".join(str(error).split())[:120] or type(error).__name__
            raise RoiedgeError(f"{where}: not a readable {kind} ({reason})") from None
        yield archive, _zip_members(archive, where, limit_name), where


def check_zip_members(source: os.PathLike | str | bytes, what: str, limit_name: str) -> None:
    """Refuse an archive (.npz, .keras; a path or its bytes) whose members declare too much.

    Checks, from the central directory and before anything is extracted: the member count
    (LIMITS ``archive_members``), each member's declared uncompressed size and their total
    (LIMITS ``limit_name``). Python's zipfile never inflates a member past its declared size,
    so the check bounds what any later read of the archive can allocate.
    """
    with _archive(source, what, limit_name):
        pass


def _array_of(member: BinaryIO, info: zipfile.ZipInfo, key: str, where: str) -> np.ndarray:
    """One .npy member -> array, its header's dtype and shape checked before the data is read."""
    version = np.lib.format.read_magic(member)
    if version == (1, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_1_0(member)
    elif version == (2, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_2_0(member)
    else:
        raise RoiedgeError(f"{where}: array {key!r} has .npy format {version}; expected 1.0/2.0")
    if dtype.kind not in ARRAY_KINDS or dtype.hasobject or dtype.fields is not None:
        raise RoiedgeError(
            f"{where}: array {key!r} has dtype {dtype}; expected bool, integer or float arrays "
            "(no object, string, complex or structured arrays)"
        )
    count = math.prod(shape)
    nbytes = count * dtype.itemsize
    limits.check("npz_bytes", nbytes, f"{where}: array {key!r} of shape {shape} {dtype}")
    held = info.file_size - member.tell()
    if nbytes != held:
        raise RoiedgeError(
            f"{where}: array {key!r} header claims shape {shape} {dtype} ({nbytes:,} bytes) but "
            f"its member holds {held:,} bytes (truncated or forged)"
        )
    flat = np.empty(count, dtype=dtype)
    view = memoryview(flat.view(np.uint8))
    done = 0
    while done < nbytes:
        got = member.readinto(view[done:])
        if not got:
            raise RoiedgeError(f"{where}: array {key!r} ends after {done:,} of {nbytes:,} bytes")
        done += got
    return flat.reshape(shape, order="F" if fortran else "C")


def load_npz(path: os.PathLike | str | bytes, what: str) -> dict[str, np.ndarray]:
    """The arrays of an ``.npz`` (a path or its bytes) by key (``.npy`` dropped), limits first.

    :func:`check_zip_members` with LIMITS ``npz_bytes``, then per member its ``.npy`` header:
    dtype bool/int/uint/float only, shape x itemsize within ``npz_bytes`` and equal to what the
    member holds; never unpickles. Anything else is a one-line RoiedgeError naming the file.
    """
    arrays: dict[str, np.ndarray] = {}
    with _archive(path, what, "npz_bytes", ".npz") as (archive, infos, where):
        for info in infos:
            name = info.filename
            key = name.removesuffix(".npy")
            if info.is_dir() or key == name:
                raise RoiedgeError(
                    f"{where}: member {name[:60]!r} is not an .npy array; expected an .npz "
                    "written by numpy.savez"
                )
            if key in arrays:
                raise RoiedgeError(f"{where}: array {key[:60]!r} appears twice")
            try:
                with archive.open(info) as member:
                    arrays[key] = _array_of(member, info, key[:60], where)
            except RoiedgeError:
                raise
            except (*_ZIP_ERRORS, RuntimeError) as error:
                reason = " ".join(str(error).split())[:120] or type(error).__name__
                raise RoiedgeError(
                    f"{where}: array {key[:60]!r} is not readable ({reason})"
                ) from None
    return arrays


# --------------------------------------------------------------------------------------- outputs


def _probe_writable(directory: Path, what: str, path: Path) -> None:
    """Create and remove a temp file in ``directory``: the only test that root and mounts obey."""
    try:
        fd, name = tempfile.mkstemp(dir=directory, prefix=".roiedge-probe-", suffix=".tmp")
    except OSError as error:
        raise RoiedgeError(
            f"{what} {path}: cannot write in {directory} "
            f"({error.strerror or type(error).__name__}); expected a writable place"
        ) from None
    os.close(fd)
    os.unlink(name)


def _same_file(first: Path, second: Path) -> bool:
    """Whether two paths name one existing file (hard links and symlinks included)."""
    try:
        return first.exists() and second.exists() and os.path.samefile(first, second)
    except (OSError, ValueError):
        return False


def writable_output(
    path: os.PathLike | str,
    what: str,
    kind: str = "file",
    inputs: Iterable[os.PathLike | str | None] = (),
) -> Path:
    """``path`` after checking an output ``kind`` ("file" or "dir") can be written there.

    Run before the work that fills it: a directory where a file is expected (or a file where a
    directory is), a FIFO or device, a file as a parent, a folder one cannot write in, or one
    of the run's own ``inputs`` (the output would destroy it: ``--json`` naming the model's
    sidecar or the dataset), each is a one-line RoiedgeError naming ``what`` (e.g. "--json").
    Missing parents are fine (writers create them); the nearest existing one must be a
    writable directory. Creates nothing.
    """
    if kind not in ("file", "dir"):
        raise ValueError(f"kind={kind!r}; expected 'file' or 'dir'")
    path = Path(path)
    for given in inputs:
        if given is not None and _same_file(path, Path(given)):
            raise RoiedgeError(
                f"{what} {path}: is also an input of this run ({given}); writing it would "
                "destroy that input; expected another name"
            )
    try:
        info = path.stat()
    except (FileNotFoundError, NotADirectoryError):
        info = None
    except ValueError as error:
        raise RoiedgeError(f"{what} {path!r}: not a valid path ({error})") from None
    except OSError as error:
        raise RoiedgeError(
            f"{what} {path}: cannot be inspected ({error.strerror or type(error).__name__})"
        ) from None
    if info is not None:
        if kind == "file" and stat.S_ISDIR(info.st_mode):
            raise RoiedgeError(f"{what} {path}: is a directory; expected a file name")
        if kind == "file" and not stat.S_ISREG(info.st_mode):
            raise RoiedgeError(
                f"{what} {path}: is {_kind(info.st_mode)}; expected a regular file or a new name"
            )
        if kind == "dir" and not stat.S_ISDIR(info.st_mode):
            raise RoiedgeError(f"{what} {path}: is an existing file; expected a directory")
        _probe_writable(path if kind == "dir" else path.parent, what, path)
        return path
    ancestor = Path(os.path.abspath(path)).parent
    while True:
        try:
            ancestor_info = ancestor.stat()
            break
        except (FileNotFoundError, NotADirectoryError):
            ancestor = ancestor.parent
        except OSError as error:
            raise RoiedgeError(
                f"{what} {path}: cannot inspect {ancestor} "
                f"({error.strerror or type(error).__name__})"
            ) from None
    if not stat.S_ISDIR(ancestor_info.st_mode):
        raise RoiedgeError(
            f"{what} {path}: its parent {ancestor} is {_kind(ancestor_info.st_mode)}"
            if not stat.S_ISREG(ancestor_info.st_mode)
            else f"{what} {path}: its parent {ancestor} is a file; expected a directory"
        )
    _probe_writable(ancestor, what, path)
    return path
