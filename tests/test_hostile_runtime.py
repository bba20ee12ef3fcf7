"""Issue 20, runtime side: hostile inputs to `python -m runtime run|check|detect` are refused in one
line (exit 2) or give the correct result: wrapped ints, complex/bool/string inputs, out-of-range
box indexes, a non-UTF-8 tensor name, a file swapped after its hash was checked."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_runtime import _error_lines, run_cli

from runtime import backends, manifest
from runtime.backends import BackendError, TensorInfo
from runtime.errors import RoiedgeError
from runtime.manifest import read_manifest, sha256_file
from runtime.run import run_artifact

FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def one_line_exit_2(proc, match: str) -> str:
    lines = _error_lines(proc.stderr)
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    assert len(lines) == 1 and lines[0].startswith("error: ") and match in lines[0], lines
    return lines[0]


def head_inputs(box_indexes) -> dict[str, np.ndarray]:
    """Inputs of the fake detector's head (features 1x4x4x4, 8 proposals) by Keras name."""
    return {
        "features": np.ones((1, 4, 4, 4), np.float32),
        "proposals": np.tile(np.array([[0.0, 0.0, 0.5, 0.5]], np.float32), (8, 1)),
        "box_indexes": np.asarray(box_indexes),
    }


# ------------------------------------------------------------------- item 4: no silent casts

INT_TENSORS = st.sampled_from(["int8", "uint8", "int32"])


@FAST
@given(
    dtype=INT_TENSORS,
    values=st.lists(st.integers(-(2**63), 2**63 - 1), min_size=1, max_size=6),
)
def test_ints_outside_the_tensor_range_are_refused_never_wrapped(dtype, values):
    info = TensorInfo("box_indexes", (len(values),), dtype)
    array = np.array(values, dtype=np.int64)
    bounds = np.iinfo(dtype)
    if all(bounds.min <= v <= bounds.max for v in values):
        stored = backends.to_stored(array, info, "x")
        assert stored.dtype == np.dtype(dtype)
        assert stored.astype(np.int64).tolist() == values  # the same numbers, not wrapped
    else:
        with pytest.raises(RoiedgeError, match="a cast would wrap") as caught:
            backends.to_stored(array, info, "x")
        assert "\n" not in str(caught.value)


@FAST
@given(
    kind=st.sampled_from(["complex64", "complex128", "bool", "<U3", "|S2", "object"]),
    tensor=st.sampled_from(["float32", "int32", "int8"]),
)
def test_complex_bool_and_string_inputs_are_refused_for_number_tensors(kind, tensor):
    array = np.zeros(3, dtype=kind)
    with pytest.raises(RoiedgeError, match="expected"):
        backends.to_stored(array, TensorInfo("t", (3,), tensor), "x")


def test_a_bool_tensor_takes_bools_only():
    info = TensorInfo("mask", (2,), "bool")
    assert backends.to_stored(np.array([True, False]), info, "x").tolist() == [True, False]
    with pytest.raises(RoiedgeError, match="expected a bool array"):
        backends.to_stored(np.array([1, 0]), info, "x")


@pytest.mark.parametrize("fmt", ["tflite", "onnx"])
@pytest.mark.parametrize("index", [1, 7, -1, 2**32])
def test_box_indexes_outside_the_batch_are_one_line(fake_dir, fmt, index):
    with pytest.raises(RoiedgeError, match="box_indexes") as caught:
        run_artifact(fake_dir, head_inputs(np.full(8, index, np.int64)), fmt, model="head")
    assert "\n" not in str(caught.value)


def test_box_indexes_in_the_batch_run(fake_dir):
    outputs = run_artifact(fake_dir, head_inputs(np.zeros(8, np.int64)), "tflite", model="head")
    assert outputs["class_scores"].shape == (8, 3)


def write_npz(path: Path, **arrays) -> Path:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    path.write_bytes(buffer.getvalue())
    return path


