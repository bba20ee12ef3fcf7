"""Bounded-memory calibration: spilled samples read back as written, MSE ranges from streamed
histograms as good as from the values themselves, and one calibration per stage and export."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st


def _quantized_mse(values, low, high):
    step = (high - low) / 255.0
    q = np.clip(np.round((values - low) / step), 0, 255) * step + low
    return float(np.mean((values - q) ** 2))


def test_spilled_samples_read_back_as_written(tmp_path):
    from export.streaming import SpilledSamples, named_samples

    rng = np.random.default_rng(1)
    written = [
        [rng.normal(size=(1, 4, 5, 3)).astype(np.float32), rng.integers(0, 9, (7,), np.int32)]
        for _ in range(6)
    ]
    store = SpilledSamples(tmp_path)
    for sample in written:
        store.append(sample)
    assert len(store) == 6 and len(store[2:5]) == 3
    for got, want in zip([*store[:3], *store[3:]], written):
        assert [a.dtype for a in got] == [a.dtype for a in want]
        for a, b in zip(got, want):
            np.testing.assert_array_equal(a, b)
    named = named_samples(store, ("x", "i"))
    assert named is named_samples(store, ("x", "i"))  # one view: caches keyed by it hit
    np.testing.assert_array_equal(named[-1]["i"], written[-1][1])
    np.testing.assert_array_equal(next(iter(named[1:2]))["x"], written[1][0])
    with pytest.raises(TypeError):
        store[1:].append(written[0])


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    kind=st.sampled_from(["relu", "normal", "heavy"]),
    chunks=st.integers(1, 5),
)
def test_streamed_histogram_range_is_as_good_as_the_values_own(seed, kind, chunks):
    """The range chosen from per-chunk histograms quantizes the values (brute-force error over
    every candidate, computed here) within 1% of the best candidate's error."""
    from export.mse_ranges import RANGE_FACTORS, mse_clip_histogram
    from export.streaming import RangeHistogram

    rng = np.random.default_rng(seed)
    values = {
        "relu": np.maximum(rng.normal(0.2, 1.0, 60_000), 0.0),
        "normal": rng.normal(0.0, 1.0, 60_000),
        "heavy": rng.standard_t(2.5, 60_000),
    }[kind].astype(np.float32)
    low, high = float(min(values.min(), 0.0)), float(max(values.max(), 0.0))
    histogram = RangeHistogram(low, high)
    for part in np.array_split(values, chunks):
        histogram.add(part)
    a, b = mse_clip_histogram(histogram, low, high)
    errors = [_quantized_mse(values, low * f, high * f) for f in RANGE_FACTORS]
    assert _quantized_mse(values, a, b) <= min(errors) * 1.01 + 1e-12
    # and the histogram's own error estimate of that range is the brute-force one
    assert histogram.squared_error(a, b) == pytest.approx(_quantized_mse(values, a, b), rel=0.02)


def test_chunk_size_divides():
    from export.streaming import chunk_size

    assert [chunk_size(n, 4) for n in (1, 2, 3, 7, 8, 9, 50, 200)] == [1, 2, 3, 1, 4, 3, 2, 4]


def test_one_calibration_per_stage_for_int8_int8_io_and_mixed(monkeypatch):
    """tflite int8, int8_io and mixed of one stage calibrate once; onnx int8 and its mixed
    search read the calibration samples once (the ranges come from the first run's cache)."""
    from export import mixed, onnx_format, tflite_format
    from export.streaming import clear_cache
    from tests import runtime_fakes

    backbone, _ = runtime_fakes.build_keras_models()
    samples = [{"image": s[0][0]} for s in runtime_fakes.stage_samples(backbone, 12)[0]]
    build = tflite_format.BuildInput("backbone_rpn", backbone, samples)
    calls = {"tflite": 0, "onnx_reads": 0}
    real = tflite_format._calibrated

    def counting(*args):
        calls["tflite"] += 1
        return real(*args)

    monkeypatch.setattr(tflite_format, "_calibrated", counting)
    original_next = onnx_format._Reader.get_next

    def counting_next(self):
        sample = original_next(self)
        calls["onnx_reads"] += sample is not None
        return sample

    monkeypatch.setattr(onnx_format._Reader, "get_next", counting_next)
    # A target no layer choice meets quickly: the SNR floor of a float model, one evaluation.
    monkeypatch.setattr(mixed.SnrTarget.__init__, "__defaults__", (-1000.0, None))
    clear_cache()
    try:
        first = tflite_format.calibrate(build)
        tflite_format.tflite_int8(build)
        tflite_format.tflite_int8_io(build)
        mixed.tflite_mixed(build)
        assert calls["tflite"] == 1 and tflite_format.calibrate(build) is first
        onnx_format.onnx_int8(build)
        onnx_format.onnx_int8(build, keep_float=())
        mixed.onnx_mixed(build)
        assert calls["onnx_reads"] == len(samples)
    finally:
        clear_cache()
