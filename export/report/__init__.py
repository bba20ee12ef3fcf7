"""Parity and speed report: what each exported artifact costs in accuracy and gains in speed and size.

``python -m export.report --artifacts DIR`` runs, on the held-out split of the procedural data:

* the float Keras detector (the reference);
* every artifact alone, the other stage kept in float Keras (its isolated cost): per-output error
  statistics on the same inputs as Keras, mAP, and for the head top-1 class agreement;
* every deployable pipeline (both stages exported, e.g. TFLite int8 + int8): mAP and agreement of
  its final detections with the float model's (mean box IoU, matched fraction);
* every single-file detector (``detector.<precision>.tflite``) as a pipeline of its own: mAP,
  agreement with the float model, and its mAP and latency against the two-stage pipeline it
  chains (within 0.1 pt, float32 within 0.05 pt of float Keras);
* p50 latency of every artifact, pipeline and the Keras stages at the same thread count.

It writes ``report.json``, ``report.md`` and ``report.png`` into the artifacts directory, prints the
table, and exits 1 when any artifact or pipeline breaks its precision's tolerance
(:mod:`runtime.tolerances`). ``--speed-only`` skips accuracy (what ``make bench`` prints).
"""

from __future__ import annotations

from export.report.cli import build_parser, main, write_report
from export.report.config import (
    AGREEMENT_MIN_SCORE,
    ERROR_BINS,
    PIPELINES,
    REPORT_JSON,
    REPORT_MD,
    REPORT_PNG,
    SCHEMA_VERSION,
    Pipeline,
    ReportConfig,
    Targets,
)
from export.report.markdown import format_markdown, speed_table
from export.report.plot import plot_report
from export.report.statistics import detection_agreement, machine_info, output_statistics
from export.report.verdicts import build_report

__all__ = [
    "AGREEMENT_MIN_SCORE",
    "ERROR_BINS",
    "PIPELINES",
    "REPORT_JSON",
    "REPORT_MD",
    "REPORT_PNG",
    "SCHEMA_VERSION",
    "Pipeline",
    "ReportConfig",
    "Targets",
    "build_parser",
    "build_report",
    "detection_agreement",
    "format_markdown",
    "machine_info",
    "main",
    "output_statistics",
    "plot_report",
    "speed_table",
    "write_report",
]
