"""One export run: calibrate, build every selected artifact, audit, check goldens, swap in atomically.

Everything is built in a temp directory next to ``--out``; only when every artifact passed its
audits and golden check and the manifest verifies is the old directory replaced (two renames). A
failed export leaves ``--out`` exactly as it was.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import shutil
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from export import audit, onnx_format, tflite_format
from export.builders import BUILDERS, SPECS
from export.calibration import (
    StageInputs,
    calibration_files,
    hold_out_golden,
    load_image,
    procedural_images,
    stage_samples,
)
from export.config import (
    CALIBRATION_SPLIT,
    DEFAULT_CALIBRATION_IMAGES,
    GOLDEN_SPLIT,
    ExportCheckError,
    ExportConfig,
    ExportInputError,
)
from export.formats import ArtifactSpec
from export.shared import REPORT_DIR, keras_outputs
from export.stages import STAGE_IO, ModelIO, model_io
from export.streaming import clear_cache, named_samples, spill_directory, spill_stage_samples
from export.streaming import progress as streaming_progress
from runtime import strict_json
from runtime.errors import RoiedgeError, printable
from runtime.manifest import (
    MANIFEST_NAME,
    ArtifactEntry,
    Manifest,
    atomic_write_bytes,
    read_manifest,
    seal,
    sha256_file,
    verified_path,
    write_manifest,
)
from runtime.replace import exchange_paths, output_lock, remove_stale
from runtime.safe_files import regular_file, writable_output

GOLDEN_DIR = "golden"


def _bar(config: ExportConfig, **kwargs):
    from tqdm import tqdm

    return tqdm(disable=not config.progress, dynamic_ncols=True, **kwargs)


def check_inputs(config: ExportConfig) -> tuple[list[Path], list[Path]] | None:
    """Validate paths before any heavy work; returns the (calibration, golden) image files of
    ``--calibration`` (None = procedural scenes)."""
    model = Path(config.model)
    if not model.exists():
        raise ExportInputError(
            f"--model {model}: no such file (expected a .keras detector saved by models.detector)"
        )
    try:  # a FIFO, device or folder is named as what it is, never opened
        regular_file(model, "--model")
    except RoiedgeError as error:
        raise ExportInputError(str(error)) from None
    check_out(Path(config.out))
    if config.calibration is None:
        return None
    files = calibration_files(Path(config.calibration))
    calibration, golden = hold_out_golden(files, config.golden_samples)
    if config.calibration_images is not None and config.calibration_images > len(calibration):
        raise ExportInputError(
            f"--calibration {config.calibration}: has {len(files)} images, {len(golden)} of them "
            f"held back as golden samples, but --calibration-images asks for "
            f"{config.calibration_images}"
        )
    return calibration, golden


def _calibration_images(config: ExportConfig, files: list[Path] | None, size):
    """(count, an iterator of the calibration images, made one at a time: none is kept)."""
    if files is None:
        count = config.calibration_images or DEFAULT_CALIBRATION_IMAGES
        return count, (
            procedural_images(1, CALIBRATION_SPLIT, size=size, start=index)[0]
            for index in range(count)
        )
    files = files[: config.calibration_images] if config.calibration_images else files
    return len(files), (load_image(path, size) for path in files)


def npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def golden_arrays(
    inputs: list[list[np.ndarray]], outputs: list[list[np.ndarray]]
) -> dict[str, np.ndarray]:
    """``input_i``/``output_i`` in Keras order, samples stacked on a new leading axis."""
    arrays = {f"input_{i}": np.stack([s[i] for s in inputs]) for i in range(len(inputs[0]))}
    arrays.update(
        {f"output_{j}": np.stack([s[j] for s in outputs]) for j in range(len(outputs[0]))}
    )
    return arrays


def golden_check(
    entry: ArtifactEntry,
    path: Path,
    inputs: list[list[np.ndarray]],
    reference: list[list[np.ndarray]],
    io: ModelIO | None = None,
) -> tuple[dict[str, Any], list[str]]:
    """Run the written artifact through the device's code path on the golden inputs and judge it.

    ``runtime.backends`` loads ``path`` (ai-edge-litert / onnxruntime, quantized I/O converted with
    the tensors' own parameters) and :mod:`runtime.golden` judges the outputs: the same loader,
    binding and judge as ``python -m runtime check``. Returns per-output metrics and broken bounds.
    """
    from runtime.backends import Stage, open_backend
    from runtime.golden import class_score_output, compare_outputs

    stage = Stage(entry, open_backend(path, entry.format, num_threads=1), path)
    actual = [stage.run(*sample) for sample in inputs]
    names = model_io(entry.model, io).outputs
    references = [np.stack([s[j] for s in reference]) for j in range(len(names))]
    class_scores = class_score_output(names, references)
    verdict = compare_outputs(
        entry.precision,
        [np.stack([s[j] for s in actual]) for j in range(len(names))],
        references,
        names,
        class_scores=class_scores,
    )
    results: dict[str, Any] = {}
    for output in verdict.outputs:
        results[output.name] = {k: float(v) for k, v in vars(output.metrics).items()}
        results[output.name]["failures"] = list(output.failures)
    if verdict.top1_agreement is not None:
        results[names[class_scores]]["top1_agreement"] = verdict.top1_agreement
    return results, [f"{entry.name}: {failure}" for failure in verdict.failures]


def audit_artifact(spec: ArtifactSpec, data: bytes) -> dict[str, Any]:
    """Op audit (raises ExportCheckError) and the op report body of one artifact."""
    report: dict[str, Any] = {"artifact": spec.name}
    if spec.format == "tflite":
        ops = audit.check_tflite_builtin_only(data, spec.name)
        report["builtin_ops_only"] = True
        report["op_versions"] = audit.tflite_op_versions(data)
        report["min_runtime_version"] = audit.check_tflite_runtime_version(data, spec.name)
        if spec.precision == "int8_io":
            from export.edgetpu import edgetpu_report
            from export.single_file import PIECES
            from runtime.single import SINGLE_MODEL

            # The single file's report also says which chained piece each op belongs to.
            pieces = PIECES if spec.model == SINGLE_MODEL else ()
            report["edgetpu"] = edgetpu_report(data, pieces)
    else:
        import onnx

        ops = audit.check_onnx_loop_free(onnx.load_from_string(data), spec.name)
        report["loop_free"] = True
        report["opset"] = onnx_format.ONNX_OPSET
    report["ops"] = dict(sorted(ops.items()))
    report["op_count"] = int(sum(ops.values()))
    return report


def package_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for key, dist in (
        ("tensorflow", "tensorflow-cpu"),
        ("keras", "keras"),
        ("tf2onnx", "tf2onnx"),
        ("onnx", "onnx"),
        ("onnxruntime", "onnxruntime"),
        ("numpy", "numpy"),
        ("ai_edge_litert", "ai-edge-litert"),
    ):
        try:
            found[key] = version(dist)
        except PackageNotFoundError:
            if key == "tensorflow":
                import tensorflow as tf

                found[key] = tf.__version__
    return found


def _source_models(model: Path) -> dict[str, str]:
    model = model.resolve()
    root = Path(__file__).resolve().parent.parent
    shown = str(model.relative_to(root)) if model.is_relative_to(root) else str(model)
    return {
        "backbone_rpn": f"{shown}#backbone_rpn",
        "head": f"{shown}#head",
        "keras_sha256": sha256_file(model),
    }


def publish_permissions(tree: Path) -> None:
    """Temp files are created 0600/0700; published artifacts get the usual umask modes."""
    mask = os.umask(0)
    os.umask(mask)
    for path in (tree, *tree.rglob("*")):
        os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~mask)


def check_out(out: Path) -> None:
    """Refuse an ``--out`` that is not (or cannot become) an artifacts directory we may replace."""
    if out.exists() and not out.is_dir():
        raise ExportInputError(f"--out {out}: exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not (out / MANIFEST_NAME).is_file():
        raise ExportInputError(
            f"--out {out}: a non-empty directory without {MANIFEST_NAME}; refusing to replace "
            "something that is not an artifacts directory"
        )
    try:  # the new tree is built beside ``out`` and swapped in: its folder must be writable
        if out.is_dir():
            writable_output(out.parent, f"--out {out}: its folder", kind="dir")
        else:
            writable_output(out, "--out", kind="dir")
    except RoiedgeError as error:
        raise ExportInputError(str(error)) from None


def _building_prefix(out: Path) -> str:
    return f".{out.name}.building-"


def _old_prefix(out: Path) -> str:
    return f".{out.name}.old-"


@contextlib.contextmanager
def claimed_out(out: Path):
    """Hold ``out`` for one export: :func:`check_out`, its lock (a second export to the same
    ``--out`` is refused in one line, exit 2), and the leftovers of a killed export removed.

    While the lock is held no other export of ``out`` runs, so every ``.<name>.building-*``
    and ``.<name>.old-*`` folder beside it is a killed export's; if one was killed between the
    two renames of the fallback swap (``out`` missing), its old tree is put back first.
    """
    check_out(out)
    with output_lock(out, "--out", "export"):
        if not out.exists():
            for old in sorted(out.parent.glob(_old_prefix(out) + "*")):
                if (old / out.name / MANIFEST_NAME).is_file():
                    os.replace(old / out.name, out)
                    break
        remove_stale(out.parent, (_building_prefix(out) + "*", _old_prefix(out) + "*"))
        yield


def swap_in(built: Path, out: Path) -> None:
    """Replace ``out`` by ``built`` in one atomic step; the old tree is removed afterwards.

    ``renameat2(RENAME_EXCHANGE)`` swaps the two trees, so ``out`` is at every instant either
    the old or the new tree; the old one is left at ``built``'s name (a killed export's
    leftover there is removed by the next, :func:`claimed_out`). Where the file system cannot
    exchange, two renames, and :func:`claimed_out` restores the old tree if killed between them.
    """
    if not (out.exists() or out.is_symlink()):
        os.replace(built, out)
    elif exchange_paths(built, out):
        shutil.rmtree(built, ignore_errors=True)  # now the old tree
    else:
        old = Path(tempfile.mkdtemp(dir=out.parent, prefix=_old_prefix(out)))
        os.replace(out, old / out.name)
        os.replace(built, out)
        shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def building_dir(out: Path):
    """A fresh temporary directory next to ``out`` to build into; removed if anything fails
    (nothing partial is left behind), kept for :func:`publish` otherwise."""
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(dir=out.parent, prefix=_building_prefix(out)))
    try:
        yield work
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise


def write_golden(
    work: Path, model: str, inputs: list[list[np.ndarray]], outputs: list[list[np.ndarray]]
) -> str:
    """Write ``model``'s golden inputs and outputs into ``work``; returns the relative path."""
    relative = f"{GOLDEN_DIR}/{model}.npz"
    atomic_write_bytes(work / relative, npz_bytes(golden_arrays(inputs, outputs)))
    return relative


