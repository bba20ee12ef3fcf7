"""mAP of the float Keras detector: ``python -m models.evaluate [--data VAL.json]``.

On the procedural held-out split by default, or on a COCO instances dataset (``--data``; images
resized as the runtime resizes them, detections mapped back to the original pixels and scored
there, crowd boxes as COCO handles them: the numbers equal pycocotools' COCOeval). Prints a
per-class table, optionally writes ``--json FILE`` (``map50``, ``map50_95``, ``images``,
``per_class``...) and ``--show N --out PNG`` (a grid of images, at the model size, with predicted
and true boxes). ``--min-map50 X`` turns it into a check: exit 1 when mAP@0.5 < X.
Exit codes: 0 ok, 1 check failed, 2 bad input (missing/corrupt model, bad paths or numbers).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from models.data import EVAL_IMAGES, EVAL_SEED, EVAL_SPLIT, Batch, eval_split
from models.metrics import COCO_IOU_THRESHOLDS, mean_average_precision
from runtime import strict_json
from runtime.errors import RoiedgeError, one_line, printable, say
from runtime.manifest import atomic_write_bytes
from runtime.processing import Detections


def predict(detector: Any, images: np.ndarray, progress: bool = False) -> list[Detections]:
    """Float detections of every uint8 image in ``images`` [N,H,W,3]."""
    from tqdm import tqdm

    from models.detector import FloatDetector

    run = FloatDetector(detector)
    return [run(image) for image in tqdm(images, disable=not progress, unit="img", file=sys.stderr)]


def summarize(
    predictions: list[Any], ground_truths: list[Any], class_names: tuple[str, ...]
) -> dict[str, Any]:
    """The JSON-ready mAP summary (``map50``, ``map50_95``, ``images``, ``per_class``, ...)."""
    result = mean_average_precision(
        predictions, ground_truths, len(class_names), COCO_IOU_THRESHOLDS
    )
    return {
        "map50": result["map50"],
        "map50_95": result["map50_95"],
        "images": len(ground_truths),
        "per_class": {class_names[c]: values for c, values in sorted(result["per_class"].items())},
        "iou_thresholds": result["iou_thresholds"],
        "ap": result["ap"],
    }


def score(
    predictions: list[Detections], batch: Batch, class_names: tuple[str, ...]
) -> dict[str, Any]:
    """The JSON-ready mAP summary of ``predictions`` against ``batch``'s ground truth."""
    summary = summarize(predictions, list(zip(batch.boxes, batch.labels)), class_names)
    summary["split"] = {"seed": EVAL_SEED, "split": EVAL_SPLIT, "images": len(batch.images)}
    return summary


def to_original_pixels(detections: Detections, size: tuple[int, int], item: Any) -> Detections:
    """Detections in model pixels (``size`` = (H, W)) -> in the pixels of ``item``'s photo,
    mapped as the runtime maps them (scaled by photo size / model size)."""
    from models.coco import scale_to

    back = 1.0 / scale_to(size, item.height, item.width)
    return Detections(detections.boxes * back, detections.scores, detections.class_ids)


def score_on_dataset(
    predictions: list[Detections], dataset: Any, size: tuple[int, int]
) -> dict[str, Any]:
    """mAP of ``predictions`` (one per image of the COCO ``dataset``, boxes in model pixels of
    ``size`` = (H, W)) scored in the photos' own pixels, as COCOeval scores them."""
    from models.coco import ground_truth

    if len(predictions) != len(dataset.images):
        raise ValueError(f"{len(predictions)} predictions for {len(dataset.images)} images")
    original = [to_original_pixels(p, size, i) for p, i in zip(predictions, dataset.images)]
    summary = summarize(original, ground_truth(dataset), dataset.class_names)
    summary["dataset"] = str(dataset.source)
    return summary


def score_dataset(
    run: Any, dataset: Any, resized: Batch, predictions: list[Detections] | None = None
) -> dict[str, Any]:
    """mAP of a :class:`models.detector.FloatDetector` ``run`` on a COCO ``dataset`` whose images
    ``resized`` are at the model size; scored in the original pixels. ``predictions`` (model
    pixels) are computed when not given."""
    if predictions is None:
        predictions = [run(image) for image in resized.images]
    return score_on_dataset(predictions, dataset, tuple(resized.images.shape[1:3]))


