"""Paired benchmark of the post-processing: the current code against the frozen reference.

``python bench/postprocess.py ARTIFACTS [--precision int8] [--calls 300]`` runs the
detection pipeline of ``runtime.detector.Detector`` step by step on the golden images, the
post-processing (proposals, detections, the Detection list) alternating call by call between
``runtime.processing`` and ``tests/processing_reference.py`` (the code before its rewrite), so
load on a shared host hits both alike. Per variant: the median ms of each step and the
post-processing share of each call (everything outside preprocessing and the two model
invocations), as the median and quartiles over the calls; then the new/old ratio of the share;
then each stage's median ms right after its model invocation and when called again at once.
Prints one JSON line; needs the repository (it imports the reference from tests/).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import processing_reference  # noqa: E402

from runtime import processing, strict_json  # noqa: E402
from runtime.check import load_golden  # noqa: E402
from runtime.detector import Detector, DetectorOptions  # noqa: E402
from runtime.manifest import read_manifest  # noqa: E402

STEPS = ("preprocess", "backbone_rpn", "proposals", "head", "detections", "other")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("artifacts", type=Path)
    parser.add_argument("--precision", default="int8", help="[format:]precision of the pipeline")
    parser.add_argument("--calls", type=int, default=300, help="timed calls per variant")
    parser.add_argument("--warmup", type=int, default=20, help="untimed calls per variant")
    args = parser.parse_args(argv)
    fmt, _, precision = args.precision.rpartition(":")
    detector = Detector(
        args.artifacts, DetectorOptions(precision=precision, format=fmt or "tflite")
    )
    config = detector.config
    x = load_golden(args.artifacts, read_manifest(args.artifacts), "backbone_rpn")["input_0"]
    images = np.clip(x.reshape(-1, *x.shape[-3:]), 0, 255).astype(np.uint8)
    variants = {
        "new": (processing, processing.anchor_table(detector.anchors)),
        "old": (processing_reference, detector.anchors),
    }
    splits: dict[str, list[dict[str, float]]] = {name: [] for name in variants}

    def one_call(name: str, image: np.ndarray) -> dict[str, float]:
        module, anchors = variants[name]
        marks = [time.perf_counter()]
        tensor, (sy, sx) = detector._preprocess(image)
        marks.append(time.perf_counter())
        features, rpn_scores, rpn_deltas = detector.backbone.run(tensor)
        marks.append(time.perf_counter())
        proposals = module.proposals_from_rpn(rpn_scores, rpn_deltas, config, anchors=anchors)
        marks.append(time.perf_counter())
        class_scores, box_deltas = detector.head.run(
            features, proposals.proposals, proposals.box_indexes
        )
        marks.append(time.perf_counter())
        found = module.detections_from_head(
            class_scores, box_deltas, proposals.proposals, proposals.num_valid, config
        )
        marks.append(time.perf_counter())
        boxes = found.boxes * np.asarray([sy, sx, sy, sx], dtype=np.float32)
        module.Detections(boxes, found.scores, found.class_ids).to_list(config.class_names)
        marks.append(time.perf_counter())
        split = {step: (b - a) * 1e3 for step, a, b in zip(STEPS, marks, marks[1:])}
        split["total"] = (marks[-1] - marks[0]) * 1e3
        return split

    load_before = os.getloadavg()
    for call in range(args.warmup + args.calls):
        # Alternate which variant goes first, so neither always follows the other.
        order = ("new", "old") if call % 2 == 0 else ("old", "new")
        for name in order:
            split = one_call(name, images[call % len(images)])
            if call >= args.warmup:
                splits[name].append(split)
    result: dict = {
        "precision": args.precision,
        "calls": args.calls,
        "load_before": load_before,
        "load_after": os.getloadavg(),
    }
    for name, rows in splits.items():
        shares = [sum(r[s] for s in STEPS[2:3] + STEPS[4:]) / r["total"] for r in rows]
        result[name] = {
            "split_ms": {s: float(np.median([r[s] for r in rows])) for s in (*STEPS, "total")},
            "postprocess_share": float(np.median(shares)),
            "postprocess_share_iqr": [float(v) for v in np.percentile(shares, [25, 75])],
        }
    result["share_new_over_old"] = (
        result["new"]["postprocess_share"] / result["old"]["postprocess_share"]
    )
    # Cold vs repeated: each stage's call right after its model invocation, then the same call
    # again at once (warm caches), per variant, alternating as above.
    cold: dict[str, dict[str, list[float]]] = {
        name: {
            key: []
            for key in ("proposals", "proposals_repeated", "detections", "detections_repeated")
        }
        for name in variants
    }
    for call in range(args.calls):
        image = images[call % len(images)]
        tensor, _ = detector._preprocess(image)
        for name in ("new", "old") if call % 2 == 0 else ("old", "new"):
            module, anchors = variants[name]
            times = cold[name]
            features, rpn_scores, rpn_deltas = detector.backbone.run(tensor)
            for key in ("proposals", "proposals_repeated"):
                start = time.perf_counter()
                proposals = module.proposals_from_rpn(
                    rpn_scores, rpn_deltas, config, anchors=anchors
                )
                times[key].append((time.perf_counter() - start) * 1e3)
            class_scores, box_deltas = detector.head.run(
                features, proposals.proposals, proposals.box_indexes
            )
            for key in ("detections", "detections_repeated"):
                start = time.perf_counter()
                module.detections_from_head(
                    class_scores, box_deltas, proposals.proposals, proposals.num_valid, config
                )
                times[key].append((time.perf_counter() - start) * 1e3)
    for name, times in cold.items():
        result[name]["after_model_vs_repeated_ms"] = {
            key: float(np.median(values)) for key, values in times.items()
        }
    result["load_after"] = os.getloadavg()
    print(strict_json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
