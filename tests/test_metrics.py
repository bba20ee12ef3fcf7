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


def _random_scene(rng, num_classes):
    """Ground truth (boxes, classes, crowd) and detections near it, in one image's pixels."""
    height, width = int(rng.integers(60, 400)), int(rng.integers(60, 400))
    count = int(rng.integers(0, 7))
    yx = rng.uniform(0, [height - 12, width - 12], (count, 2))
    hw = rng.uniform(4, [height, width], (count, 2)) * rng.uniform(0.1, 0.6, (count, 1))
    boxes = np.concatenate([yx, np.minimum(yx + hw + 2, [height, width])], 1)
    classes = rng.integers(0, num_classes, count)
    crowd = rng.random(count) < 0.2
    det_boxes, det_scores, det_classes = [], [], []
    for box, cls in zip(boxes, classes):
        for _ in range(int(rng.integers(0, 4))):  # misses, matches and duplicates
            size = np.array([box[2] - box[0], box[3] - box[1]] * 2)
            det_boxes.append(box + rng.normal(0, 0.12, 4) * size)
            det_scores.append(rng.random())
            det_classes.append(cls if rng.random() < 0.85 else rng.integers(0, num_classes))
    for _ in range(int(rng.integers(0, 4))):  # false positives anywhere
        y, x = rng.uniform(0, [height - 5, width - 5])
        det_boxes.append([y, x, y + rng.uniform(3, 80), x + rng.uniform(3, 80)])
        det_scores.append(rng.random())
        det_classes.append(rng.integers(0, num_classes))
    det_boxes = np.asarray(det_boxes, np.float64).reshape(-1, 4)
    det_boxes[:, 2:] = np.maximum(det_boxes[:, 2:], det_boxes[:, :2] + 1)
    return (
        (height, width),
        (boxes, classes, crowd),
        (det_boxes, np.round(np.asarray(det_scores), 3), np.asarray(det_classes, np.int64)),
    )


def _cocoeval(sizes, truths, detections, num_classes):
    """pycocotools' COCOeval (bbox) on the same data: (stats, per-class AP@.5, per-class AP)."""
    import contextlib
    import io

    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    def xywh(box):
        y1, x1, y2, x2 = (float(v) for v in box)
        return [x1, y1, x2 - x1, y2 - y1]

    images, annotations, results = [], [], []
    for i, ((h, w), (boxes, classes, crowd), (d_boxes, d_scores, d_classes)) in enumerate(
        zip(sizes, truths, detections)
    ):
        images.append({"id": i + 1, "height": h, "width": w, "file_name": f"{i}.png"})
        for box, cls, is_crowd in zip(boxes, classes, crowd):
            b = xywh(box)
            annotations.append(
                {"id": len(annotations) + 1, "image_id": i + 1, "category_id": int(cls) + 1,
                 "bbox": b, "area": b[2] * b[3], "iscrowd": int(is_crowd)}
            )  # fmt: skip
        for box, score, cls in zip(d_boxes, d_scores, d_classes):
            results.append(
                {"image_id": i + 1, "category_id": int(cls) + 1, "bbox": xywh(box),
                 "score": float(score)}
            )  # fmt: skip
    with contextlib.redirect_stdout(io.StringIO()):
        truth = COCO()
        truth.dataset = {
            "images": images,
            "annotations": annotations,
            "categories": [{"id": k + 1, "name": str(k)} for k in range(num_classes)],
        }
        truth.createIndex()
        evaluation = COCOeval(truth, truth.loadRes(results), "bbox")
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    precision = evaluation.eval["precision"][:, :, :, 0, 2]  # [T, R, K], area all, maxDets 100
    per_class_ap = [
        float(np.mean(precision[:, :, k])) if (precision[:, :, k] > -1).all() else float("nan")
        for k in range(num_classes)
    ]
    per_class_ap50 = [
        float(np.mean(precision[0, :, k])) if (precision[0, :, k] > -1).all() else float("nan")
        for k in range(num_classes)
    ]
    return evaluation.stats, per_class_ap50, per_class_ap


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_equals_pycocotools_cocoeval_with_crowds(seed):
    rng = np.random.default_rng(seed)
    num_classes = 3
    scenes = [_random_scene(rng, num_classes) for _ in range(40)]
    sizes, truths, detections = (list(v) for v in zip(*scenes))
    # one image with more than COCO's 100 detections of a class, so maxDets matters
    h, w = sizes[0]
    many = np.tile([[2.0, 2.0, 30.0, 40.0]], (130, 1)) + rng.uniform(0, 3, (130, 4))
    detections[0] = (many, np.round(rng.random(130), 3), np.zeros(130, np.int64))
    truths[0] = (np.array([[3.0, 3.0, 31.0, 41.0]]), np.array([0]), np.array([False]))
    sizes[0] = (max(h, 60), max(w, 60))
    # a class whose only truth is a crowd box is left out of the mean, as in COCO
    truths[1] = (np.array([[5.0, 5.0, 50.0, 50.0]]), np.array([2]), np.array([True]))
    assert sum(c.sum() for _, _, c in truths) >= 3  # crowds present
    stats, ap50, ap = _cocoeval(sizes, truths, detections, num_classes)
    ours = mean_average_precision(detections, truths, num_classes)
    assert ours["map50_95"] == pytest.approx(stats[0], abs=1e-6)
    assert ours["map50"] == pytest.approx(stats[1], abs=1e-6)
    for k in range(num_classes):
        assert ours["per_class"][k]["ap50"] == pytest.approx(ap50[k], abs=1e-6, nan_ok=True)
        assert ours["per_class"][k]["ap"] == pytest.approx(ap[k], abs=1e-6, nan_ok=True)
    assert 0.05 < stats[1] < 0.95  # a case with both hits and misses, not a trivial 0 or 1
