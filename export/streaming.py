"""Bounded-memory calibration: samples spilled to disk, activation statistics accumulated per
sample, and each stage's calibration done once per export and reused by every artifact.

At 480x640 one calibration image is ~3.7 MB of backbone input and one pass over the backbone's
activations ~80 MB; holding either for every calibration image made the export's peak memory
grow with the calibration count. Here:

* :class:`SpilledSamples` keeps each sample's arrays in one ``.npy`` per array in a temp
  directory and loads one sample at a time (:class:`NamedSamples`: the same as dicts by name);
* :class:`RangeHistogram` accumulates a tensor's values as per-bin count / sum / sum of squares
  over the converter's calibrated range, so the MSE clipping range is chosen from statistics of
  a fixed size (see :func:`export.tflite_format.mse_activation_ranges`);
* :func:`cached` memoizes one stage's calibration (TFLite calibrated model, ONNX tensor ranges)
  by the objects it was computed from, so int8, int8_io and mixed share it.
"""

from __future__ import annotations

import contextlib
import contextvars
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

#: Whether the calibration passes inside a build show progress bars (set by run_export).
PROGRESS: contextvars.ContextVar[bool] = contextvars.ContextVar("roiedge_progress", default=False)
#: Bins of :class:`RangeHistogram`: the narrowest MSE candidate range (0.3x) spans 255 steps of
#: ~10 bins each, so a value's rounding is decided by its bin's mean almost everywhere.
HISTOGRAM_BINS = 8192


def bar(total: int, desc: str, unit: str = "image"):
    """A tqdm bar over ``total`` items, shown when :data:`PROGRESS` is on (its ETA is the rate
    of the items so far times those left: every item of one bar costs the same)."""
    from tqdm import tqdm

    return tqdm(
        total=total,
        desc=desc,
        unit=unit,
        disable=not PROGRESS.get(),
        dynamic_ncols=True,
        leave=False,
    )


@contextlib.contextmanager
def progress(enabled: bool) -> Iterator[None]:
    """Turn the build-internal progress bars on or off for the ``with`` block."""
    token = PROGRESS.set(enabled)
    try:
        yield
    finally:
        PROGRESS.reset(token)


class SpilledSamples(Sequence):
    """Samples (each a list of arrays, one per model input) stored on disk, one loaded at a time.

    ``append`` writes a sample's arrays as ``<index>_<j>.npy``; indexing loads them back. Slices
    are lazy views. Memory held: the one sample being read.
    """

    def __init__(self, directory: Path, indexes: Sequence[int] | None = None, width: int = 0):
        self.directory = Path(directory)
        self._indexes = list(indexes) if indexes is not None else []
        self._owner = indexes is None
        self._width = width
        self._named: dict[tuple[str, ...], NamedSamples] = {}

    def append(self, arrays: Sequence[np.ndarray]) -> None:
        """Write one sample (its arrays in model-input order) after the last."""
        if not self._owner:
            raise TypeError("a slice of SpilledSamples is read-only")
        index = len(self._indexes)
        for j, array in enumerate(arrays):
            np.save(self.directory / f"{index}_{j}.npy", np.ascontiguousarray(array))
        self._width = len(arrays)
        self._indexes.append(index)

    def __len__(self) -> int:
        return len(self._indexes)

    def __getitem__(self, key):
        if isinstance(key, slice):
            return SpilledSamples(self.directory, self._indexes[key], self._width)
        index = self._indexes[key]
        return [np.load(self.directory / f"{index}_{j}.npy") for j in range(self._width)]

    def __iter__(self) -> Iterator[list[np.ndarray]]:
        for i in range(len(self)):
            yield self[i]

    def named(self, names: Sequence[str]) -> NamedSamples:
        """This sequence as dicts keyed by ``names`` (one view object per names, so caches keyed
        by the view's identity hit for every artifact of the stage)."""
        names = tuple(names)
        if names not in self._named:
            self._named[names] = NamedSamples(self, names)
        return self._named[names]


class NamedSamples(Sequence):
    """A sequence of samples (lists of arrays) seen as dicts keyed by the model's input names."""

    def __init__(self, samples: Sequence[Sequence[np.ndarray]], names: Sequence[str]):
        self.samples = samples
        self.names = tuple(names)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, key):
        if isinstance(key, slice):
            return NamedSamples(self.samples[key], self.names)
        return dict(zip(self.names, self.samples[key]))

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        for sample in self.samples:
            yield dict(zip(self.names, sample))


def named_samples(samples: Sequence, names: Sequence[str]) -> Sequence[dict[str, np.ndarray]]:
    """``samples`` (lists of arrays) as dicts by ``names``: a shared lazy view of spilled samples,
    else a list (in-memory samples, e.g. ``--keras-model``'s)."""
    if isinstance(samples, SpilledSamples):
        return samples.named(names)
    return [dict(zip(names, s)) for s in samples]


