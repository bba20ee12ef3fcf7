"""The tiny two-stage detector: Keras definitions, save/load, and float inference (the reference).

Two exportable stages, static shapes, batch 1 (the contract of ``export`` and ``runtime``):

* ``backbone_rpn``: ``image`` [1,H,W,3] float32 in [0,255] -> ``features`` [1,h,w,C],
  ``rpn_scores`` [1,h*w*A] (sigmoid), ``rpn_deltas`` [1,h*w*A,4].
* ``head``: ``features`` [1,h,w,C], ``proposals`` [P,4] normalized, ``box_indexes`` [P] int32 ->
  ``class_scores`` [P,K+1] (softmax, 0 = background), ``box_deltas`` [P,K,4].

The tiny backbone uses only CONV_2D, DEPTHWISE_CONV_2D, ADD, RELU and (folded) BatchNorm, so it
quantizes to full int8 and maps onto the Edge TPU; ``DetectorConfig.backbone`` can name a
keras.applications one instead (:mod:`models.backbones`). Pixel normalisation is inside the model.
Saved as one ``.keras`` file (a container model holding both stages as nested models) plus a
sidecar ``<stem>.json`` with the :class:`runtime.config.DetectorConfig`.
"""

from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from runtime import strict_json
from runtime.config import DEFAULT_BACKBONE, ConfigError, DetectorConfig
from runtime.errors import RoiedgeError
from runtime.manifest import atomic_write_bytes, sha256_file
from runtime.processing import (
    Detections,
    detections_from_head,
    make_anchors,
    preprocess,
    proposals_from_rpn,
)
from runtime.safe_files import check_zip_members, read_json, regular_file

if TYPE_CHECKING:
    import keras

SHIPPED = Path(__file__).resolve().parent / "shipped" / "detector.keras"
BACKBONE_CHANNELS = (16, 32, 32)  # stem widths at strides 2, 4, 4; the last stage uses C
NUM_BLOCKS = 4
HEAD_UNITS = 256
RPN_PRIOR = 0.05
#: The image side the default anchors (DetectorConfig.anchor_sizes) were chosen for.
REFERENCE_SIDE = 160


def detector_config(
    image_size: tuple[int, int] = (160, 160),
    class_names: tuple[str, ...] | None = None,
    backbone: str = DEFAULT_BACKBONE,
) -> DetectorConfig:
    """The default detector config for ``image_size`` = (H, W), ``class_names`` and ``backbone``.

    Anchor sizes scale with the image's shorter side (objects are sized relative to the frame),
    so at 160x160 with the default names this is exactly ``DetectorConfig()``, the shipped
    config. Stride and feature channels come from the backbone's feature layer
    (:func:`models.backbones.feature_layer`; building a keras.applications one needs Keras).
    H and W must be multiples of the stride (a one-line ConfigError otherwise).
    """
    from models.backbones import feature_layer

    base = DetectorConfig()
    height, width = (int(v) for v in image_size)
    factor = min(height, width) / REFERENCE_SIDE
    anchors = tuple(round(size * factor, 1) for size in base.anchor_sizes)
    names = tuple(class_names) if class_names is not None else base.class_names
    layer = (
        feature_layer(backbone, (height, width))
        if backbone != DEFAULT_BACKBONE
        else None  # the defaults; no Keras needed
    )
    return DetectorConfig(
        image_size=(height, width),
        class_names=names,
        anchor_sizes=anchors,
        backbone=backbone,
        stride=layer.stride if layer else base.stride,
        feature_channels=layer.channels if layer else base.feature_channels,
    )


class DetectorLoadError(RoiedgeError):
    """A saved detector is missing, corrupt or inconsistent with its config."""


class LoadedDetector(NamedTuple):
    """A detector ready for float inference: the two Keras stages and their config."""

    backbone_rpn: keras.Model
    head: keras.Model
    config: DetectorConfig


