"""Accuracy-aware mixed precision: full int8 with the fewest, most sensitive layers kept float.

The ``mixed`` artifacts start from the stage's full-int8 artifact and keep layers in float until
a target holds, one stage at a time (the other stage is the float Keras model, as in the report's
artifact rows):

* ``target="map"`` (the default with procedural calibration): the stage's mAP@.5:.95 drop against
  float Keras on a labelled validation split (procedural split :data:`VAL_SPLIT`, never the
  held-out split the report scores, nor the calibration or golden splits) is at most half of
  ``--target-drop`` points, so the two stages together stay within it;
* ``target="snr"`` (a ``--calibration`` folder, which has no labels): every output's SNR against
  float Keras on held-back calibration images is at least :data:`MIN_OUTPUT_SNR_DB`.

The search (:func:`greedy_search`) measures the start (no layer float); if it misses, it measures
each candidate layer kept float alone, ranks them by the result, and keeps layers float in that
order until the target holds. Every layer float is the fallback the search can always reach.

Mechanism: TFLite uses the converter's own denylist (``mlir_quantize``'s ``denylisted_nodes``,
what ``tf.lite.experimental.QuantizationDebugger`` uses to build selectively quantized models);
ONNX uses onnxruntime's ``nodes_to_exclude``. Both keep the artifact a single stock model that
every runtime the project targets loads (a float op between DEQUANTIZE/QUANTIZE pairs), and both
reuse the int8 export's calibration unchanged, so ``mixed`` with nothing kept float is
bit-for-bit the int8 artifact. ai-edge-quantizer's recipes could do the TFLite half too, but it is
a second quantizer with its own calibration, and would make mixed and int8 differ in more than the
layers kept float.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from export.shared import (
    FLOAT_SCORE_OPS,
    BuildInput,
    Built,
    keras_outputs,
    onnx_session,
    tflite_model_graph,
)
from export.stages import STAGE_IO

#: Default ``--target-drop``: the mixed pipeline's mAP@.5:.95 drop bound, in points.
DEFAULT_TARGET_DROP = 0.5
#: Procedural split of the labelled validation images (0 train, 1 held-out, 2 calibration,
#: 3 golden).
VAL_SPLIT = 4
#: Label-free target: every output of the stage at least this SNR against float Keras.
MIN_OUTPUT_SNR_DB = 30.0
#: Calibration samples held back as the label-free target's validation inputs.
SNR_SAMPLES = 16
#: Measurements one search may make; past it every candidate is kept float (the fallback that
#: always meets the target) rather than the export running for an unbounded time.
MAX_EVALUATIONS = 48
#: The same for ONNX, where each measurement re-runs onnxruntime's calibration.
ONNX_MAX_EVALUATIONS = 8
#: TFLite op types that are layers worth keeping float (reshapes, gathers and pools only move
#: quantized values around and add no error of their own).
TFLITE_LAYER_OPS = (
    "CONV_2D",
    "DEPTHWISE_CONV_2D",
    "FULLY_CONNECTED",
    "ADD",
    "MUL",
    "SUB",
    "LOGISTIC",
    "SOFTMAX",
)
ONNX_LAYER_OPS = ("Conv", "MatMul", "Gemm", "Add", "Mul", "Sub", "Sigmoid", "Softmax")


@dataclasses.dataclass(frozen=True)
class SearchStep:
    """One measured configuration: the layers kept float and the loss (<= 0 means met)."""

    kept_float: tuple[str, ...]
    loss: float


@dataclasses.dataclass(frozen=True)
class SearchResult:
    """What :func:`greedy_search` chose and everything it measured on the way."""

    kept_float: tuple[str, ...]
    met: bool
    candidates: int
    start: SearchStep
    alone: tuple[SearchStep, ...]
    path: tuple[SearchStep, ...]
    #: True when MAX_EVALUATIONS ran out and every candidate was kept float unmeasured.
    fallback: bool = False

    def notes(self) -> dict[str, Any]:
        """JSON-ready summary for the op report."""
        return {
            "kept_float_layers": list(self.kept_float),
            "target_met": self.met,
            "all_float_fallback": self.fallback,
            "candidate_layers": self.candidates,
            "start_loss": self.start.loss,
            "sensitivity": [{"layer": s.kept_float[0], "loss": s.loss} for s in self.alone],
            "path": [{"kept_float": len(s.kept_float), "loss": s.loss} for s in self.path],
        }


def greedy_search(
    candidates: Sequence[str],
    evaluate: Callable[[tuple[str, ...]], float],
    rank: bool = True,
    max_evaluations: int = MAX_EVALUATIONS,
) -> SearchResult:
    """The fewest candidates to keep float so that ``evaluate(kept) <= 0``.

    ``evaluate`` maps the tuple of layers kept float to a loss: how far the target is missed
    (<= 0: met). With ``rank``, each candidate is first measured kept float alone and the
    candidates are ranked by that loss, lowest first (ties: later layers first, since int8 error
    accumulates towards the outputs); otherwise they are taken in the given order. Layers are
    then kept float cumulatively in that order until the target holds. After
    ``max_evaluations`` measurements every candidate is kept float (``fallback``, unmeasured).
    """
    candidates = tuple(dict.fromkeys(candidates))
    budget = [max_evaluations]

    def measure(kept: tuple[str, ...]) -> float:
        budget[0] -= 1
        return float(evaluate(kept))

    start = SearchStep((), measure(()))
    if start.loss <= 0 or not candidates:
        return SearchResult((), start.loss <= 0, len(candidates), start, (), ())
    position = {c: i for i, c in enumerate(candidates)}
    alone: tuple[SearchStep, ...] = ()
    order = list(candidates)
    if rank and budget[0] > 2 * len(candidates):
        alone = tuple(SearchStep((c,), measure((c,))) for c in candidates)
        ranked = sorted(alone, key=lambda s: (s.loss, -position[s.kept_float[0]]))
        order = [s.kept_float[0] for s in ranked]
    path = []
    kept: tuple[str, ...] = ()
    for layer in order:
        kept = (*kept, layer)
        if budget[0] <= 0:
            return SearchResult(candidates, True, len(candidates), start, alone, tuple(path), True)
        loss = alone[position[layer]].loss if alone and len(kept) == 1 else measure(kept)
        path.append(SearchStep(kept, loss))
        if loss <= 0:
            return SearchResult(kept, True, len(candidates), start, alone, tuple(path))
    return SearchResult(kept, False, len(candidates), start, alone, tuple(path))


# -- targets


class SnrTarget:
    """Loss = how many dB the worst output falls short of ``min_snr_db`` (label-free)."""

    def __init__(self, build: BuildInput, min_snr_db: float = MIN_OUTPUT_SNR_DB, samples=None):
        self.outputs = build.model_io.outputs
        self.min_snr_db = min_snr_db
        self.samples = list(samples if samples is not None else build.calibration[:SNR_SAMPLES])
        names = build.model_io.inputs
        rows = [[sample[n] for n in names] for sample in self.samples]
        self.reference = keras_outputs(build.keras_model, rows)

    def snrs(self, run: Callable[[dict], dict]) -> dict[str, float]:
        """Per-output SNR (dB) of a model runner over the samples."""
        from runtime.golden import error_metrics

        names = self.outputs
        actual = [run(s) for s in self.samples]
        return {
            n: error_metrics(
                np.stack([a[n] for a in actual]), np.stack([r[j] for r in self.reference])
            ).snr_db
            for j, n in enumerate(names)
        }

    def __call__(self, run: Callable[[dict], dict]) -> float:
        return self.min_snr_db - min(self.snrs(run).values())

    def describe(self) -> dict[str, Any]:
        return {"target": "snr", "min_output_snr_db": self.min_snr_db, "samples": len(self.samples)}


class MapDropTarget:
    """Loss = the stage's mAP@.5:.95 drop (points, other stage float Keras) minus ``max_drop``."""

    def __init__(self, detector: Any, stage: str, max_drop: float, images: int = 200):
        from models.data import EVAL_SEED, make_batch
        from models.detector import FloatDetector
        from models.evaluate import score

        self.stage = stage
        self.max_drop = max_drop
        self.keras = FloatDetector(detector)
        self.config = detector.config
        self.batch = make_batch(EVAL_SEED, VAL_SPLIT, 0, images)
        self.refs = [self.keras.stages(image) for image in self.batch.images]
        self._score = score
        self.keras_map = self._map([self._head_dets(r, r) for r in self.refs])

    def _map(self, detections: list) -> float:
        return float(self._score(detections, self.batch, self.config.class_names)["map50_95"])

    def _head_dets(self, ref: dict, head: dict) -> Any:
        from runtime.processing import detections_from_head

        return detections_from_head(
            head["class_scores"],
            head["box_deltas"],
            ref["proposals"],
            int(ref["num_valid"]),
            self.config,
        )

    def stage_map(self, run: Callable[[dict], dict]) -> float:
        """mAP@.5:.95 on the validation split with this stage run by ``run``."""
        from runtime.processing import detections_from_head, proposals_from_rpn

        detections = []
        for ref in self.refs:
            if self.stage == "head":
                out = run({n: ref[n] for n in STAGE_IO["head"][0]})
                detections.append(self._head_dets(ref, out))
                continue
            out = run({"image": ref["image"]})
            props = proposals_from_rpn(
                out["rpn_scores"], out["rpn_deltas"], self.config, self.keras.anchors
            )
            scores, deltas = self.keras.head_outputs(
                out["features"], props.proposals, props.box_indexes
            )
            detections.append(
                detections_from_head(scores, deltas, props.proposals, props.num_valid, self.config)
            )
        return self._map(detections)

    def __call__(self, run: Callable[[dict], dict]) -> float:
        return 100.0 * (self.keras_map - self.stage_map(run)) - self.max_drop

    def describe(self) -> dict[str, Any]:
        return {
            "target": "map50_95_drop",
            "max_stage_drop_pts": self.max_drop,
            "val_split": VAL_SPLIT,
            "val_images": len(self.batch.images),
            "keras_map50_95": self.keras_map,
        }


