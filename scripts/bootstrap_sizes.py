"""How many val images a mAP drop bound needs: paired bootstrap intervals at several set sizes.

    PYTHONPATH=$PWD python scripts/bootstrap_sizes.py --artifacts artifacts --precision int8 \
        --sizes 25 50 100 200 400

Scores float Keras (the artifacts' source model) and one runtime pipeline on the procedural
held-out split at the detector's size, then prints, per set size (the first N images), the
mAP@.5:.95 drop with its paired bootstrap 95% interval (models.bootstrap) and its half-width.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--artifacts", type=Path, default=Path("artifacts"), help="export --out")
    parser.add_argument("--precision", default="int8", help="pipeline precision to compare")
    parser.add_argument("--format", default="tflite", help="tflite or onnx")
    parser.add_argument("--sizes", type=int, nargs="+", default=[25, 50, 100, 200, 400])
    args = parser.parse_args(argv)

    from tqdm import tqdm

    from models.bootstrap import paired_drop_intervals
    from models.data import data_config_for, eval_split
    from models.detector import FloatDetector, load_detector
    from runtime.detector import Detector, DetectorOptions
    from runtime.manifest import read_manifest
    from runtime.processing import preprocess

    manifest = read_manifest(args.artifacts)
    source = Path(manifest.source_models["backbone_rpn"].split("#")[0])
    detector = load_detector(source if source.is_absolute() else Path.cwd() / source)
    keras = FloatDetector(detector)
    device = Detector(args.artifacts, DetectorOptions(precision=args.precision, format=args.format))
    config = detector.config
    batch = eval_split(max(args.sizes), data_config_for(config.image_size))
    reference, candidate = [], []
    for image in tqdm(batch.images, desc="images"):
        reference.append(keras(image))
        candidate.append(device.detect_tensor(preprocess(image, config)))
    truths = list(zip(batch.boxes, batch.labels))
    classes = len(config.class_names)
    print(f"{args.format}/{args.precision} vs float Keras, mAP@.5:.95 drop in points")
    print(f"{'images':>7} {'drop':>7} {'95% low':>8} {'95% high':>9} {'half-width':>11}")
    for n in args.sizes:
        interval = paired_drop_intervals(reference[:n], candidate[:n], truths[:n], classes)[
            "map50_95"
        ]
        half = (interval.high - interval.low) / 2
        print(
            f"{n:>7} {100 * interval.drop:>7.2f} {100 * interval.low:>8.2f} "
            f"{100 * interval.high:>9.2f} {100 * half:>11.2f}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
