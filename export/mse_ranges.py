"""MSE activation ranges of full int8: each recorded min/max shrunk to the clipping range with
the least squared 8-bit quantization error on the calibration activations (see
:data:`export.tflite_format.ACTIVATION_RANGES` for why and what it measured).

The activations are accumulated per sample into fixed-size histograms
(:class:`export.streaming.RangeHistogram`), so memory does not grow with the sample count.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np

from export.shared import tflite_model_graph
from export.tf_private import flatbuffer_utils

#: The shrink factors of the recorded (min, max) tried.
RANGE_FACTORS = np.linspace(0.3, 1.0, 36)


def mse_clip(values: np.ndarray, low: float, high: float) -> tuple[float, float]:
    """The (low, high) among ``RANGE_FACTORS`` x (low, high) whose 8-bit uniform quantization of
    ``values`` (clipped to the range) has the least mean squared error."""
    best = (np.inf, low, high)
    for factor in RANGE_FACTORS:
        a, b = low * factor, high * factor
        if b - a <= 0:
            continue
        step = (b - a) / 255.0
        error = float(
            np.mean((values - (np.clip(np.round((values - a) / step), 0, 255) * step + a)) ** 2)
        )
        if error < best[0]:
            best = (error, a, b)
    return best[1], best[2]


def mse_clip_histogram(histogram, low: float, high: float) -> tuple[float, float]:
    """:func:`mse_clip` from a :class:`export.streaming.RangeHistogram` of the values (bounded
    memory: the statistics, not the values, of every calibration sample)."""
    best = (np.inf, low, high)
    for factor in RANGE_FACTORS:
        a, b = low * factor, high * factor
        if b - a <= 0:
            continue
        error = histogram.squared_error(a, b)
        if error < best[0]:
            best = (error, a, b)
    return best[1], best[2]


def mse_activation_ranges(calibrated: bytes, samples: Sequence[dict[str, np.ndarray]]) -> bytes:
    """A calibrated model with each recorded activation range replaced by the MSE-best clip.

    Runs the calibrated (float) model on ``samples`` one at a time keeping every intermediate
    tensor, accumulates each ranged tensor's values into a fixed-size histogram over its
    recorded min/max (:class:`export.streaming.RangeHistogram`; memory independent of the
    sample count), and rewrites the per-tensor min/max the quantizer reads with
    :func:`mse_clip_histogram`'s. Zero stays inside every range.
    """
    from ai_edge_litert.interpreter import Interpreter

    from export.streaming import RangeHistogram, bar

    fb = flatbuffer_utils()
    model = tflite_model_graph(calibrated)
    subgraph = model.subgraphs[0]
    ranged = [
        i
        for i, t in enumerate(subgraph.tensors)
        if t.quantization is not None
        and t.quantization.min is not None
        and len(t.quantization.min) == 1
        and fb.type_to_name(t.type) == "FLOAT32"
    ]
    with warnings.catch_warnings():
        # "intended for debugging": it is, a one-off pass over the calibration samples.
        warnings.simplefilter("ignore")
        interpreter = Interpreter(model_content=calibrated, experimental_preserve_all_tensors=True)
    runner_inputs = interpreter.get_signature_runner().get_input_details()
    interpreter.allocate_tensors()
    bounds = {}
    for i in ranged:
        quantization = subgraph.tensors[i].quantization
        low, high = float(quantization.min[0]), float(quantization.max[0])
        bounds[i] = (min(low, 0.0), max(high, 0.0))
    histograms = {i: RangeHistogram(*bounds[i]) for i in ranged}
    with bar(len(samples), "MSE activation ranges") as progress:
        for sample in samples:
            for key, detail in runner_inputs.items():
                interpreter.set_tensor(detail["index"], sample[key])
            interpreter.invoke()
            for i in ranged:
                # Every third value: the same distribution in a third of the time.
                histograms[i].add(np.asarray(interpreter.get_tensor(i)).ravel()[::3])
            progress.update(1)
    for i in ranged:
        tensor = subgraph.tensors[i]
        low, high = mse_clip_histogram(histograms[i], *bounds[i])
        tensor.quantization.min = np.array([low], np.float32)
        tensor.quantization.max = np.array([high], np.float32)
    return bytes(fb.convert_object_to_bytearray(model))
