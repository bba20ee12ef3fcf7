"""Parity and speed report: what each exported artifact costs in accuracy and gains in speed and size.

``python -m export.report --artifacts DIR`` runs, on the held-out split of the procedural data:

* the float Keras detector (the reference);
* every artifact alone, the other stage kept in float Keras (its isolated cost): per-output error
  statistics on the same inputs as Keras, mAP, and for the head top-1 class agreement;
* every deployable pipeline (both stages exported, e.g. TFLite int8 + int8): mAP and agreement of
  its final detections with the float model's (mean box IoU, matched fraction);
* p50 latency of every artifact, pipeline and the Keras stages at the same thread count.

It writes ``report.json``, ``report.md`` and ``report.png`` into the artifacts directory, prints the
table, and exits 1 when any artifact or pipeline breaks its precision's tolerance
(:mod:`runtime.tolerances`). ``--speed-only`` skips accuracy (what ``make bench`` prints).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import math
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from runtime.errors import RoiedgeError
from runtime.manifest import ArtifactEntry, Manifest, atomic_write_bytes, read_manifest

SCHEMA_VERSION = 1
REPORT_JSON = "report.json"
REPORT_MD = "report.md"
REPORT_PNG = "report.png"

#: Final detections at or above this score are matched against the float model's.
AGREEMENT_MIN_SCORE = 0.5
#: Each stage's outputs in Keras order (the manifest's order), by their Keras names.
STAGE_OUTPUTS = {
    "backbone_rpn": ("features", "rpn_scores", "rpn_deltas"),
    "head": ("class_scores", "box_deltas"),
}
#: Log-spaced bins of the abs-error histograms (errors below the first bin are counted in it).
ERROR_BINS = np.logspace(-8, 1, 46)


@dataclasses.dataclass(frozen=True)
class Pipeline:
    """A deployable combination of one backbone_rpn and one head artifact."""

    name: str
    format: str
    precision: str
    head_precision: str


#: Every pipeline the report measures (data, not flags). ``int8_io`` exists for the backbone only.
PIPELINES: tuple[Pipeline, ...] = (
    Pipeline("tflite/float32", "tflite", "float32", "float32"),
    Pipeline("tflite/float16", "tflite", "float16", "float16"),
    Pipeline("tflite/dynamic_int8", "tflite", "dynamic_int8", "dynamic_int8"),
    Pipeline("tflite/int8", "tflite", "int8", "int8"),
    Pipeline("tflite/int8_io+int8", "tflite", "int8_io", "int8"),
    Pipeline("onnx/float32", "onnx", "float32", "float32"),
    Pipeline("onnx/int8", "onnx", "int8", "int8"),
)


@dataclasses.dataclass(frozen=True)
class Targets:
    """The project's goals (issue 6), reported met or missed with the margin; not tolerances."""

    head_int8_vs_keras: float = 0.5  # int8 TFLite head latency / float Keras head latency
    head_float32_vs_keras: float = 1.0
    int8_bytes_vs_float32: float = 0.3


@dataclasses.dataclass(frozen=True)
class ReportConfig:
    """One report run; the CLI flags map 1:1 onto these fields."""

    artifacts: Path
    images: int = 500
    stage_images: int = 64
    runs: int = 50
    warmup: int = 5
    threads: int = 2
    speed_only: bool = False
    progress: bool = True
    schema_version: int = SCHEMA_VERSION

    def __post_init__(self) -> None:
        for field in ("images", "stage_images", "runs", "threads"):
            value = getattr(self, field)
            if not isinstance(value, int) or value < 1:
                flag = field.replace("_", "-")
                raise RoiedgeError(f"--{flag} is {value!r}; expected a positive int")
        if self.warmup < 0:
            raise RoiedgeError(f"--warmup is {self.warmup}; expected an int >= 0")


# ----------------------------------------------------------------------------- statistics


