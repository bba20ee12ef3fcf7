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
