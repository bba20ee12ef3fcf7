"""runtime.config and runtime.processing against hand values and brute-force references."""

from __future__ import annotations

import json

import numpy as np
import pytest

from runtime.config import ConfigError, DetectorConfig
from runtime.errors import RoiedgeError
from runtime.processing import (
    box_iou,
    decode_boxes,
    detections_from_head,
    encode_boxes,
    make_anchors,
    nms,
    preprocess,
    proposals_from_rpn,
    top_k_indices,
)

CONFIG = DetectorConfig()


def random_boxes(rng, n, size=160.0):
    yx = rng.uniform(0, size * 0.8, (n, 2))
    hw = rng.uniform(4, size * 0.5, (n, 2))
    return np.concatenate([yx, yx + hw], axis=1).astype(np.float32)


def test_anchor_layout_matches_rpn_output_order():
    anchors = make_anchors(CONFIG)
    h, w = CONFIG.feature_size
    a = CONFIG.anchors_per_location
    assert anchors.shape == (h * w * a, 4) == (CONFIG.num_anchors, 4)
    grid = anchors.reshape(h, w, a, 4)
    centers = (grid[..., :2] + grid[..., 2:]) / 2
    np.testing.assert_allclose(centers[0, 0, 0], [4.0, 4.0])
    np.testing.assert_allclose(centers[2, 5, 7], [2.5 * 8, 5.5 * 8])
    hw = grid[0, 0, :, 2:] - grid[0, 0, :, :2]
    # size-major, ratio-minor; ratio = height / width, area = size**2
    np.testing.assert_allclose(
        hw[:, 0] * hw[:, 1], np.repeat(CONFIG.anchor_sizes, 3) ** 2, rtol=1e-5
    )
    np.testing.assert_allclose(hw[:, 0] / hw[:, 1], np.tile(CONFIG.anchor_ratios, 4), rtol=1e-5)


def test_encode_then_decode_gives_the_box_back():
    rng = np.random.default_rng(0)
    anchors = make_anchors(CONFIG)[rng.choice(CONFIG.num_anchors, 500)]
    boxes = random_boxes(rng, 500)
    deltas = encode_boxes(boxes, anchors, CONFIG.box_coder_scales)
    np.testing.assert_allclose(
        decode_boxes(deltas, anchors, CONFIG.box_coder_scales), boxes, atol=1e-3
    )
    zero = decode_boxes(np.zeros_like(deltas), anchors, CONFIG.box_coder_scales)
    np.testing.assert_allclose(zero, anchors, atol=1e-4)


def test_box_iou_hand_values():
    a = np.array([[0, 0, 10, 10]], np.float32)
    b = np.array([[0, 0, 10, 10], [0, 5, 10, 15], [20, 20, 30, 30], [0, 0, 5, 5]], np.float32)
    np.testing.assert_allclose(box_iou(a, b)[0], [1.0, 50 / 150, 0.0, 0.25])


def brute_force_nms(boxes, scores, threshold):
    remaining = list(range(len(boxes)))
    keep = []
    while remaining:
        best = max(remaining, key=lambda i: (scores[i], -i))
        keep.append(best)
        remaining = [
            i for i in remaining
            if i != best and _iou(boxes[best], boxes[i]) <= threshold
        ]  # fmt: skip
    return keep


def _iou(a, b):
    ih = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iw = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ih * iw
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("threshold", [0.3, 0.5, 0.7])
def test_nms_matches_brute_force(seed, threshold):
    rng = np.random.default_rng(seed)
    boxes = random_boxes(rng, 80, size=60.0).astype(np.float64)
    scores = rng.permutation(80).astype(np.float32) / 80
    assert nms(boxes, scores, threshold).tolist() == brute_force_nms(boxes, scores, threshold)
    assert (
        nms(boxes, scores, threshold, 5).tolist() == brute_force_nms(boxes, scores, threshold)[:5]
    )


