"""``python -m runtime run DIR --inputs X.npz --out Y.npz``: run one artifact of any exported model.

X.npz holds one array per model input keyed by its Keras input name (the manifest's tensor names
are accepted too), each either one sample (the tensor's shape) or several stacked on a new
leading axis. Y.npz gets one array per output keyed by its Keras output name, with the same
leading axis. Quantized tensors are quantized and dequantized with their own scale and zero point
(:mod:`runtime.backends`), so inputs and outputs are always float (or int for index inputs).
"""

from __future__ import annotations

import argparse
import io
import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from runtime.backends import canonical_name, load_stage
from runtime.errors import RoiedgeError, say
from runtime.input_checks import check_range, refuse_kind
from runtime.limits import flag_type
from runtime.manifest import FORMATS, MANIFEST_NAME, atomic_write_bytes, read_manifest
from runtime.safe_files import load_npz, open_regular, writable_output


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``run`` verb's flags."""
    parser.add_argument("artifacts", type=Path, metavar="DIR", help="artifacts directory")
    parser.add_argument("--inputs", type=Path, required=True, help=".npz keyed by input name")
    parser.add_argument("--out", type=Path, required=True, help=".npz to write, by output name")
    parser.add_argument(
        "--format", default="tflite", choices=FORMATS, help="file format to run (default tflite)"
    )
    parser.add_argument(
        "--precision", default="float32", help="precision of the artifact to run (default float32)"
    )
    parser.add_argument("--model", default=None, help="model name (default: the only one)")
    parser.add_argument("--backend", default=None, help="interpreter (default: automatic)")
    parser.add_argument(
        "--threads",
        type=flag_type(1, "flag_threads"),
        default=None,
        help="interpreter threads (default: its own)",
    )


def _model(manifest, model: str | None, format: str, precision: str) -> str:
    if model is not None:
        return model
    models = sorted({e.model for e in manifest.artifacts})
    if len(models) != 1:
        raise RoiedgeError(f"the manifest has models {', '.join(models)}; choose one with --model")
    return models[0]


def run_artifact(
    directory: os.PathLike,
    inputs: Mapping[str, np.ndarray],
    format: str = "tflite",
    precision: str = "float32",
    model: str | None = None,
    backend: str | None = None,
    num_threads: int | None = None,
) -> dict[str, np.ndarray]:
    """Run one artifact on ``inputs`` (by Keras input name) -> outputs by Keras output name."""
    manifest = read_manifest(directory)
    entry = manifest.find(_model(manifest, model, format, precision), format, precision)
    stage = load_stage(directory, entry, backend=backend, num_threads=num_threads)
    labels = [canonical_name(spec.name) for spec in entry.inputs]
    arrays = []
    for label, spec in zip(labels, entry.inputs):
        key = label if label in inputs else spec.name
        if key not in inputs:
            raise RoiedgeError(
                f"inputs lack {label!r}; {entry.name} needs {', '.join(labels)}, "
                f"got {', '.join(sorted(inputs))}"
            )
        array = np.asarray(inputs[key])
        if np.dtype(spec.dtype).kind in "iu" and array.dtype.kind not in "iu":
            raise RoiedgeError(
                f"input {label!r} has dtype {array.dtype}; expected an integer array ({spec.dtype})"
            )
        refuse_kind(array, np.dtype(spec.dtype), f"input {label!r}")
        check_range(array, np.dtype(spec.dtype), f"input {label!r}")
        arrays.append((label, spec, array))
    extra = sorted(set(inputs) - set(labels) - {s.name for s in entry.inputs})
    if extra:
        raise RoiedgeError(
            f"inputs have unknown key(s) {', '.join(extra)}; {entry.name} takes {', '.join(labels)}"
        )
    _check_box_indexes(arrays)
    stacked = [a.ndim == len(spec.shape) + 1 for _, spec, a in arrays]
    for (label, spec, array), extra_axis in zip(arrays, stacked):
        if not extra_axis and array.ndim != len(spec.shape):
            raise RoiedgeError(
                f"input {label!r} has shape {array.shape}; expected {tuple(spec.shape)} or "
                f"(samples, {', '.join(str(d) for d in spec.shape)})"
            )
    if any(stacked) and not all(stacked):
        raise RoiedgeError(
            "some inputs have a leading sample axis and some do not: "
            + ", ".join(f"{label} {a.shape}" for label, _, a in arrays)
        )
    counts = {a.shape[0] for _, _, a in arrays} if all(stacked) else {1}
    if len(counts) != 1:
        raise RoiedgeError(
            "inputs disagree on the number of samples: "
            + ", ".join(f"{label} {a.shape[0]}" for label, _, a in arrays)
        )
    if not all(stacked):
        results = stage.run(*(a for _, _, a in arrays))
        return dict(zip(stage.output_labels, results))
    rows = [stage.run(*(a[n] for _, _, a in arrays)) for n in range(counts.pop())]
    return {
        label: np.stack([row[j] for row in rows]) for j, label in enumerate(stage.output_labels)
    }


def _check_box_indexes(arrays: list) -> None:
    """Refuse box indexes outside [0, batch of the first input): a gather out of bounds.

    The head's ``box_indexes`` say which image of its ``features`` batch each proposal pools
    from; an index past the batch is an interpreter error, a negative one wraps silently in ONNX.
    """
    for label, _, array in arrays:
        if label != "box_indexes" or not array.size or not arrays[0][1].shape:
            continue
        batch = arrays[0][1].shape[0]
        low, high = int(array.min()), int(array.max())
        if batch is not None and (low < 0 or high >= batch):
            raise RoiedgeError(
                f"input 'box_indexes' has values {low}..{high}; expected indexes into the "
                f"{arrays[0][0]!r} batch, in [0, {batch - 1}]"
            )


def read_npz(path: Path, flag: str, expected: str) -> dict[str, np.ndarray]:
    """The arrays of the .npz file ``path`` by key (:func:`runtime.safe_files.load_npz`).

    A missing, non-npz, unreadable or over-limit file, or one holding string, object or complex
    arrays, is a one-line RoiedgeError naming ``flag`` and the file; ``expected`` says what the
    file should hold (e.g. "an .npz keyed by input name").
    """
    if not path.exists():
        raise RoiedgeError(f"{flag} {path}: no such file (expected {expected})")
    with open_regular(path, flag) as handle:
        if handle.read(6) == b"\x93NUMPY":
            raise RoiedgeError(f"{flag} {path}: a single array; expected an .npz")
    return load_npz(path, flag)


def main(args: argparse.Namespace) -> int:
    """The ``run`` verb: exit 0, or a RoiedgeError for the CLI to report (exit 2)."""
    writable_output(args.out, "--out", inputs=[args.inputs, Path(args.artifacts) / MANIFEST_NAME])
    outputs = run_artifact(
        args.artifacts,
        read_npz(args.inputs, "--inputs", "an .npz keyed by input name"),
        format=args.format,
        precision=args.precision,
        model=args.model,
        backend=args.backend,
        num_threads=args.threads,
    )
    buffer = io.BytesIO()
    np.savez(buffer, **outputs)
    atomic_write_bytes(args.out, buffer.getvalue())
    shapes = ", ".join(f"{k} {tuple(v.shape)}" for k, v in outputs.items())
    say(f"wrote {args.out}: {shapes}")
    return 0