#: Validation targets of the detector last exported, by (stage, target drop); the detector is
#: held so that its id cannot be reused by another detector while cached.
_TARGETS: dict[tuple, MapDropTarget] = {}
_TARGETS_OF: list[Any] = []


def target_for(build: BuildInput) -> SnrTarget | MapDropTarget:
    """The map target when the build has a detector and labelled validation data, else SNR.

    The mAP target of a stage is shared by its TFLite and ONNX searches (same float references).
    """
    if build.detector is not None and build.io is None and build.validation == "procedural":
        if not _TARGETS_OF or _TARGETS_OF[0] is not build.detector:
            _TARGETS.clear()
            _TARGETS_OF[:] = [build.detector]
        key = (build.stage, build.target_drop, build.val_images)
        if key not in _TARGETS:
            _TARGETS[key] = MapDropTarget(
                build.detector, build.stage, build.target_drop / 2, build.val_images
            )
        return _TARGETS[key]
    return SnrTarget(build)


# -- runners


def tflite_runner(model_bytes: bytes) -> Callable[[dict], dict]:
    """A function feeding a dict of named inputs to a TFLite model, returning named outputs."""
    from ai_edge_litert.interpreter import Interpreter

    runner = Interpreter(model_content=model_bytes, num_threads=1).get_signature_runner()
    return lambda feeds: runner(**feeds)