def test_proposals_from_rpn_pads_and_normalizes():
    scores = np.zeros(CONFIG.num_anchors, np.float32)
    deltas = np.zeros((1, CONFIG.num_anchors, 4), np.float32)
    anchors = make_anchors(CONFIG)
    # one confident anchor fully inside the image; everything else scores 0
    index = int(np.flatnonzero((anchors[:, :2] > 30).all(1) & (anchors[:, 2:] < 130).all(1))[0])
    scores[index] = 0.9
    result = proposals_from_rpn(scores[None], deltas, CONFIG)
    assert result.proposals.shape == (CONFIG.num_proposals, 4)
    assert result.proposals.dtype == np.float32
    assert result.box_indexes.shape == (CONFIG.num_proposals,)
    assert result.box_indexes.dtype == np.int32 and not result.box_indexes.any()
    np.testing.assert_allclose(result.proposals[0], anchors[index] / 160.0, atol=1e-6)
    assert 1 <= result.num_valid <= CONFIG.num_proposals
    assert (result.proposals >= 0).all() and (result.proposals <= 1).all()
    assert not result.proposals[result.num_valid :].any()
    with pytest.raises(RoiedgeError, match="expected 4800"):
        proposals_from_rpn(scores[:10], deltas, CONFIG)


def test_detections_from_head_decodes_thresholds_and_nms_per_class():
    p, k = CONFIG.num_proposals, CONFIG.num_classes
    proposals = np.zeros((p, 4), np.float32)
    proposals[0] = [0.1, 0.1, 0.5, 0.5]
    proposals[1] = [0.1, 0.1, 0.5, 0.52]  # overlaps proposal 0 heavily
    proposals[2] = [0.6, 0.6, 0.9, 0.8]
    scores = np.zeros((p, k + 1), np.float32)
    scores[:, 0] = 1.0
    scores[0] = [0.1, 0.9, 0.0, 0.0]  # circle
    scores[1] = [0.2, 0.8, 0.0, 0.0]  # circle again: suppressed by NMS
    scores[2] = [0.5, 0.0, 0.0, 0.5]  # triangle
    scores[3] = [0.0, 0.0, 1.0, 0.0]  # beyond num_valid: ignored
    deltas = np.zeros((p, k, 4), np.float32)
    deltas[2, 2] = encode_boxes(
        np.array([[100, 100, 140, 120]]), proposals[2:3] * 160, CONFIG.box_coder_scales
    )
    result = detections_from_head(scores, deltas, proposals, 3, CONFIG)
    assert result.class_ids.tolist() == [0, 2]
    np.testing.assert_allclose(result.scores, [0.9, 0.5])
    np.testing.assert_allclose(result.boxes, [[16, 16, 80, 80], [100, 100, 140, 120]], atol=1e-3)
    named = result.to_list(CONFIG.class_names)
    assert named[1].class_name == "triangle" and named[1].box == pytest.approx(
        (100, 100, 140, 120), abs=1e-3
    )


def test_preprocess_shape_and_errors():
    image = np.full((160, 160, 3), 255, np.uint8)
    x = preprocess(image, CONFIG)
    assert x.shape == (1, 160, 160, 3) and x.dtype == np.float32 and x.max() == 255.0
    with pytest.raises(RoiedgeError, match=r"shape \(10, 10, 3\)"):
        preprocess(np.zeros((10, 10, 3), np.uint8), CONFIG)
    with pytest.raises(RoiedgeError, match="dtype float32"):
        preprocess(image.astype(np.float32), CONFIG)


def test_config_round_trip_and_errors():
    data = json.loads(json.dumps(CONFIG.to_dict()))
    assert DetectorConfig.from_dict(data) == CONFIG
    with pytest.raises(ConfigError, match="schema_version 99"):
        DetectorConfig.from_dict({**data, "schema_version": 99}, source="x.json")
    with pytest.raises(ConfigError, match=r"x.json: unknown keys \['bogus'\]"):
        DetectorConfig.from_dict({**data, "bogus": 1}, source="x.json")
    with pytest.raises(ConfigError, match="stride"):
        DetectorConfig.from_dict({**data, "stride": "eight"})
    with pytest.raises(ConfigError, match="nms_iou"):
        DetectorConfig(nms_iou=1.5)
    with pytest.raises(ConfigError) as error:
        DetectorConfig.from_dict([1, 2])
    assert "\n" not in str(error.value)


