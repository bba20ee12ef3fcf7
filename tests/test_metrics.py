"""models.metrics on hand-made cases whose answers are derived by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from models.metrics import interpolated_ap, mean_average_precision

GT = np.array([[0, 0, 10, 10]], np.float32)


def pred(boxes, scores, classes):
    return (np.array(boxes, np.float32), np.array(scores, np.float32), np.array(classes))


def test_perfect_predictions_score_one():
    gts = [(GT, [0]), (np.array([[5, 5, 20, 30], [40, 40, 60, 50]]), [1, 0])]
    preds = [pred(GT, [0.9], [0]), pred([[5, 5, 20, 30], [40, 40, 60, 50]], [0.8, 0.7], [1, 0])]
    result = mean_average_precision(preds, gts, 2)
    assert result["map50"] == 1.0 and result["map50_95"] == 1.0
    assert result["per_class"][0] == {"ap50": 1.0, "ap": 1.0, "num_gt": 2}


def test_false_positive_ranked_first_halves_the_precision():
    # ranks: FP (score .9) then TP (.8): recall reaches 1 at precision 1/2 -> the envelope is 1/2
    # at every recall point -> AP = 0.5
    preds = [pred([[50, 50, 60, 60], [0, 0, 10, 10]], [0.9, 0.8], [0, 0])]
    assert mean_average_precision(preds, [(GT, [0])], 1, (0.5,))["map50"] == pytest.approx(0.5)


def test_false_positive_ranked_last_costs_nothing():
    preds = [pred([[50, 50, 60, 60], [0, 0, 10, 10]], [0.1, 0.8], [0, 0])]
    assert mean_average_precision(preds, [(GT, [0])], 1, (0.5,))["map50"] == 1.0


def test_half_recall_covers_51_of_101_points():
    # two boxes, one found with precision 1: recall points 0.00..0.50 (51 of 101) have precision 1
    gts = [(np.array([[0, 0, 10, 10], [20, 20, 30, 30]]), [0, 0])]
    preds = [pred([[0, 0, 10, 10]], [0.9], [0])]
    assert mean_average_precision(preds, gts, 1, (0.5,))["map50"] == pytest.approx(51 / 101)


def test_duplicate_detection_is_a_false_positive_after_the_match():
    # the second copy cannot match the already matched box; it comes after recall 1, so AP stays 1,
    # but if it scores higher than a true positive of a second image it costs precision there
    gts = [(GT, [0]), (GT, [0])]
    preds = [pred([[0, 0, 10, 10], [0, 0, 10, 10]], [0.9, 0.8], [0, 0]), pred(GT, [0.7], [0])]
    # ranks: TP (r=.5, p=1), FP (r=.5, p=.5), TP (r=1, p=2/3): points <= .5 -> 1, > .5 -> 2/3
    expected = (51 * 1.0 + 50 * (2 / 3)) / 101
    assert mean_average_precision(preds, gts, 1, (0.5,))["map50"] == pytest.approx(expected)


def test_iou_thresholds_average():
    # IoU = 62/100 = 0.62: a match at thresholds .50, .55, .60 and a miss at .65 ... .95 -> 3/10
    preds = [pred([[0, 0, 10, 6.2]], [0.9], [0])]
    result = mean_average_precision(preds, [(GT, [0])], 1)
    assert result["map50"] == 1.0
    assert result["map50_95"] == pytest.approx(0.3)


def test_wrong_class_and_classes_without_ground_truth():
    # class 0 is found only as class 1 -> class 0 AP 0; class 1 has no ground truth -> left out;
    # class 2 found perfectly -> 1; mean over classes {0, 2} = 0.5
    gts = [(np.array([[0, 0, 10, 10], [20, 20, 40, 40]]), [0, 2])]
    preds = [pred([[0, 0, 10, 10], [20, 20, 40, 40]], [0.9, 0.8], [1, 2])]
    result = mean_average_precision(preds, gts, 3, (0.5,))
    assert result["per_class"][0]["ap50"] == 0.0
    assert math.isnan(result["per_class"][1]["ap50"])
    assert result["per_class"][2]["ap50"] == 1.0
    assert result["map50"] == pytest.approx(0.5)


def test_no_predictions_and_mapping_inputs():
    empty = {"boxes": np.zeros((0, 4)), "scores": np.zeros(0), "class_ids": np.zeros(0)}
    assert mean_average_precision([empty], [{"boxes": GT, "class_ids": [0]}], 1)["map50"] == 0.0
    with pytest.raises(ValueError, match="2 prediction entries for 1"):
        mean_average_precision([empty, empty], [(GT, [0])], 1)


def test_interpolated_ap_envelope():
    # precision rises later (0.5 then 1.0 at recall 1): the envelope makes every point 1.0
    assert interpolated_ap(np.array([0.5, 1.0]), np.array([0.5, 1.0])) == 1.0
    assert interpolated_ap(np.array([]), np.array([])) == 0.0
