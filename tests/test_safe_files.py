"""runtime.safe_files: the shared safe readers refuse hostile files in one line, before reading."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import zipfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from runtime import limits, safe_files
from runtime.errors import RoiedgeError

REPO = Path(__file__).resolve().parent.parent
FAST = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def small_limit(monkeypatch, name: str, value: int) -> None:
    """Lower one LIMITS row for a test (the table is the only place that holds the numbers)."""
    row = limits.LIMITS[name]
    monkeypatch.setitem(limits.LIMITS, name, limits.Limit(row.name, value, row.unit, row.what))


def returns_at_once(call, *args):
    """Run ``call(*args)`` in a thread; fail (instead of hanging the suite) if it blocks."""
    outcome: dict = {}

    def target():
        try:
            outcome["value"] = call(*args)
        except BaseException as error:
            outcome["error"] = error

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(20)
    assert not thread.is_alive(), f"{call.__name__} blocked"
    if "error" in outcome:
        raise outcome["error"]
    return outcome.get("value")


def one_line_error(call, *args, match: str) -> str:
    with pytest.raises(RoiedgeError, match=match) as caught:
        returns_at_once(call, *args)
    message = str(caught.value)
    assert "\n" not in message
    return message


# ----------------------------------------------------------------------------- regular files


@pytest.mark.parametrize("reader", ["regular_file", "read_bytes", "read_json", "load_npz"])
def test_a_fifo_is_refused_at_once_by_every_reader(tmp_path, reader):
    fifo = tmp_path / "pipe.json"
    os.mkfifo(fifo)
    call = getattr(safe_files, reader)
    args = (fifo, "input", "json_bytes") if reader == "read_bytes" else (fifo, "input")
    message = one_line_error(call, *args, match="FIFO")
    assert str(fifo) in message


def test_directories_devices_and_missing_files_are_named(tmp_path):
    one_line_error(safe_files.regular_file, tmp_path, "image", match="is a directory")
    one_line_error(safe_files.regular_file, "/dev/null", "image", match="character device")
    one_line_error(safe_files.regular_file, tmp_path / "nope.png", "image", match="no such file")
    (tmp_path / "file").write_bytes(b"x")
    one_line_error(safe_files.regular_file, tmp_path / "file" / "x", "image", match="parent")


def test_read_bytes_refuses_a_file_over_its_limit_before_reading(tmp_path, monkeypatch):
    path = tmp_path / "big.bin"
    path.write_bytes(b"a" * 101)
    small_limit(monkeypatch, "model_bytes", 100)
    one_line_error(safe_files.read_bytes, path, "model", "model_bytes", match="over the limit")
    path.write_bytes(b"a" * 100)
    assert safe_files.read_bytes(path, "model", "model_bytes") == b"a" * 100


# -------------------------------------------------------------------------------------- JSON


def nesting(depth: int, kinds: list[bool], inner: str) -> str:
    """A JSON text nested ``depth`` levels: list or object per level as ``kinds`` says."""
    text = json.dumps(inner)
    for level in range(depth):
        text = f'{{"k{level}": {text}}}' if kinds[level % len(kinds)] else f"[{text}, 1]"
    return text


def reference_depth(value) -> int:
    """Nesting depth of a parsed JSON value (brute-force recursion; a scalar is 0)."""
    if isinstance(value, dict):
        return 1 + max((reference_depth(v) for v in value.values()), default=0)
    if isinstance(value, list):
        return 1 + max((reference_depth(v) for v in value), default=0)
    return 0


@FAST
@given(
    depth=st.integers(0, 140),
    kinds=st.lists(st.booleans(), min_size=1, max_size=5),
    inner=st.text(alphabet='[]{}"\\ax\n', max_size=12),
)
def test_json_nesting_is_accepted_up_to_the_limit_and_refused_above(depth, kinds, inner):
    text = nesting(depth, kinds, inner)
    expected = reference_depth(json.loads(text))
    assert safe_files.json_depth(text.encode()) == expected
    if expected <= limits.limit("json_depth"):
        assert safe_files.parse_json(text, "doc") == json.loads(text)
    else:
        one_line_error(safe_files.parse_json, text, "doc", match="nesting")


def test_json_nested_a_million_deep_is_one_line_not_a_traceback(tmp_path):
    path = tmp_path / "deep.json"
    path.write_text("[" * 1_000_000 + "]" * 1_000_000)
    one_line_error(safe_files.read_json, path, "COCO dataset", match="nesting")


@pytest.mark.parametrize(
    "text, match",
    [
        ('{"a": NaN}', "NaN"),
        ('{"a": -Infinity}', "Infinity"),
        ('{"id": 1, "id": 2}', "duplicate key 'id'"),
        ('{"a": 1', "not valid JSON"),
        (b'{"a": "\xff"}', "not UTF-8"),
    ],
)
def test_json_that_would_be_misread_is_refused(tmp_path, text, match):
    path = tmp_path / "bad.json"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    one_line_error(safe_files.read_json, path, "dataset", match=match)


def test_json_size_is_bounded(tmp_path, monkeypatch):
    path = tmp_path / "big.json"
    path.write_text(json.dumps(list(range(100))))
    small_limit(monkeypatch, "json_bytes", 50)
    one_line_error(safe_files.read_json, path, "dataset", match="over the limit")


def test_json_with_a_bom_and_strings_holding_brackets_parses(tmp_path):
    path = tmp_path / "ok.json"
    value = {"name": '[[[{{{"\\', "list": [[1], {"x": []}]}
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps(value).encode())
    assert safe_files.read_json(path, "dataset") == value


# ---------------------------------------------------------------------------------- archives


def zip_bytes(members: dict[str, bytes], compression=zipfile.ZIP_DEFLATED) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=compression) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def test_an_archive_bomb_is_refused_from_its_central_directory(tmp_path, monkeypatch):
    bomb = zip_bytes({"a.npy": bytes(8 << 20)})  # 8 MiB of zeros, ~8 KB compressed
    assert len(bomb) < 100_000
    small_limit(monkeypatch, "npz_bytes", 1 << 20)
    path = tmp_path / "bomb.npz"
    path.write_bytes(bomb)
    one_line_error(safe_files.check_zip_members, path, "--inputs", "npz_bytes", match="a.npy")
    one_line_error(safe_files.check_zip_members, bomb, "--inputs", "npz_bytes", match="a.npy")
    one_line_error(safe_files.load_npz, path, "--inputs", match="over the limit")


def test_the_members_together_and_their_count_are_bounded(tmp_path, monkeypatch):
    small_limit(monkeypatch, "keras_bytes", 1000)
    together = zip_bytes({f"m{i}": bytes(300) for i in range(4)})
    one_line_error(safe_files.check_zip_members, together, "model", "keras_bytes", match="together")
    small_limit(monkeypatch, "archive_members", 10)
    many = zip_bytes({f"m{i}": b"" for i in range(11)})
    one_line_error(safe_files.check_zip_members, many, "model", "keras_bytes", match="count")
    safe_files.check_zip_members(zip_bytes({f"m{i}": b"" for i in range(10)}), "m", "keras_bytes")


def test_a_file_that_is_not_a_zip_is_one_line(tmp_path):
    path = tmp_path / "x.npz"
    path.write_bytes(b"not a zip at all")
    one_line_error(safe_files.load_npz, path, "--inputs", match="not a readable .npz")


ARRAY_DTYPES = st.sampled_from(["bool", "int8", "uint8", "int32", "int64", ">i4", "float16", "<f8"])


@FAST
@given(
    shapes=st.lists(st.lists(st.integers(0, 4), max_size=3), min_size=1, max_size=3),
    dtype=ARRAY_DTYPES,
    fortran=st.booleans(),
    compressed=st.booleans(),
)
def test_load_npz_reads_what_numpy_reads(shapes, dtype, fortran, compressed):
    rng = np.random.default_rng(len(shapes))
    arrays = {}
    for i, shape in enumerate(shapes):
        values = rng.integers(-100, 100, size=shape).astype(dtype)
        arrays[f"a{i}"] = np.asfortranarray(values) if fortran else values
    buffer = io.BytesIO()
    (np.savez_compressed if compressed else np.savez)(buffer, **arrays)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "x.npz"
        path.write_bytes(buffer.getvalue())
        got = safe_files.load_npz(path, "--inputs")
        with np.load(path, allow_pickle=False) as reference:
            assert sorted(got) == sorted(reference.files)
            for key in got:
                assert got[key].dtype == reference[key].dtype
                np.testing.assert_array_equal(got[key], reference[key])


@pytest.mark.parametrize(
    "array, match",
    [
        (np.array(["a", "bc"]), "dtype <U2"),
        (np.array([b"a"]), "dtype |S1"),
        (np.array([1 + 2j]), "complex128"),
        (np.zeros(2, dtype=[("x", "f4")]), "structured"),
    ],
)
def test_string_complex_and_structured_arrays_are_refused(tmp_path, array, match):
    path = tmp_path / "x.npz"
    np.savez(path, x=array)
    one_line_error(safe_files.load_npz, path, "--inputs", match=match.replace("|", r"\|"))


def npy_with_header(shape: tuple[int, ...], data: bytes) -> bytes:
    buffer = io.BytesIO()
    header = {"descr": "<f8", "fortran_order": False, "shape": shape}
    np.lib.format.write_array_header_1_0(buffer, header)
    return buffer.getvalue() + data


def test_an_npy_header_claiming_7_tib_is_refused_before_reading(tmp_path):
    path = tmp_path / "forged.npz"
    path.write_bytes(zip_bytes({"x.npy": npy_with_header((1 << 40,), bytes(64))}))
    one_line_error(safe_files.load_npz, path, "--inputs", match="over the limit")


def test_an_npy_header_that_disagrees_with_its_member_is_refused(tmp_path):
    path = tmp_path / "short.npz"
    path.write_bytes(zip_bytes({"x.npy": npy_with_header((100,), bytes(64))}))
    one_line_error(safe_files.load_npz, path, "--inputs", match="holds 64 bytes")


def test_members_that_are_not_arrays_or_repeat_a_key_are_refused(tmp_path):
    path = tmp_path / "odd.npz"
    path.write_bytes(zip_bytes({"notes.txt": b"hi"}))
    one_line_error(safe_files.load_npz, path, "--inputs", match="not an .npy array")
    array = io.BytesIO()
    np.save(array, np.zeros(2))
    path.write_bytes(zip_bytes({"x.npy": array.getvalue(), "x.npy/": b""}))
    with pytest.raises(RoiedgeError):
        safe_files.load_npz(path, "--inputs")


def test_a_pickled_object_array_is_refused_without_unpickling(tmp_path):
    path = tmp_path / "pickle.npz"
    np.savez(path, x=np.array([{"a": 1}], dtype=object))
    one_line_error(safe_files.load_npz, path, "--inputs", match="object")


# ----------------------------------------------------------------------------------- outputs


def test_writable_output_accepts_new_files_and_folders_and_creates_nothing(tmp_path):
    before = sorted(tmp_path.rglob("*"))
    assert safe_files.writable_output(tmp_path / "a" / "b" / "out.json", "--json") is not None
    assert safe_files.writable_output(tmp_path / "new_dir", "--out", kind="dir") is not None
    (tmp_path / "old.json").write_text("{}")
    safe_files.writable_output(tmp_path / "old.json", "--json")
    safe_files.writable_output(tmp_path, "--out", kind="dir")
    assert sorted(tmp_path.rglob("*")) == [*before, tmp_path / "old.json"]


def test_writable_output_refuses_what_cannot_be_written(tmp_path):
    (tmp_path / "file").write_text("x")
    os.mkfifo(tmp_path / "fifo")
    one_line_error(safe_files.writable_output, tmp_path, "--json", match="is a directory")
    one_line_error(
        safe_files.writable_output, tmp_path / "file", "--out", "dir", match="existing file"
    )
    one_line_error(
        safe_files.writable_output, tmp_path / "file" / "x.json", "--json", match="is a file"
    )
    one_line_error(
        safe_files.writable_output, tmp_path / "file" / "a" / "x", "--out", "dir", match="is a file"
    )
    one_line_error(safe_files.writable_output, tmp_path / "fifo", "--json", match="FIFO")


def as_unprivileged(code: str) -> subprocess.CompletedProcess:
    """Run Python ``code`` as an unprivileged user (root ignores directory permissions)."""
    command = [sys.executable, "-c", code]
    if os.geteuid() == 0:
        command = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *command]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=60)


def test_a_read_only_folder_is_refused_before_the_work():
    base = Path(tempfile.mkdtemp(dir="/tmp", prefix="roiedge-ro-"))
    try:
        os.chmod(base, 0o755)
        locked = base / "locked"
        locked.mkdir(mode=0o555)
        os.chmod(locked, 0o555)
        code = (
            "from runtime.safe_files import writable_output\n"
            "from runtime.errors import RoiedgeError\n"
            "for target, kind in (({!r}, 'file'), ({!r}, 'dir'), ({!r}, 'dir')):\n"
            "    try:\n"
            "        writable_output(target, '--out', kind)\n"
            "        print('accepted', target)\n"
            "    except RoiedgeError as error:\n"
            "        print('refused', error)\n"
        ).format(str(locked / "x.json"), str(locked), str(locked / "sub" / "dir"))
        done = as_unprivileged(code)
        assert done.returncode == 0, done.stderr
        lines = done.stdout.splitlines()
        assert len(lines) == 3 and all(line.startswith("refused") for line in lines), lines
        assert all("cannot write in" in line for line in lines)
    finally:
        shutil.rmtree(base)
