"""The single file's in-graph post-processing equals the runtime's numpy, tied scores included.

int8 scores tie a lot (the int8 RPN's objectness takes ~60 distinct values among its 300 best
anchors), and which of two tied boxes NMS keeps decides the detections; the runtime orders ties
by index (a stable sort). The TFLite pieces of :mod:`export.single_file` run here on scores
drawn from a coarse grid and are compared with :mod:`runtime.processing` on the same inputs.
"""

from __future__ import annotations

import numpy as np
import pytest

from runtime import processing
from runtime.config import DetectorConfig

CONFIG = DetectorConfig(
    image_size=(64, 64),
    class_names=("a", "b", "c"),
    stride=8,
    feature_channels=4,
    anchor_sizes=(16.0, 32.0),
    anchor_ratios=(0.5, 1.0, 2.0),
    rpn_pre_nms_top_n=100,
    rpn_nms_iou=0.7,
    rpn_min_size=2.0,
    num_proposals=32,
    score_threshold=0.05,
    max_detections=10,
)
TRIALS = 25


@pytest.fixture(scope="module")
def pieces():
    from ai_edge_litert.interpreter import Interpreter

    from export.single_file import post_processing_pieces

    proposals, detections = post_processing_pieces(CONFIG)
    return tuple(
        Interpreter(model_content=data).get_signature_runner() for data in (proposals, detections)
    )


def _tied(rng, shape, levels: int) -> np.ndarray:
    """Scores on a grid of ``levels`` values in [0, 1]: many exact ties."""
    return (rng.integers(0, levels, size=shape) / (levels - 1)).astype(np.float32)


def test_proposals_piece_is_the_runtimes_with_tied_scores(pieces):
    run_proposals, _ = pieces
    rng = np.random.default_rng(0)
    n = CONFIG.num_anchors
    for trial in range(TRIALS):
        scores = _tied(rng, (1, n), levels=8)
        deltas = rng.normal(0, 0.3, (1, n, 4)).astype(np.float32)
        expected = processing.proposals_from_rpn(scores, deltas, CONFIG)
        got = run_proposals(rpn_scores=scores, rpn_deltas=deltas)
        assert int(got["num_valid"][0]) == expected.num_valid, trial
        # Same boxes in the same order; float32 in-graph vs the runtime's float64 decoding.
        np.testing.assert_allclose(got["proposals"], expected.proposals, atol=1e-6, rtol=0)


def test_detections_piece_is_the_runtimes_with_tied_scores(pieces):
    _, run_detections = pieces
    rng = np.random.default_rng(1)
    n, p, k = CONFIG.num_anchors, CONFIG.num_proposals, CONFIG.num_classes
    compared = 0
    for trial in range(TRIALS):
        rpn = processing.proposals_from_rpn(
            rng.uniform(0, 1, (1, n)).astype(np.float32),
            rng.normal(0, 0.3, (1, n, 4)).astype(np.float32),
            CONFIG,
        )
        # Class scores from a grid: ties within a row (two classes) and across rows.
        class_scores = _tied(rng, (p, k + 1), levels=6)
        box_deltas = rng.normal(0, 0.2, (p, k, 4)).astype(np.float32)
        expected = processing.detections_from_head(
            class_scores, box_deltas, rpn.proposals, rpn.num_valid, CONFIG
        )
        got = run_detections(
            class_scores=class_scores,
            box_deltas=box_deltas,
            proposals=rpn.proposals,
            num_valid=np.asarray([rpn.num_valid], np.int32),
        )
        count = int(got["number_of_detections"][0])
        assert count == len(expected.scores), trial
        np.testing.assert_array_equal(got["category"][0, :count], expected.class_ids)
        np.testing.assert_array_equal(got["score"][0, :count], expected.scores)
        scale = np.asarray(CONFIG.image_size * 2, np.float32)
        np.testing.assert_allclose(
            got["location"][0, :count] * scale, expected.boxes, atol=1e-4, rtol=0
        )
        assert not got["score"][0, count:].any()  # rows past the count are zero
        compared += count
    assert compared > TRIALS  # detections were there to compare
