"""A detector card's two Keras models, and their float reference: ``models.evaluate --detector``.

:class:`CardModels` loads the card's backbone_rpn and head (with its ``custom_objects`` file),
gives them the card's static shapes and refuses a card its models disagree with, before any
conversion. :func:`card_predictions` runs the user's original Keras models through
:mod:`runtime.card_processing` — the numpy code the device runs — on a COCO set (``models.evaluate`` scores them),
so the artifacts' mAP differs from this float reference by their numerics alone.
"""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from models.custom_objects import import_custom_objects
from runtime import card_processing as cp
from runtime.card import CardError, DetectorCard
from runtime.errors import RoiedgeError
from runtime.processing import Detections


def _load(path: Path, objects: dict[str, Any], key: str) -> Any:
    import keras

    from runtime.safe_files import check_zip_members

    if zipfile.is_zipfile(path):  # a zip bomb refused before Keras inflates it
        try:
            check_zip_members(path, f"card {key}", "keras_bytes")
        except RoiedgeError as error:
            raise CardError(str(error)) from None
    try:
        return keras.models.load_model(path, custom_objects=objects, compile=False)
    except Exception as error:  # Keras wraps the cause in several messages: keep the first line
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise CardError(f"card {key} {path}: Keras cannot load it ({first})") from None


def fixed_shapes(model: Any, shapes: list[tuple], what: str) -> Any:
    """``model`` called on batch-1 inputs of ``shapes`` (static shapes for the converters)."""
    import keras

    if len(model.inputs) != len(shapes):
        raise CardError(
            f"{what} {model.name} has {len(model.inputs)} inputs; the card expects {len(shapes)}"
        )
    for tensor, shape in zip(model.inputs, shapes):
        declared = tuple(tensor.shape)
        if len(declared) != len(shape) or any(
            d is not None and s is not None and d != s for d, s in zip(declared, shape)
        ):
            raise CardError(
                f"{what} input {tensor.name} has shape {list(declared)}; the card implies "
                f"{list(shape)}"
            )
    inputs = [
        keras.Input(batch_shape=shape, dtype=str(t.dtype).split(".")[-1], name=f"{what}_in{i}")
        for i, (shape, t) in enumerate(zip(shapes, model.inputs))
    ]
    outputs = model(inputs if len(inputs) > 1 else inputs[0])
    return keras.Model(inputs, outputs, name=what)


class CardModels:
    """The card's two Keras models at static batch-1 shapes; ``roi_shape`` of the head's RoIs."""

    def __init__(self, card: DetectorCard, folder: Path) -> None:
        paths = card.resolve(Path(folder))
        for key in ("backbone_rpn", "head", "custom_objects"):
            if paths[key] is not None and not paths[key].is_file():
                raise CardError(
                    f"card {key} {paths[key]}: no such file (paths are relative to the card)"
                )
        self.card = card
        objects = {}
        if paths["custom_objects"] is not None:
            try:
                custom = Path(paths["custom_objects"])
                objects = import_custom_objects(
                    custom, "card custom_objects", f"roiedge_card_objects_{custom.stem}"
                )
            except RoiedgeError as error:
                raise CardError(str(error)) from None
        backbone = _load(paths["backbone_rpn"], objects, "backbone_rpn")
        height, width = card.image_size
        self.backbone_rpn = fixed_shapes(backbone, [(1, height, width, 3)], "backbone_rpn")
        out_shapes = [tuple(t.shape) for t in self.backbone_rpn.outputs]
        head = _load(paths["head"], objects, "head")
        declared = [tuple(t.shape) for t in head.inputs]
        cp.check_model_shapes(card, out_shapes, declared, [tuple(t.shape) for t in head.outputs])
        n = card.rois.num_rois
        roi_rank = len(declared[card.head.inputs.index("rois")])
        shapes = {
            "features": out_shapes[card.rpn.outputs.index("features")],
            "rois": (1, n, 4) if roi_rank == 3 else (n, 4),
            "box_indexes": (n,),
        }
        self.head_shapes = [shapes[name] for name in card.head.inputs]
        self.head_source = head  # as loaded (the RoI layer swap works on it)
        self.head = fixed_shapes(head, self.head_shapes, "head")
        self.roi_shape = shapes["rois"]
        self._calls = {}

    def _call(self, key: str, inputs: list[np.ndarray]) -> list[np.ndarray]:
        import tensorflow as tf

        if key not in self._calls:  # one traced graph per model: eager Keras is slow per call
            model = getattr(self, key)
            self._calls[key] = tf.function(
                lambda *a: model(list(a) if len(a) > 1 else a[0], training=False)
            )
        outs = self._calls[key](*inputs)
        outs = outs if isinstance(outs, (list, tuple)) else [outs]
        return [np.asarray(o, np.float32) for o in outs]

    def run_backbone(self, tensor: np.ndarray) -> list[np.ndarray]:
        """tensor [1,H,W,3] -> backbone_rpn outputs in Keras order (float32)."""
        return self._call("backbone_rpn", [tensor])

    def run_head(self, *inputs: np.ndarray) -> list[np.ndarray]:
        """Head inputs in the card's order -> its outputs in Keras order (float32)."""
        return self._call("head", list(inputs))

    def detect(self, tensor: np.ndarray) -> Detections:
        """The float reference on one preprocessed image: Detections in model pixels."""
        return cp.detect(tensor, self.run_backbone, self.run_head, self.card, self.roi_shape)

    def stage_inputs(self, tensor: np.ndarray, head_calls: int | None = None):
        """([image], [head inputs per call]) of one preprocessed image, as the device feeds them."""
        features, scores, deltas = cp.split_backbone(self.run_backbone(tensor), self.card)
        rois = cp.proposals(scores, deltas, features.shape[1:3], self.card)
        n = self.card.rois.num_rois
        heads = []
        for batch, _ in cp.roi_batches(rois, self.card, self.roi_shape)[:head_calls]:
            feeds = {"features": features, "rois": batch, "box_indexes": np.zeros(n, np.int32)}
            heads.append([feeds[name] for name in self.card.head.inputs])
        return [tensor], heads


def matching_dataset(data: Path, card: DetectorCard, what: str, images_dir: Path | None = None):
    """The COCO set ``data`` (models.coco.load_coco), refused in one line unless its classes
    and category ids are the card's (``what`` names the card in the message)."""
    from models.coco import load_coco

    dataset = load_coco(data, images_dir)
    if dataset.class_names != card.class_names or dataset.category_ids != card.category_ids:
        raise CardError(
            f"--data {data} has classes {list(dataset.class_names)} with ids "
            f"{list(dataset.category_ids)}; {what} has {list(card.class_names)} "
            f"with category_ids {list(card.category_ids)}"
        )
    return dataset


def card_predictions(card_path: Path, data: Path, images_dir: Path | None = None):
    """(dataset, Detections per image in photo pixels) of the card's original Keras models on
    the COCO set ``data`` (``models.evaluate --detector`` scores them)."""
    from runtime.card import read_card
    from runtime.images import load_image

    card = read_card(Path(card_path))
    models = CardModels(card, Path(card_path).resolve().parent)
    dataset = matching_dataset(data, card, f"the card {card_path}", images_dir)
    predictions = []
    for item in dataset.images:
        tensor, (sy, sx) = cp.preprocess(load_image(item.path), card)
        found = models.detect(tensor)
        scale = np.asarray([sy, sx, sy, sx], np.float32)
        predictions.append(Detections(found.boxes * scale, found.scores, found.class_ids))
    return dataset, predictions
