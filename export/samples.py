"""SAMPLES.npz for ``export --keras-model``: one array per model input, keyed by its Keras name.

Every array has a leading sample axis; the rest of its shape and its dtype are the input's, batch
included. Optional ``output:NAME`` arrays carry the original model's outputs (computed where the
original can run) for the swap's proof. The last few samples are held back as golden samples;
the others calibrate the int8 artifacts.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from export.config import ExportInputError
from runtime.run import read_npz

#: Fewest samples accepted: some are held back as golden samples, the rest calibrate int8.
MIN_SAMPLES = 8
#: Prefix of the keys that carry the original model's outputs.
OUTPUT_PREFIX = "output:"


@dataclasses.dataclass(frozen=True)
class TensorInfo:
    """A model input or output: Keras name, full static shape (batch included), dtype name."""

    name: str
    shape: tuple[int, ...]
    dtype: str


@dataclasses.dataclass(frozen=True)
class Samples:
    """Validated sample arrays: ``inputs``/``outputs`` by Keras name, each ``[count, *shape]``."""

    inputs: dict[str, np.ndarray]
    outputs: dict[str, np.ndarray]
    count: int

    @property
    def golden_count(self) -> int:
        """Samples held back as golden samples: a quarter, between 2 and 4."""
        return max(2, min(4, self.count // 4))

    @property
    def golden_indexes(self) -> list[int]:
        """The last :attr:`golden_count` samples (never used for calibration)."""
        return list(range(self.count - self.golden_count, self.count))

    @property
    def calibration_indexes(self) -> list[int]:
        return list(range(self.count - self.golden_count))

    def rows(self, names: Sequence[str], indexes: Sequence[int]) -> list[list[np.ndarray]]:
        """Per sample, the inputs ``names`` in that order (one list per index)."""
        return [[self.inputs[n][i] for n in names] for i in indexes]

    def output_rows(self, names: Sequence[str], indexes: Sequence[int]) -> list[list[np.ndarray]]:
        """Per sample, the given ``output:NAME`` arrays in ``names`` order."""
        return [[self.outputs[n][i].astype(np.float32) for n in names] for i in indexes]


def load_samples(
    source: Path | Mapping[str, np.ndarray],
    inputs: Sequence[TensorInfo],
    outputs: Sequence[TensorInfo],
) -> Samples:
    """Read and validate samples (a .npz path or a dict of arrays) against the model's I/O."""
    where = f"--samples {source}" if isinstance(source, (str, Path)) else "samples"
    arrays = (
        read_npz(Path(source), "--samples", "an .npz of model inputs")
        if isinstance(source, (str, Path))
        else dict(source)
    )
    input_names = [t.name for t in inputs]
    output_names = [t.name for t in outputs]
    given_inputs = {k: v for k, v in arrays.items() if not k.startswith(OUTPUT_PREFIX)}
    given_outputs = {
        k[len(OUTPUT_PREFIX) :]: v for k, v in arrays.items() if k.startswith(OUTPUT_PREFIX)
    }
    for name in input_names:
        if name not in given_inputs:
            raise ExportInputError(
                f"{where}: missing key {name!r}; expected one array per model input, keyed by "
                f"its Keras name: {', '.join(input_names)}"
            )
    for key in given_inputs:
        if key not in input_names:
            raise ExportInputError(
                f"{where}: key {key!r} is not a model input; the inputs are "
                f"{', '.join(input_names)} (original outputs go under output:NAME)"
            )
    for name in given_outputs:
        if name not in output_names:
            raise ExportInputError(
                f"{where}: key {OUTPUT_PREFIX + name!r} is not a model output; the outputs are "
                f"{', '.join(output_names)}"
            )
    checked_inputs = {t.name: _check(where, t.name, given_inputs[t.name], t, True) for t in inputs}
    checked_outputs = {
        t.name: _check(where, OUTPUT_PREFIX + t.name, given_outputs[t.name], t, False)
        for t in outputs
        if t.name in given_outputs
    }
    if given_outputs and len(checked_outputs) != len(outputs):
        missing = [n for n in output_names if n not in given_outputs]
        raise ExportInputError(
            f"{where}: has original outputs for some outputs but not for "
            f"{', '.join(OUTPUT_PREFIX + n for n in missing)}; give all of them or none"
        )
    counts = {k: len(v) for k, v in {**checked_inputs, **checked_outputs}.items()}
    first_key, count = next(iter(counts.items()))
    for key, n in counts.items():
        if n != count:
            raise ExportInputError(
                f"{where}: key {key!r} has {n} samples but {first_key!r} has {count}; every "
                "array needs the same leading sample axis"
            )
    if count < MIN_SAMPLES:
        raise ExportInputError(
            f"{where}: key {first_key!r} has {count} samples; expected at least {MIN_SAMPLES} "
            "(some are held back as golden samples, the rest calibrate int8)"
        )
    return Samples(checked_inputs, checked_outputs, count)


def _check(where: str, key: str, array, info: TensorInfo, exact_dtype: bool) -> np.ndarray:
    array = np.asarray(array)
    if tuple(array.shape[1:]) != tuple(info.shape) or array.ndim != len(info.shape) + 1:
        raise ExportInputError(
            f"{where}: key {key!r} has shape {tuple(array.shape)}; expected "
            f"(samples, {', '.join(str(d) for d in info.shape)}) — a leading sample axis, then "
            "the tensor's full shape, batch included"
        )
    if exact_dtype and array.dtype != np.dtype(info.dtype):
        raise ExportInputError(
            f"{where}: key {key!r} has dtype {array.dtype}; expected {info.dtype} "
            f"(e.g. array.astype(np.{info.dtype}))"
        )
    if not exact_dtype and array.dtype.kind != "f":
        raise ExportInputError(f"{where}: key {key!r} has dtype {array.dtype}; expected a float")
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        # The converters' calibrators crash on them (segfault) or quantize to garbage.
        bad = np.flatnonzero(~np.isfinite(array.reshape(len(array), -1)).all(axis=1))
        raise ExportInputError(
            f"{where}: key {key!r} holds NaN or infinite values (in {len(bad)} of {len(array)} "
            f"samples, first sample {int(bad[0])}); expected finite numbers"
        )
    return array


def box_index_problem(model: Any, rows: Sequence[Sequence[np.ndarray]]) -> str | None:
    """Why the ``box_indexes`` reaching a RoIPooling layer of ``model`` cannot run, or None.

    An index outside [0, batch of the layer's feature maps) makes TensorFlow's crop_and_resize
    fail mid-export and a TFLite gather read another image's features: refused before either.
    ``rows``: the samples (each a list in model input order).
    """
    import keras
    import tensorflow as tf

    from export.swap import layer_arguments, roi_pooling_layers

    layers = roi_pooling_layers(model)
    args = [layer_arguments(layer) for layer in layers]
    if not layers or any(len(a) != 3 for a in args):
        return None
    probe = keras.Model(model.inputs, [t for a in args for t in (a[0], a[2])])
    call = tf.function(lambda *x: probe(list(x) if len(x) > 1 else x[0], training=False))
    for sample, row in enumerate(rows):
        values = [np.asarray(v) for v in call(*row)]
        for i, layer in enumerate(layers):
            batch, indexes = values[2 * i].shape[0], values[2 * i + 1]
            if indexes.size and (indexes.min() < 0 or indexes.max() >= batch):
                return (
                    f"sample {sample}: layer {layer.name!r} gets box_indexes "
                    f"{int(indexes.min())}..{int(indexes.max())}; expected indexes into its "
                    f"feature maps' batch, in [0, {batch - 1}]"
                )
    return None