def publish(manifest: Manifest, work: Path, out: Path) -> None:
    """Write ``manifest`` into ``work``, verify every artifact against the manifest as read
    back, then swap ``work`` in for ``out`` (the one step both export paths end with)."""
    write_manifest(manifest, work)
    for entry in read_manifest(work).artifacts:
        verified_path(work, entry)
    publish_permissions(work)
    swap_in(work, out)


def run_export(config: ExportConfig) -> Manifest:
    """Build, check and atomically install every selected artifact; returns the manifest."""
    specs = config.selected()
    files = check_inputs(config)  # bad input refused before --out is claimed
    with claimed_out(Path(config.out)), contextlib.ExitStack() as scratch:
        scratch.callback(clear_cache)  # spilled calibration samples, cached calibrations
        scratch.enter_context(streaming_progress(config.progress))
        return _export(config, scratch, specs, files)


def _export(config: ExportConfig, scratch: contextlib.ExitStack, specs, files) -> Manifest:
    out = Path(config.out)

    from models.detector import load_detector

    detector = load_detector(Path(config.model))
    keras_models = {"backbone_rpn": detector.backbone_rpn, "head": detector.head}
    stages = [m for m in STAGE_IO if any(s.model == m for s in specs)]

    size = detector.config.image_size
    calibration_paths, golden_paths = files if files is not None else (None, None)
    count, images = _calibration_images(config, calibration_paths, size)
    # Calibration inputs live on disk, one sample in memory at a time (export.streaming).
    source = "procedural" if calibration_paths is None else config.calibration
    with _bar(
        config, total=count, desc=f"calibration inputs ({printable(source)}, float backbone)"
    ) as bar:
        calibration = spill_stage_samples(
            StageInputs(detector), images, scratch.enter_context(spill_directory()), bar
        )
    if golden_paths is None:
        golden_images = procedural_images(config.golden_samples, GOLDEN_SPLIT, size=size)
    else:  # held back from the user's images, resized as the runtime resizes
        golden_images = [load_image(path, size) for path in golden_paths]
    golden_inputs = stage_samples(detector, golden_images)
    golden_outputs = {m: keras_outputs(keras_models[m], golden_inputs[m]) for m in stages}

    with building_dir(out) as work:
        golden = {
            model: write_golden(work, model, golden_inputs[model], golden_outputs[model])
            for model in stages
        }

        entries, failures = build_all(
            specs,
            keras_models,
            calibration,
            golden_inputs,
            golden_outputs,
            work,
            config.progress,
            mixed={
                "detector": detector,
                "validation": "procedural" if files is None else "folder",
                "target_drop": config.target_drop,
                "val_images": config.val_images,
            },
        )
        # The single-file detectors (export/single_export.py), from the stage files just built.
        single, broken, single_golden = _single_files(entries, work, detector, golden_images)
        entries, failures = entries + single, failures + broken
        if single_golden:
            golden["detector"] = single_golden
        manifest = sealed_manifest(
            work,
            entries,
            failures,
            golden,
            source_models={
                **_source_models(Path(config.model)),
                # What the int8 artifacts were calibrated on (stage-1 input tensors, in order).
                "calibration_sha256": tflite_format.calibration_sha256(
                    {"image": sample[0]} for sample in calibration["backbone_rpn"]
                ),
            },
            detector=detector.config.to_dict(),
        )
        publish(manifest, work, out)
    return manifest


