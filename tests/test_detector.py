"""models.detector / models.train / models.evaluate: the stage contract, save/load, training, mAP."""

from __future__ import annotations

import json
import zipfile

import numpy as np
import pytest

from models.data import eval_split
from models.detector import (
    SHIPPED,
    DetectorLayers,
    DetectorLoadError,
    FloatDetector,
    build_detector,
    config_path,
    load_detector,
    save_detector,
)
from models.roi_pooling import DEFAULT_IMPLEMENTATION
from runtime.config import DetectorConfig
from runtime.errors import RoiedgeError

CONFIG = DetectorConfig()


def names(tensors):
    return [t.name.split(":")[0] for t in tensors]


@pytest.fixture(scope="module")
def shipped():
    return load_detector(SHIPPED)


def check_contract(backbone_rpn, head, config):
    h, w = config.image_size
    fh, fw = config.feature_size
    c, n, p, k = (
        config.feature_channels,
        config.num_anchors,
        config.num_proposals,
        config.num_classes,
    )
    assert names(backbone_rpn.inputs) == ["image"]
    assert backbone_rpn.output_names == ["features", "rpn_scores", "rpn_deltas"]
    assert [tuple(t.shape) for t in backbone_rpn.inputs] == [(1, h, w, 3)]
    assert [tuple(t.shape) for t in backbone_rpn.outputs] == [(1, fh, fw, c), (1, n), (1, n, 4)]
    assert names(head.inputs) == ["features", "proposals", "box_indexes"]
    assert [str(t.dtype) for t in head.inputs] == ["float32", "float32", "int32"]
    assert [tuple(t.shape) for t in head.inputs] == [(1, fh, fw, c), (p, 4), (p,)]
    assert head.output_names == ["class_scores", "box_deltas"]
    assert [tuple(t.shape) for t in head.outputs] == [(p, k + 1), (p, k, 4)]


def test_fresh_stages_follow_the_contract():
    _, backbone_rpn, head = build_detector(CONFIG)
    check_contract(backbone_rpn, head, CONFIG)


def test_save_load_round_trip(tmp_path):
    _, backbone_rpn, head = build_detector(CONFIG)
    path = save_detector(backbone_rpn, head, CONFIG, tmp_path / "d.keras")
    loaded = load_detector(path)
    assert loaded.config == CONFIG
    check_contract(loaded.backbone_rpn, loaded.head, CONFIG)
    image = np.random.default_rng(0).uniform(0, 255, (1, 160, 160, 3)).astype(np.float32)
    for before, after in zip(backbone_rpn(image), loaded.backbone_rpn(image)):
        np.testing.assert_allclose(np.asarray(before), np.asarray(after), atol=1e-6)
    assert not list(tmp_path.glob("*.tmp")) and sorted(p.name for p in tmp_path.iterdir()) == [
        "d.json",
        "d.keras",
    ]


def test_load_errors_name_the_file(tmp_path):
    missing = tmp_path / "missing.keras"
    with pytest.raises(DetectorLoadError, match=r"missing\.keras: no such detector file"):
        load_detector(missing)
    corrupt = tmp_path / "corrupt.keras"
    corrupt.write_bytes(b"\x00not a zip" * 10)
    with pytest.raises(DetectorLoadError, match=r"corrupt\.keras: not a valid \.keras file"):
        load_detector(corrupt)
    # a zip that is not a Keras archive, with a valid sidecar
    garbage = tmp_path / "garbage.keras"
    with zipfile.ZipFile(garbage, "w") as archive:
        archive.writestr("hello.txt", "hi")
    config_path(garbage).write_text(json.dumps({"config": CONFIG.to_dict()}))
    with pytest.raises(RoiedgeError, match=r"garbage\.keras: could not load the detector") as err:
        load_detector(garbage)
    assert "\n" not in str(err.value)
    # a truncated copy of the shipped file
    truncated = tmp_path / "truncated.keras"
    truncated.write_bytes(SHIPPED.read_bytes()[:5000])
    config_path(truncated).write_bytes(config_path(SHIPPED).read_bytes())
    with pytest.raises(DetectorLoadError, match=r"truncated\.keras"):
        load_detector(truncated)
    # a good archive whose sidecar is missing or broken
    nosidecar = tmp_path / "nosidecar.keras"
    nosidecar.write_bytes(SHIPPED.read_bytes())
    with pytest.raises(DetectorLoadError, match=r"nosidecar\.json: missing config sidecar"):
        load_detector(nosidecar)
    config_path(nosidecar).write_text("{not json")
    with pytest.raises(DetectorLoadError, match=r"nosidecar\.json: unreadable"):
        load_detector(nosidecar)


@pytest.mark.slow  # trains / exports in a subprocess: minutes on 2 cores
def test_short_training_lowers_the_loss(tmp_path):
    from models.train import TrainConfig, train

    cfg = TrainConfig(
        epochs=3,
        steps_per_epoch=12,
        batch_size=4,
        warmup_steps=5,
        out=str(tmp_path / "tiny.keras"),
        quiet=True,
    )
    record = train(cfg)
    losses = [epoch["loss"] for epoch in record["history"]]
    assert losses[-1] < losses[0] * 0.85, losses
    assert load_detector(tmp_path / "tiny.keras").config == CONFIG
    saved = json.loads((tmp_path / "tiny.training.json").read_text())
    assert saved["steps"] == 36 and saved["train_config"]["seed"] == 0