@pytest.mark.parametrize(
    "box_indexes, match",
    [
        (np.full(8, 2**32, np.int64), "box_indexes"),
        (np.zeros(8, np.complex64), "complex"),
        (np.zeros(8, bool), "bool"),
        (np.array(["0"] * 8), "<U1"),
    ],
)
def test_run_cli_refuses_hostile_inputs_in_one_line(fake_dir, tmp_path, box_indexes, match):
    inputs = {**head_inputs(0), "box_indexes": box_indexes}
    path = write_npz(tmp_path / "x.npz", **inputs)
    out = tmp_path / "y.npz"
    proc = run_cli("run", fake_dir, "--model", "head", "--inputs", path, "--out", out)
    one_line_exit_2(proc, match)
    assert not out.exists()


def test_a_failing_interpreter_call_is_one_line(fake_dir):
    stage = backends.load_stage(fake_dir, read_manifest(fake_dir).find("head", "tflite", "float32"))
    # Past the Stage's own checks: a raw gather index out of bounds inside the interpreter.
    feeds = {t.name: None for t in stage.backend.inputs}
    for tensor, value in zip(stage._in, head_inputs(np.full(8, 5, np.int32)).values()):
        feeds[tensor.name] = value
    with pytest.raises(BackendError, match="failed on these inputs"):
        stage.backend.run(feeds)


# ------------------------------------------------- item 15: a non-UTF-8 tensor name, one row


def rehash(directory: Path, name: str) -> None:
    """Refresh artifact ``name``'s sha256 and size in the manifest after editing its file."""
    path = directory / "manifest.json"
    data = json.loads(path.read_text())
    for entry in data["artifacts"]:
        if entry["name"] == name:
            entry["sha256"] = sha256_file(directory / entry["path"])
            entry["bytes"] = (directory / entry["path"]).stat().st_size
    path.write_text(json.dumps(data))


def test_a_tensor_name_that_is_not_utf8_fails_only_its_row(fake_copy):
    target = fake_copy / "head.float32.tflite"
    content = target.read_bytes()
    name, broken = b"serving_default_box_indexes:0", b"serving_default_box_\xff\xfedexes:0"
    assert content.count(name) == 1 and len(broken) == len(name)
    target.write_bytes(content.replace(name, broken))
    rehash(fake_copy, "head/tflite/float32")
    proc = run_cli("check", fake_copy)
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = proc.stdout.splitlines()
    fails = [line for line in lines if line.startswith("FAIL ") and "FAIL pipeline/" not in line]
    assert len(fails) == 1 and "head/tflite/float32" in fails[0] and "'utf-8' codec" in fails[0]
    assert "10/11 artifacts within" in proc.stdout
    # The detector pipeline row runs float32, whose head is the broken file: it fails too.
    assert "detector pipeline tflite/float32 FAIL" in proc.stdout


# ------------------------------------------------------ item 7: the bytes hashed are the bytes run


def test_a_file_swapped_after_its_hash_was_checked_does_not_run(fake_copy, monkeypatch):
    entry = read_manifest(fake_copy).find("backbone_rpn", "tflite", "float32")
    original = (fake_copy / entry.path).read_bytes()
    other = (fake_copy / "head.float32.tflite").read_bytes()
    checked = manifest.verified_content

    def check_then_swap(*args, **kwargs):
        result = checked(*args, **kwargs)
        (fake_copy / entry.path).write_bytes(other)  # a concurrent rename lands here
        return result

    monkeypatch.setattr(manifest, "verified_content", check_then_swap)
    stage = backends.load_stage(fake_copy, entry)
    assert (fake_copy / entry.path).read_bytes() == other
    # What runs is the backbone that was hashed (the swapped-in head has other inputs entirely).
    reference = backends.open_backend(fake_copy / entry.path, "tflite", content=original)
    image = np.random.default_rng(0).uniform(0, 255, (1, 32, 32, 3)).astype(np.float32)
    ran = stage.run(image)
    expected = reference.run({reference.inputs[0].name: image})
    for got, want in zip(ran, (expected[t.name] for t in stage._out)):
        np.testing.assert_array_equal(got, want)


def test_a_file_swapped_before_the_check_is_refused(fake_copy):
    entry = read_manifest(fake_copy).find("backbone_rpn", "tflite", "float32")
    (fake_copy / entry.path).write_bytes((fake_copy / "head.float32.tflite").read_bytes())
    with pytest.raises(RoiedgeError, match="sha256"):
        backends.load_stage(fake_copy, entry)