def _decode_reference(deltas, anchors, scales):
    """Box decoding written out box by box in float64 (the Faster R-CNN formulas)."""
    out = []
    for (dy, dx, dh, dw), (y1, x1, y2, x2) in zip(np.asarray(deltas, float), anchors):
        dy, dx, dh, dw = dy / scales[0], dx / scales[1], dh / scales[2], dw / scales[3]
        ah, aw = float(y2) - float(y1), float(x2) - float(x1)
        cy, cx = float(y1) + 0.5 * ah + dy * ah, float(x1) + 0.5 * aw + dx * aw
        h = ah * np.exp(min(dh, np.log(1000.0 / 16.0)))
        w = aw * np.exp(min(dw, np.log(1000.0 / 16.0)))
        out.append([cy - h / 2, cx - w / 2, cy + h / 2, cx + w / 2])
    return np.asarray(out, np.float64).reshape(-1, 4)


def _greedy_reference(boxes, scores, threshold, limit):
    # Imported here: the tests directory is on sys.path under pytest.
    from test_nms_blocks import greedy_nms_reference

    return greedy_nms_reference(boxes, scores, threshold, limit)


def test_decode_boxes_matches_the_formulas_and_keeps_leading_shapes():
    rng = np.random.default_rng(3)
    anchors = random_boxes(rng, 60)
    deltas = rng.normal(0, 2, (60, 4)).astype(np.float32)  # some past the log-scale clamp
    deltas[0, 2:] = 9.0
    expected = _decode_reference(deltas, anchors, CONFIG.box_coder_scales)
    actual = decode_boxes(deltas, anchors, CONFIG.box_coder_scales)
    assert actual.dtype == np.float32 and actual.flags.c_contiguous
    np.testing.assert_allclose(actual, expected, rtol=1e-6, atol=1e-4)
    grid = decode_boxes(deltas.reshape(20, 3, 4), anchors.reshape(20, 3, 4), (1, 1, 1, 1))
    assert grid.shape == (20, 3, 4)
    np.testing.assert_array_equal(grid.reshape(60, 4), decode_boxes(deltas, anchors, (1, 1, 1, 1)))


@pytest.mark.parametrize("levels", [0, 3, 40])
def test_top_k_indices_is_the_stable_descending_sort(levels):
    rng = np.random.default_rng(levels)
    for n, k in ((4800, 300), (4800, 1), (5000, 1250), (100, 300), (1000, 200)):
        scores = rng.random(n).astype(np.float32)
        if levels:  # quantized scores: long runs of ties, also at the k-th value
            scores = (np.floor(scores * levels) / levels).astype(np.float32)
        expected = np.argsort(-scores, kind="stable")[:k]
        np.testing.assert_array_equal(top_k_indices(scores, k), expected)
    scores = rng.random(4800).astype(np.float32)
    scores[::5] = np.nan  # NaNs sort last in numpy
    scores[1::5] = -0.0
    np.testing.assert_array_equal(
        top_k_indices(scores, 300), np.argsort(-scores, kind="stable")[:300]
    )


def _proposals_reference(scores, deltas, config):
    """Brute force: sort every anchor, decode, clip, drop small boxes, textbook greedy NMS."""
    anchors = make_anchors(config)
    top = sorted(range(len(scores)), key=lambda i: (-float(scores[i]), i))[
        : config.rpn_pre_nms_top_n
    ]
    boxes = _decode_reference(deltas[top], anchors[top], config.box_coder_scales)
    height, width = config.image_size
    boxes = np.clip(boxes, 0, [height, width, height, width]).astype(np.float32)
    big = [
        i for i, b in enumerate(boxes)
        if b[2] - b[0] >= config.rpn_min_size and b[3] - b[1] >= config.rpn_min_size
    ]  # fmt: skip
    keep = _greedy_reference(boxes[big], scores[top][big], config.rpn_nms_iou, config.num_proposals)
    return boxes[big][keep] / np.array([height, width, height, width], np.float32)


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("quantized", [False, True])
def test_proposals_from_rpn_matches_brute_force(seed, quantized):
    rng = np.random.default_rng(seed)
    # Objects: a few clusters of high objectness; int8-like outputs tie a lot.
    scores = rng.random(CONFIG.num_anchors).astype(np.float32) ** 8
    if quantized:
        scores = (np.round(scores * 32) / 32).astype(np.float32)
    deltas = rng.normal(0, 1, (CONFIG.num_anchors, 4)).astype(np.float32)
    result = proposals_from_rpn(scores, deltas, CONFIG)
    expected = _proposals_reference(scores, deltas, CONFIG)
    assert result.num_valid == len(expected)
    np.testing.assert_allclose(result.proposals[: result.num_valid], expected, atol=1e-5)
    # The anchors made once per config and passed explicitly give the same proposals.
    again = proposals_from_rpn(scores, deltas, CONFIG, anchors=make_anchors(CONFIG))
    np.testing.assert_array_equal(again.proposals, result.proposals)


