"""Measuring a detector card's artifacts (``python -m export --detector``) for the report.

The reference is the card's original Keras models through :mod:`runtime.card_processing`
(:class:`models.card_models.CardModels`, the float reference of ``models.evaluate --detector``),
so every Δ is the artifacts' numerics alone. Scored on the user's COCO set (``--data``; a card
has no procedural held-out split) in the photos' own pixels with the dataset's categories. An
artifact's isolated cost runs it with the other stage kept in Keras; a pipeline runs the
runtime ``Detector`` on both of its artifacts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from export.report.measure import AccuracyRun, Measurer, p50_ms
from runtime.errors import RoiedgeError


class CardMeasurer(Measurer):
    """:class:`Measurer` of a card export: the card's Keras models are the reference."""

    def _reference(self) -> tuple[Any, Any]:
        from models.card_models import CardModels
        from runtime.card import card_from_manifest

        if self.config.data is None:
            raise RoiedgeError(
                f"{self.directory}: a detector card's artifacts are scored on your data; "
                "expected --data VAL.json (a COCO instances file with the card's categories)"
            )
        card = card_from_manifest(self.manifest.detector, str(self.directory / "manifest.json"))
        folder = self._verified_sources()
        return CardModels(card, folder), card

    def _verified_sources(self) -> Path:
        """The folder of the card the artifacts came from, after checking that the card and its
        two Keras models are the files the manifest hashed (RoiedgeError naming the file)."""
        from runtime.manifest import sha256_file

        sources = self.manifest.source_models
        card_path = Path(sources.get("card", ""))
        for key in ("card", "backbone_rpn", "head"):
            path = Path(sources.get(key, ""))
            if not sources.get(key) or not path.is_file():
                raise RoiedgeError(
                    f"{self.directory / 'manifest.json'}: source {key} {str(path)!r} is not a "
                    "readable file; the report needs the card's original Keras models"
                )
            seen, expected = sha256_file(path), sources.get(f"{key}_sha256", "")
            if seen != expected:
                raise RoiedgeError(
                    f"source {key} {path}: sha256 {seen[:12]}... differs from the manifest's "
                    f"{expected[:12]}...; expected the file the artifacts were exported from"
                )
        return card_path.resolve().parent

    def output_names(self, model: str) -> tuple[str, ...]:
        card = self.detector_config
        return tuple(card.rpn.outputs if model == "backbone_rpn" else card.head.outputs)

    def _keras_latencies(self, keras: dict[str, float]) -> Any:
        from runtime.card_processing import preprocess
        from runtime.images import load_image

        cfg = self.config
        image = load_image(self._dataset().images[0].path)
        tensor, _ = preprocess(image, self.detector_config)
        _, heads = self.keras.stage_inputs(tensor, 1)
        keras["backbone_rpn"] = p50_ms(
            lambda: self.keras.run_backbone(tensor), cfg.runs, cfg.warmup
        )
        if heads:
            feeds = heads[0]
            keras["head"] = p50_ms(lambda: self.keras.run_head(*feeds), cfg.runs, cfg.warmup)
        keras["pipeline"] = p50_ms(lambda: self.keras.detect(tensor), cfg.runs, cfg.warmup)
        return image

    def _dataset(self) -> Any:
        from models.card_models import matching_dataset

        if not hasattr(self, "_loaded_dataset"):
            self._loaded_dataset = matching_dataset(
                Path(self.config.data), self.detector_config, "the exported card"
            )
        return self._loaded_dataset

    def _scored_images(self) -> tuple[Any, Any]:
        """(the --data photos, ``scorer(detections in photo pixels) -> mAP summary``)."""
        from models.coco import ground_truth
        from models.evaluate import summarize

        dataset = self._dataset()
        truths = ground_truth(dataset)

        def scorer(detections):
            summary = summarize(list(detections), truths, dataset.class_names)
            summary["dataset"] = str(dataset.source)
            return summary

        return _Photos(dataset), scorer

    def _scored_as(self, batch: Any) -> Any:
        from models.coco import ground_truth

        truths = ground_truth(batch.dataset)
        return lambda detections: (list(detections), truths)

    def _accuracy_run(self, scorer: Any) -> AccuracyRun:
        return _CardAccuracyRun(self, scorer)