@contextlib.contextmanager
def spill_directory(prefix: str = "roiedge-calibration-") -> Iterator[Path]:
    """A temp directory for :class:`SpilledSamples`, removed afterwards."""
    directory = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield directory
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def spill_stage_samples(
    make: Callable[[np.ndarray], dict[str, list[np.ndarray]]],
    images: Iterable[np.ndarray],
    directory: Path,
    progress_bar=None,
) -> dict[str, SpilledSamples]:
    """Per stage, the inputs ``make(image)`` gives for each image, spilled to ``directory``.

    ``images`` is consumed one at a time (a generator keeps the images out of memory too).
    """
    stores: dict[str, SpilledSamples] = {}
    for image in images:
        for stage, inputs in make(image).items():
            if stage not in stores:
                (directory / stage).mkdir(parents=True, exist_ok=True)
                stores[stage] = SpilledSamples(directory / stage)
            stores[stage].append(inputs)
        if progress_bar is not None:
            progress_bar.update(1)
    return stores


class RangeHistogram:
    """Streaming statistics of one tensor's values over a fixed range [low, high].

    Per bin: count, sum and sum of squares, so the squared error of quantizing every value of a
    bin to one level ``c`` is exact (``sumsq - 2 c sum + n c^2``); only values of a bin that
    straddles a rounding boundary are rounded with their bin's mean. Values outside the range
    (rare: the range is the calibrated min/max) go to the end bins with their own values.
    """

    def __init__(self, low: float, high: float, bins: int = HISTOGRAM_BINS):
        self.low, self.high = float(low), float(high)
        self.bins = bins
        self.count = np.zeros(bins, np.float64)
        self.total = np.zeros(bins, np.float64)
        self.squares = np.zeros(bins, np.float64)

    def add(self, values: np.ndarray) -> None:
        """Accumulate ``values`` (any shape)."""
        values = np.asarray(values, np.float64).ravel()
        if values.size == 0:
            return
        width = (self.high - self.low) / self.bins
        if width <= 0:
            index = np.zeros(values.shape, np.int64)
        else:
            index = np.clip(((values - self.low) / width).astype(np.int64), 0, self.bins - 1)
        self.count += np.bincount(index, minlength=self.bins)
        self.total += np.bincount(index, weights=values, minlength=self.bins)
        self.squares += np.bincount(index, weights=values * values, minlength=self.bins)

    def squared_error(self, low: float, high: float) -> float:
        """Mean squared error of 8-bit uniform quantization to [low, high] (values clipped)."""
        used = self.count > 0
        n, s, q = self.count[used], self.total[used], self.squares[used]
        mean = s / n
        step = (high - low) / 255.0
        level = np.clip(np.round((mean - low) / step), 0, 255) * step + low
        error = q - 2.0 * level * s + n * level * level
        return float(np.sum(np.maximum(error, 0.0)) / np.sum(n))


#: One export's cached calibrations: key -> (the objects the key's ids belong to, value).
_CACHE: dict[tuple, tuple[tuple, Any]] = {}


def cached(kind: str, owners: Sequence[Any], extra: tuple, compute: Callable[[], Any]) -> Any:
    """``compute()`` once per (``kind``, ``owners`` by identity, ``extra``).

    ``owners`` (the Keras model, the calibration samples) are held with the value, so their ids
    cannot be reused by other objects while cached. Only the last few entries are kept.
    """
    value = cache_get(kind, owners, extra)
    if value is None:
        value = compute()
        cache_put(kind, owners, extra, value)
    return value


def cache_get(kind: str, owners: Sequence[Any], extra: tuple) -> Any:
    """The value :func:`cache_put` stored for this key, or None."""
    hit = _CACHE.get((kind, *(id(o) for o in owners), *extra))
    if hit is not None and all(a is b for a, b in zip(hit[0], owners)):
        return hit[1]
    return None


def cache_put(kind: str, owners: Sequence[Any], extra: tuple, value: Any) -> None:
    """Store ``value`` under (``kind``, ``owners`` by identity, ``extra``); keeps the last 8."""
    if len(_CACHE) >= 8:
        _CACHE.pop(next(iter(_CACHE)))
    _CACHE[(kind, *(id(o) for o in owners), *extra)] = (tuple(owners), value)


def chunk_size(count: int, limit: int) -> int:
    """The largest divisor of ``count`` that is at most ``limit`` (onnxruntime's strided
    calibration needs equal chunks)."""
    return max(d for d in range(1, max(1, min(limit, count)) + 1) if count % d == 0)


def clear_cache() -> None:
    """Forget every cached calibration (the end of an export)."""
    _CACHE.clear()