def format_table(summary: dict[str, Any]) -> str:
    """A readable per-class table."""
    lines = [f"{'class':<12} {'gt':>6} {'AP@.5':>7} {'AP@.5:.95':>10}"]
    for name, values in summary["per_class"].items():
        lines.append(
            f"{name:<12} {values['num_gt']:>6} {values['ap50']:>7.3f} {values['ap']:>10.3f}"
        )
    lines.append(
        f"{'mean':<12} {'':>6} {summary['map50']:>7.3f} {summary['map50_95']:>10.3f}"
        f"   ({summary['images']} images)"
    )
    return "\n".join(lines)


def show(
    batch: Batch,
    predictions: list[Detections],
    class_names: tuple[str, ...],
    count: int,
    out: Path,
    min_score: float = 0.3,
    title: str = "held-out",
) -> Path:
    """Write a PNG grid of the first ``count`` images: true boxes dashed white, predictions coloured."""

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    from models.figures import png_bytes

    count = min(count, len(batch.images))
    cols = min(4, count)
    rows = (count + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(3 * cols, 3 * rows), squeeze=False)
    colours = plt.get_cmap("tab10")
    for ax in axes.ravel():
        ax.axis("off")
    for i in range(count):
        ax = axes.ravel()[i]
        ax.imshow(batch.images[i])
        for y1, x1, y2, x2 in batch.boxes[i]:
            ax.add_patch(
                Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, ec="white", ls="--", lw=1)
            )
        det = predictions[i]
        for (y1, x1, y2, x2), s, c in zip(det.boxes, det.scores, det.class_ids):
            if s < min_score:
                continue
            colour = colours(int(c) % 10)
            ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, ec=colour, lw=1.5))
            ax.text(x1, y1, f"{class_names[int(c)]} {s:.2f}", color="black", fontsize=6,
                    bbox={"facecolor": colour, "pad": 0.5, "lw": 0})  # fmt: skip
        ax.set_title(f"{title} #{i}", fontsize=8)
    atomic_write_bytes(out, png_bytes(fig, dpi=100))
    return out


def _parser() -> argparse.ArgumentParser:
    from models.detector import SHIPPED

    parser = argparse.ArgumentParser(prog="python -m models.evaluate", description=__doc__)
    parser.add_argument("--model", default=str(SHIPPED), help="detector .keras file")
    parser.add_argument(
        "--detector",
        default=None,
        help="a detector card .json (docs/detector_card.md): score its original Keras models "
        "through the runtime's numpy processing on --data (the float reference)",
    )
    parser.add_argument(
        "--data", default=None, help="COCO instances JSON (default: the procedural held-out split)"
    )
    parser.add_argument(
        "--images-dir", default=None, help="folder --data's file_name entries are relative to"
    )
    parser.add_argument("--json", default=None, help="write the summary JSON here")
    parser.add_argument("--images", type=int, default=EVAL_IMAGES, help="first N held-out images")
    parser.add_argument("--show", type=int, default=0, help="draw the first N images")
    parser.add_argument("--out", default=None, help="PNG path for --show")
    parser.add_argument("--min-map50", type=float, default=None, help="exit 1 below this mAP@0.5")
    return parser


def check_category_ids(dataset: Any, config: Any, data: Any, detector: Any) -> None:
    """Refuse ``--data`` ``data`` when its category ids differ from ``detector``'s (named in the
    message; ``config`` its DetectorConfig): `detect --json` writes the detector's ids, so its
    rows would score against other classes than this mAP counts."""
    if tuple(dataset.category_ids) != config.coco_ids:
        raise RoiedgeError(
            f"--data {data} has category ids {list(dataset.category_ids)}; the detector "
            f"{detector} writes {list(config.coco_ids)} (trained on another numbering; "
            "renumber the dataset's categories or retrain on it)"
        )


