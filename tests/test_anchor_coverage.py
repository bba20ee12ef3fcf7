"""anchor_coverage against a brute-force per-pair IoU count with anchors built by hand."""

import math

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from models.anchor_coverage import anchor_coverage
from runtime.config import DetectorConfig


def _brute_anchors(config):
    out = []
    fh, fw = config.feature_size
    for i in range(fh):
        for j in range(fw):
            cy, cx = (i + 0.5) * config.stride, (j + 0.5) * config.stride
            for size in config.anchor_sizes:
                for ratio in config.anchor_ratios:
                    h, w = size * math.sqrt(ratio), size / math.sqrt(ratio)
                    out.append((cy - h / 2, cx - w / 2, cy + h / 2, cx + w / 2))
    return out


def _iou(a, b):
    ih = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iw = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ih * iw
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


boxes_strategy = st.lists(
    st.tuples(
        st.floats(0, 56),
        st.floats(0, 56),
        st.floats(2, 64),
        st.floats(2, 64),
    ),
    min_size=1,
    max_size=6,
)


@settings(max_examples=25, deadline=None)
@given(raw=boxes_strategy, min_iou=st.sampled_from([0.3, 0.5, 0.7]))
def test_coverage_matches_brute_force(raw, min_iou):
    config = DetectorConfig()
    height, width = config.image_size
    boxes = [(y, x, min(y + h, height), min(x + w, width)) for y, x, h, w in raw]
    anchors = _brute_anchors(config)
    expected = np.mean([max(_iou(b, a) for a in anchors) >= min_iou for b in boxes])
    assert anchor_coverage(np.array(boxes), config, min_iou) == expected


def test_empty_boxes_are_covered():
    assert anchor_coverage(np.zeros((0, 4)), DetectorConfig()) == 1.0


def _brute_coverage(boxes, config, min_iou=0.5):
    anchors = _brute_anchors(config)
    return float(np.mean([max(_iou(tuple(b), a) for a in anchors) >= min_iou for b in boxes]))


def _two_sized_boxes(seed=5, count=60, image=160):
    """Boxes of ~23 px (any ratio 0.5/1/2) and ~140 px squares: between and beyond the
    default anchors (16, 32, 56, 96), which match neither at IoU 0.5 when centred."""
    rng = np.random.default_rng(seed)
    boxes = []
    for i in range(count):
        side = rng.uniform(22, 24) if i % 2 else rng.uniform(135, 150)
        h = side * math.sqrt(rng.choice([0.5, 1.0, 2.0]) if i % 2 else 1.0)
        w = side * side / h
        cy, cx = rng.uniform(h / 2, image - h / 2), rng.uniform(w / 2, image - w / 2)
        boxes.append((cy - h / 2, cx - w / 2, cy + h / 2, cx + w / 2))
    return np.array(boxes)


def test_chosen_sizes_cover_boxes_the_default_anchors_miss():
    import dataclasses

    from models.anchor_coverage import choose_anchor_sizes

    config = DetectorConfig()
    boxes = _two_sized_boxes()
    default = _brute_coverage(boxes, config)
    sizes = choose_anchor_sizes(boxes, config)
    chosen = _brute_coverage(boxes, dataclasses.replace(config, anchor_sizes=sizes))
    assert default < 0.6 and chosen >= 0.95, (default, chosen, sizes)
    assert list(sizes) == sorted(sizes) and len(sizes) <= len(config.anchor_sizes)


def test_boxes_below_the_stride_are_reported_not_looped_over():
    import dataclasses

    from models.anchor_coverage import WARN_BELOW, choose_anchor_sizes, coverage_report

    config = DetectorConfig()  # stride 8
    rng = np.random.default_rng(1)
    corners = rng.uniform(4, 150, size=(80, 2))
    boxes = np.concatenate([corners, corners + 3.0], axis=1)  # 3x3 px anywhere
    sizes = choose_anchor_sizes(boxes, config)
    covered = _brute_coverage(boxes, dataclasses.replace(config, anchor_sizes=sizes))
    line, low = coverage_report(boxes, dataclasses.replace(config, anchor_sizes=sizes))
    assert covered < WARN_BELOW and low
    assert f"{100 * covered:.1f}% of 80 training boxes" in line and "below 95%" in line
    assert choose_anchor_sizes(np.zeros((0, 4)), config) == config.anchor_sizes


def test_training_chooses_anchors_from_the_data_unless_given(tmp_path, capsys):
    from coco_fixtures import write_dataset

    from models.train_config import TrainConfig
    from models.train_data import training_data

    dataset = write_dataset(tmp_path, 6, seed=2)
    cfg = TrainConfig(data=str(dataset), image_size=(96, 128))
    data = training_data(cfg, None)
    printed = capsys.readouterr().err
    assert data.det.anchor_sizes != DetectorConfig().anchor_sizes
    assert data.description["anchors"]["sizes_from"] == "chosen from the training boxes"
    boxes = np.concatenate([b for b in data.source.data.boxes]).reshape(-1, 4)
    covered = _brute_coverage(boxes, data.det)
    assert f"anchor coverage: {100 * covered:.1f}% of {len(boxes)} training boxes" in printed
    given = TrainConfig(
        data=str(dataset), image_size=(96, 128), quiet=True, anchor_sizes=(12.0, 40.0),
        anchor_ratios=(1.0,),
    )  # fmt: skip
    det = training_data(given, None).det
    assert (det.anchor_sizes, det.anchor_ratios) == ((12.0, 40.0), (1.0,))
    assert DetectorConfig.from_dict(det.to_dict()) == det


@settings(max_examples=40, deadline=None)
@given(
    raw=boxes_strategy,
    stride=st.sampled_from([4, 8, 16]),
    sizes=st.lists(st.floats(2, 120), min_size=1, max_size=3, unique=True),
    ratios=st.lists(
        st.sampled_from([0.25, 0.5, 1.0, 2.0, 3.0]), min_size=1, max_size=3, unique=True
    ),
)
def test_nearest_cell_iou_equals_the_best_over_all_anchors(raw, stride, sizes, ratios):
    from models.anchor_coverage import best_anchor_iou, nearest_cell_iou
    from runtime.processing import make_anchors

    config = DetectorConfig(
        image_size=(64, 64), stride=stride, anchor_sizes=tuple(sizes), anchor_ratios=tuple(ratios)
    )
    boxes = np.array([(y, x, min(y + h, 64), min(x + w, 64)) for y, x, h, w in raw])
    # rtol: two equidistant cells' float32 anchor corners round apart (~1e-6 on 1 px anchors).
    np.testing.assert_allclose(
        nearest_cell_iou(boxes, config), best_anchor_iou(boxes, make_anchors(config)), rtol=1e-5
    )