def _single_files(entries, work: Path, detector, golden_images):
    """export.single_export's single files of the built stage entries (entries, failures, golden)."""
    from export.single_export import build_single_files
    from models.detector import FloatDetector

    run = FloatDetector(detector)
    reference = [run(image) for image in golden_images]
    with _quiet():
        return build_single_files(
            entries, work, detector.config, golden_images, reference, audit_artifact
        )


@contextlib.contextmanager
def _quiet():
    """Hold back converter chatter (onnxruntime's calibration prints, TF's deprecation warning
    about its own calibrator's interpreter, onnxruntime's pre-processing hint that we follow)
    so the progress bars stay readable; printed output is replayed if the build fails."""
    captured = io.StringIO()
    root = logging.getLogger()
    level = root.level
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(captured):
            warnings.filterwarnings("ignore", message=r".*tf\.lite\.Interpreter is deprecated")
            root.setLevel(logging.ERROR)
            yield
    except BaseException:
        sys.stderr.write(captured.getvalue())
        raise
    finally:
        root.setLevel(level)


def build_all(
    specs,
    keras_models,
    calibration,
    golden_inputs,
    golden_outputs,
    work: Path,
    progress: bool,
    ios: dict[str, ModelIO] | None = None,
    mixed=None,
    on_error=None,
) -> tuple[list[ArtifactEntry], list[str]]:
    """Every spec through :func:`build_one` into ``work`` under one progress bar; (entries,
    golden-check failures). ``ios``: each model's I/O when it is not a detector stage.
    ``on_error(spec, error)``: the exception to raise instead of any error building ``spec``
    (None = re-raise it).
    """
    from tqdm import tqdm

    entries, failures = [], []
    with tqdm(
        total=len(specs),
        desc="artifacts",
        unit="artifact",
        disable=not progress,
        dynamic_ncols=True,
    ) as bar:
        for spec in specs:
            bar.set_postfix_str(spec.name)
            io = (ios or {}).get(spec.model)
            try:
                entry, broken = build_one(
                    spec,
                    keras_models,
                    calibration,
                    golden_inputs,
                    golden_outputs,
                    work,
                    io,
                    mixed,
                )
            except Exception as error:  # the converters raise their own types
                if on_error is None:
                    raise
                raise on_error(spec, error) from None
            entries.append(entry)
            failures.extend(broken)
            bar.update(1)
    return entries, failures