def output_statistics(errors: np.ndarray, actual: np.ndarray, reference: np.ndarray) -> dict:
    """Error statistics of one output pooled over samples: abs errors, SNR dB, cosine similarity.

    ``actual``/``reference`` are the flattened outputs (float64), ``errors`` = actual - reference.
    """
    from runtime.check import error_metrics

    metrics = error_metrics(actual, reference)
    norms = float(np.linalg.norm(actual) * np.linalg.norm(reference))
    cosine = float(np.dot(actual, reference) / norms) if norms > 0 else float("nan")
    return {
        "max_abs": metrics.max_abs,
        "mean_abs": metrics.mean_abs,
        "p99_abs": float(np.percentile(np.abs(errors), 99)) if errors.size else 0.0,
        "snr_db": metrics.snr_db,
        "psnr_db": metrics.psnr_db,
        "cosine": cosine,
        "peak": metrics.peak,
    }


def detection_agreement(candidates: list, references: list, min_score: float) -> dict[str, float]:
    """How well final detections match the float model's, over images.

    Each item is a ``runtime.processing.Detections`` (boxes [n,4] y1x1y2x2 pixels, scores, class_ids).
    Every reference detection with score >= ``min_score`` is matched to the same-class candidate
    (any score) of highest IoU. Returns ``mean_iou`` (0 for an unmatched reference) and
    ``matched`` (fraction with IoU >= 0.5).
    """
    from runtime.processing import box_iou

    ious = []
    for candidate, reference in zip(candidates, references):
        for box, score, cls in zip(reference.boxes, reference.scores, reference.class_ids):
            if score < min_score:
                continue
            same = candidate.boxes[candidate.class_ids == cls]
            ious.append(float(box_iou(box[None], same)[0].max()) if len(same) else 0.0)
    if not ious:
        return {"mean_iou": float("nan"), "matched": float("nan"), "references": 0}
    values = np.asarray(ious)
    return {
        "mean_iou": float(values.mean()),
        "matched": float(np.mean(values >= 0.5)),
        "references": len(ious),
    }


class _OutputAccumulator:
    """Collects one output's errors over samples, for statistics and a histogram."""

    def __init__(self) -> None:
        self.actual: list[np.ndarray] = []
        self.reference: list[np.ndarray] = []

    def add(self, actual: np.ndarray, reference: np.ndarray) -> None:
        self.actual.append(np.asarray(actual, np.float64).ravel())
        self.reference.append(np.asarray(reference, np.float64).ravel())

    def result(self) -> tuple[dict, list[int]]:
        actual = np.concatenate(self.actual)
        reference = np.concatenate(self.reference)
        errors = actual - reference
        counts, _ = np.histogram(np.clip(np.abs(errors), ERROR_BINS[0], ERROR_BINS[-1]), ERROR_BINS)
        return output_statistics(errors, actual, reference), counts.tolist()


# ----------------------------------------------------------------------------- machine


def machine_info() -> dict[str, Any]:
    """CPU model, cores, platform and library versions this report was measured with."""
    from importlib import metadata

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions = {}
    for package in (
        "tensorflow-cpu",
        "keras",
        "ai-edge-litert",
        "onnxruntime",
        "onnx",
        "tf2onnx",
        "numpy",
    ):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "versions": versions,
    }


# ----------------------------------------------------------------------------- measuring


def _progress(iterable: Any, enabled: bool, description: str, total: int | None = None) -> Any:
    from tqdm import tqdm

    return tqdm(iterable, desc=description, total=total, disable=not enabled, file=sys.stderr)


def _p50_ms(call: Any, runs: int, warmup: int) -> float:
    from runtime.bench import latencies

    return latencies(call, runs, warmup)["p50_ms"]


