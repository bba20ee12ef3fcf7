"""Export a third-party two-stage detector described by a card: ``python -m export --detector``.

The card (:mod:`runtime.card`) names the user's backbone_rpn and head Keras models and their
conventions. Both models are loaded (with the card's custom objects), given the card's static
shapes, checked against the card (output shapes, anchors x cells; refused before any
conversion), then built into the same artifact table with the same builders, audits, golden
checks and atomic install as the shipped detector (:mod:`export.pipeline`'s one skeleton:
``claimed_out``, ``building_dir``, ``write_golden``, ``build_all``, ``sealed_manifest``,
``publish``). Stage inputs come from the user's images run through the float Keras models and
:mod:`runtime.card_processing`, exactly as the device will feed them. The manifest's
``detector`` records the card, so ``python -m runtime`` runs it unchanged. No
single-file detector is built for a card (:data:`SINGLE_FILE_NOT_BUILT`, printed with the
summary).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path
from typing import Any

import numpy as np

from export.config import ExportCheckError, ExportInputError, add_output_arguments
from export.formats import model_artifacts
from export.stages import ModelIO
from runtime import strict_json
from runtime.card import CARD_KEY, DetectorCard, card_to_json, read_card
from runtime.errors import RoiedgeError, say
from runtime.limits import bad_number
from runtime.manifest import FORMATS, Manifest

SCHEMA_VERSION = 1
#: Precisions of a card export (int8_io and mixed need the built-in detector's contract).
CARD_PRECISIONS = ("float32", "float16", "dynamic_int8", "int8")
#: Why a card export writes no ``detector.<precision>.tflite`` (its summary's last line says so).
SINGLE_FILE_NOT_BUILT = (
    "single file: not built for a detector card (detector.<precision>.tflite needs the card's "
    "conventions in-graph: its preprocessing, RPN score and delta conventions and the head run "
    "once per chunk of num_rois RoIs, which only runtime.card_processing implements); run the "
    "two-stage artifacts with python -m runtime"
)
#: At most this many head calls (chunks of num_rois) per calibration image.
HEAD_CALLS_PER_IMAGE = 2


@dataclasses.dataclass(frozen=True)
class CardExportConfig:
    """One ``python -m export --detector`` run (the CLI flags map 1:1 onto the fields)."""

    detector: Path
    out: Path
    calibration: Path
    golden_samples: int = 4
    calibration_images: int | None = None
    formats: tuple[str, ...] | None = None
    precisions: tuple[str, ...] | None = None
    progress: bool = True
    schema_version: int = SCHEMA_VERSION

    def __post_init__(self) -> None:
        for field, allowed in (("formats", FORMATS), ("precisions", CARD_PRECISIONS)):
            values = getattr(self, field)
            unknown = [v for v in values or () if v not in allowed]
            if values is not None and (not values or unknown):
                raise ExportInputError(
                    f"--{field} {','.join(values)}: expected some of {', '.join(allowed)}"
                )
        for flag, value in (
            ("--golden-samples", self.golden_samples),
            ("--calibration-images", self.calibration_images),
        ):
            bad = None if value is None else bad_number(flag, value, 1, limit_name="flag_images")
            if bad:
                raise ExportInputError(bad)


def stage_io(card: DetectorCard) -> dict[str, ModelIO]:
    """The artifacts' tensor names (the card's roles) and the head's coordinate inputs."""
    coordinates = ("rois", "box_indexes") if card.rois.box_indexes else ("rois",)
    return {
        "backbone_rpn": ModelIO(("image",), card.rpn.outputs),
        "head": ModelIO(card.head.inputs, card.head.outputs, coordinates),
    }


#: At most this many cyclic shifts of each calibration head call's RoIs (see roi_rolls).
MAX_ROI_ROLLS = 8


