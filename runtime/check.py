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
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np

from runtime.backends import Stage, edgetpu_available, missing_interpreter, open_backend
from runtime.errors import ArtifactError, RoiedgeError
from runtime.golden import OutputResult, class_score_output, compare_outputs, golden_samples
from runtime.manifest import (
    ArtifactEntry,
    Manifest,
    read_manifest,
    verified_artifact,
    verified_content,
)
from runtime.safe_files import load_npz
from runtime.single import SINGLE_MODEL


@dataclasses.dataclass(frozen=True)
class ArtifactResult:
    """One artifact's check: per-output results, head top-1 agreement (None for the backbone).

    ``skipped`` is the reason it did not run (its interpreter is not installed), else None; a
    missing, tampered or unloadable file is a failure (in ``failures``), not a skip.
    """

    entry: ArtifactEntry
    backend: str
    outputs: tuple[OutputResult, ...]
    top1_agreement: float | None
    failures: tuple[str, ...]
    skipped: str | None = None
    #: What a row without per-output metrics ran (the detector pipeline row), else "".
    detail: str = ""

    @property
    def ok(self) -> bool:
        """True when it ran and neither any output nor the top-1 agreement broke a bound."""
        return (
            self.skipped is None and not self.failures and all(not o.failures for o in self.outputs)
        )


def load_golden(directory: os.PathLike, manifest: Manifest, model: str) -> dict[str, np.ndarray]:
    """The golden arrays of ``model`` (``input_i``/``output_i``) named by the manifest."""
    if model not in manifest.golden:
        raise ArtifactError(
            f"{Path(directory) / 'manifest.json'}: no golden data for {model!r}; "
            f"it has {sorted(manifest.golden)}"
        )
    what = f"golden data of {model!r}"
    path, content = verified_content(
        directory, manifest.golden[model], manifest.golden_sha256.get(model, ""), what, "npz_bytes"
    )
    try:
        return load_npz(content, f"{path}: {what}")
    except RoiedgeError as error:
        raise ArtifactError(str(error)) from None


def check_artifact(
    directory: os.PathLike,
    entry: ArtifactEntry,
    golden: dict[str, np.ndarray],
    backend: str | None = None,
    num_threads: int | None = None,
) -> ArtifactResult:
    """Run ``entry`` on the golden inputs and judge its outputs against the golden outputs.

    A missing, tampered or unloadable file, or golden data that does not fit it, fails this
    artifact's result with the reason (the caller goes on with the next artifact).
    """
    name = backend or "automatic backend"
    try:
        path, content = verified_artifact(directory, entry)
    except RoiedgeError as error:
        return ArtifactResult(entry, name, (), None, (f"not verified: {error}",))
    try:
        loaded = open_backend(path, entry.format, backend, num_threads=num_threads, content=content)
        stage = Stage(entry, loaded, path)
    except RoiedgeError as error:
        # A verified file this interpreter cannot run (e.g. op versions newer than an old
        # tflite-runtime): a failed check of this artifact, not a reason to stop checking.
        return ArtifactResult(entry, name, (), None, (f"cannot load: {error}",))
    try:
        if entry.model == SINGLE_MODEL:  # detections, not tensors (runtime/single.py)
            return _judge_single(entry, stage, golden, str(path))
        return _judge_stage(entry, stage, golden, str(path))
    except RoiedgeError as error:
        return ArtifactResult(entry, stage.backend.name, (), None, (f"cannot run: {error}",))


def _judge_stage(
    entry: ArtifactEntry, stage: Stage, golden: dict[str, np.ndarray], source: str
) -> ArtifactResult:
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
    # The shipped head's output 0; any other model's class-probability output, if it has one.
    class_scores = (
        0 if entry.model == "head" else class_score_output(stage.output_labels, references)
    )
    # The Edge TPU runs the same int8 arithmetic as the CPU: its compilation keeps int8_io's bounds.
    precision = entry.precision.removesuffix("_edgetpu")
    verdict = compare_outputs(precision, actuals, references, stage.output_labels, class_scores)
    outputs, top1, failures = verdict.outputs, verdict.top1_agreement, verdict.top1_failures
    return ArtifactResult(entry, stage.backend.name, tuple(outputs), top1, tuple(failures))


def _judge_single(
    entry: ArtifactEntry, stage: Stage, golden: dict[str, np.ndarray], source: str
) -> ArtifactResult:
    """A single-file detector's detections on the golden images against float Keras's."""
    from runtime.single import judge_single, outputs_to_detections

    image_size = tuple(entry.inputs[0].shape[1:3])
    samples = golden_samples(golden, entry, source)
    found = [outputs_to_detections(stage.run(*inputs), image_size) for inputs in samples]
    reference = [
        outputs_to_detections([golden[f"output_{j}"][i] for j in range(4)], image_size)
        for i in range(len(samples))
    ]
    # An Edge TPU compilation runs int8_io's arithmetic: it keeps int8_io's bounds.
    verdict = judge_single(entry.precision.removesuffix("_edgetpu"), found, reference, image_size)
    return ArtifactResult(
        entry, stage.backend.name, verdict.outputs, verdict.top1_agreement, verdict.top1_failures
    )


