"""``models.train`` flags for the head's sizes land in the saved detector's config (its sidecar,
and from there the export manifest)."""

from __future__ import annotations

import subprocess
import sys

import pytest


@pytest.mark.slow  # trains in a subprocess
def test_head_flags_are_recorded_in_the_saved_detector(tmp_path):
    from models.detector import load_detector
    from runtime.config import DetectorConfig

    out = tmp_path / "d.keras"
    command = [
        sys.executable, "-m", "models.train", "--epochs", "1", "--steps-per-epoch", "1",
        "--batch-size", "1", "--warmup-steps", "1", "--quiet", "--out", str(out),
        "--num-proposals", "32", "--pool-size", "5", "5", "--max-detections", "7",
        "--score-threshold", "0.2",
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    config = load_detector(out).config
    assert (config.num_proposals, config.pool_size) == (32, (5, 5))
    assert (config.max_detections, config.score_threshold) == (7, 0.2)
    assert config.anchor_sizes == DetectorConfig().anchor_sizes  # the rest stays default
    head = load_detector(out).head
    assert tuple(head.inputs[1].shape) == (32, 4)


def test_head_flags_set_only_the_fields_given_and_bad_values_are_refused():
    from models.train import TrainConfig
    from models.train_data import with_detector_flags
    from runtime.config import DetectorConfig
    from runtime.errors import RoiedgeError

    base = DetectorConfig()
    det = with_detector_flags(base, TrainConfig(pool_size=(5, 5), max_detections=7))
    assert (det.pool_size, det.max_detections) == ((5, 5), 7)
    assert det.num_proposals == base.num_proposals and det.anchor_sizes == base.anchor_sizes
    with pytest.raises(RoiedgeError, match="num_proposals"):
        with_detector_flags(base, TrainConfig(num_proposals=0))


@pytest.mark.parametrize(
    "flags, named",
    [
        (["--threads", "-3"], "--threads"),
        (["--threads", "0"], "--threads"),
        (["--learning-rate", "nan"], "--learning-rate"),
        (["--learning-rate", "inf"], "--learning-rate"),
        (["--learning-rate", "-1"], "--learning-rate"),
        (["--image-size", "40000", "40000"], "--image-size"),
        (["--image-size", "0", "160"], "--image-size"),
        (["--anchor-sizes", "16", "-4"], "--anchor-sizes"),
        (["--anchor-sizes", "0"], "--anchor-sizes"),
        (["--anchor-sizes", "nan"], "--anchor-sizes"),
        (["--anchor-sizes", "5000"], "--anchor-sizes"),
        (["--anchor-sizes", "16", "16"], "--anchor-sizes"),
        (["--anchor-ratios", "0"], "--anchor-ratios"),
        (["--anchor-ratios", "1000"], "--anchor-ratios"),
        (["--anchor-ratios", "inf"], "--anchor-ratios"),
    ],
)
def test_numeric_flags_out_of_range_are_one_line_exit_2_before_training(tmp_path, flags, named):
    out = tmp_path / "m.keras"
    result = subprocess.run(
        [sys.executable, "-m", "models.train", "--out", str(out), "--epochs", "1", *flags],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and named in lines[0], result.stderr
    assert "Traceback" not in result.stderr
    assert not out.exists()
