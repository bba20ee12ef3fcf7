"""Loading a user's Keras model for ``--keras-model``: custom-object files, saved configs, legacy
``.h5`` node references, and the model's I/O (names, shapes, which inputs are box coordinates).

Split from :mod:`export.keras_model` (the export run and its CLI) so each stays readable.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import re
import shutil
import tempfile
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from export.config import ExportInputError
from export.samples import TensorInfo
from models.custom_objects import import_custom_objects
from runtime.errors import RoiedgeError
from runtime.safe_files import check_zip_members, regular_file

#: Artifact files are named after the model, so its name must be a plain file-name word.
_MODEL_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")


@dataclasses.dataclass(frozen=True)
class LoadedModel:
    """A model file as loaded here: the original (None if its layer cannot run here) and, when
    the original could not be loaded, the copy whose RoIPooling layers were swapped at load."""

    original: Any
    swapped_at_load: Any
    why_no_original: str | None = None


# ----------------------------------------------------------------------------- model and loading


def _regular(path: Path, flag: str) -> None:
    """A FIFO, device or folder given as ``flag`` named as what it is, never opened."""
    try:
        regular_file(path, flag)
    except RoiedgeError as error:
        raise ExportInputError(str(error)) from None


def _import_custom_objects(files: Sequence[Path]) -> dict[str, Any]:
    """Import each file as a module (models.custom_objects); their classes and functions by name."""
    objects: dict[str, Any] = {}
    for index, path in enumerate(files):
        module = f"roiedge_custom_objects_{index}_{Path(path).stem}"
        try:
            objects.update(import_custom_objects(Path(path), "--custom-objects", module))
        except RoiedgeError as error:
            raise ExportInputError(str(error)) from None
    return objects


#: Longest cause quoted from a Keras load error (its messages embed whole layer configs).
_CAUSE_CHARS = 300


def load_cause(error: BaseException) -> str:
    """One line saying why Keras could not load a model: the outer message's first sentence and
    the innermost cause Keras wrapped in it ("Exception encountered: ..." or ``__cause__``),
    without the layer configs Keras appends."""
    inner = error
    while inner.__cause__ is not None or inner.__context__ is not None:
        inner = inner.__cause__ or inner.__context__
    outer_text = " ".join(str(error).split())
    texts = [outer_text] if inner is error else [outer_text, " ".join(str(inner).split())]
    segments = [t for text in texts for t in re.split(r"Exception encountered:\s*", text) if t]
    cleaned = []
    for segment in segments:
        segment = re.split(r"\s*(?:Full object config|config=|Received: )", segment)[0]
        segment = segment.strip(" .;:")
        if segment and segment not in cleaned:
            cleaned.append(segment)
    if not cleaned:
        return type(error).__name__
    first = cleaned[0].split(". ")[0]
    cause = cleaned[-1] if len(cleaned) > 1 else ""
    if len(cause) > 150:  # Keras's advice after the cause's first sentence is generic
        cause = cause.split(". ")[0]
    text = first if not cause or cause in first else f"{first}; cause: {cause}"
    return text if len(text) <= _CAUSE_CHARS else text[: _CAUSE_CHARS - 3] + "..."


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def saved_config(path: Path) -> dict[str, Any]:
    """The model config stored in a ``.keras`` zip or a legacy ``.h5`` file."""
    try:
        if zipfile.is_zipfile(path):
            # A zip bomb is refused from its central directory, before anything is inflated.
            check_zip_members(path, "--keras-model", "keras_bytes")
            with zipfile.ZipFile(path) as archive:
                return json.loads(archive.read("config.json"))
        import h5py

        with h5py.File(path, "r") as handle:
            raw = handle.attrs.get("model_config")
            if raw is None:
                raise ExportInputError(
                    f"--keras-model {path}: an HDF5 file without a model config (weights only?)"
                )
            return json.loads(raw.decode() if isinstance(raw, bytes) else raw)
    except RoiedgeError as error:
        raise ExportInputError(str(error)) from None
    except (OSError, KeyError, ValueError, RecursionError) as error:
        raise ExportInputError(
            f"--keras-model {path}: not a readable .keras or .h5 model ({_first_line(error)})"
        ) from None


def _layer_entries(config: Any):
    """Every layer entry (dict with class_name/config) of a saved model config, recursively."""
    if isinstance(config, dict):
        if "class_name" in config and isinstance(config.get("config"), dict):
            yield config
        for value in config.values():
            yield from _layer_entries(value)
    elif isinstance(config, list):
        for value in config:
            yield from _layer_entries(value)


def _is_roiedge_entry(entry: dict[str, Any]) -> bool:
    module = entry.get("module") or ""
    return module.startswith(("models.roi_pooling", "export.swap"))


def load_keras_model(
    path: Path, custom_files: Sequence[Path], roi_layer: str, samples_per_bin: int
):
    """Load ``path``; if its RoIPooling class cannot run here, load it swapped from its config."""
    import keras

    from export.swap import substitute_class

    path = Path(path)
    if not path.exists():
        raise ExportInputError(f"--keras-model {path}: no such file (expected a .keras or .h5)")
    _regular(path, "--keras-model")
    objects = _import_custom_objects(custom_files)
    config = saved_config(path)
    for entry in _layer_entries(config):
        # A class saved as "package>Name" is found by that key only; the user's file may define
        # it without registering it (or under another package).
        registered = entry.get("registered_name")
        if registered and registered not in objects and registered.rsplit(">", 1)[-1] in objects:
            objects[registered] = objects[registered.rsplit(">", 1)[-1]]
    try:
        model = keras.models.load_model(path, custom_objects=objects, compile=False)
        return LoadedModel(model, None)
    except Exception as error:  # Keras raises TypeError/ValueError/... for an unloadable layer
        why = load_cause(error)
    targets = [
        e
        for e in _layer_entries(config)
        # tf.keras 2 HDF5 configs store a registered class as "package>Name".
        if e["class_name"].rsplit(">", 1)[-1] in (roi_layer, "RoiPoolingConv")
        and not _is_roiedge_entry(e)
    ]
    if not targets:
        hint = "; pass --custom-objects FILE.py defining it" if "Could not locate" in why else ""
        raise ExportInputError(f"--keras-model {path}: Keras cannot load it ({why}){hint}")
    substitutes = dict(objects)
    for entry in targets:
        key = entry.get("registered_name") or entry["class_name"]
        substitutes[key] = substitute_class(entry, samples_per_bin)
    try:
        with _positional_legacy_nodes(path, config, targets) as loadable:
            swapped = keras.models.load_model(loadable, custom_objects=substitutes, compile=False)
    except ExportInputError:
        raise
    except Exception as error:
        raise ExportInputError(
            f"--keras-model {path}: Keras cannot load it, even with {roi_layer} swapped from its "
            f"saved config ({_first_line(error)})"
        ) from None
    return LoadedModel(None, swapped, why)


def _is_legacy_reference(value: Any) -> bool:
    """``["layer", node_index, tensor_index]``: a tensor in a tf.keras 2 config."""
    return (
        isinstance(value, list)
        and len(value) == 3
        and isinstance(value[0], str)
        and all(isinstance(v, int) for v in value[1:])
    )


@contextlib.contextmanager
def _positional_legacy_nodes(path: Path, config: dict[str, Any], targets: list[dict[str, Any]]):
    """``path``, or a temp copy whose RoIPooling calls pass rois/box_indexes positionally.

    tf.keras 2 saves ``layer(fm, rois, box_indexes)`` as one inbound tensor plus kwargs holding
    ``["rois", 0, 0]`` references, which Keras 3's legacy loader passes on as plain lists; as
    three positional inputs the layer is called with the list ``[fm, rois, box_indexes]``.
    """
    changed = False
    for entry in targets:
        for node in entry.get("inbound_nodes") or []:
            if not (isinstance(node, list) and len(node) == 1 and len(node[0]) == 4):
                continue
            kwargs = node[0][3]
            refs = {k: v for k, v in kwargs.items() if _is_legacy_reference(v)}
            if refs:
                node[0] = [*node[0][:3], {k: v for k, v in kwargs.items() if k not in refs}]
                node.extend([*ref, {}] for ref in refs.values())
                changed = True
    if not changed or zipfile.is_zipfile(path):
        yield path
        return
    import h5py

    with tempfile.TemporaryDirectory(prefix="roiedge-legacy-") as tmp:
        copy = Path(tmp) / path.name
        shutil.copyfile(path, copy)
        with h5py.File(copy, "r+") as handle:
            handle.attrs["model_config"] = json.dumps(config)
        yield copy


def io_infos(model: Any) -> tuple[list[TensorInfo], list[TensorInfo]]:
    """The model's inputs and outputs with Keras names, static shapes and dtypes (validated)."""
    name = model.name
    if not _MODEL_NAME.fullmatch(name or ""):
        raise ExportInputError(
            f"model name {name!r} cannot name artifact files; expected letters, digits, _ . - "
            "(set it with keras.Model(..., name='my_model'))"
        )
    inputs = []
    for tensor in model.inputs:
        shape = tuple(tensor.shape)
        if any(d is None for d in shape):
            raise ExportInputError(
                f"input {tensor.name!r} has shape {shape} with unknown dimension(s); the export "
                "needs every input static, batch included: build it with "
                f"keras.Input(shape={shape[1:]}, batch_size=...) using the sizes you deploy"
            )
        inputs.append(TensorInfo(tensor.name, shape, str(np.dtype(tensor.dtype))))
    outputs = [
        TensorInfo(n, tuple(t.shape), str(np.dtype(t.dtype)))
        for n, t in zip(model.output_names, model.outputs)
    ]
    names = [t.name for t in inputs] + [t.name for t in outputs]
    if len(set(names)) != len(names):
        raise ExportInputError(
            f"model {name}: input/output names {names} repeat; name them apart "
            "(keras.Input(..., name=...), a layer's name=...)"
        )
    return inputs, outputs