class DetectorLayers:
    """Every layer of the detector, built once and shared by the export and training graphs.

    ``config.backbone`` picks the feature extractor (:mod:`models.backbones`);
    ``backbone_weights`` is a local weights file for a keras.applications one.
    """

    def __init__(self, config: DetectorConfig, backbone_weights: str | None = None) -> None:
        import keras

        from models.backbones import feature_extractor

        self.config = config
        self.extractor = None
        if config.backbone != DEFAULT_BACKBONE:
            self.extractor = feature_extractor(config.backbone, config.image_size, backbone_weights)
            got = self.extractor.output.shape
            fh, fw = config.feature_size
            if tuple(got[1:]) != (fh, fw, config.feature_channels):
                raise ConfigError(
                    f"DetectorConfig (stride {config.stride}, {config.feature_channels} "
                    f"channels) does not match backbone {config.backbone}'s features {got[1:]}"
                )
        c = config.feature_channels
        a = config.anchors_per_location
        k = config.num_classes
        n = config.num_anchors
        L = keras.layers
        self.normalize = L.Rescaling(1.0 / 127.5, offset=-1.0, name="normalize")
        self.stem = []
        strides = (2, 2, 1, 2)
        widths = (*BACKBONE_CHANNELS, c)
        for i, (width, stride) in enumerate(zip(widths, strides)):
            self.stem.append(
                (
                    L.Conv2D(width, 3, stride, "same", use_bias=False, name=f"stem{i}_conv"),
                    L.BatchNormalization(momentum=0.9, name=f"stem{i}_bn"),
                    L.ReLU(name=f"stem{i}_relu"),
                )
            )
        self.blocks = []
        for i in range(NUM_BLOCKS):
            last = i == NUM_BLOCKS - 1
            self.blocks.append(
                (
                    L.DepthwiseConv2D(3, 1, "same", use_bias=False, name=f"block{i}_dw"),
                    L.BatchNormalization(momentum=0.9, name=f"block{i}_dw_bn"),
                    L.ReLU(name=f"block{i}_dw_relu"),
                    L.Conv2D(c, 1, use_bias=False, name=f"block{i}_pw"),
                    L.BatchNormalization(momentum=0.9, name=f"block{i}_pw_bn"),
                    L.Add(name=f"block{i}_add"),
                    L.ReLU(name="features" if last else f"block{i}_relu"),
                )
            )
        # Objectness starts at the positive rate of the sampled RPN loss (~4.4% on the procedural
        # data), not RetinaNet's 1% (a focal-loss prior): full-int8 TFLite stores the sigmoid's
        # output on a fixed 1/256 grid, so scores sitting at 0.01 - a briefly trained detector's
        # background - drown in that grid (~19 dB SNR, below the int8 tolerance) while 0.05 does
        # not (~33 dB).
        prior = float(-np.log((1 - RPN_PRIOR) / RPN_PRIOR))
        self.rpn_conv = L.Conv2D(c, 3, 1, "same", activation="relu", name="rpn_conv")
        self.rpn_logits = L.Conv2D(
            a,
            1,
            name="rpn_logits",
            kernel_initializer=keras.initializers.RandomNormal(stddev=0.01),
            bias_initializer=keras.initializers.Constant(prior),
        )
        self.rpn_box = L.Conv2D(
            4 * a,
            1,
            name="rpn_box",
            kernel_initializer=keras.initializers.RandomNormal(stddev=0.01),
        )
        self.rpn_logits_flat = L.Reshape((n,), name="rpn_logits_flat")
        self.rpn_scores = L.Activation("sigmoid", name="rpn_scores")
        self.rpn_deltas = L.Reshape((n, 4), name="rpn_deltas")
        ph, pw = config.pool_size
        self.flatten = L.Reshape((ph * pw * c,), name="pooled_flat")
        self.fc1 = L.Dense(HEAD_UNITS, activation="relu", name="fc1")
        self.fc2 = L.Dense(HEAD_UNITS, activation="relu", name="fc2")
        self.cls_logits = L.Dense(
            k + 1,
            name="cls_logits",
            kernel_initializer=keras.initializers.RandomNormal(stddev=0.01),
        )
        self.class_scores = L.Softmax(name="class_scores")
        self.box_fc = L.Dense(
            4 * k,
            name="box_fc",
            kernel_initializer=keras.initializers.RandomNormal(stddev=0.001),
        )
        self.box_deltas = L.Reshape((k, 4), name="box_deltas")

    def backbone(self, image, training=None):
        """image tensor -> (features, rpn_logits [B,N], rpn_deltas [B,N,4])."""
        x = self.normalize(image)
        if self.extractor is not None:
            features = self.extractor(x, training=training)
        else:
            for conv, bn, relu in self.stem:
                x = relu(bn(conv(x), training=training))
            for dw, dw_bn, dw_relu, pw, pw_bn, add, relu in self.blocks:
                y = dw_relu(dw_bn(dw(x), training=training))
                y = pw_bn(pw(y), training=training)
                x = relu(add([x, y]))
            features = x
        r = self.rpn_conv(features)
        logits = self.rpn_logits_flat(self.rpn_logits(r))
        deltas = self.rpn_deltas(self.rpn_box(r))
        return features, logits, deltas

    def head(self, features, proposals, box_indexes, roi_pooling):
        """(features, proposals, box_indexes) -> (cls_logits [P,K+1], box_deltas [P,K,4])."""
        pooled = roi_pooling(features, proposals, box_indexes)
        x = self.fc2(self.fc1(self.flatten(pooled)))
        return self.cls_logits(x), self.box_deltas(self.box_fc(x))

    def roi_pooling(self, implementation: str | None = None):
        """The head's RoIPooling layer; ``implementation`` defaults to the layer's own default."""
        from models.roi_pooling import DEFAULT_IMPLEMENTATION, RoIPooling

        return RoIPooling(
            size=self.config.pool_size,
            samples_per_bin=self.config.samples_per_bin,
            implementation=implementation or DEFAULT_IMPLEMENTATION,
            name="roi_pooling",
        )

    def export_models(self) -> tuple[keras.Model, keras.Model]:
        """The two batch-1 stages with the contract's input/output names and orders."""
        import keras

        cfg = self.config
        h, w = cfg.image_size
        fh, fw = cfg.feature_size
        p = cfg.num_proposals
        image = keras.Input((h, w, 3), batch_size=1, dtype="float32", name="image")
        features, logits, deltas = self.backbone(image, training=False)
        backbone_rpn = keras.Model(
            image, [features, self.rpn_scores(logits), deltas], name="backbone_rpn"
        )
        f_in = keras.Input((fh, fw, cfg.feature_channels), batch_size=1, name="features")
        proposals = keras.Input((4,), batch_size=p, dtype="float32", name="proposals")
        box_indexes = keras.Input((), batch_size=p, dtype="int32", name="box_indexes")
        cls_logits, box_deltas = self.head(f_in, proposals, box_indexes, self.roi_pooling())
        head = keras.Model(
            [f_in, proposals, box_indexes],
            [self.class_scores(cls_logits), box_deltas],
            name="head",
        )
        return backbone_rpn, head


