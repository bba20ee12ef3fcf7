"""Export any Keras model with a RoIPooling layer: ``python -m export --keras-model MODEL ...``.

:func:`export_keras_model` takes a ``keras.Model`` (notebook users) and :func:`run_keras_export`
a saved ``.keras``/``.h5`` file (the CLI). Both swap tutorial-style RoIPooling layers for
roiedge's builtin-only lowering in a copy (:mod:`export.swap`), prove the copy equals the
original on the golden samples, then build the detector's artifact table for the model with the
same builders, audits, golden checks and atomic install as ``make export``
(:mod:`export.pipeline`). The manifest's ``model`` is the Keras model's name; its golden npz
holds ``input_i``/``output_i`` in Keras order; tensors are named after the Keras inputs/outputs.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import json
import re
import shutil
import sys
import tempfile
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from export.config import ExportCheckError, ExportInputError
from export.formats import PRECISIONS, model_artifacts
from export.samples import Samples, TensorInfo, load_samples
from export.stages import ModelIO
from runtime.manifest import FORMATS, MANIFEST_NAME, Manifest, seal

SCHEMA_VERSION = 1
#: Artifact files are named after the model, so its name must be a plain file-name word.
_MODEL_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")


@dataclasses.dataclass(frozen=True)
class KerasExportConfig:
    """One ``python -m export --keras-model`` run (the CLI flags map 1:1 onto the fields).

    ``custom_objects``: Python files imported before loading (the user's layer classes).
    ``roi_layer``: class name of the layers to swap. ``samples_per_bin``: bilinear samples per
    output bin along each axis of the swapped layers (1 = plain crop_and_resize to ``size``).
    ``formats``/``precisions`` select table rows (None = all).
    """

    keras_model: Path
    samples: Path
    out: Path
    custom_objects: tuple[Path, ...] = ()
    roi_layer: str = "RoIPooling"
    samples_per_bin: int = 1
    formats: tuple[str, ...] | None = None
    precisions: tuple[str, ...] | None = None
    progress: bool = True
    schema_version: int = SCHEMA_VERSION

    def __post_init__(self) -> None:
        if self.samples_per_bin < 1:
            raise ExportInputError(
                f"--samples-per-bin is {self.samples_per_bin}; expected a positive int"
            )
        if not self.roi_layer:
            raise ExportInputError("--roi-layer is empty; expected a layer class name")
        for field, allowed in (("formats", FORMATS), ("precisions", _PRECISIONS)):
            values = getattr(self, field)
            if values is None:
                continue
            unknown = [v for v in values if v not in allowed]
            if not values or unknown:
                raise ExportInputError(
                    f"--{field} {','.join(values)}: expected some of {', '.join(allowed)}"
                )


#: Precisions of :func:`export.formats.model_artifacts` (not the backbone's int8_io, not mixed).
_PRECISIONS = tuple(p for p in PRECISIONS if p not in ("int8_io", "mixed"))


@dataclasses.dataclass(frozen=True)
class LoadedModel:
    """A model file as loaded here: the original (None if its layer cannot run here) and, when
    the original could not be loaded, the copy whose RoIPooling layers were swapped at load."""

    original: Any
    swapped_at_load: Any
    why_no_original: str | None = None


# ----------------------------------------------------------------------------- model and loading


def _import_custom_objects(files: Sequence[Path]) -> dict[str, Any]:
    """Import each file as a module; its classes by name (registration happens on import)."""
    objects: dict[str, Any] = {}
    for index, path in enumerate(files):
        path = Path(path)
        if not path.is_file():
            raise ExportInputError(f"--custom-objects {path}: no such file (expected a .py file)")
        name = f"roiedge_custom_objects_{index}_{re.sub(r'[^A-Za-z0-9_]', '_', path.stem)}"
        spec = importlib.util.spec_from_file_location(name, path)
        if spec is None or spec.loader is None:
            raise ExportInputError(f"--custom-objects {path}: not an importable Python file")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        try:
            spec.loader.exec_module(module)
        except Exception as error:  # the user's code: any exception is their file's problem
            raise ExportInputError(
                f"--custom-objects {path}: importing it failed ({type(error).__name__}: "
                f"{_first_line(error)})"
            ) from None
        objects.update({k: v for k, v in vars(module).items() if isinstance(v, type)})
    return objects


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def saved_config(path: Path) -> dict[str, Any]:
    """The model config stored in a ``.keras`` zip or a legacy ``.h5`` file."""
    try:
        if zipfile.is_zipfile(path):
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
    except (OSError, KeyError, ValueError) as error:
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
    if not path.is_file():
        raise ExportInputError(f"--keras-model {path}: no such file (expected a .keras or .h5)")
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
        why = _first_line(error).split(". ")[0]
    targets = [
        e
        for e in _layer_entries(config)
        # tf.keras 2 HDF5 configs store a registered class as "package>Name".
        if e["class_name"].rsplit(">", 1)[-1] == roi_layer and not _is_roiedge_entry(e)
    ]
    if not targets:
        raise ExportInputError(f"--keras-model {path}: Keras cannot load it ({why})")
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
    or through single-input layers (a Reshape, a Lambda slice...): their arithmetic is kept
    out of int8 quantization."""
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
    return tuple(dict.fromkeys(names))


# ------------------------------------------------------------------------------------- the export


def export_keras_model(
    model: Any,
    samples: Path | Mapping[str, np.ndarray],
    out: Path,
    *,
    roi_layer: str = "RoIPooling",
    samples_per_bin: int = 1,
    formats: Sequence[str] | None = None,
    precisions: Sequence[str] | None = None,
    progress: bool = True,
    source: str | None = None,
) -> Manifest:
    """Export a ``keras.Model`` (never edited) to TFLite + ONNX artifacts under ``out``.

    ``samples``: a SAMPLES.npz path or a dict of arrays, one per model input keyed by Keras input
    name, leading axis = sample (>= 8). Returns the installed manifest; raises ExportInputError
    (bad input) or ExportCheckError (swap proof, audit or golden check failed).
    """
    config = KerasExportConfig(
        keras_model=Path(source or "<keras.Model>"),
        samples=Path("<arrays>") if isinstance(samples, Mapping) else Path(samples),
        out=Path(out),
        roi_layer=roi_layer,
        samples_per_bin=samples_per_bin,
        formats=tuple(formats) if formats else None,
        precisions=tuple(precisions) if precisions else None,
        progress=progress,
    )
    return _export(config, LoadedModel(model, None), samples)


def run_keras_export(config: KerasExportConfig) -> Manifest:
    """The CLI's run: load ``config.keras_model`` (with its custom objects) and export it."""
    _check_out(Path(config.out))
    loaded = load_keras_model(
        config.keras_model, config.custom_objects, config.roi_layer, config.samples_per_bin
    )
    return _export(config, loaded, config.samples)


def _check_out(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise ExportInputError(f"--out {out}: exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not (out / MANIFEST_NAME).is_file():
        raise ExportInputError(
            f"--out {out}: a non-empty directory without {MANIFEST_NAME}; refusing to replace "
            "something that is not an artifacts directory"
        )


def _selected(config: KerasExportConfig, model_name: str):
    """The table rows ``--formats``/``--precisions`` select; refuses a selection of nothing."""
    rows = model_artifacts(model_name)
    chosen = tuple(
        a
        for a in rows
        if (config.formats is None or a.format in config.formats)
        and (config.precisions is None or a.precision in config.precisions)
    )
    if not chosen:
        raise ExportInputError(
            f"--formats {','.join(config.formats or FORMATS)} with --precisions "
            f"{','.join(config.precisions or _PRECISIONS)} selects no artifact; the table has "
            f"{', '.join(a.name.split('/', 1)[1] for a in rows)}"
        )
    return chosen


def _bar(config: KerasExportConfig, **kwargs):
    from tqdm import tqdm

    return tqdm(disable=not config.progress, dynamic_ncols=True, **kwargs)


def _export(config: KerasExportConfig, loaded: LoadedModel, samples_source) -> Manifest:
    """Validate, swap and prove, then build, check and install the artifacts in ``config.out``."""
    from export import output_report, pipeline

    out = Path(config.out)
    _check_out(out)
    base = loaded.original if loaded.original is not None else loaded.swapped_at_load
    inputs, outputs = io_infos(base)
    specs = _selected(config, base.name)
    samples = load_samples(samples_source, inputs, outputs)
    names_in = [t.name for t in inputs]
    names_out = [t.name for t in outputs]
    golden_rows = samples.rows(names_in, samples.golden_indexes)
    swapped, golden_outputs, proof = _swap_and_prove(
        config, loaded, samples, golden_rows, names_in, names_out
    )

    name = base.name
    io = ModelIO(tuple(names_in), tuple(names_out), coordinate_inputs(swapped))
    calibration = {name: samples.rows(names_in, samples.calibration_indexes)}
    golden_in = {name: golden_rows}
    golden_out = {name: golden_outputs}

    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.building-"))
    try:
        relative = f"{pipeline.GOLDEN_DIR}/{name}.npz"
        arrays = pipeline.golden_arrays(golden_rows, golden_outputs)
        pipeline.atomic_write_bytes(work / relative, pipeline._npz_bytes(arrays))
        proof["coordinate_inputs"] = list(io.coordinate_inputs)
        proof["golden_samples"] = samples.golden_indexes
        proof["calibration_samples"] = len(samples.calibration_indexes)
        pipeline.atomic_write_bytes(
            work / pipeline.REPORT_DIR / "swap_proof.json",
            (json.dumps(proof, indent=2) + "\n").encode(),
        )
        entries, failures = [], []
        with _bar(config, total=len(specs), desc="artifacts", unit="artifact") as bar:
            for spec in specs:
                bar.set_postfix_str(spec.name)
                try:
                    entry, broken = pipeline._build_one(
                        spec, {name: swapped}, calibration, golden_in, golden_out, work, io
                    )
                except Exception as error:  # the converters raise their own types
                    raise _build_failure(spec.name, error, config, swapped) from None
                entries.append(entry)
                failures.extend(broken)
                bar.update(1)
        if failures:
            raise ExportCheckError(
                f"{len(failures)} golden check(s) failed: " + "; ".join(failures)
            )
        manifest = seal(  # golden file's and (empty) detector config's sha256
            Manifest(
                artifacts=tuple(entries),
                golden={name: relative},
                source_models=_source(config, name),
                detector={},
                versions=pipeline._versions(),
            ),
            work,
        )
        output_report.write(manifest, work, proof["summary"])
        pipeline.write_manifest(manifest, work)
        for entry in pipeline.read_manifest(work).artifacts:
            pipeline.verified_path(work, entry)
        pipeline._publish_permissions(work)
        pipeline.swap_in(work, out)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return manifest


def _swap_and_prove(
    config, loaded: LoadedModel, samples: Samples, golden_rows, names_in, names_out
):
    """(swapped model, golden outputs = the original's, proof record); raises if unproven.

    The original runs here when it can; otherwise its outputs come from ``output:NAME`` arrays.
    """
    from export.pipeline import _keras_outputs
    from export.swap import prove_swap, swap_roi_layers

    if loaded.original is not None:
        swapped, swaps = swap_roi_layers(loaded.original, config.roi_layer, config.samples_per_bin)
        golden_outputs = _keras_outputs(loaded.original, golden_rows)
        source = "ran the original model here on the golden samples"
    else:
        swapped, swaps = loaded.swapped_at_load, None
        if not samples.outputs:
            raise ExportInputError(
                f"{config.keras_model}: its {config.roi_layer} layer cannot run here "
                f"({loaded.why_no_original}); pass --custom-objects FILE.py defining it, or "
                f"add the original model's outputs to {config.samples} as "
                f"{', '.join('output:' + n for n in names_out)} for the proof"
            )
        golden_outputs = samples.output_rows(names_out, samples.golden_indexes)
        source = (
            f"original outputs from {config.samples} (output:NAME; the original layer cannot "
            f"run here: {loaded.why_no_original})"
        )
    given = None
    if samples.outputs and loaded.original is not None:
        # Recorded, not judged: they may come from another TF build (different rounding).
        given = samples.output_rows(names_out, samples.golden_indexes)
        source += "; the given output:NAME arrays are compared in the report"
    # Before the proof: RoIs beyond the exact range are the likeliest reason for it to fail.
    range_warning = _range_warning(swapped, samples, names_in)
    if range_warning:
        print(f"warning: {range_warning}", file=sys.stderr)
    try:
        proof = prove_swap(
            swapped, golden_rows, golden_outputs, names_out, source, swaps, extra_reference=given
        )
    except ExportCheckError as error:
        if range_warning:
            raise ExportCheckError(f"{error}; note: {range_warning}") from None
        raise
    print(f"swap proof: {proof['summary']}", file=sys.stderr)
    proof["coordinate_range_warning"] = range_warning
    return swapped, golden_outputs, proof


def _build_failure(what: str, error: Exception, config, swapped) -> Exception:
    """A one-line ExportCheckError for an artifact the converters or audits refused.

    The TFLite converter refuses TF ops without a builtin (``'tf.CropAndResize' op is neither a
    custom op nor a flex op``) with a page of MLIR; tf2onnx lowers CropAndResize to a Loop that
    the audit refuses. Both usually mean a crop_and_resize layer was not swapped.
    """
    from export.swap import roi_pooling_layers

    if not isinstance(error, ExportCheckError) and type(error).__name__ != "ConverterError":
        return error
    ops = sorted(
        set(re.findall(r"'tf\.(\w+)' op is neither a custom op nor a flex op", str(error)))
    )
    text = (
        f"{what}: the TFLite converter has no builtin op for {', '.join(ops) or 'some TF op'}"
        if not isinstance(error, ExportCheckError)
        else " ".join(str(error).split())
    )
    if "CropAndResize" in str(error) or (
        ("Loop" in str(error) or ops) and not roi_pooling_layers(swapped)
    ):
        text += (
            f"; no layer of class {config.roi_layer} was swapped: if a layer calls "
            "tf.image.crop_and_resize, name its class with --roi-layer NAME"
        )
    return ExportCheckError(text)


def _source(config: KerasExportConfig, name: str) -> dict[str, str]:
    path = Path(config.keras_model)
    found = {name: str(path)}
    if path.is_file():
        from runtime.manifest import sha256_file

        found["keras_sha256"] = sha256_file(path)
    return found


def _range_warning(model: Any, samples: Samples, names_in: Sequence[str]) -> str | None:
    """A warning when sample RoIs leave the range the fixed-point lowering is exact in
    (``models.roi_pooling.rois_in_exact_range``); None when they all stay inside."""
    from export.swap import roi_inputs
    from models.roi_pooling import EXACT_RANGE, rois_in_exact_range

    rois = roi_inputs(model, samples.rows(names_in, range(samples.count)))
    if all(rois_in_exact_range(r) for r in rois):
        return None
    low, high = EXACT_RANGE
    outside = sum(
        int(np.sum(~np.all((r >= low) & (r <= high), axis=-1))) for r in rois
    )  # NaN counts as outside, as in rois_in_exact_range
    worst = max(float(np.nanmax(np.abs(r))) if np.isfinite(r).any() else 0.0 for r in rois)
    return (
        f"{outside} sample RoI(s) have coordinates outside [{low:g}, {high:g}] (|max| "
        f"{worst:.3g}); the builtin RoIPooling is exact only inside that normalized range and "
        "clamps coordinates to it"
    )


# ------------------------------------------------------------------------------------------- CLI


def _names(text: str) -> tuple[str, ...]:
    return tuple(v.strip() for v in text.split(",") if v.strip())


def build_parser():
    """``python -m export --keras-model ...``: the flags of :class:`KerasExportConfig`."""
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m export",
        description="Convert any Keras model with a RoIPooling layer (roiedge's or a "
        "tutorial-style crop_and_resize one, swapped and proven) to TFLite and ONNX.",
    )
    defaults = KerasExportConfig(Path("m"), Path("s"), Path("o"))
    parser.add_argument("--keras-model", type=Path, required=True, help=".keras or legacy .h5")
    parser.add_argument(
        "--samples",
        type=Path,
        required=True,
        help="SAMPLES.npz: one array per input keyed by Keras input name, leading axis = sample "
        "(>= 8); optional output:NAME arrays of the original model for the proof",
    )
    parser.add_argument("--out", type=Path, required=True, help="artifacts directory to (re)place")
    parser.add_argument(
        "--custom-objects",
        type=Path,
        nargs="+",
        default=(),
        metavar="FILE.py",
        help="Python files defining the model's custom layers (imported before loading)",
    )
    parser.add_argument(
        "--roi-layer", default=defaults.roi_layer, help="class name of the layers to swap"
    )
    parser.add_argument(
        "--samples-per-bin",
        type=int,
        default=defaults.samples_per_bin,
        help="bilinear samples per bin and axis of the swapped layers, max-pooled (default 1)",
    )
    parser.add_argument("--formats", type=_names, default=None, help=f"of {','.join(FORMATS)}")
    parser.add_argument(
        "--precisions", type=_names, default=None, help=f"of {','.join(_PRECISIONS)}"
    )
    parser.add_argument(
        "--no-progress", dest="progress", action="store_false", help="no progress bars"
    )
    return parser


def main(argv: list[str]) -> int:
    """Exit 0 ok, 1 a check failed (swap proof, audit, golden), 2 bad usage or input."""
    from export.__main__ import summary
    from runtime.errors import RoiedgeError

    args = build_parser().parse_args(argv)
    try:
        config = KerasExportConfig(**{**vars(args), "custom_objects": tuple(args.custom_objects)})
        manifest = run_keras_export(config)
    except RoiedgeError as error:
        print(f"error: {' '.join(str(error).split())}", file=sys.stderr)
        return 2
    except ExportCheckError as error:
        print(f"export check failed: {' '.join(str(error).split())}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    print(summary(manifest, Path(config.out)))
    return 0
