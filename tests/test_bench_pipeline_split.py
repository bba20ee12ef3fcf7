"""runtime bench's pipeline rows carry detect()'s split and the post-processing share."""

from __future__ import annotations

import pytest
from runtime_fakes import build_fake_artifacts

from runtime.bench import PIPELINE_STEPS, format_table, measure_pipeline, pipeline_split


def test_pipeline_row_splits_detect_into_its_steps(tmp_path):
    build_fake_artifacts(tmp_path)
    row = measure_pipeline(str(tmp_path), "int8", runs=3, warmup=1, backend=None, threads=1)
    split = row["split_ms"]
    assert set(split) == {*PIPELINE_STEPS, "total"}
    assert all(value > 0 for key, value in split.items() if key != "other")
    assert split["other"] >= 0
    # How the steps add up is pipeline_split's arithmetic, tested exactly below on fixed
    # timings; measured medians are not compared here (no timing asserts on a shared machine).
    share = row["postprocess_share"]
    low, high = row["postprocess_share_iqr"]
    assert 0 < low <= share <= high < 1
    assert row["images"] >= 1
    assert "post-processing" in format_table([row])


def test_split_counts_everything_outside_the_models_and_preprocessing_as_post_processing():
    # What is not a timed step (rescaling boxes, building the list) lands in "other", so the
    # post-processing share cannot leave any of detect()'s time out.
    timings = {
        "preprocess": 0.001,
        "backbone_rpn": 0.002,
        "proposals": 0.0005,
        "head": 0.004,
        "detections": 0.0002,
        "total": 0.008,
    }
    split = pipeline_split(timings)
    assert split["other"] == pytest.approx(0.3)
    assert sum(split[step] for step in PIPELINE_STEPS) == pytest.approx(split["total"])