def roi_rolls(heads: list[list], inputs) -> list[list]:
    """Each head call's inputs with its RoI rows cyclically shifted by up to MAX_ROI_ROLLS
    evenly spaced offsets (the call itself first), for calibration.

    A keras-frcnn head runs its layers once per RoI slot (RoiPoolingConv's loop and the
    TimeDistributed layers unroll into num_rois copies), and int8 gives each copy its own
    ranges; calibrated on the RPN's ranking alone, a slot sees only the RoIs that rank lands
    there, and a held-out RoI of another kind is clipped (one ONNX slot's hidden layer came out
    at 11.5 dB, the others at ~38). Shifting the rows lets every slot see the same RoIs.
    """
    index = list(inputs).index("rois")
    rolled = []
    for call in heads:
        rows = call[index].shape[-2]
        step = max(1, -(-rows // MAX_ROI_ROLLS))
        for shift in range(0, rows, step):
            moved = list(call)
            moved[index] = np.roll(call[index], shift, axis=-2)
            rolled.append(moved)
    return rolled


def swap_head(models: Any, rows, reference) -> tuple[Any, dict[str, Any] | None]:
    """The head with its RoI layers (keras-frcnn RoiPoolingConv, tutorial RoIPooling) swapped for
    roiedge's builtin-only int8-safe lowerings and proven on the golden rows; (head, proof).

    A head without such a layer is returned as it is (proof None).
    """
    from export.swap import prove_swap, swap_roi_layers
    from models.card_models import fixed_shapes

    swapped, swaps = swap_roi_layers(models.head_source, "RoiPoolingConv", 1)
    if not swaps:
        return models.head, None
    head = fixed_shapes(swapped, models.head_shapes, "head")
    names = models.card.head.outputs
    proof = prove_swap(head, rows, reference, names, "ran the original head here", swaps)
    say(f"swap proof: {proof['summary']}", file=sys.stderr)
    return head, proof


def _images(config: CardExportConfig, card: DetectorCard):
    """(calibration tensors, golden tensors) of ``--calibration``, preprocessed as on device."""
    from export.calibration import calibration_files, hold_out_golden
    from runtime.card_processing import preprocess
    from runtime.images import load_image

    files = calibration_files(Path(config.calibration))
    calibration, golden = hold_out_golden(files, config.golden_samples)
    calibration = (
        calibration[: config.calibration_images] if config.calibration_images else calibration
    )

    def tensors(paths):
        try:
            return [preprocess(load_image(p), card)[0] for p in paths]
        except RoiedgeError as error:
            raise ExportInputError(str(error)) from None

    return tensors(calibration), tensors(golden)


def run_card_export(config: CardExportConfig) -> Manifest:
    """Build, check and atomically install every selected artifact of a card detector."""
    from export import pipeline

    card = read_card(config.detector)
    out = Path(config.out)
    with pipeline.claimed_out(out):
        return _card_export(config, card, out)


def _card_export(config: CardExportConfig, card, out: Path) -> Manifest:
    """:func:`run_card_export` while it holds ``out``."""
    from export import pipeline
    from export.shared import REPORT_DIR, keras_outputs
    from models.card_models import CardModels
    from runtime.manifest import sha256_file

    models = CardModels(card, Path(config.detector).resolve().parent)
    io = stage_io(card)
    calibration_images, golden_images = _images(config, card)
    calibration = {"backbone_rpn": [], "head": []}
    golden_inputs = {"backbone_rpn": [], "head": []}
    for target, images, calls in (
        (calibration, calibration_images, HEAD_CALLS_PER_IMAGE),
        (golden_inputs, golden_images, 1),
    ):
        for tensor in images:
            backbone, heads = models.stage_inputs(tensor, calls)
            target["backbone_rpn"].append(backbone)
            target["head"].extend(
                heads if target is golden_inputs else roi_rolls(heads, card.head.inputs)
            )
    if not golden_inputs["head"] or not calibration["head"]:
        raise ExportInputError(
            f"--calibration {config.calibration}: the RPN proposed no RoI on its images; "
            "expected images where the detector finds something (or a card with other thresholds)"
        )
    keras_models = {"backbone_rpn": models.backbone_rpn, "head": models.head}
    golden_outputs = {m: keras_outputs(keras_models[m], golden_inputs[m]) for m in keras_models}
    keras_models["head"], proof = swap_head(models, golden_inputs["head"], golden_outputs["head"])
    specs = [
        spec
        for model in ("backbone_rpn", "head")
        for spec in model_artifacts(model)
        if spec.precision in CARD_PRECISIONS
        and (config.formats is None or spec.format in config.formats)
        and (config.precisions is None or spec.precision in config.precisions)
    ]
    paths = card.resolve(Path(config.detector).resolve().parent)
    with pipeline.building_dir(out) as work:
        golden = {
            model: pipeline.write_golden(work, model, golden_inputs[model], golden_outputs[model])
            for model in keras_models
        }
        if proof is not None:
            pipeline.atomic_write_bytes(
                work / REPORT_DIR / "swap_proof.json", strict_json.dump_bytes(proof)
            )
        entries, failures = pipeline.build_all(
            specs,
            keras_models,
            calibration,
            golden_inputs,
            golden_outputs,
            work,
            config.progress,
            ios=io,
            on_error=_build_failure,
        )
        manifest = pipeline.sealed_manifest(
            work,
            entries,
            failures,
            golden,
            source_models={
                "card": str(config.detector),
                "card_sha256": sha256_file(config.detector),
                "backbone_rpn": str(paths["backbone_rpn"]),
                "head": str(paths["head"]),
                "backbone_rpn_sha256": sha256_file(paths["backbone_rpn"]),
                "head_sha256": sha256_file(paths["head"]),
            },
            detector={CARD_KEY: card_to_json(card)},
        )
        pipeline.publish(manifest, work, out)
    return manifest


def _build_failure(spec, error: Exception) -> Exception:
    """roiedge's own errors as they are; a converter or calibrator crash as a failed build in
    one line with its cause."""
    from export.keras_loading import crash_line

    if isinstance(error, (RoiedgeError, ExportCheckError)):
        return error
    return ExportCheckError(crash_line(spec.name, error))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m export --detector",
        description="Export a third-party two-stage Keras detector (keras-frcnn style) described "
        "by a detector card (docs/detector_card.md) to TFLite and ONNX artifacts.",
    )
    parser.add_argument("--detector", type=Path, required=True, help="the detector card .json")
    add_output_arguments(parser, CARD_PRECISIONS, FORMATS)
    parser.add_argument(
        "--calibration",
        type=Path,
        required=True,
        help="a folder of .jpg/.png images or a COCO instances .json; --golden-samples of them "
        "are held back as golden samples",
    )
    parser.add_argument("--golden-samples", type=int, default=4, help="golden images (default 4)")
    parser.add_argument(
        "--calibration-images", type=int, default=None, help="at most this many calibration images"
    )
    return parser


def main(argv: list[str]) -> int:
    """The CLI: exit 0 ok, 1 a failed check or build, 2 bad input."""
    from export.summary import export_outcome

    args = build_parser().parse_args(argv)

    def run():
        config = CardExportConfig(**vars(args))
        return run_card_export(config), config.out

    return export_outcome(run, notes=(SINGLE_FILE_NOT_BUILT,))