def build_detector(config: DetectorConfig) -> tuple[DetectorLayers, keras.Model, keras.Model]:
    """Fresh (untrained) layers and the two export-shaped stages built from them."""
    layers = DetectorLayers(config)
    backbone_rpn, head = layers.export_models()
    return layers, backbone_rpn, head


def _container(backbone_rpn, head, config: DetectorConfig):
    """One model holding both stages (nested), so a single .keras file stores the detector."""
    import keras

    h, w = config.image_size
    image = keras.Input((h, w, 3), batch_size=1, name="image")
    proposals = keras.Input((4,), batch_size=config.num_proposals, name="proposals")
    box_indexes = keras.Input(
        (), batch_size=config.num_proposals, dtype="int32", name="box_indexes"
    )
    features, scores, deltas = backbone_rpn(image)
    class_scores, box_deltas = head([features, proposals, box_indexes])
    return keras.Model(
        [image, proposals, box_indexes],
        [features, scores, deltas, class_scores, box_deltas],
        name="roiedge_detector",
    )


def config_path(path: Path | str) -> Path:
    """The sidecar config JSON of a ``.keras`` file: same directory and stem, ``.json``."""
    return Path(path).with_suffix(".json")


def _stale_patterns(path: Path) -> tuple[str, ...]:
    """Globs of the temp files and folders a killed :func:`save_detector` of ``path`` leaves."""
    return (f".{path.name}.*.tmp", f".{config_path(path).name}.*.tmp", f".{path.name}.saving-*")