class _Measurer:
    """Holds the float Keras detector and the loaded artifacts of one artifacts directory."""

    def __init__(self, config: ReportConfig) -> None:
        self.config = config
        self.directory = Path(config.artifacts)
        self.manifest: Manifest = read_manifest(self.directory)
        from models.detector import FloatDetector, load_detector
        from models.tf_threads import set_tensorflow_threads

        self.keras_threads = set_tensorflow_threads(config.threads)
        from runtime.backends import load_stage

        self.keras = FloatDetector(load_detector(self._source_model()))
        self.detector_config = self.keras.config
        self.stages = {
            entry.name: load_stage(self.directory, entry, None, num_threads=config.threads)
            for entry in self.manifest.artifacts
        }

    def _source_model(self) -> Path:
        """The .keras file the artifacts came from (manifest ``source_models``: ``PATH#stage``)."""
        source = self.manifest.source_models.get("backbone_rpn", "")
        path = Path(source.split("#", 1)[0])
        repo_root = Path(__file__).resolve().parent.parent
        for candidate in (path, repo_root / path):
            if source and candidate.is_file():
                return candidate
        raise RoiedgeError(
            f"{self.directory / 'manifest.json'}: source model {source!r} is not a readable "
            "file; the report needs the float Keras model the artifacts came from"
        )

    def pipelines(self) -> list[Pipeline]:
        """The PIPELINES whose two artifacts are both in the manifest."""
        have = {(e.model, e.format, e.precision) for e in self.manifest.artifacts}
        return [
            p
            for p in PIPELINES
            if ("backbone_rpn", p.format, p.precision) in have
            and ("head", p.format, p.head_precision) in have
        ]

    def entry(self, model: str, format: str, precision: str) -> ArtifactEntry:
        return self.manifest.find(model, format, precision)

    # -- speed

    def latencies(self) -> dict[str, Any]:
        """p50 ms of every artifact, every pipeline and the float Keras stages, on golden inputs."""
        from runtime.check import _samples, load_golden

        cfg = self.config
        goldens = {m: load_golden(self.directory, self.manifest, m) for m in self.manifest.golden}
        inputs = {
            entry.name: _samples(goldens[entry.model], entry, entry.path)[0]
            for entry in self.manifest.artifacts
        }
        result: dict[str, Any] = {"artifacts": {}, "pipelines": {}, "keras": {}}
        for entry in _progress(self.manifest.artifacts, cfg.progress, "latency"):
            stage, feeds = self.stages[entry.name], inputs[entry.name]
            result["artifacts"][entry.name] = _p50_ms(
                functools.partial(stage.run, *feeds), cfg.runs, cfg.warmup
            )
        image = np.clip(
            goldens["backbone_rpn"]["input_0"].reshape(-1, *self.detector_config.image_size, 3)[0],
            0,
            255,
        )
        image = image.astype(np.uint8)
        head_feeds = _samples(goldens["head"], self.entry("head", "tflite", "float32"), "head")[0]
        result["keras"]["backbone_rpn"] = _p50_ms(
            lambda: self.keras.backbone_outputs(image[None].astype(np.float32)),
            cfg.runs,
            cfg.warmup,
        )
        result["keras"]["head"] = _p50_ms(
            lambda: self.keras.head_outputs(*head_feeds), cfg.runs, cfg.warmup
        )
        result["keras"]["pipeline"] = _p50_ms(lambda: self.keras(image), cfg.runs, cfg.warmup)
        for pipeline in self.pipelines():
            detector = self._pipeline_detector(pipeline)
            result["pipelines"][pipeline.name] = _p50_ms(
                functools.partial(detector.detect, image), cfg.runs, cfg.warmup
            )
        return result

    def _pipeline_detector(self, pipeline: Pipeline) -> Any:
        from runtime.detector import Detector, DetectorOptions

        options = DetectorOptions(
            precision=pipeline.precision,
            format=pipeline.format,
            head_precision=pipeline.head_precision,
            num_threads=self.config.threads,
        )
        return Detector(self.directory, options)

    # -- accuracy

    def accuracy(self) -> dict[str, Any]:
        """mAP, per-output error statistics and detection agreement of everything measured."""
        from models.data import eval_split
        from models.evaluate import score
        from runtime.processing import detections_from_head, proposals_from_rpn

        cfg, det_cfg = self.config, self.detector_config
        batch = eval_split(cfg.images)
        anchors = self.keras.anchors
        names = det_cfg.class_names
        pipelines = self.pipelines()
        detectors = {p.name: self._pipeline_detector(p) for p in pipelines}
        keras_dets: list = []
        artifact_dets: dict[str, list] = {e.name: [] for e in self.manifest.artifacts}
        pipeline_dets: dict[str, list] = {p.name: [] for p in pipelines}
        errors = {
            e.name: {name: _OutputAccumulator() for name in STAGE_OUTPUTS[e.model]}
            for e in self.manifest.artifacts
        }
        top1_hits = {e.name: [0, 0] for e in self.manifest.artifacts if e.model == "head"}

        for index, image in enumerate(_progress(batch.images, cfg.progress, "held-out images")):
            ref = self.keras.stages(image)
            keras_dets.append(
                detections_from_head(
                    ref["class_scores"],
                    ref["box_deltas"],
                    ref["proposals"],
                    int(ref["num_valid"]),
                    det_cfg,
                )
            )
            with_errors = index < cfg.stage_images
            for entry in self.manifest.artifacts:
                stage = self.stages[entry.name]
                if entry.model == "backbone_rpn":
                    # Isolated cost of the backbone: its outputs through the float Keras head.
                    outputs = stage.run(ref["image"])
                    references = [ref[name] for name in STAGE_OUTPUTS[entry.model]]
                    props = proposals_from_rpn(outputs[1], outputs[2], det_cfg, anchors)
                    proposals, num_valid = props.proposals, props.num_valid
                    scores, deltas = self.keras.head_outputs(
                        outputs[0], proposals, props.box_indexes
                    )
                else:
                    # Isolated cost of the head: the float Keras features and proposals in.
                    proposals, num_valid = ref["proposals"], int(ref["num_valid"])
                    outputs = stage.run(ref["features"], proposals, ref["box_indexes"])
                    references = [ref[name] for name in STAGE_OUTPUTS[entry.model]]
                    scores, deltas = outputs
                    hits = np.argmax(scores[:num_valid], -1) == np.argmax(
                        ref["class_scores"][:num_valid], -1
                    )
                    top1_hits[entry.name][0] += int(hits.sum())
                    top1_hits[entry.name][1] += num_valid
                artifact_dets[entry.name].append(
                    detections_from_head(scores, deltas, proposals, num_valid, det_cfg)
                )
                if with_errors:
                    for name, actual, reference in zip(
                        STAGE_OUTPUTS[entry.model], outputs, references
                    ):
                        errors[entry.name][name].add(actual, reference)
            for pipeline in pipelines:
                pipeline_dets[pipeline.name].append(
                    detectors[pipeline.name].detect_tensor(ref["image"])
                )

        keras_score = score(keras_dets, batch, names)
        result: dict[str, Any] = {
            "keras": {
                "map50": keras_score["map50"],
                "map50_95": keras_score["map50_95"],
                "images": len(batch.images),
            },
            "artifacts": {},
            "pipelines": {},
        }
        for entry in self.manifest.artifacts:
            summary = score(artifact_dets[entry.name], batch, names)
            outputs = {}
            histograms = {}
            for spec_name, accumulator in errors[entry.name].items():
                outputs[spec_name], histograms[spec_name] = accumulator.result()
            row = {
                "map50": summary["map50"],
                "map50_95": summary["map50_95"],
                "outputs": outputs,
                "histograms": histograms,
                "agreement": detection_agreement(
                    artifact_dets[entry.name], keras_dets, AGREEMENT_MIN_SCORE
                ),
            }
            if entry.name in top1_hits:
                hits, total = top1_hits[entry.name]
                row["top1_agreement"] = hits / total if total else float("nan")
            result["artifacts"][entry.name] = row
        for pipeline in pipelines:
            summary = score(pipeline_dets[pipeline.name], batch, names)
            result["pipelines"][pipeline.name] = {
                "map50": summary["map50"],
                "map50_95": summary["map50_95"],
                "agreement": detection_agreement(
                    pipeline_dets[pipeline.name], keras_dets, AGREEMENT_MIN_SCORE
                ),
            }
        return result