def check_directory(
    directory: os.PathLike,
    backends: dict[str, str] | None = None,
    num_threads: int | None = None,
    only: Iterable[str] | None = None,
    progress: Callable[[Iterable[Any], int, str], Iterable[Any]] | None = None,
) -> list[ArtifactResult]:
    """Check every artifact of ``directory`` (or the names in ``only``) -> results in manifest order.

    ``backends`` maps a format to the backend to use for it (default: automatic). An artifact
    whose interpreter is not installed is skipped (``skipped`` says why); one whose golden data is
    missing or tampered fails with that reason. Only an unreadable manifest raises.
    """
    manifest = read_manifest(directory)
    entries = [e for e in manifest.artifacts if only is None or e.name in set(only)]
    goldens: dict[str, dict[str, np.ndarray] | ArtifactError] = {}
    results = []
    iterator = progress(entries, len(entries), "check") if progress else entries
    for entry in iterator:
        backend = (backends or {}).get(entry.format)
        reason = missing_interpreter(entry.format, backend)
        if reason is None and entry.precision.endswith("_edgetpu") and not edgetpu_available():
            reason = "Edge TPU runtime libedgetpu not installed"
        if reason is not None:
            results.append(ArtifactResult(entry, backend or "-", (), None, (), skipped=reason))
            continue
        if entry.model not in goldens:
            try:
                goldens[entry.model] = load_golden(directory, manifest, entry.model)
            except ArtifactError as error:
                goldens[entry.model] = error
        golden = goldens[entry.model]
        if isinstance(golden, ArtifactError):
            results.append(ArtifactResult(entry, backend or "-", (), None, (f"golden: {golden}",)))
            continue
        results.append(check_artifact(directory, entry, golden, backend, num_threads))
    return results


def format_results(results: list[ArtifactResult]) -> str:
    """A plain-text table: one row per artifact output, then a verdict per failing artifact."""
    # Output names in full (a user model's may be long): the column is as wide as the longest.
    width = max([13] + [len(o.name) for r in results for o in r.outputs])
    header = (
        f"{'artifact':<34} {'backend':<15} {'output':<{width}} {'max abs':>9} {'mean abs':>9} "
        f"{'SNR dB':>7} {'PSNR dB':>7} {'top-1':>6}  verdict"
    )
    lines = [header, "-" * len(header)]
    for result in results:
        if result.skipped is not None:
            lines.append(f"{result.entry.name:<34} {'-':<15} skipped ({result.skipped})")
        elif result.detail:
            verdict = "ok" if result.ok else "FAIL"
            lines.append(
                f"{result.entry.name:<34} {result.backend:<15} {result.detail:<56}  {verdict}"
            )
        elif not result.outputs:
            # A single-file detector with no golden detection to match has nothing to compare.
            what, verdict = ("(nothing to compare)", "ok") if result.ok else ("(not run)", "FAIL")
            lines.append(
                f"{result.entry.name:<34} {result.backend:<15} {what:<{width + 52}}  {verdict}"
            )
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
                f"{output.name:<{width}} {m.max_abs:>9.2e} {m.mean_abs:>9.2e} {_db(m.snr_db):>7} "
                f"{_db(m.psnr_db):>7} {top1:>6}  {verdict}"
            )
    for result in results:
        reasons = list(result.failures) + [f for o in result.outputs for f in o.failures]
        if reasons:
            lines.append(
                f"FAIL {result.entry.name} ({result.entry.precision}): " + "; ".join(reasons)
            )
    pipelines = [r for r in results if r.entry.model == "pipeline"]
    artifacts = [r for r in results if r.entry.model != "pipeline"]
    passed = sum(r.ok for r in artifacts)
    skipped = [r for r in artifacts if r.skipped is not None]
    ran = len(artifacts) - len(skipped)
    summary = f"{passed}/{ran} artifacts within their precision's tolerance"
    if skipped:
        reasons = sorted({r.skipped for r in skipped})
        summary += f"; {len(skipped)} skipped ({', '.join(reasons)})"
    for row in pipelines:
        state = "skipped" if row.skipped else ("ok" if row.ok else "FAIL")
        summary += f"; detector pipeline {row.entry.format}/{row.entry.precision} {state}"
    lines.append(summary)
    return "\n".join(lines)


def _db(value: float) -> str:
    return "inf" if math.isinf(value) and value > 0 else f"{value:.1f}"
