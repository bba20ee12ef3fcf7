"""``python -m export``: convert a Keras detector to TFLite and ONNX artifacts with a manifest.

Exit 0 ok, 1 an artifact failed a check (ops, golden accuracy), 2 bad usage or input.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from export.config import ExportConfig, add_output_arguments, comma_names
from export.formats import ARTIFACTS, PRECISIONS
from export.summary import export_outcome
from runtime.manifest import FORMATS, MODELS


def build_parser() -> argparse.ArgumentParser:
    table = "\n".join(f"  {a.name:34s} {a.filename}" for a in ARTIFACTS)
    parser = argparse.ArgumentParser(
        prog="python -m export",
        description="Convert the two-stage Keras detector to TFLite and ONNX edge artifacts "
        "(any other Keras model with RoIPooling: python -m export --keras-model M --help).",
        epilog=f"artifacts (model/format/precision, file):\n{table}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    defaults = ExportConfig(out=Path("artifacts"))
    add_output_arguments(parser, PRECISIONS, FORMATS)
    parser.add_argument(
        "--model",
        type=Path,
        default=defaults.model,
        help="detector .keras written by python -m models.train, with its .json sidecar next to "
        "it (default: the shipped detector)",
    )
    parser.add_argument(
        "--calibration",
        type=Path,
        default=None,
        help="a folder of .jpg/.png images or a COCO instances .json; --golden-samples of them "
        "are held back as golden samples (default: procedural scenes at the model's size)",
    )
    parser.add_argument(
        "--calibration-images",
        type=int,
        default=None,
        help="how many calibration images (default: 300 procedural, or all of --calibration "
        "but the golden samples)",
    )
    parser.add_argument(
        "--golden-samples",
        type=int,
        default=defaults.golden_samples,
        help="calibration images held back as golden inputs/outputs that runtime check "
        f"compares every artifact against (default {defaults.golden_samples})",
    )
    parser.add_argument(
        "--models",
        type=comma_names,
        default=None,
        help=f"comma-separated stages to export, of {','.join(MODELS)} (default: both)",
    )
    parser.add_argument(
        "--target-drop",
        type=float,
        default=defaults.target_drop,
        help="mixed precision: largest mAP@.5:.95 drop vs float Keras, in points (default 0.5)",
    )
    parser.add_argument(
        "--val-images",
        type=int,
        default=defaults.val_images,
        help="mixed precision: procedural validation images its search scores (default 200)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["edgetpu"]:  # `python -m export edgetpu DIR`: compile for the Coral Edge TPU
        from export.edgetpu import main as edgetpu_main

        return edgetpu_main(argv[1:])
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if any(a == "--detector" or a.startswith("--detector=") for a in argv):
        from export.card_export import main as card_main  # a third-party detector's card

        return card_main(argv)
    if any(a == "--keras-model" or a.startswith("--keras-model=") for a in argv):
        from export.keras_model import main as keras_main  # any Keras model, not the detector

        return keras_main(argv)
    args = build_parser().parse_args(argv)

    def run():
        config = ExportConfig(**vars(args))
        from export.pipeline import run_export

        return run_export(config), config.out

    return export_outcome(run)


if __name__ == "__main__":
    from runtime.interrupts import run_main

    sys.exit(run_main(main))
