"""Verdicts: every measured row judged by the tolerance table (runtime.golden), targets, the report."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

from export.report.config import (
    ERROR_BINS,
    SCHEMA_VERSION,
    SINGLE_FLOAT32_VS_KERAS_MAX_DELTA,
    SINGLE_VS_TWO_STAGE_MAX_DELTA,
    ReportConfig,
    Targets,
)
from export.report.measure import Measurer, single_files, stage_artifacts, two_stage_pipeline
from export.report.statistics import machine_info
from runtime.manifest import ArtifactEntry, Manifest, read_manifest


def map_drop_failures(precision: str, keras: dict, row: dict) -> list[str]:
    """The mAP@0.5 and mAP@.5:.95 drop bounds of ``precision`` this measured row breaks.

    With a paired bootstrap interval (``drop_intervals``, models.bootstrap) a bound is broken
    only when the whole 95% interval is past it; a row whose interval is too wide to judge is
    marked (``row["too_small_to_judge"]``), not failed.
    """
    from runtime.golden import map50_95_drop_failures, map50_drop_failures

    if "drop_intervals" in row:
        return interval_failures(precision, row)
    failures = []
    if "map50" in row:
        failures += map50_drop_failures(precision, keras.get("map50", float("nan")), row["map50"])
    if "map50_95" in row:
        keras_map = keras.get("map50_95", float("nan"))
        failures += map50_95_drop_failures(precision, keras_map, row["map50_95"])
    return failures


def interval_failures(precision: str, row: dict) -> list[str]:
    """:func:`map_drop_failures` from the row's bootstrap intervals (see models.bootstrap)."""
    from models.bootstrap import DropInterval, images_needed
    from runtime.tolerances import tolerance_for

    tolerance = tolerance_for(precision)
    bounds = {"map50": tolerance.max_map50_drop, "map50_95": tolerance.max_map50_95_drop}
    labels = {"map50": "mAP@0.5", "map50_95": "mAP@.5:.95"}
    failures, too_small = [], []
    for key, values in row["drop_intervals"].items():
        interval, bound = DropInterval(**values), bounds.get(key)
        verdict = interval.verdict(bound)
        shown = (
            f"{labels[key]} drop {100 * interval.drop:.2f} pts "
            f"[95% {100 * interval.low:.2f}, {100 * interval.high:.2f}]"
        )
        if verdict == "fail":
            failures.append(f"{shown} > {100 * bound:.2f} pts")
        elif verdict == "too small":
            needed = images_needed(interval, bound)
            too_small.append(
                f"{shown}: {interval.images} images cannot judge a {100 * bound:.2f} pt bound "
                f"(~{needed} needed)"
            )
    if too_small:
        row["too_small_to_judge"] = too_small
    return failures


def judge_artifact(entry: ArtifactEntry, row: dict, keras: dict) -> list[str]:
    """Every tolerance of ``entry.precision`` that this artifact's measured row breaks."""
    from runtime.golden import ErrorMetrics, judge_metrics

    metrics = {
        name: ErrorMetrics(
            stats["max_abs"], stats["mean_abs"], stats["snr_db"], stats["psnr_db"], stats["peak"]
        )
        for name, stats in row.get("outputs", {}).items()
    }
    failures = list(judge_metrics(entry.precision, metrics, row.get("top1_agreement")).failures)
    return failures + map_drop_failures(entry.precision, keras, row)


def single_parity_failures(row: dict, two_stage: dict | None, keras: dict) -> list[str]:
    """The single-file bars ``row`` breaks: mAP within SINGLE_VS_TWO_STAGE_MAX_DELTA of its
    two-stage pipeline's row ``two_stage`` (None: not measured, nothing to judge), and for
    float32 within SINGLE_FLOAT32_VS_KERAS_MAX_DELTA of float Keras's."""
    labels = {"map50": "mAP@0.5", "map50_95": "mAP@.5:.95"}
    references = []
    if two_stage is not None:
        references.append(
            (f"two-stage {two_stage['name']}", two_stage, SINGLE_VS_TWO_STAGE_MAX_DELTA)
        )
    if row["precision"] == "float32":
        references.append(("float Keras", keras, SINGLE_FLOAT32_VS_KERAS_MAX_DELTA))
    failures = []
    for what, reference, bound in references:
        for key, label in labels.items():
            if key not in row or key not in reference:
                continue
            delta = row[key] - reference[key]
            if abs(delta) > bound:
                failures.append(
                    f"{label} {100 * delta:+.2f} pts vs {what} (bound {100 * bound:.2f} pts)"
                )
    return failures


def target_rows(manifest: Manifest, latency: dict, targets: Targets) -> list[dict[str, Any]]:
    """Each target with what was measured and whether it is met, or why it was not measured."""
    rows = []
    keras_head = latency.get("keras", {}).get("head")
    for precision, bound in (
        ("int8", targets.head_int8_vs_keras),
        ("float32", targets.head_float32_vs_keras),
    ):
        name = f"head/tflite/{precision}"
        what = f"{name} latency / Keras head latency"
        if keras_head and name in latency.get("artifacts", {}):
            rows.append(_target(what, latency["artifacts"][name] / keras_head, bound))
        else:
            rows.append(_not_measured(what, bound, f"{name} not exported"))
    sizes = {(e.model, e.format, e.precision): e.bytes for e in manifest.artifacts}
    for (model, fmt, precision), size in sorted(sizes.items()):
        if precision not in ("int8", "int8_io"):
            continue
        what = f"{model}/{fmt}/{precision} bytes / float32 bytes"
        if (model, fmt, "float32") in sizes:
            ratio = size / sizes[(model, fmt, "float32")]
            rows.append(_target(what, ratio, targets.int8_bytes_vs_float32))
        else:
            reason = f"{model}/{fmt}/float32 not exported"
            rows.append(_not_measured(what, targets.int8_bytes_vs_float32, reason))
    return rows