def test_proposals_cached_anchors_cannot_be_changed_by_a_caller():
    scores = np.zeros(CONFIG.num_anchors, np.float32)
    deltas = np.zeros((CONFIG.num_anchors, 4), np.float32)
    first = proposals_from_rpn(scores, deltas, CONFIG)
    from runtime.processing import _config_anchors

    table = _config_anchors(CONFIG)
    for array in table:  # the corners and what decoding reads of them
        with pytest.raises(ValueError):
            array[0] = 0.0
    np.testing.assert_array_equal(
        proposals_from_rpn(scores, deltas, CONFIG).proposals, first.proposals
    )
    # A config built with lists (unhashable) still works, without the cache.
    listed = DetectorConfig(anchor_sizes=list(CONFIG.anchor_sizes))
    np.testing.assert_array_equal(
        proposals_from_rpn(scores, deltas, listed).proposals, first.proposals
    )


def _detections_reference(class_scores, box_deltas, proposals, num_valid, config):
    """Brute force: class by class, decode, threshold, textbook NMS; then the best overall."""
    height, width = config.image_size
    rois = proposals[:num_valid] * np.array([height, width, height, width], np.float32)
    found = []  # (score, class, proposal row, box)
    for cls in range(config.num_classes):
        rows = [i for i in range(num_valid) if class_scores[i, cls + 1] >= config.score_threshold]
        if not rows:
            continue
        boxes = _decode_reference(box_deltas[rows, cls], rois[rows], config.box_coder_scales)
        boxes = np.clip(boxes, 0, [height, width, height, width]).astype(np.float32)
        scores = class_scores[rows, cls + 1]
        for k in _greedy_reference(boxes, scores, config.nms_iou, config.max_detections):
            found.append((float(scores[k]), cls, rows[k], boxes[k]))
    found.sort(key=lambda d: (-d[0], d[1], d[2]))
    return found[: config.max_detections]


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize(
    ("num_classes", "num_proposals", "max_detections"), [(3, 64, 20), (8, 300, 100), (2, 17, 3)]
)
def test_detections_from_head_matches_brute_force(seed, num_classes, num_proposals, max_detections):
    import dataclasses

    config = dataclasses.replace(
        CONFIG,
        class_names=tuple(f"c{i}" for i in range(num_classes)),
        num_proposals=num_proposals,
        rpn_pre_nms_top_n=max(num_proposals, CONFIG.rpn_pre_nms_top_n),
        max_detections=max_detections,
    )
    rng = np.random.default_rng(seed)
    # Proposals around a few objects, so boxes of one class overlap and NMS has work to do.
    centers = rng.uniform(0.2, 0.8, (4, 2))[rng.integers(0, 4, num_proposals)]
    half = rng.uniform(0.05, 0.2, (num_proposals, 2))
    proposals = np.concatenate([centers - half, centers + half], 1).astype(np.float32)
    logits = rng.normal(0, 2, (num_proposals, num_classes + 1))
    class_scores = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    class_scores = (np.round(class_scores * 64) / 64).astype(np.float32)  # ties across classes
    box_deltas = rng.normal(0, 0.5, (num_proposals, num_classes, 4)).astype(np.float32)
    num_valid = num_proposals - 2
    result = detections_from_head(class_scores, box_deltas, proposals, num_valid, config)
    expected = _detections_reference(class_scores, box_deltas, proposals, num_valid, config)
    assert result.class_ids.tolist() == [d[1] for d in expected]
    np.testing.assert_array_equal(result.scores, [d[0] for d in expected])
    np.testing.assert_allclose(result.boxes, [d[3] for d in expected], atol=1e-3)
    assert result.boxes.dtype == result.scores.dtype == np.float32
    assert result.class_ids.dtype == np.int32


