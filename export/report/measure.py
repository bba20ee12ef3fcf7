"""Measuring: the float Keras detector and whatever artifacts a manifest has, on the held-out split.

Works on any subset of the artifact table: an artifact is measured against the float Keras model
(the other stage kept in Keras), so it needs nothing else exported; a pipeline is measured only
when both of its artifacts are present, and is listed as not measured with the reason otherwise.
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path
from typing import Any

import numpy as np

from export.report.config import AGREEMENT_MIN_SCORE, PIPELINES, Pipeline, ReportConfig
from export.report.statistics import OutputAccumulator, detection_agreement
from export.stages import STAGE_IO
from runtime.errors import RoiedgeError
from runtime.manifest import ArtifactEntry, Manifest, read_manifest


def progress(iterable: Any, enabled: bool, description: str, total: int | None = None) -> Any:
    """``iterable`` with a tqdm bar on stderr (none when ``enabled`` is false)."""
    from tqdm import tqdm

    return tqdm(iterable, desc=description, total=total, disable=not enabled, file=sys.stderr)


def p50_ms(call: Any, runs: int, warmup: int) -> float:
    from runtime.bench import latencies

    return latencies(call, runs, warmup)["p50_ms"]


def stage_artifacts(manifest: Manifest) -> list[ArtifactEntry]:
    """The manifest's stage artifacts (backbone_rpn, head), measured per output here.

    The single-file detectors (``detector/*``) have no per-stage outputs to compare: they are
    measured as pipelines of their own (:func:`single_files`).
    """
    return [entry for entry in manifest.artifacts if entry.model in STAGE_IO]


def single_files(manifest: Manifest) -> list[ArtifactEntry]:
    """The manifest's single-file detectors (``detector/tflite/*``) the CPU can run: an Edge TPU
    compilation (``*_edgetpu``) needs the Coral device and is left out."""
    from runtime.single import SINGLE_MODEL

    return [
        e
        for e in manifest.artifacts
        if e.model == SINGLE_MODEL and e.format == "tflite" and not e.precision.endswith("_edgetpu")
    ]


def two_stage_pipeline(precision: str) -> Pipeline | None:
    """The two-stage pipeline a single file of ``precision`` chains (its stage files)."""
    from export.single_file import stage_precisions

    stages = stage_precisions(precision)
    return next(
        (
            p
            for p in PIPELINES
            if (p.format, p.precision, p.head_precision)
            == ("tflite", stages["backbone_rpn"], stages["head"])
        ),
        None,
    )


class Measurer:
    """Holds the float Keras detector and the loaded artifacts of one artifacts directory."""

    def __init__(self, config: ReportConfig) -> None:
        from models.tf_threads import set_tensorflow_threads
        from runtime.backends import load_stage

        self.config = config
        self.directory = Path(config.artifacts)
        self.manifest: Manifest = read_manifest(self.directory)
        self.keras_threads = set_tensorflow_threads(config.threads)
        self.keras, self.detector_config = self._reference()
        self.stages = {
            entry.name: load_stage(self.directory, entry, None, num_threads=config.threads)
            for entry in stage_artifacts(self.manifest)
        }

    def _reference(self) -> tuple[Any, Any]:
        """(the float Keras reference, the detector config) of the artifacts' source model."""
        from models.detector import FloatDetector, load_detector

        keras = FloatDetector(load_detector(self._source_model()))
        return keras, keras.config

    def output_names(self, model: str) -> tuple[str, ...]:
        """The output names of stage ``model``'s artifacts, in their order."""
        return STAGE_IO[model][1]

    def _source_model(self) -> Path:
        """The .keras file the artifacts came from (manifest ``source_models``: ``PATH#stage``)."""
        sources = [v for k, v in self.manifest.source_models.items() if k in STAGE_IO]
        source = sources[0] if sources else ""
        path = Path(source.split("#", 1)[0])
        repo_root = Path(__file__).resolve().parents[2]
        for candidate in (path, repo_root / path):
            if source and candidate.is_file():
                return candidate
        raise RoiedgeError(
            f"{self.directory / 'manifest.json'}: source model {source!r} is not a readable "
            "file; the report needs the float Keras model the artifacts came from"
        )

    def _has(self, model: str, format: str, precision: str) -> bool:
        return any(
            (e.model, e.format, e.precision) == (model, format, precision)
            for e in self.manifest.artifacts
        )

    def pipelines(self) -> list[Pipeline]:
        """The PIPELINES whose two artifacts are both in the manifest."""
        return [p for p in PIPELINES if not self._missing(p)]

    def _missing(self, pipeline: Pipeline) -> list[str]:
        wanted = (
            ("backbone_rpn", pipeline.format, pipeline.precision),
            ("head", pipeline.format, pipeline.head_precision),
        )
        return ["/".join(w) for w in wanted if not self._has(*w)]

    def not_measured(self) -> list[dict[str, str]]:
        """Each pipeline that cannot be measured here, with the reason (its missing artifacts)."""
        return [
            {"name": p.name, "reason": f"not exported: {', '.join(self._missing(p))}"}
            for p in PIPELINES
            if self._missing(p)
        ]

    def pipeline_detector(self, pipeline: Pipeline) -> Any:
        """A runtime Detector running ``pipeline``'s two artifacts."""
        from runtime.detector import Detector, DetectorOptions

        options = DetectorOptions(
            precision=pipeline.precision,
            format=pipeline.format,
            head_precision=pipeline.head_precision,
            num_threads=self.config.threads,
        )
        return Detector(self.directory, options)

    def single_detector(self, entry: ArtifactEntry) -> Any:
        """A runtime SingleDetector running the single file ``entry``."""
        from runtime.single import SingleDetector

        return SingleDetector(self.directory, entry.precision, num_threads=self.config.threads)

    # -- speed

    def latencies(self) -> dict[str, Any]:
        """p50 ms of every artifact (on its golden inputs), every pipeline and the Keras stages."""
        from runtime.check import load_golden
        from runtime.golden import golden_samples

        cfg = self.config
        result: dict[str, Any] = {"artifacts": {}, "pipelines": {}, "singles": {}, "keras": {}}
        goldens = {m: load_golden(self.directory, self.manifest, m) for m in self.manifest.golden}
        for entry in progress(stage_artifacts(self.manifest), cfg.progress, "latency"):
            feeds = golden_samples(goldens[entry.model], entry, entry.path)[0]
            result["artifacts"][entry.name] = p50_ms(
                functools.partial(self.stages[entry.name].run, *feeds), cfg.runs, cfg.warmup
            )
        image = self._keras_latencies(result["keras"])
        for pipeline in self.pipelines():
            detector = self.pipeline_detector(pipeline)
            result["pipelines"][pipeline.name] = p50_ms(
                functools.partial(detector.detect, image), cfg.runs, cfg.warmup
            )
        for entry in single_files(self.manifest):
            detector = self.single_detector(entry)
            result["singles"][entry.name] = p50_ms(
                functools.partial(detector.detect, image), cfg.runs, cfg.warmup
            )
        return result

    def _keras_latencies(self, keras: dict[str, float]) -> Any:
        """Fill ``keras`` with the p50 ms of the Keras stages and pipeline; returns the image
        they ran on (the pipelines are timed on it too)."""
        from models.data import data_config_for, eval_split

        cfg = self.config
        # The Keras reference needs no artifact: its inputs come from the held-out split.
        image = eval_split(1, data_config_for(self.detector_config.image_size)).images[0]
        ref = self.keras.stages(image)
        head_feeds = (ref["features"], ref["proposals"], ref["box_indexes"])
        keras["backbone_rpn"] = p50_ms(
            lambda: self.keras.backbone_outputs(ref["image"]), cfg.runs, cfg.warmup
        )
        keras["head"] = p50_ms(lambda: self.keras.head_outputs(*head_feeds), cfg.runs, cfg.warmup)
        keras["pipeline"] = p50_ms(lambda: self.keras(image), cfg.runs, cfg.warmup)
        return image

    # -- accuracy

    def accuracy(self) -> dict[str, Any]:
        """mAP, per-output error statistics and detection agreement of everything measured."""
        batch, scorer = self._scored_images()
        run = self._accuracy_run(scorer)
        run.scored_as = self._scored_as(batch)
        label = "held-out images" if self.config.data is None else str(self.config.data)
        images = progress(batch.images, self.config.progress, label)
        for index, image in enumerate(images):
            run.add(image, with_errors=index < self.config.stage_images)
        return run.summary(batch)

    def _accuracy_run(self, scorer: Any) -> AccuracyRun:
        return AccuracyRun(self, scorer)

    def _scored_as(self, batch: Any) -> Any:
        """``detections -> (predictions, truths)`` exactly as the scorer scores them (the photos'
        own pixels for ``--data``), for the bootstrap's per-image matching."""
        if self.config.data is None:
            truths = list(zip(batch.boxes, batch.labels))
            return lambda detections: (list(detections), truths)
        from models.coco import ground_truth, load_coco
        from models.evaluate import to_original_pixels

        dataset = load_coco(self.config.data)
        size = self.detector_config.image_size
        truths = ground_truth(dataset)

        def scored_as(detections):
            return [
                to_original_pixels(d, size, i) for d, i in zip(detections, dataset.images)
            ], truths

        return scored_as

    def _scored_images(self) -> tuple[Any, Any]:
        """(images at the model size, ``scorer(detections) -> mAP summary``): the procedural
        held-out split rendered at the detector's size, or the user's COCO val set (``--data``),
        scored in its photos' pixels."""
        size = self.detector_config.image_size
        names = self.detector_config.class_names
        if self.config.data is None:
            from models.data import data_config_for, eval_split
            from models.evaluate import score

            batch = eval_split(self.config.images, data_config_for(size))
            return batch, functools.partial(score, batch=batch, class_names=names)
        from models.coco import load_coco, resized_batch
        from models.evaluate import check_category_ids, score_on_dataset

        dataset = load_coco(self.config.data)
        if dataset.class_names != names:
            raise RoiedgeError(
                f"--data {self.config.data} has classes {list(dataset.class_names)}; the "
                f"exported detector has {list(names)}"
            )
        # As models.evaluate: this mAP must be the one pycocotools gives `detect --json`.
        check_category_ids(
            dataset, self.detector_config, self.config.data, f"in {self.config.artifacts}"
        )
        batch = resized_batch(dataset, size)
        return batch, functools.partial(score_on_dataset, dataset=dataset, size=size)


class AccuracyRun:
    """Per-image detections and output errors of Keras, each artifact and each pipeline."""

    def __init__(self, measurer: Measurer, scorer: Any) -> None:
        self.measurer = measurer
        self.scorer = scorer  # detections (model pixels, one per image) -> mAP summary
        self.det_cfg = measurer.detector_config
        self.entries = stage_artifacts(measurer.manifest)
        self.pipelines = measurer.pipelines()
        self.detectors = {p.name: measurer.pipeline_detector(p) for p in self.pipelines}
        self.singles = {
            e.name: measurer.single_detector(e) for e in single_files(measurer.manifest)
        }
        self.single_dets: dict[str, list] = {name: [] for name in self.singles}
        self.keras_dets: list = []
        self.artifact_dets: dict[str, list] = {e.name: [] for e in self.entries}
        self.pipeline_dets: dict[str, list] = {p.name: [] for p in self.pipelines}
        self.errors = {
            e.name: {name: OutputAccumulator() for name in measurer.output_names(e.model)}
            for e in self.entries
        }
        self.top1_hits = {e.name: [0, 0] for e in self.entries if e.model == "head"}

    def add(self, image: np.ndarray, with_errors: bool) -> None:
        """Run one held-out image through Keras, every artifact and every pipeline."""
        from runtime.processing import detections_from_head

        ref = self.measurer.keras.stages(image)
        self.keras_dets.append(
            detections_from_head(
                ref["class_scores"],
                ref["box_deltas"],
                ref["proposals"],
                int(ref["num_valid"]),
                self.det_cfg,
            )
        )
        for entry in self.entries:
            run = self._backbone if entry.model == "backbone_rpn" else self._head
            outputs, (scores, deltas, proposals, num_valid) = run(entry, ref)
            self.artifact_dets[entry.name].append(
                detections_from_head(scores, deltas, proposals, num_valid, self.det_cfg)
            )
            if with_errors:
                for name, actual in zip(self.measurer.output_names(entry.model), outputs):
                    self.errors[entry.name][name].add(actual, ref[name])
        for pipeline in self.pipelines:
            detections = self.detectors[pipeline.name].detect_tensor(ref["image"])
            self.pipeline_dets[pipeline.name].append(detections)
        for name, single in self.singles.items():
            self.single_dets[name].append(single.detect_tensor(ref["image"]))

    def _backbone(self, entry: ArtifactEntry, ref: dict) -> tuple[list, tuple]:
        """Isolated cost of a backbone artifact: its outputs through the float Keras head."""
        from runtime.processing import proposals_from_rpn

        outputs = self.measurer.stages[entry.name].run(ref["image"])
        props = proposals_from_rpn(
            outputs[1], outputs[2], self.det_cfg, self.measurer.keras.anchors
        )
        scores, deltas = self.measurer.keras.head_outputs(
            outputs[0], props.proposals, props.box_indexes
        )
        return outputs, (scores, deltas, props.proposals, props.num_valid)

    def _head(self, entry: ArtifactEntry, ref: dict) -> tuple[list, tuple]:
        """Isolated cost of a head artifact: the float Keras features and proposals in."""
        proposals, num_valid = ref["proposals"], int(ref["num_valid"])
        outputs = self.measurer.stages[entry.name].run(
            ref["features"], proposals, ref["box_indexes"]
        )
        scores, deltas = outputs
        # Top-1 over the real proposals only: padded rows carry no decision.
        hits = np.argmax(scores[:num_valid], -1) == np.argmax(ref["class_scores"][:num_valid], -1)
        self.top1_hits[entry.name][0] += int(hits.sum())
        self.top1_hits[entry.name][1] += num_valid
        return outputs, (scores, deltas, proposals, num_valid)

    def summary(self, batch: Any) -> dict[str, Any]:
        """Scores of everything added: ``keras``, ``artifacts``, ``pipelines`` and ``singles``
        (the single files) rows by name."""
        keras = self.scorer(self.keras_dets)
        result: dict[str, Any] = {
            "keras": {
                "map50": keras["map50"],
                "map50_95": keras["map50_95"],
                "images": len(batch.images),
                "scored_on": keras.get("dataset", "held-out"),
            },
            "artifacts": {},
            "pipelines": {},
            "singles": {},
        }
        self._keras_matches = self._matches(self.keras_dets)
        for entry in self.entries:
            row = self._scored(self.artifact_dets[entry.name], batch)
            stats = {n: acc.result() for n, acc in self.errors[entry.name].items() if acc.actual}
            row["outputs"] = {n: s for n, (s, _) in stats.items()}
            row["histograms"] = {n: h for n, (_, h) in stats.items()}
            if entry.name in self.top1_hits:
                hits, total = self.top1_hits[entry.name]
                row["top1_agreement"] = hits / total if total else float("nan")
            result["artifacts"][entry.name] = row
        for pipeline in self.pipelines:
            result["pipelines"][pipeline.name] = self._scored(
                self.pipeline_dets[pipeline.name], batch
            )
        for name, detections in self.single_dets.items():
            result["singles"][name] = self._scored(detections, batch)
        return result

    def _matches(self, detections: list) -> Any:
        from models.bootstrap import COCO_IOU_THRESHOLDS
        from models.metrics import image_matches

        predictions, truths = self.scored_as(detections)
        classes = len(self.det_cfg.class_names)
        return image_matches(predictions, truths, classes, COCO_IOU_THRESHOLDS)

    def _scored(self, detections: list, batch: Any) -> dict[str, Any]:
        from models.bootstrap import paired_drop_intervals_from_matches

        summary = self.scorer(detections)
        intervals = paired_drop_intervals_from_matches(
            self._keras_matches, self._matches(detections), len(detections)
        )
        return {
            "map50": summary["map50"],
            "map50_95": summary["map50_95"],
            # drop against float Keras (fractions) with its paired bootstrap 95% interval
            "drop_intervals": {k: v.to_dict() for k, v in intervals.items()},
            "agreement": detection_agreement(detections, self.keras_dets, AGREEMENT_MIN_SCORE),
        }