# ----------------------------------------------------------------------------- the report


def _drop_failure(precision: str, keras_map50: float, map50: float) -> list[str]:
    from runtime.tolerances import tolerance_for

    bound = tolerance_for(precision).max_map50_drop
    drop = keras_map50 - map50
    if bound is not None and not drop <= bound + 1e-12:
        return [f"mAP@0.5 drop {100 * drop:.2f} pts > {100 * bound:.2f} pts"]
    return []


def _judge_artifact(entry: ArtifactEntry, row: dict, keras_map50: float) -> list[str]:
    """Every tolerance of ``entry.precision`` that this artifact's measured row breaks."""
    from runtime.check import ErrorMetrics, judge
    from runtime.tolerances import tolerance_for

    failures = []
    for name, stats in row.get("outputs", {}).items():
        metrics = ErrorMetrics(
            stats["max_abs"], stats["mean_abs"], stats["snr_db"], stats["psnr_db"], stats["peak"]
        )
        failures += judge(entry.precision, name, metrics)
    floor = tolerance_for(entry.precision).min_top1_agreement
    top1 = row.get("top1_agreement")
    if top1 is not None and floor is not None and not top1 >= floor:
        failures.append(f"top-1 class agreement {top1:.3f} < {floor:.3f}")
    if "map50" in row:
        failures += _drop_failure(entry.precision, keras_map50, row["map50"])
    return failures