# Post-processing against the code it replaced (tests/processing_reference.py), bit for bit:
# same proposals, same detections (boxes, scores, class ids, dtypes), on random RPN and head
# outputs built to hit ties, NaNs, empty and all-suppressed cases, and on every artifact's
# golden images.
def _assert_same_arrays(actual, expected, what):
    for a, e in zip(actual, expected):
        a, e = np.asarray(a), np.asarray(e)
        assert (a.dtype, a.shape) == (e.dtype, e.shape), what
        assert a.tobytes() == e.tobytes(), what


def _rpn_cases(config, rng):
    n = config.num_anchors
    for case in range(10):
        scores = rng.random(n).astype(np.float32) ** 8
        deltas = rng.normal(0, 1, (n, 4)).astype(np.float32)
        if case % 2:  # int8-like: few distinct scores, long ties at the k-th value
            scores = (np.round(scores * 16) / 16).astype(np.float32)
        if case == 3:
            scores[::3] = np.nan
            scores[1::5] = -0.0
            deltas[::11] = np.nan
        if case == 5:
            deltas[:, 2:] *= 40  # past the log-scale clamp, and boxes far outside the image
        if case == 7:
            # Sides of 1e-7..1e-5 px: areas below 1e-12 (clamped unions) or below rpn_min_size
            deltas[:, 2:] = rng.uniform(-95, -75, (n, 2))
            # The best anchors, at the first location (center 4 px, float32 spacing 5e-7 px),
            # shrunk to 1-2 ulps: overlapping boxes whose IoU denominator is below 1e-12.
            first = make_anchors(config)[:12]
            sides = rng.choice([5e-7, 1e-6], (12, 2))
            deltas[:12, :2] = 0
            deltas[:12, 2:] = 5 * np.log(sides / (first[:, 2:] - first[:, :2]))
            scores[:12] = 2.0
        if case == 9:
            scores[:] = 0.25  # one tie over all anchors
        yield f"case{case}", scores, deltas


@pytest.mark.parametrize(
    "changes",
    [
        {},
        {"rpn_min_size": 0.0},  # zero-area boxes reach NMS: the clamped IoU
        {"rpn_min_size": 1e-7, "rpn_nms_iou": 0.3},
        {"num_proposals": 300, "rpn_pre_nms_top_n": 1200, "rpn_nms_iou": 0.9},
        {"num_proposals": 5, "rpn_pre_nms_top_n": 5, "rpn_nms_iou": 0.0},
        {"anchor_sizes": (12.0, 20.0, 40.0, 64.0, 100.0), "num_proposals": 100},
    ],
)
def test_proposals_from_rpn_is_the_previous_code_bit_for_bit(changes):
    import dataclasses

    import processing_reference as reference

    from runtime.processing import anchor_table

    config = dataclasses.replace(CONFIG, **changes)
    anchors = make_anchors(config)
    rng = np.random.default_rng(len(repr(changes)))
    for name, scores, deltas in _rpn_cases(config, rng):
        with np.errstate(invalid="ignore"):  # the NaN cases
            expected = reference.proposals_from_rpn(scores, deltas, config, anchors=anchors)
        for given in (anchors, anchor_table(anchors), None):
            with np.errstate(invalid="ignore"):
                actual = proposals_from_rpn(scores[None], deltas[None], config, anchors=given)
            _assert_same_arrays(actual[:2], expected[:2], f"{changes} {name}")
            assert actual.num_valid == expected.num_valid
        # Anchors of another dtype are decoded from their own values, table or not.
        shifted = anchors.astype(np.float64) + 1 / 3
        with np.errstate(invalid="ignore"):
            expected = reference.proposals_from_rpn(scores, deltas, config, anchors=shifted)
            actual = proposals_from_rpn(scores, deltas, config, anchors=anchor_table(shifted))
        _assert_same_arrays(actual[:2], expected[:2], f"{changes} {name} float64 anchors")


def _exact(detection):
    """A Detection with its floats as hex strings (NaN boxes compare equal) and its types."""
    box, score, class_id, name = detection
    assert type(score) is float and type(class_id) is int and {type(v) for v in box} <= {float}
    return tuple(float.hex(v) for v in box), float.hex(score), class_id, name


