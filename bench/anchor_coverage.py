"""Anchor coverage at 480x640: the default (scaled) anchors against sizes chosen from the boxes.

    .venv/bin/python -m bench.anchor_coverage [--boxes 2000] [--seed 0]

A synthetic box set (sides log-uniform 12-320 px, ratios 0.5/1/2 with 15% jitter, anywhere in a
480x640 frame) at stride 8 (the tiny backbone) and 16 (mobilenet_v2): the share of boxes with an
anchor at IoU >= 0.5, over all boxes and over those under 32 px. Numpy only.
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import numpy as np

from models.anchor_coverage import anchor_coverage, choose_anchor_sizes, coverage_report
from models.detector import detector_config

SIZE = (480, 640)


def synthetic_boxes(count: int, seed: int) -> np.ndarray:
    """[count, 4] (y1, x1, y2, x2) px inside a SIZE frame."""
    rng = np.random.default_rng(seed)
    side = np.exp(rng.uniform(np.log(12), np.log(320), count))
    ratio = rng.choice([0.5, 1.0, 2.0], count) * np.exp(rng.normal(0, 0.15, count))
    h = np.minimum(side * np.sqrt(ratio), SIZE[0] - 10)
    w = np.minimum(side / np.sqrt(ratio), SIZE[1] - 10)
    cy = rng.uniform(h / 2, SIZE[0] - h / 2)
    cx = rng.uniform(w / 2, SIZE[1] - w / 2)
    return np.stack([cy - h / 2, cx - w / 2, cy + h / 2, cx + w / 2], 1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.anchor_coverage", description=__doc__)
    parser.add_argument("--boxes", type=int, default=2000, help="synthetic boxes (default 2000)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the box set (default 0)")
    args = parser.parse_args(argv)
    boxes = synthetic_boxes(args.boxes, args.seed)
    small = np.sqrt((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])) < 32
    for stride, channels, name in ((8, 64, "tiny"), (16, 96, "mobilenet_v2")):
        default = dataclasses.replace(
            detector_config(SIZE), stride=stride, feature_channels=channels
        )
        started = time.perf_counter()
        sizes = choose_anchor_sizes(boxes, default)
        took = time.perf_counter() - started
        chosen = dataclasses.replace(default, anchor_sizes=sizes)
        for label, config in (("default", default), ("chosen", chosen)):
            print(
                f"{name:<13} stride {stride:<2} {label:<7} sizes {list(config.anchor_sizes)}: "
                f"{100 * anchor_coverage(boxes, config):.1f}% of {len(boxes)} boxes, "
                f"{100 * anchor_coverage(boxes[small], config):.1f}% of the {int(small.sum())} "
                "under 32 px"
            )
        print(f"  chosen in {took:.2f} s; {coverage_report(boxes, chosen)[0]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
