"""``python -m export``'s single-file detectors: built from the stage files it just wrote.

For every precision whose stage files were built, ``detector.<precision>.tflite`` chains them
(:mod:`export.single_file`) and gets MediaPipe's metadata (:mod:`export.detection_metadata`);
each is audited like the stage files (builtins only, op versions, tflite-runtime 2.14) and
golden-checked against the float Keras detections of the golden images by the device's judge
(:func:`runtime.single.judge_single`). Its golden data (``golden/detector.npz``) holds those
images and the float Keras detections in the file's own four-output layout.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from export.detection_metadata import attach
from export.shared import REPORT_DIR
from export.single_file import OUTPUTS, single_file, stage_precisions
from runtime import strict_json
from runtime.config import DetectorConfig
from runtime.manifest import ArtifactEntry, TensorSpec, atomic_write_bytes, sha256_file
from runtime.processing import Detections
from runtime.single import SINGLE_MODEL, judge_single, outputs_to_detections

#: Precisions a single file is built in (when their stage files are in the export).
SINGLE_PRECISIONS = ("float32", "float16", "dynamic_int8", "int8", "mixed", "int8_io")
GOLDEN_PATH = f"golden/{SINGLE_MODEL}.npz"


def detection_arrays(found: Detections, config: DetectorConfig) -> list[np.ndarray]:
    """Detections (model pixels) -> the four outputs [1,D,4], [1,D], [1,D], [1] float32."""
    d = config.max_detections
    h, w = config.image_size
    n = min(len(found.scores), d)
    location = np.zeros((1, d, 4), np.float32)
    category = np.zeros((1, d), np.float32)
    score = np.zeros((1, d), np.float32)
    location[0, :n] = np.asarray(found.boxes)[:n] / np.asarray([h, w, h, w], np.float32)
    category[0, :n] = np.asarray(found.class_ids)[:n]
    score[0, :n] = np.asarray(found.scores)[:n]
    return [location, category, score, np.asarray([n], np.float32)]


def golden_arrays(images: list[np.ndarray], reference: list[Detections], config) -> dict:
    """``input_0`` [S,1,H,W,3] uint8 and ``output_0..3`` (the float Keras detections)."""
    outputs = [detection_arrays(r, config) for r in reference]
    arrays = {"input_0": np.stack([np.asarray(i, np.uint8)[None] for i in images])}
    arrays.update({f"output_{j}": np.stack([o[j] for o in outputs]) for j in range(4)})
    return arrays


def _specs(config: DetectorConfig, quantized_input: bool):
    h, w = config.image_size
    d = config.max_detections
    inputs = (TensorSpec("image", (1, h, w, 3), "uint8"),)
    shapes = ((1, d, 4), (1, d), (1, d), (1,))
    outputs = tuple(TensorSpec(n, s, "float32") for n, s in zip(OUTPUTS, shapes))
    return inputs, outputs


def build_single_files(
    stage_entries: list[ArtifactEntry],
    work: Path,
    config: DetectorConfig,
    golden_images: list[np.ndarray],
    reference: list[Detections],
    audit_report: Any,
) -> tuple[list[ArtifactEntry], list[str], str | None]:
    """(entries, golden failures, golden path or None) of the single files built into ``work``.

    ``audit_report(spec, data)`` is the export's op audit (raises on a non-builtin op);
    ``reference`` the float Keras detections of ``golden_images`` (uint8 HxWx3).
    """
    from export.formats import ArtifactSpec
    from runtime.backends import Stage, open_backend

    built = {(e.model, e.precision): e for e in stage_entries if e.format == "tflite"}
    entries: list[ArtifactEntry] = []
    failures: list[str] = []
    for precision in SINGLE_PRECISIONS:
        stages = stage_precisions(precision)
        if not all((m, p) in built for m, p in stages.items()):
            continue
        backbone = (work / built["backbone_rpn", stages["backbone_rpn"]].path).read_bytes()
        head = (work / built["head", stages["head"]].path).read_bytes()
        data = attach(single_file(backbone, head, config), config.class_names, config.image_size)
        spec = ArtifactSpec(
            SINGLE_MODEL,
            "tflite",
            precision,
            f"{SINGLE_MODEL}.{precision}.tflite",
            f"backbone_rpn {stages['backbone_rpn']} + head {stages['head']} with in-graph "
            "post-processing and MediaPipe object-detector metadata, uint8 image input",
        )
        report = audit_report(spec, data)
        path = work / spec.filename
        atomic_write_bytes(path, data)
        inputs, outputs = _specs(config, precision == "int8_io")
        report_path = f"{REPORT_DIR}/{spec.filename}.json"
        entry = ArtifactEntry(
            name=spec.name,
            model=SINGLE_MODEL,
            format="tflite",
            precision=precision,
            path=spec.filename,
            sha256=sha256_file(path),
            bytes=path.stat().st_size,
            inputs=inputs,
            outputs=outputs,
            op_report=report_path,
        )
        stage = Stage(entry, open_backend(path, "tflite", num_threads=1), path)
        found = [
            outputs_to_detections(stage.run(np.asarray(i, np.uint8)[None]), config.image_size)
            for i in golden_images
        ]
        verdict = judge_single(precision, found, reference, config.image_size)
        failures += [f"{spec.name}: {f}" for f in verdict.failures]
        report.update(
            {
                "format": "tflite",
                "precision": precision,
                "description": spec.description,
                "bytes": len(data),
                "build_notes": {"chained_stages": stages},
                # One entry per judged output, as the stage reports have (summary reads them).
                "golden_check": {
                    "location": {
                        **{
                            k: float(v) for o in verdict.outputs for k, v in vars(o.metrics).items()
                        },
                        "detections_matched": verdict.top1_agreement,
                        "failures": list(verdict.failures),
                    }
                },
            }
        )
        atomic_write_bytes(work / report_path, strict_json.dump_bytes(report))
        entries.append(entry)
    if not entries:
        return entries, failures, None
    arrays = golden_arrays(golden_images, reference, config)
    import io

    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    atomic_write_bytes(work / GOLDEN_PATH, buffer.getvalue())
    return entries, failures, GOLDEN_PATH
