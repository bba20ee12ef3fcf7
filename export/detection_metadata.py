"""TFLite model metadata of a single-file detector, as MediaPipe Tasks' ObjectDetector reads it.

Written with the metadata flatbuffer schema the ``mediapipe`` wheel ships (its generated
``metadata_schema_py_generated`` and ``schema_py_generated``; nothing patched): a ``ModelMetadata``
("M001") stored in a model buffer named ``TFLITE_METADATA``, the labels file packed after the
model as a zip archive (what tflite-support's / MediaPipe's ``MetadataPopulator`` does). MediaPipe
finds the four outputs by their TensorMetadata names -- ``location``, ``category``, ``score``,
``number of detections`` -- so they are written in the model's output order, not guessed from
tensor indexes.
"""

from __future__ import annotations

import io
import zipfile
from collections.abc import Sequence
from typing import Any

from runtime.errors import RoiedgeError

METADATA_NAME = "TFLITE_METADATA"
LABELS_FILE = "labels.txt"
#: Output TensorMetadata names MediaPipe's ObjectDetector looks up, in the model's output order.
OUTPUT_NAMES = ("location", "category", "score", "number of detections")
#: The schema version whose features this metadata uses (TensorGroup: 1.2.0).
MIN_PARSER_VERSION = "1.2.0"
#: (top, left, bottom, right) = (ymin, xmin, ymax, xmax): index of each of BOUNDARIES' default
#: (left, top, right, bottom) in a box row.
BOX_INDEX = (1, 0, 3, 2)


def _schemas() -> tuple[Any, Any]:
    try:
        from mediapipe.tasks.metadata import metadata_schema_py_generated as metadata_fb
        from mediapipe.tasks.metadata import schema_py_generated as schema_fb
    except ImportError:
        raise RoiedgeError(
            "writing the single-file detector's metadata needs mediapipe: "
            "pip install mediapipe==1.2.2"
        ) from None
    return metadata_fb, schema_fb


def _value_range(metadata_fb, low: int, high: int):
    value_range = metadata_fb.ValueRangeT()
    value_range.min, value_range.max = low, high
    return value_range


def _feature(metadata_fb, name: str, description: str, dims: int | None = 2):
    tensor = metadata_fb.TensorMetadataT()
    tensor.name, tensor.description = name, description
    content = metadata_fb.ContentT()
    content.contentPropertiesType = metadata_fb.ContentProperties.FeatureProperties
    content.contentProperties = metadata_fb.FeaturePropertiesT()
    if dims is not None:  # the detection axis of [1, D, ...]
        content.range = _value_range(metadata_fb, dims, dims)
    tensor.content = content
    return tensor


def model_metadata(class_names: Sequence[str], image_size: tuple[int, int], name: str) -> bytes:
    """The ModelMetadata flatbuffer (identifier M001) of a single-file detector.

    Input ``image`` [1,H,W,3] uint8 RGB (NormalizationOptions mean 0, std 1: the model takes
    pixel values); outputs :data:`OUTPUT_NAMES` with ``location`` BOUNDARIES in RATIO coordinates
    (ymin, xmin, ymax, xmax) and ``category`` labelled by :data:`LABELS_FILE`.
    """
    import flatbuffers

    metadata_fb, _ = _schemas()
    image = metadata_fb.TensorMetadataT()
    image.name = "image"
    image.description = f"RGB image {image_size[0]}x{image_size[1]}, uint8 pixels"
    content = metadata_fb.ContentT()
    content.contentPropertiesType = metadata_fb.ContentProperties.ImageProperties
    properties = metadata_fb.ImagePropertiesT()
    properties.colorSpace = metadata_fb.ColorSpaceType.RGB
    content.contentProperties = properties
    image.content = content
    normalization = metadata_fb.NormalizationOptionsT()
    normalization.mean, normalization.std = [0.0], [1.0]
    unit = metadata_fb.ProcessUnitT()
    unit.optionsType = metadata_fb.ProcessUnitOptions.NormalizationOptions
    unit.options = normalization
    image.processUnits = [unit]
    stats = metadata_fb.StatsT()
    stats.min, stats.max = [0.0], [255.0]
    image.stats = stats

    location = metadata_fb.TensorMetadataT()
    location.name = OUTPUT_NAMES[0]
    location.description = "Detected boxes (ymin, xmin, ymax, xmax), normalized to [0, 1]."
    content = metadata_fb.ContentT()
    content.contentPropertiesType = metadata_fb.ContentProperties.BoundingBoxProperties
    box = metadata_fb.BoundingBoxPropertiesT()
    box.index = list(BOX_INDEX)
    box.type = metadata_fb.BoundingBoxType.BOUNDARIES
    box.coordinateType = metadata_fb.CoordinateType.RATIO
    content.contentProperties = box
    content.range = _value_range(metadata_fb, 2, 2)
    location.content = content

    category = _feature(metadata_fb, OUTPUT_NAMES[1], "Class id: the 0-based line of labels.txt.")
    labels = metadata_fb.AssociatedFileT()
    labels.name = LABELS_FILE
    labels.description = "Class names, one per line, in class-id order."
    labels.type = metadata_fb.AssociatedFileType.TENSOR_VALUE_LABELS
    category.associatedFiles = [labels]
    score = _feature(metadata_fb, OUTPUT_NAMES[2], "Detection scores (softmax probability).")
    count = _feature(metadata_fb, OUTPUT_NAMES[3], "How many leading rows are detections.", None)

    group = metadata_fb.TensorGroupT()
    group.name = "detection_result"
    group.tensorNames = list(OUTPUT_NAMES[:3])
    subgraph = metadata_fb.SubGraphMetadataT()
    subgraph.inputTensorMetadata = [image]
    subgraph.outputTensorMetadata = [location, category, score, count]
    subgraph.outputTensorGroups = [group]

    model = metadata_fb.ModelMetadataT()
    model.name = name
    model.description = (
        "Two-stage (Faster R-CNN-style) detector with in-graph post-processing (roiedge)."
    )
    model.version = "1"
    model.subgraphMetadata = [subgraph]
    model.minParserVersion = MIN_PARSER_VERSION
    builder = flatbuffers.Builder(0)
    builder.Finish(model.Pack(builder), b"M001")
    return bytes(builder.Output())