def save_detector(backbone_rpn, head, config: DetectorConfig, path: Path | str) -> Path:
    """Write ``path`` (.keras) and its sidecar config JSON so they are replaced together or not
    at all; returns ``path``.

    The sidecar records the model's sha256 (``model_sha256``), and while the ``.keras`` file is
    being replaced it also holds the old pair (``previous``): a save killed at any point leaves
    a sidecar that matches whichever ``.keras`` file is in place, so the old or the new detector
    loads, never a mix. Saves into one folder are serialised (a lock on the folder); the temp
    files of a killed save are removed by the next.
    """
    import tempfile

    from runtime.replace import output_lock, remove_stale

    path = Path(path)
    if path.suffix != ".keras":
        raise RoiedgeError(f"{path}: a detector is saved as a .keras file")
    path.parent.mkdir(parents=True, exist_ok=True)
    model = _container(backbone_rpn, head, config)
    with output_lock(path, "detector", "save", wait=True, folder=True):
        remove_stale(path.parent, _stale_patterns(path))
        try:  # a full disk fails inside Keras' writer: one line, the old pair left in place
            with tempfile.TemporaryDirectory(
                dir=path.parent, prefix=f".{path.name}.saving-"
            ) as tmp:
                tmp_file = Path(tmp) / path.name
                model.save(tmp_file)
                data = tmp_file.read_bytes()
        except OSError as error:
            raise RoiedgeError(
                f"{path}: cannot write it ({error.strerror or type(error).__name__}); the "
                "detector there before (if any) is unchanged"
            ) from None
        new = {"config": config.to_dict(), "model_sha256": hashlib.sha256(data).hexdigest()}
        old = _current_pair(path)
        sidecar = {"format": SIDECAR_FORMAT, **new}
        if old is not None and old["model_sha256"] != new["model_sha256"]:
            atomic_write_bytes(
                config_path(path), strict_json.dump_bytes({**sidecar, "previous": old})
            )
        atomic_write_bytes(path, data)
        atomic_write_bytes(config_path(path), strict_json.dump_bytes(sidecar))
    return path


SIDECAR_FORMAT = "roiedge-detector"


def _current_pair(path: Path) -> dict[str, Any] | None:
    """{"config", "model_sha256"} of the detector now at ``path``, or None if none loads."""
    try:
        return _matching_pair(path, _read_sidecar(path))
    except RoiedgeError:
        return None


def _read_sidecar(path: Path) -> dict[str, Any]:
    sidecar = config_path(path)
    if not sidecar.is_file():
        raise DetectorLoadError(f"{sidecar}: missing config sidecar of detector {path}")
    try:
        data = read_json(sidecar, "detector config")
    except RoiedgeError as error:
        reason = str(error).removeprefix(f"detector config {sidecar}: ")
        raise DetectorLoadError(f"{sidecar}: unreadable detector config ({reason})") from None
    if not isinstance(data, dict) or not isinstance(data.get("config"), dict):
        raise DetectorLoadError(
            f'{sidecar}: unreadable detector config (expected an object with a "config" object)'
        )
    return data


def _matching_pair(path: Path, sidecar: dict[str, Any]) -> dict[str, Any]:
    """The sidecar's {"config", "model_sha256"} entry whose hash is that of ``path``'s bytes.

    A sidecar without ``model_sha256`` (written before it was recorded) is taken as it is.
    """
    if "model_sha256" not in sidecar:
        return {"config": sidecar["config"], "model_sha256": sha256_file(path)}
    digest = sha256_file(path)
    previous = sidecar.get("previous")
    for pair in (sidecar, previous if isinstance(previous, dict) else {}):
        if pair.get("model_sha256") == digest and isinstance(pair.get("config"), dict):
            return {"config": pair["config"], "model_sha256": digest}
    raise DetectorLoadError(
        f"{path}: its sha256 {digest[:16]}... is not the model_sha256 its config "
        f"{config_path(path)} records ({str(sidecar['model_sha256'])[:16]}...); the model and its "
        "config are not a pair (one was replaced or edited without the other)"
    )