def onnx_int8_rows(
    directory: Path, manifest: Manifest, targets: Targets, config: ReportConfig
) -> list[dict[str, Any]]:
    """Per stage with an ONNX int8 artifact: its latency over the ONNX float32 one's, timed
    interleaved, with the floor :mod:`export.onnx_profile` finds (RoIPooling kept float)."""
    from export.onnx_profile import profile_stage

    bound = targets.onnx_int8_vs_float32
    have = {(e.model, e.precision) for e in manifest.artifacts if e.format == "onnx"}
    rows = []
    for stage in sorted({model for model, precision in have if precision == "int8"}):
        what = f"{stage}/onnx/int8 latency / {stage}/onnx/float32 latency (interleaved)"
        if (stage, "float32") not in have:
            rows.append(_not_measured(what, bound, f"{stage}/onnx/float32 not exported"))
            continue
        profile = profile_stage(directory, stage, config.threads, max(config.runs, 5), rounds=5)
        row = _target(what, profile["ratio"], bound)
        if profile["floor"] is not None:
            row["note"] += (
                f"; floor {profile['floor']:.2f}x: the float RoIPooling alone, which int8 keeps "
                "float, over the float32 stage (python -m bench.onnx_profile)"
            )
        row["profile"] = profile
        rows.append(row)
    return rows


def _target(what: str, measured: float, bound: float) -> dict[str, Any]:
    met = measured <= bound
    note = "met" if met else f"MISSED by {measured / bound:.2f}x"
    return {"target": what, "measured": measured, "bound": bound, "met": met, "note": note}


def _not_measured(what: str, bound: float, reason: str) -> dict[str, Any]:
    return {
        "target": what,
        "measured": None,
        "bound": bound,
        "met": None,
        "note": f"not measured: {reason}",
    }


def mixed_rows(directory: Path, manifest: Manifest, latency: dict) -> list[dict[str, Any]]:
    """Per mixed artifact: the layers its search kept float, and their cost against int8."""
    from runtime import strict_json

    rows = []
    for entry in stage_artifacts(manifest):
        if entry.precision != "mixed" or not entry.op_report:
            continue
        report = strict_json.loads((directory / entry.op_report).read_text(encoding="utf-8"))
        notes = report.get("build_notes", {}).get("mixed", {})
        row = {
            "name": entry.name,
            "kept_float_layers": notes.get("kept_float_layers", []),
            "target": {k: v for k, v in notes.items() if k.startswith(("target", "max_", "min_"))},
            "target_met": notes.get("target_met"),
            # what the search reached (target units) and, when missed, why (export.mixed)
            "reached": {k: v for k, v in notes.items() if k.startswith("reached_")},
            "why": notes.get("why"),
            "bytes": entry.bytes,
            "latency_ms": latency["artifacts"].get(entry.name),
        }
        int8 = f"{entry.model}/{entry.format}/int8"
        if int8 in latency["artifacts"]:
            int8_entry = manifest.find(entry.model, entry.format, "int8")
            row["extra_bytes_vs_int8"] = entry.bytes - int8_entry.bytes
            row["extra_ms_vs_int8"] = row["latency_ms"] - latency["artifacts"][int8]
        rows.append(row)
    return rows


def build_report(config: ReportConfig) -> dict[str, Any]:
    """Measure everything and return the report dict (``report.json``'s content)."""
    from export.report.card_measure import CardMeasurer
    from runtime.card import is_card

    card = is_card(read_manifest(Path(config.artifacts)).detector)
    measurer = (CardMeasurer if card else Measurer)(config)
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
    artifacts = []
    for entry in stage_artifacts(manifest):
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
            row["failures"] = judge_artifact(entry, row, keras)
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
            row["failures"] = map_drop_failures(pipeline.precision, keras, row)
            row["passed"] = not row["failures"]
        pipelines.append(row)
    measured = {row["name"]: row for row in pipelines}
    for entry in single_files(manifest):
        two_stage = two_stage_pipeline(entry.precision)
        row = {
            "name": entry.name,
            "format": entry.format,
            "precision": entry.precision,
            "single_file": True,
            "two_stage": two_stage.name if two_stage else None,
            "bytes": entry.bytes,
            "latency_ms": latency["singles"][entry.name],
        }
        reference = measured.get(row["two_stage"])
        if reference is not None:
            row["latency_vs_two_stage"] = row["latency_ms"] / reference["latency_ms"]
        if accuracy:
            row.update(accuracy["singles"][entry.name])
            if reference is not None:
                row["vs_two_stage"] = {k: row[k] - reference[k] for k in ("map50", "map50_95")}
            row["failures"] = map_drop_failures(entry.precision, keras, row)
            row["failures"] += single_parity_failures(row, reference, keras)
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
        "not_measured": measurer.not_measured(),
        "targets": target_rows(manifest, latency, Targets())
        + onnx_int8_rows(Path(config.artifacts), manifest, Targets(), config),
        "mixed": mixed_rows(Path(config.artifacts), manifest, latency),
        "error_bins": ERROR_BINS.tolist(),
        "passed": all(r.get("passed", True) for r in artifacts + pipelines),
    }
