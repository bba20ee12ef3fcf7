"""export.onnx_profile: grouping onnxruntime's profile, the RoIPooling sub-model, the floor, the CLI."""

from __future__ import annotations

import numpy as np

from bench.onnx_profile import main
from export.onnx_profile import GROUPS, profile_stage, roi_pooling_model, runs_from_events


def _node(name: str, op: str, ts: int, dur: int) -> dict:
    return {
        "cat": "Node",
        "name": f"{name}_kernel_time",
        "ts": ts,
        "dur": dur,
        "args": {"op_name": op},
    }


def _run(ts: int, dur: int) -> dict:
    return {"cat": "Session", "name": "model_run", "ts": ts, "dur": dur}


def test_runs_from_events_groups_each_node_into_its_run():
    events = [
        _run(100, 50),
        _node("Gather_3", "Gather", 101, 10),
        _node("Gemm_9", "QGemm", 120, 7),
        _node("q", "QuantizeLinear", 130, 2),
        _node("Softmax_11", "Softmax", 140, 3),
        _run(200, 40),
        _node("Gather_3", "Gather", 201, 12),
        _node("Conv_1", "FusedConv", 215, 5),
        {"cat": "Node", "name": "Gather_3_fence_before", "ts": 202, "dur": 99},  # not a kernel
        _node("late", "Add", 500, 1000),  # outside every run
        {"cat": "Session", "name": "session_initialization", "ts": 0, "dur": 80},
    ]
    runs = runs_from_events(events, frozenset({"Gather_3"}), skip=0)
    assert runs == [
        {
            "ms": 0.05,
            "groups": {"roi_pooling": 0.01, "weights": 0.007, "quantize": 0.002, "other": 0.003},
        },
        {"ms": 0.04, "groups": {"roi_pooling": 0.012, "weights": 0.005}},
    ]
    assert runs_from_events(events, frozenset(), skip=1) == [
        {"ms": 0.04, "groups": {"other": 0.012, "weights": 0.005}}
    ]


def test_roi_pooling_sub_model_computes_tensorflows_roi_pooling(exported_artifacts):
    """The extracted float RoIPooling part gives what TF's crop_and_resize + max_pool gives."""
    import onnx
    import onnxruntime as ort
    import tensorflow as tf

    from export.onnx_format import roi_pooling_nodes
    from models.detector import load_detector

    out, manifest = exported_artifacts
    entry = manifest.find("head", "onnx", "float32")
    model = onnx.load(str(out / entry.path))
    sub = roi_pooling_model(model, frozenset(roi_pooling_nodes(model.graph, "head")))
    assert sub is not None and len(sub.graph.output) == 1
    session = ort.InferenceSession(sub.SerializeToString(), providers=["CPUExecutionProvider"])
    with np.load(out / manifest.golden["head"]) as golden:
        features, proposals, box_indexes = (golden[f"input_{i}"][0] for i in range(3))
    (pooled,) = session.run(
        None, {"features": features, "proposals": proposals, "box_indexes": box_indexes}
    )
    config = load_detector().config
    pool_h, pool_w = config.pool_size
    s = config.samples_per_bin
    crops = tf.image.crop_and_resize(features, proposals, box_indexes, (pool_h * s, pool_w * s))
    expected = tf.nn.max_pool2d(crops, s, s, "VALID").numpy()
    # float32 ≤ 1e-5 on unit features (the lowering's bound); these features reach ~10.
    np.testing.assert_allclose(pooled.reshape(expected.shape), expected, rtol=1e-5, atol=1e-5)


def test_profile_stage_reports_the_head_floor_and_no_floor_for_the_backbone(exported_artifacts):
    out, _ = exported_artifacts
    head = profile_stage(out, "head", threads=1, runs=3, rounds=2)
    backbone = profile_stage(out, "backbone_rpn", threads=1, runs=3, rounds=2)
    for stage in (head, backbone):
        assert set(stage["profile"]) == {"float32", "int8"}
        assert set(stage["profile"]["int8"]["groups_ms"]) == set(GROUPS)
        assert stage["ratio"] > 0 and stage["ratio_range"][0] <= stage["ratio_range"][1]
    # The int8 head keeps RoIPooling float (export.onnx_format): the profile sees it in both,
    # and the quantized dense layers' Q/DQ only in int8.
    assert head["profile"]["float32"]["groups_ms"]["roi_pooling"] > 0
    assert head["profile"]["int8"]["groups_ms"]["roi_pooling"] > 0
    assert head["profile"]["float32"]["groups_ms"]["quantize"] == 0
    assert head["profile"]["int8"]["groups_ms"]["quantize"] > 0
    assert head["floor"] > 0 and set(head["timing"]) == {"float32", "int8", "roi_pooling_float32"}
    assert (
        backbone["floor"] is None
        and backbone["profile"]["float32"]["groups_ms"]["roi_pooling"] == 0
    )


def test_cli_refuses_bad_input_in_one_line(tmp_path, capsys):
    assert main(["--artifacts", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err.strip()
    assert "nowhere" in err and len(err.splitlines()) == 1
    assert main(["--artifacts", str(tmp_path), "--runs", "0"]) == 2
    assert capsys.readouterr().err.strip() == "error: --runs is 0; expected >= 1"


def test_report_target_row_without_float32_is_not_measured(tmp_path):
    from export.report.config import ReportConfig, Targets
    from export.report.verdicts import onnx_int8_rows
    from runtime.manifest import ArtifactEntry, Manifest

    entry = ArtifactEntry(
        name="head/onnx/int8",
        model="head",
        format="onnx",
        precision="int8",
        path="head.int8.onnx",
        sha256="0" * 64,
        bytes=1,
        inputs=(),
        outputs=(),
    )
    manifest = Manifest(artifacts=(entry,), golden={}, source_models={}, detector={})
    config = ReportConfig(artifacts=tmp_path)
    (row,) = onnx_int8_rows(tmp_path, manifest, Targets(), config)
    assert row["measured"] is None and "head/onnx/float32 not exported" in row["note"]