def _target_rows(manifest: Manifest, latency: dict, targets: Targets) -> list[dict[str, Any]]:
    """Each target with what was measured and whether it is met (and by how much it is missed)."""
    rows = []
    keras_head = latency.get("keras", {}).get("head")
    for precision, bound in (
        ("int8", targets.head_int8_vs_keras),
        ("float32", targets.head_float32_vs_keras),
    ):
        name = f"head/tflite/{precision}"
        if keras_head and name in latency.get("artifacts", {}):
            ratio = latency["artifacts"][name] / keras_head
            rows.append(_target(f"{name} latency / Keras head latency", ratio, bound))
    sizes = {(e.model, e.format, e.precision): e.bytes for e in manifest.artifacts}
    for (model, fmt, precision), size in sorted(sizes.items()):
        if precision in ("int8", "int8_io") and (model, fmt, "float32") in sizes:
            ratio = size / sizes[(model, fmt, "float32")]
            name = f"{model}/{fmt}/{precision} bytes / float32 bytes"
            rows.append(_target(name, ratio, targets.int8_bytes_vs_float32))
    return rows


def _target(what: str, measured: float, bound: float) -> dict[str, Any]:
    met = measured <= bound
    note = "met" if met else f"MISSED by {measured / bound:.2f}x"
    return {"target": what, "measured": measured, "bound": bound, "met": met, "note": note}