def onnx_runner(model_bytes: bytes) -> Callable[[dict], dict]:
    """A function feeding a dict of named inputs to an ONNX model, returning named outputs."""
    session = onnx_session(model_bytes)
    names = [o.name for o in session.get_outputs()]
    inputs = {i.name for i in session.get_inputs()}

    def run(feeds: dict) -> dict:
        return dict(zip(names, session.run(names, {k: v for k, v in feeds.items() if k in inputs})))

    return run


# -- builders


def tflite_layers(calibrated: bytes, build: BuildInput) -> list[str]:
    """Output tensor names of the layers full int8 quantizes (candidates to keep float)."""
    from export.tf_private import flatbuffer_utils
    from export.tflite_format import coordinate_denylist

    fb = flatbuffer_utils()
    model = tflite_model_graph(calibrated)
    coordinate, _ = coordinate_denylist(calibrated, build.model_io)
    subgraph = model.subgraphs[0]
    names = []
    for op in subgraph.operators:
        kind = fb.opcode_to_name(model, op.opcodeIndex)
        name = subgraph.tensors[op.outputs[0]].name.decode()
        if kind in TFLITE_LAYER_OPS and kind not in FLOAT_SCORE_OPS and name not in coordinate:
            names.append(name)
    return names


def rank_by_layer_error(candidates: Sequence[str], layer_errors: Sequence[dict]) -> list[str]:
    """``candidates`` ordered by QuantizationDebugger's RMSE / output scale, worst first.

    TF's QuantizationDebugger guide picks the layers to denylist by this statistic: a layer's
    own error in units of its quantization step (~0.29 is rounding alone). Candidates without a
    statistic go last, later layers first.
    """
    error = {row["tensor"]: row["rmse_over_scale"] for row in layer_errors}
    position = {c: i for i, c in enumerate(candidates)}

    def key(name: str) -> tuple[float, int]:
        value = error.get(name, float("nan"))
        return (-value if value == value else float("inf"), -position[name])

    return sorted(candidates, key=key)