def coordinate_inputs(model: Any) -> tuple[str, ...]:
    """Model inputs that reach a RoIPooling layer's ``rois`` or ``box_indexes`` argument directly
    or through single-input layers (a Reshape, a Lambda slice...), or any coordinate operand of
    the model's graph (:mod:`export.coordinates`): their arithmetic is kept out of int8
    quantization. Model input order."""
    from export.swap import layer_arguments, roi_pooling_layers

    by_id = {id(t): t.name for t in model.inputs}
    producers = {}
    for layer in model.layers:
        try:
            output, source = layer.output, layer.input
        except (AttributeError, ValueError):  # a layer called more than once has no single output
            continue
        if not isinstance(output, (list, tuple)) and not isinstance(source, (list, tuple)):
            producers[id(output)] = source

    def origin(tensor):
        seen = 0
        while id(tensor) not in by_id and id(tensor) in producers and seen < len(producers):
            tensor, seen = producers[id(tensor)], seen + 1
        return by_id.get(id(tensor))

    names = []
    for layer in roi_pooling_layers(model):
        args = layer_arguments(layer)
        names += [n for n in (origin(t) for t in args[1:]) if n is not None]
    # Any other model: inputs reaching slice begins/sizes, gather indices, RoI boxes in its graph.
    from export.coordinates import graph_coordinate_inputs

    names += graph_coordinate_inputs(model)
    order = [t.name for t in model.inputs]
    return tuple(sorted(dict.fromkeys(names), key=order.index))


def crash_line(what: str, error: BaseException) -> str:
    """One line for a converter/calibrator crash while building artifact ``what``: its type and
    the line of its message that names the failing op (TFLite's "Node number N (OP) failed")."""
    text = str(error).strip()
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    failing = [line for line in lines if "failed" in line or "Error" in line or "error" in line]
    cause = " ".join((failing[-1] if failing else lines[-1] if lines else "").split())[:300]
    return f"{what}: the build crashed ({type(error).__name__}: {cause or 'no message'})"