def sealed_manifest(
    work: Path,
    entries: list[ArtifactEntry],
    failures: list[str],
    golden: dict[str, str],
    source_models: dict[str, str],
    detector: dict[str, Any],
) -> Manifest:
    """The manifest of the built ``entries`` with golden files' and detector's sha256 sealed in;
    raises the golden-check failures first (nothing is sealed for a failed build)."""
    raise_golden_failures(failures)
    return seal(
        Manifest(
            artifacts=tuple(entries),
            golden=golden,
            source_models=source_models,
            detector=detector,
            versions=package_versions(),
        ),
        work,
    )


def raise_golden_failures(failures: list[str]) -> None:
    """An ExportCheckError listing every failed golden check of the export, if there is one."""
    if failures:
        raise ExportCheckError(f"{len(failures)} golden check(s) failed: " + "; ".join(failures))


def build_one(
    spec, keras_models, calibration, golden_inputs, golden_outputs, work: Path, io=None, mixed=None
):
    """Build, audit and golden-check one artifact into ``work``; (ArtifactEntry, failures).

    ``io`` is the model's I/O when it is not a detector stage (see :class:`ModelIO`); ``mixed``
    what the mixed-precision search needs (:class:`export.tflite_format.BuildInput` fields).
    """
    from export.shared import BuildInput
    from export.swap import retile_for

    names = model_io(spec.model, io).inputs
    samples = named_samples(calibration[spec.model], names)
    golden = [dict(zip(names, s)) for s in golden_inputs[spec.model]]
    keras_model, retiled = retile_for(
        keras_models[spec.model], spec.format, spec.precision, golden_inputs[spec.model][:2]
    )
    build = BuildInput(spec.model, keras_model, samples, io, golden=golden, **(mixed or {}))
    with _quiet():
        built = BUILDERS[spec.format][spec.precision](build)
    report = audit_artifact(spec, built.data)
    inputs, outputs = SPECS[spec.format](built.data, spec.model, io)
    path = work / spec.filename
    atomic_write_bytes(path, built.data)
    report_path = f"{REPORT_DIR}/{spec.filename}.json"
    entry = ArtifactEntry(
        name=spec.name,
        model=spec.model,
        format=spec.format,
        precision=spec.precision,
        path=spec.filename,
        sha256=sha256_file(path),
        bytes=path.stat().st_size,
        inputs=inputs,
        outputs=outputs,
        op_report=report_path,
    )
    metrics, broken = golden_check(
        entry, path, golden_inputs[spec.model], golden_outputs[spec.model], io
    )
    report.update(
        {
            "format": spec.format,
            "precision": spec.precision,
            "description": spec.description,
            "bytes": len(built.data),
            "build_notes": {
                **built.notes,
                **({"roi_tiles_sized_for_int8": retiled} if retiled else {}),
            },
            "golden_check": metrics,
        }
    )
    atomic_write_bytes(work / report_path, strict_json.dump_bytes(report))
    return entry, broken
