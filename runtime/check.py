"""On-device self-check: every artifact of a manifest against the float Keras golden outputs.

Each stage's golden ``.npz`` holds ``input_0..`` and ``output_0..`` in Keras order (the manifest's
spec order), either one sample (the spec's shape) or several stacked on a new leading axis.
Every artifact runs on the golden inputs; its outputs are compared with the golden outputs and
judged by :mod:`runtime.tolerances`.
"""

from __future__ import annotations

import dataclasses
import math
import os
import zipfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np

from runtime.backends import Stage, open_backend
from runtime.errors import ArtifactError
from runtime.golden import OutputResult, compare_outputs, golden_samples
from runtime.manifest import ArtifactEntry, Manifest, read_manifest, verified_path


@dataclasses.dataclass(frozen=True)
class ArtifactResult:
    """One artifact's check: per-output results, head top-1 agreement (None for the backbone)."""

    entry: ArtifactEntry
    backend: str
    outputs: tuple[OutputResult, ...]
    top1_agreement: float | None
    failures: tuple[str, ...]

    @property
    def ok(self) -> bool:
        """True when neither any output nor the top-1 agreement broke a bound."""
        return not self.failures and all(not o.failures for o in self.outputs)


def load_golden(directory: os.PathLike, manifest: Manifest, model: str) -> dict[str, np.ndarray]:
    """The golden arrays of ``model`` (``input_i``/``output_i``) named by the manifest."""
    if model not in manifest.golden:
        raise ArtifactError(
            f"{Path(directory) / 'manifest.json'}: no golden data for {model!r}; "
            f"it has {sorted(manifest.golden)}"
        )
    path = Path(directory) / manifest.golden[model]
    if not path.is_file():
        raise ArtifactError(f"{path}: golden data of {model!r} listed in the manifest is missing")
    try:
        with np.load(path, allow_pickle=False) as data:
            return {key: data[key] for key in data.files}
    except (OSError, ValueError, zipfile.BadZipFile) as error:
        raise ArtifactError(f"{path}: not a readable .npz of golden arrays ({error})") from None


def check_artifact(
    directory: os.PathLike,
    entry: ArtifactEntry,
    golden: dict[str, np.ndarray],
    backend: str | None = None,
    num_threads: int | None = None,
) -> ArtifactResult:
    """Run ``entry`` on the golden inputs and judge its outputs against the golden outputs."""
    path = verified_path(directory, entry)  # missing / corrupt files are user errors (exit 2)
    try:
        loaded = open_backend(path, entry.format, backend, num_threads=num_threads)
        stage = Stage(entry, loaded, path)
    except ArtifactError as error:
        # A verified file this interpreter cannot run (e.g. op versions newer than an old
        # tflite-runtime): a failed check of this artifact, not a reason to stop checking.
        name = backend or "automatic backend"
        return ArtifactResult(entry, name, (), None, (f"cannot load: {error}",))
    source = str(path)
    per_sample = [stage.run(*inputs) for inputs in golden_samples(golden, entry, source)]
    actuals, references = [], []
    for j, spec in enumerate(entry.outputs):
        key = f"output_{j}"
        if key not in golden:
            raise ArtifactError(f"{source}: golden data lacks {key} ({spec.name})")
        actual = np.stack([s[j] for s in per_sample]) if len(per_sample) > 1 else per_sample[0][j]
        if golden[key].size != actual.size:
            raise ArtifactError(
                f"{source}: output {spec.name!r} has shape {actual.shape}; golden {key} has "
                f"{golden[key].shape}"
            )
        actuals.append(actual)
        references.append(golden[key].reshape(actual.shape))
    class_scores = 0 if entry.model == "head" else None
    verdict = compare_outputs(
        entry.precision, actuals, references, stage.output_labels, class_scores
    )
    outputs, top1, failures = verdict.outputs, verdict.top1_agreement, verdict.top1_failures
    return ArtifactResult(entry, stage.backend.name, tuple(outputs), top1, tuple(failures))


def check_directory(
    directory: os.PathLike,
    backends: dict[str, str] | None = None,
    num_threads: int | None = None,
    only: Iterable[str] | None = None,
    progress: Callable[[Iterable[Any], int, str], Iterable[Any]] | None = None,
) -> list[ArtifactResult]:
    """Check every artifact of ``directory`` (or the names in ``only``) -> results in manifest order.

    ``backends`` maps a format to the backend to use for it (default: automatic).
    """
    manifest = read_manifest(directory)
    entries = [e for e in manifest.artifacts if only is None or e.name in set(only)]
    goldens: dict[str, dict[str, np.ndarray]] = {}
    results = []
    iterator = progress(entries, len(entries), "check") if progress else entries
    for entry in iterator:
        if entry.model not in goldens:
            goldens[entry.model] = load_golden(directory, manifest, entry.model)
        backend = (backends or {}).get(entry.format)
        results.append(check_artifact(directory, entry, goldens[entry.model], backend, num_threads))
    return results


def format_results(results: list[ArtifactResult]) -> str:
    """A plain-text table: one row per artifact output, then a verdict per failing artifact."""
    header = (
        f"{'artifact':<34} {'backend':<15} {'output':<13} {'max abs':>9} {'mean abs':>9} "
        f"{'SNR dB':>7} {'PSNR dB':>7} {'top-1':>6}  verdict"
    )
    lines = [header, "-" * len(header)]
    for result in results:
        if not result.outputs:
            lines.append(f"{result.entry.name:<34} {result.backend:<15} (not run){'':<56}  FAIL")
        for i, output in enumerate(result.outputs):
            m = output.metrics
            top1 = (
                f"{result.top1_agreement:.3f}"
                if i == 0 and result.top1_agreement is not None
                else ""
            )
            verdict = ("ok" if result.ok else "FAIL") if i == 0 else ""
            lines.append(
                f"{result.entry.name if i == 0 else '':<34} {result.backend if i == 0 else '':<15} "
                f"{output.name[:13]:<13} {m.max_abs:>9.2e} {m.mean_abs:>9.2e} {_db(m.snr_db):>7} "
                f"{_db(m.psnr_db):>7} {top1:>6}  {verdict}"
            )
    for result in results:
        reasons = list(result.failures) + [f for o in result.outputs for f in o.failures]
        if reasons:
            lines.append(
                f"FAIL {result.entry.name} ({result.entry.precision}): " + "; ".join(reasons)
            )
    passed = sum(r.ok for r in results)
    lines.append(f"{passed}/{len(results)} artifacts within their precision's tolerance")
    return "\n".join(lines)


def _db(value: float) -> str:
    return "inf" if math.isinf(value) and value > 0 else f"{value:.1f}"
