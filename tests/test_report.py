"""The parity report: its statistics on hand-made cases, and a quick slice of the held-out split."""

from __future__ import annotations

import math

import numpy as np
import pytest

from export.report import (
    REPORT_JSON,
    REPORT_MD,
    REPORT_PNG,
    ReportConfig,
    build_report,
    detection_agreement,
    output_statistics,
    write_report,
)
from export.report.config import PIPELINES
from export.report.verdicts import map_drop_failures, single_parity_failures
from runtime import strict_json
from runtime.errors import RoiedgeError
from runtime.processing import Detections
from runtime.tolerances import tolerance_for


def _dets(boxes, scores, classes) -> Detections:
    return Detections(
        np.asarray(boxes, np.float32).reshape(-1, 4),
        np.asarray(scores, np.float32),
        np.asarray(classes, np.int32),
    )


def test_detection_agreement_matches_same_class_by_iou():
    reference = [
        _dets([[0, 0, 10, 10], [20, 20, 30, 30], [50, 50, 60, 60]], [0.9, 0.8, 0.3], [0, 1, 0])
    ]
    # First: same class, half the area -> IoU 0.5. Second: right box, wrong class -> 0.
    # Third: below the score floor -> not a reference at all.
    candidate = [_dets([[0, 0, 10, 5], [20, 20, 30, 30]], [0.7, 0.9], [0, 2])]
    result = detection_agreement(candidate, reference, min_score=0.5)
    assert result["references"] == 2
    assert result["mean_iou"] == pytest.approx(0.25)
    assert result["matched"] == pytest.approx(0.5)


def test_detection_agreement_of_identical_detections_is_perfect():
    reference = [_dets([[1, 2, 8, 9]], [0.99], [1]), _dets([], [], [])]
    result = detection_agreement(reference, reference, min_score=0.5)
    assert result == {"mean_iou": pytest.approx(1.0), "matched": 1.0, "references": 1}


def test_output_statistics_by_hand():
    reference = np.array([3.0, 4.0, 0.0, 0.0])
    actual = np.array([3.0, 4.0, 0.0, 1.0])  # error energy 1, signal energy 25
    stats = output_statistics(actual - reference, actual, reference)
    assert stats["max_abs"] == 1.0
    assert stats["mean_abs"] == 0.25
    assert stats["snr_db"] == pytest.approx(10 * math.log10(25))
    assert stats["cosine"] == pytest.approx(25 / (5 * math.sqrt(26)))


def test_report_config_refuses_bad_values():
    with pytest.raises(RoiedgeError, match="--images is 0; expected an integer 1 to "):
        ReportConfig(artifacts="x", images=0)