def _bad_flags(args: argparse.Namespace) -> str | None:
    """One line naming the first bad flag, or None; checked before TensorFlow loads and before
    the scoring, so an output that cannot be written is found before the work, not after."""
    from models.detector import config_path
    from runtime.limits import bad_number
    from runtime.safe_files import writable_output

    for flag, value, low, high, limit_name in (
        ("--images", args.images, 1, None, "flag_images"),
        ("--show", args.show, 0, None, "flag_images"),
        ("--min-map50", args.min_map50, 0, 1, None),
    ):
        bad = value is not None and bad_number(flag, value, low, high, limit_name=limit_name)
        if bad:
            return bad
    if args.show and not args.out:
        return "--show N needs --out PNG"
    model = args.model or None
    inputs = (model, model and config_path(model), args.data, args.detector)
    try:
        for flag, value in (("--json", args.json), ("--out", args.out)):
            if value is not None:
                writable_output(value, flag, inputs=inputs)
    except RoiedgeError as error:
        return str(error)
    return None


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    bad = _bad_flags(args)
    if bad:
        print(f"error: {printable(bad)}", file=sys.stderr)
        return 2
    if args.detector is not None:
        return _card_main(args)
    from models.detector import load_detector

    try:
        detector = load_detector(args.model)
    except RoiedgeError as error:
        print(f"error: {one_line(error)}", file=sys.stderr)
        return 2
    names = detector.config.class_names
    started = time.time()
    if args.data is None:
        batch = eval_split(args.images)
        predictions = predict(detector, batch.images, progress=True)
        summary = score(predictions, batch, names)
        title = "held-out"
    else:
        from models.coco import load_coco, resized_batch
        from models.detector import FloatDetector

        try:
            dataset = load_coco(args.data, args.images_dir)
            if dataset.class_names != names:
                raise RoiedgeError(
                    f"--data {args.data} has classes {list(dataset.class_names)}; the detector "
                    f"{args.model} has {list(names)}"
                )
            check_category_ids(dataset, detector.config, args.data, args.model)
            batch = resized_batch(dataset, detector.config.image_size)
        except RoiedgeError as error:
            print(f"error: {one_line(error)}", file=sys.stderr)
            return 2
        predictions = predict(detector, batch.images, progress=True)
        summary = score_dataset(FloatDetector(detector), dataset, batch, predictions)
        title = Path(args.data).name
    summary["model"] = str(args.model)
    summary["seconds"] = round(time.time() - started, 1)
    say(format_table(summary))
    try:
        if args.json:
            atomic_write_bytes(Path(args.json), strict_json.dump_bytes(summary))
            say(f"wrote {args.json}")
        if args.show:
            show(batch, predictions, names, args.show, Path(args.out), title=title)
            say(f"wrote {args.out}")
    except OSError as error:
        print(f"error: {one_line(error)}", file=sys.stderr)
        return 2
    if args.min_map50 is not None and not summary["map50"] >= args.min_map50:
        print(f"check failed: mAP@0.5 {summary['map50']:.3f} < {args.min_map50}", file=sys.stderr)
        return 1
    return 0


def _card_main(args: argparse.Namespace) -> int:
    """``--detector CARD --data VAL.json``: the card's float Keras reference, scored."""
    from models.card_models import card_predictions
    from models.coco import ground_truth

    if args.data is None:
        print("error: --detector needs --data VAL.json (a COCO set)", file=sys.stderr)
        return 2
    started = time.time()
    try:
        dataset, predictions = card_predictions(
            Path(args.detector), Path(args.data), args.images_dir
        )
    except RoiedgeError as error:
        print(f"error: {one_line(error)}", file=sys.stderr)
        return 2
    summary = summarize(predictions, ground_truth(dataset), dataset.class_names)
    summary.update(dataset=str(dataset.source), card=str(args.detector))
    summary["seconds"] = round(time.time() - started, 1)
    print(format_table(summary))
    if args.json:
        atomic_write_bytes(Path(args.json), strict_json.dump_bytes(summary))
        say(f"wrote {args.json}")
    if args.min_map50 is not None and not summary["map50"] >= args.min_map50:
        print(f"check failed: mAP@0.5 {summary['map50']:.3f} < {args.min_map50}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