def build_report(config: ReportConfig) -> dict[str, Any]:
    """Measure everything and return the report dict (``report.json``'s content)."""
    measurer = _Measurer(config)
    manifest = measurer.manifest
    latency = measurer.latencies()
    accuracy = None if config.speed_only else measurer.accuracy()
    keras = {
        "latency_ms": latency["keras"]["pipeline"],
        "backbone_rpn_latency_ms": latency["keras"]["backbone_rpn"],
        "head_latency_ms": latency["keras"]["head"],
    }
    if accuracy:
        keras.update(accuracy["keras"])
    keras_map50 = keras.get("map50", float("nan"))
    artifacts = []
    for entry in manifest.artifacts:
        row: dict[str, Any] = {
            "name": entry.name,
            "model": entry.model,
            "format": entry.format,
            "precision": entry.precision,
            "bytes": entry.bytes,
            "latency_ms": latency["artifacts"][entry.name],
        }
        if accuracy:
            row.update(accuracy["artifacts"][entry.name])
            row["failures"] = _judge_artifact(entry, row, keras_map50)
            row["passed"] = not row["failures"]
        artifacts.append(row)
    pipelines = []
    for pipeline in measurer.pipelines():
        backbone = manifest.find("backbone_rpn", pipeline.format, pipeline.precision)
        head = manifest.find("head", pipeline.format, pipeline.head_precision)
        row = {
            "name": pipeline.name,
            "format": pipeline.format,
            "precision": pipeline.precision,
            "head_precision": pipeline.head_precision,
            "bytes": backbone.bytes + head.bytes,
            "latency_ms": latency["pipelines"][pipeline.name],
        }
        if accuracy:
            row.update(accuracy["pipelines"][pipeline.name])
            row["failures"] = _drop_failure(pipeline.precision, keras_map50, row["map50"])
            row["passed"] = not row["failures"]
        pipelines.append(row)
    return {
        "schema_version": SCHEMA_VERSION,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "config": {
            k: str(v) if isinstance(v, Path) else v for k, v in dataclasses.asdict(config).items()
        },
        "machine": {**machine_info(), "keras_threads": measurer.keras_threads},
        "keras": keras,
        "artifacts": artifacts,
        "pipelines": pipelines,
        "targets": _target_rows(manifest, latency, Targets()),
        "error_bins": ERROR_BINS.tolist(),
        "passed": all(r.get("passed", True) for r in artifacts + pipelines),
    }


def _num(value: Any, fmt: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float) and math.isinf(value):
        return "inf"
    return format(value, fmt)


