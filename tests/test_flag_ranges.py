"""Numeric flags of models.train, models.evaluate, python -m export (all three paths) and
export.report: NaN, inf and out-of-range values refused in one line, exit 2, before TensorFlow
loads (issue 20 item 11); outputs that cannot be written refused before the work (item 14)."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from export.config import ExportInputError
from export.samples import TensorInfo, load_samples
from runtime.limits import bad_number, limit

ROOT = Path(__file__).resolve().parent.parent

#: Runs ``main(argv)`` of a CLI module and reports whether TensorFlow was imported on the way.
_RUN = """
import sys
from importlib import import_module
module, argv = sys.argv[1], sys.argv[2:]
code = import_module(module).main(argv)
sys.stderr.write("TF LOADED\\n" if "tensorflow" in sys.modules else "")
sys.exit(code)
"""


def _refused(module: str, *argv: str) -> str:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "3"}
    result = subprocess.run(
        [sys.executable, "-c", _RUN, module, *argv],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 2, (result.returncode, result.stderr[-2000:])
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr[-2000:]
    return lines[0]


BIG = str(10**9)


@pytest.mark.parametrize(
    "module, flags, named",
    [
        ("export.__main__", ["--target-drop", "nan"], "--target-drop is nan"),
        ("export.__main__", ["--target-drop", "inf"], "--target-drop is inf"),
        ("export.__main__", ["--target-drop", "101"], "--target-drop is 101.0"),
        ("export.__main__", ["--golden-samples", BIG], "--golden-samples"),
        ("export.__main__", ["--val-images", BIG], "--val-images"),
        ("export.__main__", ["--calibration-images", BIG], "--calibration-images"),
        (
            "export.__main__",
            ["--keras-model", "m.keras", "--samples", "s.npz", "--samples-per-bin", "1000"],
            "--samples-per-bin is 1000",
        ),
        (
            "export.__main__",
            ["--detector", "card.json", "--calibration", "cal", "--golden-samples", BIG],
            "--golden-samples",
        ),
        ("models.evaluate", ["--min-map50", "nan"], "--min-map50 is nan"),
        ("models.evaluate", ["--min-map50", "1.5"], "--min-map50 is 1.5"),
        ("models.evaluate", ["--images", BIG], "--images"),
        ("models.evaluate", ["--show", "-1"], "--show is -1"),
        ("export.report.cli", ["--artifacts", "a", "--threads", "5000"], "--threads is 5000"),
        ("export.report.cli", ["--artifacts", "a", "--warmup", BIG], "--warmup"),
        ("models.train", ["--threads", "5000", "--out", "x.keras"], "--threads is 5000"),
    ],
)
def test_numeric_flags_refused_in_one_line_before_tensorflow(tmp_path, module, flags, named):
    if module == "export.__main__":
        flags = ["--out", str(tmp_path / "out"), *flags]
    line = _refused(module, *flags)
    assert line.startswith("error: ") and named in line, line
    assert not (tmp_path / "out").exists()


def test_evaluate_refuses_an_unwritable_json_before_the_work(tmp_path):
    parent_is_a_file = tmp_path / "file"
    parent_is_a_file.write_text("")
    line = _refused("models.evaluate", "--json", str(parent_is_a_file / "summary.json"))
    assert "--json" in line and "is a file" in line, line


def test_export_refuses_an_out_whose_folder_cannot_be_written(tmp_path):
    if os.geteuid() == 0:  # root writes anywhere: a file as the parent instead
        parent = tmp_path / "file"
        parent.write_text("")
    else:
        parent = tmp_path / "ro"
        parent.mkdir()
        parent.chmod(0o555)
    line = _refused("export.__main__", "--out", str(parent / "artifacts"))
    assert "--out" in line and str(parent) in line, line


@given(
    value=st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-(10**12), 10**12)),
    low=st.integers(-5, 5),
    span=st.integers(0, 100),
    low_open=st.booleans(),
)
def test_bad_number_accepts_exactly_the_finite_values_in_range(value, low, span, low_open):
    high = low + span
    inside = math.isfinite(value) and value <= high and (value > low if low_open else value >= low)
    message = bad_number("--x", value, low, high, low_open=low_open)
    assert (message is None) == inside, (value, low, high, low_open, message)
    if message is not None:
        assert message.startswith(f"--x is {value!r}; expected ") and "\n" not in message


def test_bad_number_names_its_limit_row_and_refuses_bools_and_strings():
    over = limit("flag_images") + 1
    assert "LIMITS flag_images" in bad_number("--images", over, 1, limit_name="flag_images")
    assert bad_number("--images", limit("flag_images"), 1, limit_name="flag_images") is None
    assert bad_number("--n", True, 0) is not None
    assert bad_number("--n", "3", 0) is not None


def test_samples_with_nan_or_inf_are_refused_in_one_line():
    info = [TensorInfo("x", (1, 4), "float32")]
    good = np.zeros((8, 1, 4), np.float32)
    assert load_samples({"x": good}, info, []).count == 8
    for bad_value in (np.nan, np.inf, -np.inf):
        bad = good.copy()
        bad[5, 0, 2] = bad_value
        with pytest.raises(ExportInputError, match=r"'x' holds NaN or infinite.*first sample 5"):
            load_samples({"x": bad}, info, [])
    outputs = [TensorInfo("y", (1, 2), "float32")]
    given_outputs = np.full((8, 1, 2), np.nan, np.float32)
    with pytest.raises(ExportInputError, match="'output:y' holds NaN"):
        load_samples({"x": good, "output:y": given_outputs}, info, outputs)


def test_train_refuses_an_unwritable_out_before_training(tmp_path):
    parent_is_a_file = tmp_path / "file"
    parent_is_a_file.write_text("")
    line = _refused("models.train", "--out", str(parent_is_a_file / "m.keras"), "--epochs", "1")
    assert "--out" in line and "is a file" in line, line


def test_evaluate_prints_a_hostile_json_name_escaped(tmp_path):
    hostile = tmp_path / "x\x1b[2J\x1b]0;owned\x07.json"  # clears the screen, sets the title
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "3"}
    result = subprocess.run(
        [sys.executable, "-m", "models.evaluate", "--images", "1", "--json", str(hostile)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert hostile.is_file()
    assert "\x1b" not in result.stdout and "\x07" not in result.stdout
    assert "x\\x1b[2J\\x1b]0;owned\\x07.json" in result.stdout, result.stdout