def test_report_cli_names_a_missing_artifacts_directory(tmp_path, capsys):
    from export.report import main

    assert main(["--artifacts", str(tmp_path / "nowhere"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "nowhere" in err and "manifest" in err and len(err.strip().splitlines()) == 1


def test_quick_slice_every_artifact_within_tolerance(exported_artifacts, tmp_path):
    """The report's accuracy bounds on a slice of the held-out split (the full split: make report)."""
    out, manifest = exported_artifacts
    config = ReportConfig(
        artifacts=out, images=24, stage_images=4, runs=2, warmup=0, progress=False
    )
    report = build_report(config)
    names = {row["name"] for row in report["artifacts"]}
    # Every stage artifact gets a row; the single-file detectors are pipeline rows of their own.
    stage_names = {e.name for e in manifest.artifacts if e.model in ("backbone_rpn", "head")}
    assert names == stage_names and stage_names
    pipeline_rows = {row["name"]: row for row in report["pipelines"]}
    assert set(pipeline_rows) >= {"tflite/int8", "onnx/int8"}
    singles = {e.name: e for e in manifest.artifacts if e.model == "detector"}
    assert singles and {n for n, r in pipeline_rows.items() if r.get("single_file")} == set(singles)
    for name, entry in singles.items():
        row = pipeline_rows[name]
        assert row["bytes"] == entry.bytes and row["latency_ms"] > 0
        two_stage = pipeline_rows[row["two_stage"]]  # the pipeline of the stage files it chains
        chained = strict_json.loads((out / entry.op_report).read_text())["build_notes"]
        heads = chained["chained_stages"]
        assert (two_stage["precision"], two_stage["head_precision"]) == (
            heads["backbone_rpn"],
            heads["head"],
        )
        for key in ("map50", "map50_95"):
            assert row["vs_two_stage"][key] == pytest.approx(row[key] - two_stage[key])
        # The parity verdict is not vacuous: 0.2 pt under the two-stage pipeline fails.
        shifted = {**row, "map50": two_stage["map50"] - 0.002}
        assert single_parity_failures(shifted, two_stage, report["keras"]), name
    keras_map50 = report["keras"]["map50"]
    assert keras_map50 > 0.8  # a detector that detects, so the drops below mean something
    for row in report["artifacts"] + report["pipelines"]:
        assert row["passed"], (row["name"], row["failures"])
        # The verdict is not vacuous: the same row with its mAP@0.5 just past the precision's
        # bound must fail.
        bound = tolerance_for(row["precision"]).max_map50_drop
        broken = {**row, "map50": keras_map50 - bound - 0.01}
        broken.pop("drop_intervals", None)
        assert map_drop_failures(row["precision"], report["keras"], broken), row["name"]
        # ... and so must the same row with its mAP@0.5 drop interval wholly past the bound.
        if "drop_intervals" in row and "map50" in row["drop_intervals"]:
            interval = row["drop_intervals"]["map50"]
            width = interval["high"] - interval["low"]
            past = {**interval, "low": bound + 0.01, "high": bound + 0.01 + width}
            shifted = {**row, "drop_intervals": {**row["drop_intervals"], "map50": past}}
            assert map_drop_failures(row["precision"], report["keras"], shifted), row["name"]
    # An independent fact instead of the report's own judge: float32 TFLite computes the Keras
    # model's numbers to ~1e-5, so its pipeline finds the same boxes and scores the same mAP.
    for name in ("tflite/float32", "detector/tflite/float32"):
        for key in ("map50", "map50_95"):
            assert abs(pipeline_rows[name][key] - report["keras"][key]) <= 1e-3, (name, key)

    onnx_rows = {
        row["target"].split("/")[0]: row
        for row in report["targets"]
        if "/onnx/int8" in row["target"]
    }
    assert set(onnx_rows) == {"backbone_rpn", "head"}
    assert all(row["measured"] > 0 for row in onnx_rows.values())
    assert "floor" in onnx_rows["head"]["note"] and "floor" not in onnx_rows["backbone_rpn"]["note"]

    paths = write_report(report, tmp_path)
    assert [p.name for p in paths] == [REPORT_JSON, REPORT_MD, REPORT_PNG]
    loaded = strict_json.loads((tmp_path / REPORT_JSON).read_text())
    for key in ("map50", "map50_95"):
        assert isinstance(loaded["keras"][key], float)
    for row in loaded["artifacts"]:
        for key in ("name", "precision", "format", "map50", "map50_95", "bytes", "latency_ms"):
            assert key in row
    assert (tmp_path / REPORT_PNG).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    markdown = (tmp_path / REPORT_MD).read_text()
    assert "head/tflite/int8" in markdown
    assert "### Single files against their two-stage pipeline" in markdown
    assert "| detector/tflite/int8 | tflite/int8 |" in markdown


def test_report_on_a_head_int8_only_export(tmp_path):
    """A subset export (``--models head --precisions int8 --formats tflite``): no pipeline can run,
    so the report measures the artifact against float Keras and lists what it could not measure."""
    from export.config import ExportConfig
    from export.pipeline import run_export

    out = tmp_path / "artifacts"
    export = ExportConfig(
        out=out,
        calibration_images=8,
        golden_samples=1,
        models=("head",),
        formats=("tflite",),
        precisions=("int8",),
        progress=False,
    )
    run_export(export)
    config = ReportConfig(artifacts=out, images=6, stage_images=2, runs=1, warmup=0, progress=False)
    report = build_report(config)
    assert [row["name"] for row in report["artifacts"]] == ["head/tflite/int8"]
    (row,) = report["artifacts"]
    assert 0.0 <= row["top1_agreement"] <= 1.0 and set(row["outputs"]) == {
        "class_scores",
        "box_deltas",
    }
    assert report["pipelines"] == []
    reasons = {r["name"]: r["reason"] for r in report["not_measured"]}
    assert reasons["tflite/int8"] == "not exported: backbone_rpn/tflite/int8"
    assert len(reasons) == len(PIPELINES)  # every pipeline of the table
    unmeasured = [t for t in report["targets"] if t["measured"] is None]
    assert any("head/tflite/float32 not exported" in t["note"] for t in unmeasured)
    write_report(report, out)
    text = (out / REPORT_MD).read_text()
    assert "## Not measured" in text and "backbone_rpn/tflite/int8" in text