def _head_cases(config, rng):
    p, k = config.num_proposals, config.num_classes
    for case in range(8):
        centers = rng.uniform(0.1, 0.9, (5, 2))[rng.integers(0, 5, p)]
        half = rng.uniform(0.0, 0.3, (p, 2))
        proposals = np.concatenate([centers - half, centers + half], 1).astype(np.float32)
        logits = rng.normal(0, 2, (p, k + 1))
        class_scores = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
        if case % 2:  # ties within and across classes
            class_scores = np.round(class_scores * 16) / 16
        class_scores = class_scores.astype(np.float32)
        box_deltas = rng.normal(0, 0.5, (p, k, 4)).astype(np.float32)
        if case == 2:
            proposals[::4] = 0.0  # zero-area proposals (the padding rows)
            proposals[1::4, 2:] = proposals[1::4, :2]
        if case == 4:
            box_deltas[:, :, 2:] = 12.0  # clamped log-scales: boxes past the image, clipped
            box_deltas[::5] = np.nan
        if case == 6:
            class_scores[:, 1:] = 0.01  # nothing reaches the score threshold
        yield f"case{case}", class_scores, box_deltas, proposals


@pytest.mark.parametrize(
    "changes",
    [
        {},
        {"nms_iou": 0.0, "max_detections": 3},
        {"nms_iou": 1.0, "score_threshold": 0.0, "max_detections": 400},
        {"class_names": tuple(f"c{i}" for i in range(9)), "num_proposals": 100},
    ],
)
def test_detections_from_head_is_the_previous_code_bit_for_bit(changes):
    import dataclasses

    import processing_reference as reference

    config = dataclasses.replace(CONFIG, **changes)
    rng = np.random.default_rng(len(repr(changes)))
    for name, class_scores, box_deltas, proposals in _head_cases(config, rng):
        for num_valid in (config.num_proposals, config.num_proposals // 3, 1, 0):
            args = (class_scores, box_deltas, proposals, num_valid, config)
            with np.errstate(invalid="ignore"):
                expected = reference.detections_from_head(*args)
                actual = detections_from_head(*args)
            _assert_same_arrays(actual, expected, f"{changes} {name} {num_valid}")
            named = actual.to_list(config.class_names)
            assert [_exact(d) for d in named] == [
                _exact(d) for d in expected.to_list(config.class_names)
            ]


def test_post_processing_is_the_previous_code_on_every_artifacts_golden_images(
    exported_artifacts,
):
    """Every exported pipeline's own RPN and head outputs on its golden images."""
    import dataclasses

    import processing_reference as reference

    from runtime.check import load_golden
    from runtime.detector import Detector
    from runtime.processing import anchor_table, preprocess

    out, manifest = exported_artifacts
    x = load_golden(out, manifest, "backbone_rpn")["input_0"]
    images = np.clip(x.reshape(-1, *x.shape[-3:]), 0, 255).astype(np.uint8)
    pipelines = sorted(
        {(e.format, e.precision) for e in manifest.artifacts if e.model == "backbone_rpn"}
    )
    assert len(pipelines) >= 5 and len(images) >= 1
    for fmt, precision in pipelines:
        if precision.endswith("_edgetpu"):
            continue  # needs the Edge TPU runtime
        detector = Detector(out, precision=precision, format=fmt)
        config, anchors = detector.config, detector.anchors
        for image in images:
            features, rpn_scores, rpn_deltas = detector.backbone.run(preprocess(image, config))
            expected = reference.proposals_from_rpn(rpn_scores, rpn_deltas, config, anchors)
            actual = proposals_from_rpn(rpn_scores, rpn_deltas, config, anchor_table(anchors))
            what = f"{fmt} {precision}"
            _assert_same_arrays(actual[:2], expected[:2], what)
            assert actual.num_valid == expected.num_valid
            class_scores, box_deltas = detector.head.run(
                features, expected.proposals, expected.box_indexes
            )
            for threshold in (config.score_threshold, 0.0, 0.5):
                changed = dataclasses.replace(config, score_threshold=threshold)
                args = (class_scores, box_deltas, expected.proposals, expected.num_valid, changed)
                _assert_same_arrays(
                    detections_from_head(*args), reference.detections_from_head(*args), what
                )