def format_markdown(report: dict[str, Any]) -> str:
    """The report as Markdown tables (what ``report.md`` holds and the CLI prints)."""
    keras = report["keras"]
    machine = report["machine"]
    versions = ", ".join(f"{k} {v}" for k, v in machine["versions"].items() if v)
    lines = [
        "# roiedge parity and speed report",
        "",
        f"Measured {report['created']} on {machine['cpu']} ({machine['cores']} cores), "
        f"{report['config']['threads']} threads (TensorFlow: {machine['keras_threads']}); "
        f"{versions}.",
        "",
        f"Float Keras: mAP@0.5 {_num(keras.get('map50'), '.4f')}, mAP@0.5:0.95 "
        f"{_num(keras.get('map50_95'), '.4f')} on {keras.get('images', '-')} held-out images; "
        f"p50 latency pipeline {keras['latency_ms']:.2f} ms, backbone_rpn "
        f"{keras['backbone_rpn_latency_ms']:.2f} ms, head {keras['head_latency_ms']:.2f} ms.",
        "",
        "## Pipelines (both stages exported)",
        "",
        "| pipeline | mAP@0.5 | Δ pts | mAP@.5:.95 | box IoU vs float | matched | bytes | p50 ms | verdict |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    base = keras.get("map50")
    for row in report["pipelines"]:
        lines.append(
            f"| {row['name']} | {_num(row.get('map50'), '.4f')} | {_delta(base, row)} | "
            f"{_num(row.get('map50_95'), '.4f')} | "
            f"{_num(row.get('agreement', {}).get('mean_iou'), '.3f')} | "
            f"{_num(row.get('agreement', {}).get('matched'), '.3f')} | {row['bytes']:,} | "
            f"{row['latency_ms']:.2f} | {_verdict(row)} |"
        )
    lines += [
        "",
        "## Artifacts (the other stage in float Keras)",
        "",
        "| artifact | mAP@0.5 | Δ pts | top-1 | box IoU | bytes | p50 ms | verdict |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for row in report["artifacts"]:
        lines.append(
            f"| {row['name']} | {_num(row.get('map50'), '.4f')} | {_delta(base, row)} | "
            f"{_num(row.get('top1_agreement'), '.3f')} | "
            f"{_num(row.get('agreement', {}).get('mean_iou'), '.3f')} | {row['bytes']:,} | "
            f"{row['latency_ms']:.2f} | {_verdict(row)} |"
        )
    if any("outputs" in row for row in report["artifacts"]):
        lines += [
            "",
            "## Per-output error against float Keras (same inputs)",
            "",
            "| artifact | output | max abs | mean abs | p99 abs | SNR dB | cosine |",
            "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
        ]
        for row in report["artifacts"]:
            for name, stats in row.get("outputs", {}).items():
                lines.append(
                    f"| {row['name']} | {name} | {stats['max_abs']:.2e} | {stats['mean_abs']:.2e} | "
                    f"{stats['p99_abs']:.2e} | {_num(stats['snr_db'], '.1f')} | "
                    f"{_num(stats['cosine'], '.6f')} |"
                )
    lines += [
        "",
        "## Targets",
        "",
        "| target | measured | bound | |",
        "| --- | ---: | ---: | --- |",
    ]
    for row in report["targets"]:
        lines.append(
            f"| {row['target']} | {row['measured']:.3f} | {row['bound']:.2f} | {row['note']} |"
        )
    failures = [
        f"- {row['name']}: " + "; ".join(row["failures"])
        for row in report["artifacts"] + report["pipelines"]
        if row.get("failures")
    ]
    lines += ["", "## Verdict", ""]
    lines += failures or ["Every artifact and pipeline is within its precision's tolerance."]
    return "\n".join(lines) + "\n"


def _delta(base: float | None, row: dict) -> str:
    if base is None or row.get("map50") is None:
        return "-"
    return f"{100 * (row['map50'] - base):+.2f}"


def _verdict(row: dict) -> str:
    if "passed" not in row:
        return "-"
    return "pass" if row["passed"] else "**FAIL**"


def plot_report(report: dict[str, Any], path: Path) -> None:
    """A PNG: mAP@0.5 vs p50 latency per pipeline, and an abs-error histogram per output."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    present = {name for row in report["artifacts"] for name in row.get("histograms", {})}
    outputs = [name for names in STAGE_OUTPUTS.values() for name in names if name in present]
    panels = 1 + len(outputs)
    cols = 3
    rows = math.ceil(panels / cols)
    figure, axes = plt.subplots(rows, cols, figsize=(5.2 * cols, 4.0 * rows), squeeze=False)
    axis = axes[0][0]
    keras = report["keras"]
    if "map50" in keras:
        axis.scatter([keras["latency_ms"]], [keras["map50"]], marker="*", s=160, color="black")
        axis.annotate("keras float", (keras["latency_ms"], keras["map50"]), fontsize=8)
    for row in report["pipelines"]:
        if "map50" in row:
            axis.scatter(
                [row["latency_ms"]],
                [row["map50"]],
                color="tab:green" if row["passed"] else "tab:red",
            )
            axis.annotate(row["name"], (row["latency_ms"], row["map50"]), fontsize=7)
    axis.set_xscale("log")
    axis.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    axis.set_xlabel("pipeline p50 latency, ms (log)")
    axis.set_ylabel("mAP@0.5 (held-out)")
    axis.set_title("accuracy vs latency")
    axis.grid(alpha=0.3)
    bins = np.asarray(report["error_bins"])
    centers = np.sqrt(bins[:-1] * bins[1:])
    for k, output in enumerate(outputs, start=1):
        axis = axes[k // cols][k % cols]
        for row in report["artifacts"]:
            counts = row.get("histograms", {}).get(output)
            if counts:
                axis.plot(centers, counts, label=f"{row['format']}/{row['precision']}", lw=1.2)
        axis.set_xscale("log")
        axis.set_yscale("symlog", linthresh=1)
        axis.set_ylim(bottom=0)
        axis.set_xlabel("|error| vs float Keras")
        axis.set_ylabel("count")
        axis.set_title(f"{output}: abs error")
        axis.legend(fontsize=6)
        axis.grid(alpha=0.3)
    for k in range(panels, rows * cols):
        axes[k // cols][k % cols].axis("off")
    figure.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    figure.savefig(tmp, dpi=110)
    plt.close(figure)
    os.replace(tmp, path)


def speed_table(report: dict[str, Any]) -> str:
    """Latency and size per artifact and pipeline, with the ratio to the float Keras stage."""
    keras = report["keras"]
    reference = {
        "backbone_rpn": keras["backbone_rpn_latency_ms"],
        "head": keras["head_latency_ms"],
        "pipeline": keras["latency_ms"],
    }
    lines = [f"{'what':<34} {'bytes':>11} {'p50 ms':>9} {'x Keras':>8}"]
    lines.append(f"{'keras float pipeline':<34} {'':>11} {keras['latency_ms']:>9.2f} {1.0:>8.2f}")
    for row in report["artifacts"]:
        ratio = row["latency_ms"] / reference[row["model"]]
        lines.append(
            f"{row['name']:<34} {row['bytes']:>11,} {row['latency_ms']:>9.2f} {ratio:>8.2f}"
        )
    for row in report["pipelines"]:
        ratio = row["latency_ms"] / reference["pipeline"]
        name = f"pipeline {row['name']}"
        lines.append(f"{name:<34} {row['bytes']:>11,} {row['latency_ms']:>9.2f} {ratio:>8.2f}")
    return "\n".join(lines)


def write_report(report: dict[str, Any], directory: Path) -> list[Path]:
    """Atomically write report.json, report.md and report.png into ``directory``."""
    json_path = directory / REPORT_JSON
    md_path = directory / REPORT_MD
    png_path = directory / REPORT_PNG
    atomic_write_bytes(
        json_path, (json.dumps(report, indent=2, default=_json_default) + "\n").encode()
    )
    atomic_write_bytes(md_path, format_markdown(report).encode())
    plot_report(report, png_path)
    return [json_path, md_path, png_path]


def _json_default(value: Any) -> Any:
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    raise TypeError(f"not JSON serializable: {type(value).__name__}")


def build_parser() -> argparse.ArgumentParser:
    defaults = ReportConfig(artifacts=Path("artifacts"))
    parser = argparse.ArgumentParser(
        prog="python -m export.report",
        description="Accuracy, speed and size of every exported artifact against the float Keras model.",
    )
    parser.add_argument(
        "--artifacts", type=Path, required=True, help="artifacts directory (make export)"
    )
    parser.add_argument(
        "--images", type=int, default=defaults.images, help="held-out images for mAP"
    )
    parser.add_argument(
        "--stage-images",
        type=int,
        default=defaults.stage_images,
        help="images for per-output error statistics",
    )
    parser.add_argument("--runs", type=int, default=defaults.runs, help="timed runs per latency")
    parser.add_argument("--warmup", type=int, default=defaults.warmup, help="untimed runs first")
    parser.add_argument(
        "--threads", type=int, default=defaults.threads, help="threads for every backend"
    )
    parser.add_argument(
        "--speed-only", action="store_true", help="latency and size only (make bench)"
    )
    parser.add_argument(
        "--no-progress", dest="progress", action="store_false", help="no progress bars"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """CLI entry: exit 0 all within tolerance, 1 a tolerance broken, 2 bad usage or input."""
    args = build_parser().parse_args(argv)
    try:
        config = ReportConfig(**vars(args))
        report = build_report(config)
    except RoiedgeError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if config.speed_only:
        print(speed_table(report))
        return 0
    paths = write_report(report, config.artifacts)
    print(format_markdown(report))
    print("wrote " + ", ".join(str(p) for p in paths))
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    from runtime.interrupts import run_main

    sys.exit(run_main(main))
