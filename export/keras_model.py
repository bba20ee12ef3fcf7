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

import dataclasses
import re
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from export.config import ExportCheckError, ExportInputError, add_output_arguments
from export.formats import PRECISIONS, model_artifacts
from export.keras_loading import LoadedModel, coordinate_inputs, io_infos, load_keras_model
from export.samples import Samples, load_samples
from export.stages import ModelIO
from runtime import strict_json
from runtime.errors import one_line, say
from runtime.limits import bad_number
from runtime.manifest import FORMATS, Manifest

SCHEMA_VERSION = 1


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
        bad = bad_number(
            "--samples-per-bin", self.samples_per_bin, 1, limit_name="config_samples_per_bin"
        )
        if bad:
            raise ExportInputError(bad)
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
    from export.pipeline import check_out

    check_out(Path(config.out))
    loaded = load_keras_model(
        config.keras_model, config.custom_objects, config.roi_layer, config.samples_per_bin
    )
    return _export(config, loaded, config.samples)


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


def _export(config: KerasExportConfig, loaded: LoadedModel, samples_source) -> Manifest:
    """Validate, swap and prove, then build, check and install the artifacts in ``config.out``."""
    from export import pipeline

    out = Path(config.out)
    with pipeline.claimed_out(out):
        return _export_claimed(config, loaded, samples_source, out)


def _export_claimed(config: KerasExportConfig, loaded: LoadedModel, samples_source, out: Path):
    """:func:`_export` while it holds ``out``."""
    from export import output_report, pipeline
    from export.shared import REPORT_DIR

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

    with pipeline.building_dir(out) as work:
        relative = pipeline.write_golden(work, name, golden_rows, golden_outputs)
        proof["coordinate_inputs"] = list(io.coordinate_inputs)
        proof["golden_samples"] = samples.golden_indexes
        proof["calibration_samples"] = len(samples.calibration_indexes)
        pipeline.atomic_write_bytes(
            work / REPORT_DIR / "swap_proof.json",
            strict_json.dump_bytes(proof),
        )
        entries, failures = pipeline.build_all(
            specs,
            {name: swapped},
            calibration,
            golden_in,
            golden_out,
            work,
            config.progress,
            ios={name: io},
            on_error=lambda spec, error: _build_failure(spec.name, error, config, swapped),
        )
        manifest = pipeline.sealed_manifest(
            work, entries, failures, {name: relative}, _source(config, name), detector={}
        )
        output_report.write(manifest, work, proof["summary"])
        pipeline.publish(manifest, work, out)
    return manifest


def _swap_and_prove(
    config, loaded: LoadedModel, samples: Samples, golden_rows, names_in, names_out
):
    """(swapped model, golden outputs = the original's, proof record); raises if unproven.

    The original runs here when it can; otherwise its outputs come from ``output:NAME`` arrays.
    """
    from export.samples import box_index_problem
    from export.shared import keras_outputs
    from export.swap import prove_swap, swap_roi_layers

    def refuse_bad_box_indexes(model: Any) -> None:  # before any model runs on the samples
        problem = box_index_problem(model, samples.rows(names_in, range(samples.count)))
        if problem is not None:
            raise ExportInputError(f"--samples {config.samples}: {problem}")

    if loaded.original is not None:
        swapped, swaps = swap_roi_layers(loaded.original, config.roi_layer, config.samples_per_bin)
        refuse_bad_box_indexes(swapped)
        golden_outputs = keras_outputs(loaded.original, golden_rows)
        source = "ran the original model here on the golden samples"
    else:
        swapped, swaps = loaded.swapped_at_load, None
        refuse_bad_box_indexes(swapped)
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
        say(f"warning: {range_warning}", file=sys.stderr)
    try:
        proof = prove_swap(
            swapped,
            golden_rows,
            golden_outputs,
            names_out,
            source,
            swaps,
            extra_reference=given,
            original=loaded.original,
        )
    except ExportCheckError as error:
        if range_warning:
            raise ExportCheckError(f"{error}; note: {range_warning}") from None
        raise
    say(f"swap proof: {proof['summary']}", file=sys.stderr)
    proof["coordinate_range_warning"] = range_warning
    return swapped, golden_outputs, proof


def _build_failure(what: str, error: Exception, config, swapped) -> Exception:
    """A one-line ExportCheckError for an artifact the converters or audits refused.

    The TFLite converter refuses TF ops without a builtin (``'tf.CropAndResize' op is neither a
    custom op nor a flex op``) with a page of MLIR; tf2onnx lowers CropAndResize to a Loop that
    the audit refuses. Both usually mean a crop_and_resize layer was not swapped.
    """
    from export.swap import roi_pooling_layers
    from runtime.errors import RoiedgeError

    if isinstance(error, RoiedgeError):
        return error
    if not isinstance(error, ExportCheckError) and type(error).__name__ != "ConverterError":
        # A converter or calibrator crash (e.g. int8 calibration's "RESHAPE failed to prepare"):
        # a failed build, said in one line with its cause.
        from export.keras_loading import crash_line

        return ExportCheckError(crash_line(what, error))
    ops = sorted(
        set(re.findall(r"'tf\.(\w+)' op is neither a custom op nor a flex op", str(error)))
    )
    text = (
        f"{what}: the TFLite converter has no builtin op for {', '.join(ops) or 'some TF op'}"
        if not isinstance(error, ExportCheckError)
        else one_line(error)
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
    add_output_arguments(parser, _PRECISIONS, FORMATS)
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
    return parser


def main(argv: list[str]) -> int:
    """Exit 0 ok, 1 a check failed (swap proof, audit, golden), 2 bad usage or input."""
    from export.summary import export_outcome

    args = build_parser().parse_args(argv)

    def run():
        config = KerasExportConfig(**{**vars(args), "custom_objects": tuple(args.custom_objects)})
        return run_keras_export(config), config.out

    return export_outcome(run)
