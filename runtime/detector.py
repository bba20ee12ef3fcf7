"""The on-device detection pipeline: image -> backbone_rpn artifact -> proposals -> head artifact.

Pre- and post-processing come from :mod:`runtime.processing`, the same numpy code the float Keras
reference uses, so any difference between the two is the artifacts' numerics alone.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from runtime import processing
from runtime.backends import EDGETPU_MODES, Stage, edgetpu_available, load_stage
from runtime.config import DetectorConfig, stage_shapes
from runtime.errors import ArtifactError, RoiedgeError, say
from runtime.images import open_image, resize
from runtime.manifest import EDGETPU_PRECISION, FORMAT_PRECISIONS, Manifest, read_manifest


@dataclasses.dataclass(frozen=True)
class DetectorOptions:
    """Which artifacts run each stage, and how.

    ``precision``/``format``/``backend`` choose the backbone_rpn artifact; the ``head_*`` fields
    default to them (``int8_io`` and its Edge TPU compilation ``int8_io_edgetpu`` exist for the
    backbone only, so their head defaults to ``int8``).
    ``edgetpu`` ("off", "try", "require") applies to the TFLite backbone; ``score_threshold`` and
    ``max_detections`` override the manifest's detector config when set.
    """

    precision: str = "int8"
    format: str = "tflite"
    backend: str | None = None
    head_precision: str | None = None
    head_format: str | None = None
    head_backend: str | None = None
    num_threads: int | None = None
    edgetpu: str = "off"
    score_threshold: float | None = None
    max_detections: int | None = None

    def stage_choice(self, model: str) -> tuple[str, str, str | None]:
        """(format, precision, backend) of ``model`` ("backbone_rpn" or "head")."""
        if model == "backbone_rpn":
            return self.format, self.precision, self.backend
        precision = self.head_precision or (
            "int8" if self.precision.startswith("int8_io") else self.precision
        )
        return self.head_format or self.format, precision, self.head_backend or self.backend


def pipeline_mismatches(config: DetectorConfig, backbone: Any, head: Any) -> list[str]:
    """Where the artifacts' tensor specs (manifest entries) disagree with ``config``'s shapes."""
    found = []
    for entry in (backbone, head):
        inputs, outputs = stage_shapes(config)[entry.model]
        for side, expected, specs in (
            ("input", inputs, entry.inputs),
            ("output", outputs, entry.outputs),
        ):
            for want, spec in zip(expected, specs):
                shape = tuple(spec.shape)
                if len(shape) != len(want) or any(
                    d is not None and d != w for d, w in zip(shape, want)
                ):
                    found.append(
                        f"{entry.name} {side} {spec.name} is {list(shape)}, config implies {list(want)}"
                    )
            if len(specs) != len(expected):
                found.append(
                    f"{entry.name} has {len(specs)} {side}s; the detector has {len(expected)}"
                )
    return found


class Detector:
    """Two-stage detector over an artifacts directory; ``detect(image)`` -> list of Detection.

    Verifies each artifact's sha256 before loading it. ``timings`` holds the seconds spent per step
    of the calling thread's last ``detect`` call. One Detector may be shared by threads: each
    TFLite stage runs under its own lock (onnxruntime sessions are thread-safe), so two threads
    can be in different stages at once.
    """

    def __init__(
        self, artifacts_dir: os.PathLike, options: DetectorOptions | None = None, **overrides: Any
    ) -> None:
        options = dataclasses.replace(options or DetectorOptions(), **overrides)
        if options.edgetpu not in EDGETPU_MODES:
            raise RoiedgeError(f"edgetpu={options.edgetpu!r}; expected one of {EDGETPU_MODES}")
        self.options = options
        self.directory = Path(artifacts_dir)
        self.manifest: Manifest = read_manifest(self.directory)
        config = DetectorConfig.from_dict(
            self.manifest.detector, source=f"{self.directory / 'manifest.json'} detector"
        )
        changes = {
            k: v
            for k, v in (
                ("score_threshold", options.score_threshold),
                ("max_detections", options.max_detections),
            )
            if v is not None
        }
        self.config = dataclasses.replace(config, **changes) if changes else config
        self.anchors = processing.make_anchors(self.config)
        self._anchor_table = processing.anchor_table(self.anchors)  # read-only, shared by threads
        self.backbone = self._load("backbone_rpn")
        self.head = self._load("head")
        mismatches = pipeline_mismatches(self.config, self.backbone.entry, self.head.entry)
        if mismatches:
            raise ArtifactError(
                f"{self.directory / 'manifest.json'}: the detector config does not fit its "
                f"artifacts: {'; '.join(mismatches[:4])} (config edited or artifacts mixed)"
            )
        self._local = threading.local()

    @property
    def timings(self) -> dict[str, float]:
        """Seconds per step of this thread's last ``detect``/``detect_tensor`` call."""
        return getattr(self._local, "timings", {})

    def _load(self, model: str) -> Stage:
        format, precision, backend = self.options.stage_choice(model)
        known = FORMAT_PRECISIONS.get(format, ()) + (
            (EDGETPU_PRECISION,) if format == "tflite" else ()
        )
        if precision not in known:
            raise RoiedgeError(
                f"precision {precision!r} is not exported for {format}; expected one of {known}"
            )
        edgetpu = self.options.edgetpu if model == "backbone_rpn" and format == "tflite" else "off"
        if edgetpu != "off":
            precision = self._edgetpu_precision(precision, edgetpu)
        entry = self.manifest.find(model, format, precision)
        return load_stage(
            self.directory, entry, backend, num_threads=self.options.num_threads, edgetpu=edgetpu
        )

    def _edgetpu_precision(self, precision: str, edgetpu: str) -> str:
        """The backbone precision to load under ``--edgetpu try/require``.

        ``int8_io`` becomes its edgetpu_compiler output ``int8_io_edgetpu`` when the manifest has
        it and the Edge TPU runtime is installed; under ``try`` a missing runtime keeps the
        uncompiled model on the CPU (said on stderr), under ``require`` it is an error.
        """
        compiled = f"{precision}_edgetpu"
        if precision.endswith("_edgetpu") or not any(
            (e.model, e.format, e.precision) == ("backbone_rpn", "tflite", compiled)
            for e in self.manifest.artifacts
        ):
            return precision  # the backend says whether the model is compiled
        if edgetpu_available():
            return compiled
        message = f"Edge TPU runtime (libedgetpu) not installed, so {compiled} cannot run"
        if edgetpu == "require":
            raise RoiedgeError(f"{message}; expected the Coral runtime and a Coral device")
        say(f"warning: {message}; running the uncompiled {precision} on the CPU", file=sys.stderr)
        return precision

    def describe(self) -> str:
        """One line naming the artifact and backend of each stage."""
        parts = []
        for stage in (self.backbone, self.head):
            delegate = f"+{stage.backend.delegate}" if stage.backend.delegate else ""
            parts.append(f"{stage.entry.model}={stage.entry.name} ({stage.backend.name}{delegate})")
        return ", ".join(parts)

    def _preprocess(self, image: Any) -> tuple[np.ndarray, tuple[float, float]]:
        """Any image -> (``image`` tensor [1,H,W,3] float32, (sy, sx) from model to input pixels)."""
        # JPEGs decode at a reduced scale (>= the model size); boxes scale to the full size.
        pixels, (height, width) = open_image(image, reduce_to=self.config.image_size)
        model_h, model_w = self.config.image_size
        tensor = processing.preprocess(resize(pixels, (model_h, model_w)), self.config)
        return tensor, (height / model_h, width / model_w)

    def detect_tensor(self, tensor: np.ndarray) -> processing.Detections:
        """The ``image`` tensor [1,H,W,3] float32 in [0,255] -> Detections in model pixels."""
        timings = self._local.__dict__.setdefault("timings", {})
        start = time.perf_counter()
        features, rpn_scores, rpn_deltas = self.backbone.run(tensor)
        timings["backbone_rpn"] = time.perf_counter() - start
        mark = time.perf_counter()
        proposals = processing.proposals_from_rpn(
            rpn_scores, rpn_deltas, self.config, anchors=self._anchor_table
        )
        timings["proposals"] = time.perf_counter() - mark
        mark = time.perf_counter()
        class_scores, box_deltas = self.head.run(
            features, proposals.proposals, proposals.box_indexes
        )
        timings["head"] = time.perf_counter() - mark
        mark = time.perf_counter()
        detections = processing.detections_from_head(
            class_scores, box_deltas, proposals.proposals, proposals.num_valid, self.config
        )
        timings["detections"] = time.perf_counter() - mark
        return detections

    def detect(self, image: Any) -> list[processing.Detection]:
        """A path, PIL image or HxWx3 uint8 array -> detections, boxes in that image's pixels."""
        timings: dict[str, float] = {}
        self._local.timings = timings
        start = time.perf_counter()
        tensor, (sy, sx) = self._preprocess(image)
        timings["preprocess"] = time.perf_counter() - start
        found = self.detect_tensor(tensor)
        boxes = found.boxes * np.asarray([sy, sx, sy, sx], dtype=np.float32)
        detections = processing.Detections(boxes, found.scores, found.class_ids).to_list(
            self.config.class_names
        )
        timings["total"] = time.perf_counter() - start  # the list too: it is part of the call
        return detections