def labels_text(class_names: Sequence[str]) -> bytes:
    """The labels file: one class name per line, line i = class id i."""
    for name in class_names:
        if "\n" in name or "\r" in name:
            raise RoiedgeError(f"class name {name!r} has a line break; expected one line each")
    return "".join(f"{name}\n" for name in class_names).encode()


def with_metadata(model: bytes, metadata: bytes, files: dict[str, bytes]) -> bytes:
    """``model`` with ``metadata`` stored as its ``TFLITE_METADATA`` buffer and ``files`` packed
    after it as a zip archive (the layout MediaPipe's and tflite-support's readers expect)."""
    import flatbuffers

    _, schema_fb = _schemas()
    unpacked = schema_fb.ModelT.InitFromObj(schema_fb.Model.GetRootAsModel(model, 0))
    buffer = schema_fb.BufferT()
    buffer.data = list(metadata)
    unpacked.buffers.append(buffer)
    entries = [m for m in (unpacked.metadata or []) if m.name != METADATA_NAME.encode()]
    entry = schema_fb.MetadataT()
    entry.name, entry.buffer = METADATA_NAME.encode(), len(unpacked.buffers) - 1
    unpacked.metadata = [*entries, entry]
    builder = flatbuffers.Builder(0)
    builder.Finish(unpacked.Pack(builder), b"TFL3")
    packed = io.BytesIO()
    packed.write(builder.Output())
    with zipfile.ZipFile(packed, "a") as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    return packed.getvalue()


def read_metadata(model: bytes) -> tuple[Any, dict[str, bytes]]:
    """(ModelMetadataT, packed files) read back from a model written by :func:`with_metadata`."""
    metadata_fb, schema_fb = _schemas()
    root = schema_fb.Model.GetRootAsModel(model, 0)
    for i in range(root.MetadataLength()):
        if root.Metadata(i).Name() == METADATA_NAME.encode():
            data = root.Buffers(root.Metadata(i).Buffer()).DataAsNumpy().tobytes()
            break
    else:
        raise RoiedgeError(f"model has no {METADATA_NAME} buffer; expected detection metadata")
    metadata = metadata_fb.ModelMetadataT.InitFromObj(
        metadata_fb.ModelMetadata.GetRootAsModelMetadata(data, 0)
    )
    with zipfile.ZipFile(io.BytesIO(model)) as archive:
        files = {name: archive.read(name) for name in archive.namelist()}
    return metadata, files


def attach(model: bytes, class_names: Sequence[str], image_size: tuple[int, int]) -> bytes:
    """A single-file detector ``model`` with its MediaPipe object-detector metadata and labels."""
    metadata = model_metadata(class_names, image_size, "roiedge detector")
    return with_metadata(model, metadata, {LABELS_FILE: labels_text(class_names)})
