"""runtime bench's pipeline rows carry detect()'s split and the post-processing share."""

from __future__ import annotations

from runtime_fakes import build_fake_artifacts

from runtime.bench import format_table, measure_pipeline


def test_pipeline_row_splits_detect_into_its_steps(tmp_path):
    build_fake_artifacts(tmp_path)
    row = measure_pipeline(str(tmp_path), "int8", runs=3, warmup=1, backend=None, threads=1)
    split = row["split_ms"]
    assert set(split) == {"preprocess", "backbone_rpn", "proposals", "head", "detections", "total"}
    assert all(value > 0 for value in split.values())
    # The steps are disjoint parts of detect(): each below its total, together about its total
    # (medians per step do not add up exactly; a double-counted or missing step would show).
    parts = [v for k, v in split.items() if k != "total"]
    assert max(parts) < split["total"]
    assert 0.5 * split["total"] <= sum(parts) <= 1.2 * split["total"]
    share = (split["proposals"] + split["detections"]) / split["total"]
    assert abs(row["postprocess_share"] - share) < 1e-9 and 0 < share < 1
    assert "post-processing" in format_table([row])