def load_detector(path: Path | str = SHIPPED) -> LoadedDetector:
    """Load a detector saved by :func:`save_detector`; one-line DetectorLoadError naming the file.

    The config used is the sidecar's entry whose ``model_sha256`` is that of the ``.keras``
    file (see :func:`save_detector`); a model that matches no entry is refused.
    """
    path = Path(path)
    if not path.exists():
        raise DetectorLoadError(f"{path}: no such detector file (expected a .keras file)")
    try:  # a FIFO, device or folder is named as what it is, never opened
        regular_file(path, "detector")
    except RoiedgeError as error:
        raise DetectorLoadError(str(error)) from None
    if not zipfile.is_zipfile(path):
        raise DetectorLoadError(f"{path}: not a valid .keras file (not a zip archive; corrupt?)")
    try:  # a zip bomb is refused from its central directory, before Keras inflates it
        check_zip_members(path, "detector", "keras_bytes")
    except RoiedgeError as error:
        raise DetectorLoadError(str(error)) from None
    sidecar = config_path(path)
    pair = _matching_pair(path, _read_sidecar(path))
    try:
        config = DetectorConfig.from_dict(pair["config"], source=str(sidecar))
    except (KeyError, TypeError) as error:
        raise DetectorLoadError(f"{sidecar}: unreadable detector config ({error!r})") from None
    except ConfigError as error:
        raise DetectorLoadError(str(error)) from None

    import keras

    import models.roi_pooling  # noqa: F401  (registers RoIPooling for deserialisation)

    try:
        model = keras.saving.load_model(path, compile=False)
        backbone_rpn = model.get_layer("backbone_rpn")
        head = model.get_layer("head")
    except Exception as error:  # keras raises many types for corrupt archives
        message = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise DetectorLoadError(f"{path}: could not load the detector ({message})") from None
    _check_shapes(path, backbone_rpn, head, config)
    return LoadedDetector(backbone_rpn, head, config)


def _check_shapes(path: Path, backbone_rpn: Any, head: Any, config: DetectorConfig) -> None:
    fh, fw = config.feature_size
    want = (1, fh, fw, config.feature_channels)
    got = tuple(backbone_rpn.outputs[0].shape)
    if got != want:
        raise DetectorLoadError(f"{path}: features have shape {got}; its config expects {want}")
    want_scores = (config.num_proposals, config.num_classes + 1)
    got_scores = tuple(head.outputs[0].shape)
    if got_scores != want_scores:
        raise DetectorLoadError(
            f"{path}: class_scores have shape {got_scores}; its config expects {want_scores}"
        )


class FloatDetector:
    """Float Keras inference ``image -> detections``: the reference for every exported format."""

    def __init__(self, detector: LoadedDetector) -> None:
        import tensorflow as tf

        self.detector = detector
        self.config = detector.config
        self.anchors = make_anchors(detector.config)
        self._backbone = tf.function(lambda x: detector.backbone_rpn(x, training=False))
        self._head = tf.function(lambda f, p, i: detector.head([f, p, i], training=False))

    def backbone_outputs(self, tensor: np.ndarray) -> list[np.ndarray]:
        """Float ``backbone_rpn`` on an ``image`` tensor [1,H,W,3] -> features, scores, deltas."""
        return [np.asarray(t) for t in self._backbone(tensor)]

    def head_outputs(
        self, features: np.ndarray, proposals: np.ndarray, box_indexes: np.ndarray
    ) -> list[np.ndarray]:
        """Float ``head`` -> class_scores [P,K+1], box_deltas [P,K,4] (inputs as the stage's)."""
        return [np.asarray(t) for t in self._head(features, proposals, box_indexes)]

    def stages(self, image: np.ndarray) -> dict[str, np.ndarray]:
        """All intermediate tensors of one uint8 HxWx3 image (for goldens and debugging)."""
        x = preprocess(image, self.config)
        features, rpn_scores, rpn_deltas = self.backbone_outputs(x)
        props = proposals_from_rpn(rpn_scores, rpn_deltas, self.config, self.anchors)
        class_scores, box_deltas = self.head_outputs(features, props.proposals, props.box_indexes)
        return {
            "image": x,
            "features": features,
            "rpn_scores": rpn_scores,
            "rpn_deltas": rpn_deltas,
            "proposals": props.proposals,
            "box_indexes": props.box_indexes,
            "num_valid": np.asarray(props.num_valid, np.int32),
            "class_scores": class_scores,
            "box_deltas": box_deltas,
        }

    def __call__(self, image: np.ndarray) -> Detections:
        """Detections of one HxWx3 uint8 RGB image (boxes in pixels)."""
        s = self.stages(image)
        return detections_from_head(
            s["class_scores"], s["box_deltas"], s["proposals"], int(s["num_valid"]), self.config
        )


def detect(detector: LoadedDetector, image: np.ndarray) -> Detections:
    """One-off float inference of one image (builds a :class:`FloatDetector` each call)."""
    return FloatDetector(detector)(image)