class _Photos:
    """The --data images, decoded one at a time (``images`` is a lazy sequence of HxWx3 uint8)."""

    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset
        self.images = _LazyImages([item.path for item in dataset.images])


class _LazyImages:
    def __init__(self, paths: list[Path]) -> None:
        self.paths = paths

    def __len__(self) -> int:
        return len(self.paths)

    def __iter__(self):
        from runtime.images import load_image

        return (load_image(path) for path in self.paths)


class _CardAccuracyRun(AccuracyRun):
    """Per photo: the Keras reference, each artifact with the other stage in Keras, each
    pipeline; detections kept in photo pixels."""

    def add(self, image: np.ndarray, with_errors: bool) -> None:
        from runtime import card_processing as cp
        from runtime.processing import Detections

        card, keras = self.det_cfg, self.measurer.keras
        tensor, (sy, sx) = cp.preprocess(image, card)
        scale = np.asarray([sy, sx, sy, sx], np.float32)

        def photo(found: Detections) -> Detections:
            return Detections(found.boxes * scale, found.scores, found.class_ids)

        def detect(run_backbone, run_head) -> Detections:
            return photo(cp.detect(tensor, run_backbone, run_head, card, keras.roi_shape))

        backbone = keras.run_backbone(tensor)
        head_calls: list[tuple[tuple, list]] = []

        def keras_head(*inputs):
            outputs = keras.run_head(*inputs)
            head_calls.append((inputs, outputs))
            return outputs

        self.keras_dets.append(detect(lambda _: backbone, keras_head))
        used = self._rows_used(backbone)
        for entry in self.entries:
            stage = self.measurer.stages[entry.name]
            names = self.measurer.output_names(entry.model)
            if entry.model == "backbone_rpn":
                outputs = stage.run(tensor)
                self.artifact_dets[entry.name].append(
                    detect(lambda _, o=outputs: o, keras.run_head)
                )
                pairs = [(outputs, backbone)] if with_errors else []
            else:  # the Keras backbone's features and RoIs in, call by call as the reference
                actual = [stage.run(*inputs) for inputs, _ in head_calls]
                replay = iter(actual)
                found = detect(lambda _: backbone, lambda *_, r=replay: next(r))
                self.artifact_dets[entry.name].append(found)
                pairs = [(a, r) for a, (_, r) in zip(actual, head_calls)] if with_errors else []
                self._top1(entry.name, actual, [r for _, r in head_calls], used)
            for outputs, reference in pairs:
                for name, a, r in zip(names, outputs, reference):
                    self.errors[entry.name][name].add(a, r)
        for pipeline in self.pipelines:
            found = self.detectors[pipeline.name].detect_tensor(tensor)
            self.pipeline_dets[pipeline.name].append(photo(found))

    def _rows_used(self, backbone: list[np.ndarray]) -> list[int]:
        """The real (unpadded) RoI rows of each head call on these backbone outputs."""
        from runtime import card_processing as cp

        card, keras = self.det_cfg, self.measurer.keras
        features, scores, deltas = cp.split_backbone(backbone, card)
        rois = cp.proposals(scores, deltas, features.shape[1:3], card)
        return [used for _, used in cp.roi_batches(rois, card, keras.roi_shape)]

    def _top1(self, name: str, actual: list, reference: list, used: list[int]) -> None:
        """Head top-1 class agreement over the real RoIs only (padded rows carry no decision)."""
        index = self.measurer.output_names("head").index("class_scores")
        classes = self.det_cfg.num_classes + 1
        for a, r, rows in zip(actual, reference, used):
            mine = np.asarray(a[index]).reshape(-1, classes)[:rows].argmax(-1)
            theirs = np.asarray(r[index]).reshape(-1, classes)[:rows].argmax(-1)
            self.top1_hits[name][0] += int(np.sum(mine == theirs))
            self.top1_hits[name][1] += rows