def tflite_mixed(build: BuildInput, target: SnrTarget | MapDropTarget | None = None) -> Built:
    """TFLite full int8 with the fewest layers kept float that meet the stage's target.

    Layers are ranked by the per-layer error the int8 export already measures
    (:func:`rank_by_layer_error`) and kept float in that order: one measurement per step rather
    than one per candidate, which on a 100-image validation split also keeps the search from
    picking whichever layer happened to score best by chance.
    """
    from export.tflite_format import (
        LAYER_DEBUG_SAMPLES,
        calibrate,
        full_int8,
        layer_errors,
        quantize_calibrated,
    )

    calibrated = calibrate(build)
    target = target_for(build) if target is None else target

    def evaluate(kept: tuple[str, ...]) -> float:
        return target(tflite_runner(quantize_calibrated(calibrated, build, kept)))

    start = evaluate(())
    candidates = tflite_layers(calibrated, build)
    if start > 0:
        debug = quantize_calibrated(calibrated, build, (), debug=True)
        errors = layer_errors(debug, build.calibration[:LAYER_DEBUG_SAMPLES])
        candidates = rank_by_layer_error(candidates, errors)
    measured = {(): start}

    def cached(kept: tuple[str, ...]) -> float:
        return measured.pop(kept) if kept in measured else evaluate(kept)

    result = greedy_search(candidates, cached, rank=False)
    built = full_int8(build, result.kept_float, calibrated=calibrated)
    return Built(built.data, {**built.notes, "mixed": {**target.describe(), **result.notes()}})


def onnx_layers(build: BuildInput) -> list[str]:
    """Names of the nodes of the pre-processed float graph that int8 quantizes, outputs first
    (RoIPooling and the score ops are float already).

    The names are those ``onnx_int8`` passes to ``nodes_to_exclude``.
    """
    import tempfile
    from pathlib import Path

    import onnx

    from export.onnx_format import preprocessed, roi_pooling_nodes, score_nodes

    with tempfile.TemporaryDirectory(prefix="roiedge-mixed-") as tmp:
        graph = onnx.load(preprocessed(build, Path(tmp))).graph
    float_already = {*roi_pooling_nodes(graph, build.stage, build.io), *score_nodes(graph)}
    names = [
        n.name for n in graph.node if n.op_type in ONNX_LAYER_OPS and n.name not in float_already
    ]
    return names[::-1]


def onnx_mixed(build: BuildInput) -> Built:
    """ONNX QDQ int8 with the fewest nodes excluded (float) that meet the stage's target.

    Each measurement re-runs ``onnx_int8`` (conversion and onnxruntime calibration included), so
    the ONNX search skips the one-layer-at-a-time ranking and keeps nodes float from the outputs
    backwards (int8 error accumulates towards the outputs) until the target holds.
    """
    from export.onnx_format import onnx_int8

    target = target_for(build)
    built_by_kept: dict[tuple[str, ...], Built] = {}

    def evaluate(kept: tuple[str, ...]) -> float:
        built_by_kept.clear()  # keep one model in memory: the last one measured
        built_by_kept[kept] = onnx_int8(build, kept)
        return target(onnx_runner(built_by_kept[kept].data))

    result = greedy_search(
        onnx_layers(build), evaluate, rank=False, max_evaluations=ONNX_MAX_EVALUATIONS
    )
    built = built_by_kept.get(result.kept_float) or onnx_int8(build, result.kept_float)
    return Built(built.data, {**built.notes, "mixed": {**target.describe(), **result.notes()}})