def test_shipped_model_contract_and_map_floor(shipped):
    from models.evaluate import predict, score

    check_contract(shipped.backbone_rpn, shipped.head, shipped.config)
    batch = eval_split(40)
    summary = score(predict(shipped, batch.images), batch, shipped.config.class_names)
    # The shipped model scores 0.950 / 0.725 on these 40 held-out images (deterministic; 0.952 /
    # 0.744 on all 500): a floor one point below, so a degraded model or scorer fails here.
    assert summary["map50"] >= 0.94, summary
    assert summary["map50_95"] >= 0.715, summary


def test_float_detector_stages(shipped):
    run = FloatDetector(shipped)
    image = eval_split(1).images[0]
    stages = run.stages(image)
    assert stages["proposals"].shape == (shipped.config.num_proposals, 4)
    assert stages["class_scores"].shape == (shipped.config.num_proposals, 4)
    np.testing.assert_allclose(stages["class_scores"].sum(-1), 1.0, atol=1e-5)
    detections = run(image)
    assert detections.boxes.shape[1] == 4 and len(detections.boxes) <= shipped.config.max_detections
    assert (np.diff(detections.scores) <= 0).all()


def test_evaluate_cli_bad_input(tmp_path, capsys):
    from models.evaluate import main

    assert main(["--model", str(tmp_path / "nope.keras")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "nope.keras" in err
    assert main(["--images", "0"]) == 2
    assert main(["--show", "2"]) == 2


def test_training_graph_box_math_matches_runtime_numpy():
    import tensorflow as tf

    from models.train import TrainConfig, _decode_tf, _encode_tf, _iou_tf, rpn_targets
    from runtime.processing import box_iou, decode_boxes, encode_boxes, make_anchors

    rng = np.random.default_rng(0)
    anchors = make_anchors(CONFIG)[rng.choice(CONFIG.num_anchors, 300)]
    yx = rng.uniform(0, 120, (300, 2))
    boxes = np.concatenate([yx, yx + rng.uniform(5, 40, (300, 2))], 1).astype(np.float32)
    scales = CONFIG.box_coder_scales
    deltas = encode_boxes(boxes, anchors, scales)
    np.testing.assert_allclose(_encode_tf(tf, boxes, anchors, scales), deltas, atol=1e-4)
    np.testing.assert_allclose(
        _decode_tf(tf, deltas, anchors, scales), decode_boxes(deltas, anchors, scales), atol=1e-3
    )
    np.testing.assert_allclose(_iou_tf(tf, anchors, boxes), box_iou(anchors, boxes), atol=1e-6)
    # every true box gets at least one positive anchor, and the sample size is respected
    cfg = TrainConfig()
    labels, targets = rpn_targets(boxes[:6], make_anchors(CONFIG), rng, cfg)
    ious = box_iou(make_anchors(CONFIG)[labels == 1], boxes[:6])
    assert (ious.max(axis=0) > 0.1).all()
    assert (labels >= 0).sum() <= cfg.rpn_batch and targets.shape == (CONFIG.num_anchors, 4)


def test_head_lowerings_agree_on_the_shipped_weights(shipped):
    """Training pools with the crop_and_resize lowering; the shipped head was saved with
    ``fixed_point`` (the default before ``fixed_point_split``; same values, its artifacts and
    numbers unchanged), and new detectors get the default."""
    import keras

    config = shipped.head.get_config()
    for layer in config["layers"]:
        if layer["class_name"] == "RoIPooling":
            assert layer["config"]["implementation"] == "fixed_point"
            layer["config"]["implementation"] = "crop_and_resize"
    oracle = keras.Model.from_config(config)
    oracle.set_weights(shipped.head.get_weights())
    stages = FloatDetector(shipped).stages(eval_split(2).images[1])
    inputs = [stages["features"], stages["proposals"], stages["box_indexes"]]
    for got, want in zip(shipped.head(inputs), oracle(inputs)):
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-4)
    assert DetectorLayers(CONFIG).roi_pooling().implementation == DEFAULT_IMPLEMENTATION


def test_detector_config_for_other_sizes_and_classes():
    from models.detector import detector_config
    from runtime.config import ConfigError

    # the shipped sidecar's config is exactly the default config at 160x160
    shipped = DetectorConfig.from_dict(json.loads(config_path(SHIPPED).read_text())["config"])
    assert detector_config((160, 160)) == shipped == CONFIG
    config = detector_config((128, 192), ("disc", "block"))
    assert config.class_names == ("disc", "block") and config.feature_size == (16, 24)
    # anchors follow the shorter side: 128 / 160 of the default sizes
    np.testing.assert_allclose(config.anchor_sizes, [0.8 * s for s in CONFIG.anchor_sizes])
    _, backbone_rpn, head = build_detector(config)
    check_contract(backbone_rpn, head, config)
    with pytest.raises(ConfigError, match=r"image_size=\(130, 192\).*multiples of stride 8"):
        detector_config((130, 192))


def test_training_refuses_class_names_the_procedural_data_lacks(tmp_path):
    from models.train import TrainConfig, train

    config = DetectorConfig(class_names=("cat", "dog"))
    with pytest.raises(RoiedgeError, match=r"\['cat', 'dog'\] do not match .* --data") as error:
        train(TrainConfig(out=str(tmp_path / "x.keras"), quiet=True), config)
    assert "\n" not in str(error.value) and not (tmp_path / "x.keras").exists()
