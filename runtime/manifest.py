"""The artifact manifest: the contract between `export` (which writes it) and the runtime (which reads it).

``artifacts/manifest.json`` lists every exported file with its hash and tensor specs, the golden
data of each stage (with their hashes), where the source Keras models came from, and the detector
configuration the runtime needs for pre- and post-processing (with its hash). Serialised and
validated in this module only: every field is type-checked on reading, every path must stay inside
the artifacts directory, and every file is hashed before it is trusted.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any

from runtime import strict_json
from runtime.errors import ArtifactError, RoiedgeError
from runtime.safe_files import read_bytes, read_json

# 2: sha256 of every golden file (``golden_sha256``) and of the detector config
# (``detector_sha256``); schema 1 manifests carry neither, so they are refused with a re-export hint.
SCHEMA_VERSION = 2
MANIFEST_NAME = "manifest.json"
MODELS = ("backbone_rpn", "head")
FORMATS = ("tflite", "onnx")
#: Precisions each format is exported in (export/formats.py builds its artifact table from this).
FORMAT_PRECISIONS: dict[str, tuple[str, ...]] = {
    "tflite": ("float32", "float16", "dynamic_int8", "int8", "int8_io", "mixed"),
    "onnx": ("float32", "int8", "mixed"),
}
#: The int8_io backbone compiled by edgetpu_compiler (added by `python -m export edgetpu`, never
#: built by the export itself: the compiler cannot be installed everywhere).
EDGETPU_PRECISION = "int8_io_edgetpu"


@dataclasses.dataclass(frozen=True)
class TensorSpec:
    """One input or output tensor of an artifact, named as inside that artifact.

    ``shape`` uses None for a dynamic dimension; ``dtype`` is a numpy dtype name ("float32", "int8"...).
    """

    name: str
    shape: tuple[int | None, ...]
    dtype: str


@dataclasses.dataclass(frozen=True)
class ArtifactEntry:
    """One exported file. ``inputs``/``outputs`` are in the Keras model's order."""

    name: str
    model: str
    format: str
    precision: str
    path: str
    sha256: str
    bytes: int
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    op_report: str | None = None


@dataclasses.dataclass(frozen=True)
class Manifest:
    """Everything under one artifacts directory."""

    artifacts: tuple[ArtifactEntry, ...]
    golden: dict[str, str]
    source_models: dict[str, str]
    detector: dict[str, Any]
    versions: dict[str, str] = dataclasses.field(default_factory=dict)
    golden_sha256: dict[str, str] = dataclasses.field(default_factory=dict)
    detector_sha256: str = ""
    schema_version: int = SCHEMA_VERSION

    def find(self, model: str, format: str, precision: str) -> ArtifactEntry:
        """The entry for one (model, format, precision), or an ArtifactError listing what exists."""
        for entry in self.artifacts:
            if (entry.model, entry.format, entry.precision) == (model, format, precision):
                return entry
        have = sorted(f"{e.model}/{e.format}/{e.precision}" for e in self.artifacts)
        raise ArtifactError(
            f"manifest has no artifact {model}/{format}/{precision}; it has: {', '.join(have)}"
        )


def sha256_file(path: os.PathLike) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def atomic_write_bytes(path: os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temp file in the same directory and a rename.

    A write that fails (full disk, read-only folder, a directory in the way) leaves nothing
    behind and raises a one-line ``OutputError`` naming the file and the reason.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as error:
        raise OutputError(path, error) from None
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        # mkstemp creates 0600; give the file the mode a plain open() would (0666 minus umask).
        os.chmod(tmp_name, 0o666 & ~_umask())
        os.replace(tmp_name, path)
    except BaseException as error:
        Path(tmp_name).unlink(missing_ok=True)
        if isinstance(error, OSError):
            raise OutputError(path, error) from None
        raise


class OutputError(RoiedgeError, OSError):
    """An output file could not be written (an OSError too, for callers that catch those)."""

    def __init__(self, path: Path, error: OSError) -> None:
        reason = error.strerror or type(error).__name__
        super().__init__(f"{path}: cannot write it ({reason}); nothing was written")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def manifest_to_dict(manifest: Manifest) -> dict[str, Any]:
    """The JSON-ready form of a manifest."""
    return dataclasses.asdict(manifest)


def detector_digest(detector: dict[str, Any]) -> str:
    """sha256 of the detector config's canonical JSON (sorted keys, no whitespace)."""
    text = json.dumps(detector, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def seal(manifest: Manifest, directory: os.PathLike) -> Manifest:
    """``manifest`` with the sha256 of its golden files (under ``directory``) and detector config."""
    return dataclasses.replace(
        manifest,
        golden_sha256={
            model: sha256_file(resolve_inside(directory, path, f"golden {model}"))
            for model, path in manifest.golden.items()
        },
        detector_sha256=detector_digest(manifest.detector),
    )


_SHA256 = re.compile(r"[0-9a-f]{64}")


def _need(value: Any, kind: type | tuple[type, ...], where: str, expected: str) -> Any:
    if not isinstance(value, kind) or (isinstance(value, bool) and kind in (int, (int, float))):
        raise ArtifactError(f"{where} is {_shown(value)}; expected {expected}")
    return value


def _shown(value: Any) -> str:
    text = json.dumps(value, default=str) if not isinstance(value, str) else repr(value)
    return f"{type(value).__name__} {text[:40]}{'...' if len(text) > 40 else ''}"


def _str_map(value: Any, where: str, hashes: bool = False) -> dict[str, str]:
    _need(value, dict, where, "an object of strings")
    for key, item in value.items():
        _need(item, str, f"{where}[{key!r}]", "a string")
        if hashes and not _SHA256.fullmatch(item):
            raise ArtifactError(f"{where}[{key!r}] is {item[:20]!r}; expected a hex sha256")
    return dict(value)


def _spec(data: Any, where: str) -> TensorSpec:
    _need(data, dict, where, "a tensor spec object")
    name = _need(data.get("name"), str, f"{where}.name", "a string")
    shape = _need(data.get("shape"), list, f"{where}.shape", "a list of ints or null")
    for dim in shape:
        if dim is not None and (isinstance(dim, bool) or not isinstance(dim, int) or dim < 0):
            raise ArtifactError(f"{where}.shape has {dim!r}; expected ints >= 0 or null")
    dtype = _need(data.get("dtype"), str, f"{where}.dtype", "a numpy dtype name")
    return TensorSpec(name=name, shape=tuple(shape), dtype=dtype)


def _entry(data: Any, where: str) -> ArtifactEntry:
    _need(data, dict, where, "an artifact object")
    fields = {}
    for key in ("name", "model", "format", "precision", "path", "sha256"):
        fields[key] = _need(data.get(key), str, f"{where}.{key}", "a string")
    if not _SHA256.fullmatch(fields["sha256"]):
        raise ArtifactError(f"{where}.sha256 is {fields['sha256'][:20]!r}; expected a hex sha256")
    size = _need(data.get("bytes"), int, f"{where}.bytes", "an int")
    report = data.get("op_report")
    if report is not None:
        _need(report, str, f"{where}.op_report", "a string or null")
    sides = {}
    for side in ("inputs", "outputs"):
        specs = _need(data.get(side), list, f"{where}.{side}", "a list of tensor specs")
        sides[side] = tuple(_spec(s, f"{where}.{side}[{i}]") for i, s in enumerate(specs))
    unknown = set(data) - {*fields, "bytes", "op_report", "inputs", "outputs"}
    if unknown:
        raise ArtifactError(f"{where} has unknown fields {sorted(unknown)}")
    return ArtifactEntry(**fields, bytes=size, op_report=report, **sides)


def manifest_from_dict(data: Any, source: str = "manifest") -> Manifest:
    """Parse a manifest dict, with a one-line error naming ``source`` on any mismatch.

    Checks every field's type, the detector config's sha256 and that golden hashes cover every
    golden file; file hashes and paths are checked when a file is used (``verified_path``).
    """
    if not isinstance(data, dict):
        raise ArtifactError(f"{source}: expected a JSON object, got {type(data).__name__}")
    version = data.get("schema_version")
    if version != SCHEMA_VERSION:
        hint = " (schema 1 predates golden and config hashes)" if version == 1 else ""
        raise ArtifactError(
            f"{source}: schema_version {version!r} is not supported{hint}; this runtime reads "
            f"schema_version {SCHEMA_VERSION} (re-export the artifacts with a matching roiedge)"
        )
    try:
        entries = _need(data.get("artifacts"), list, "artifacts", "a list")
        manifest = Manifest(
            artifacts=tuple(_entry(e, f"artifacts[{i}]") for i, e in enumerate(entries)),
            golden=_str_map(data.get("golden"), "golden"),
            source_models=_need(data.get("source_models"), dict, "source_models", "an object"),
            detector=_need(data.get("detector"), dict, "detector", "an object"),
            versions=_need(data.get("versions", {}), dict, "versions", "an object"),
            golden_sha256=_str_map(data.get("golden_sha256"), "golden_sha256", hashes=True),
            detector_sha256=_need(
                data.get("detector_sha256"), str, "detector_sha256", "a hex sha256"
            ),
            schema_version=version,
        )
    except ArtifactError as error:
        raise ArtifactError(f"{source}: {error}") from None
    for entry in manifest.artifacts:
        # Any Keras model's name (MODELS are the detector's stages; `export --keras-model` names
        # artifacts after the user's model).
        if not isinstance(entry.model, str) or not entry.model or entry.format not in FORMATS:
            raise ArtifactError(
                f"{source}: artifact {entry.name!r} has model={entry.model!r} format={entry.format!r};"
                f" expected a model name (e.g. one of {MODELS}) and format in {FORMATS}"
            )
    missing = sorted(set(manifest.golden) - set(manifest.golden_sha256))
    if missing:
        raise ArtifactError(
            f"{source}: golden_sha256 lacks {missing}; expected one per golden file"
        )
    if detector_digest(manifest.detector) != manifest.detector_sha256:
        raise ArtifactError(
            f"{source}: the detector config does not match its detector_sha256 (manifest edited "
            "or corrupt; re-export or re-copy the artifacts)"
        )
    return manifest


def write_manifest(manifest: Manifest, directory: os.PathLike) -> Path:
    """Atomically write ``directory/manifest.json``; returns its path."""
    path = Path(directory) / MANIFEST_NAME
    atomic_write_bytes(path, strict_json.dump_bytes(manifest_to_dict(manifest)))
    return path


def read_manifest(directory: os.PathLike) -> Manifest:
    """Read and validate ``directory/manifest.json`` (structure and version, not yet hashes)."""
    path = Path(directory) / MANIFEST_NAME
    if not path.exists():
        raise ArtifactError(
            f"{path}: no manifest found; expected an artifacts directory made by `make export`"
        )
    try:
        data = read_json(path, "manifest")
    except RoiedgeError as error:
        raise ArtifactError(f"not a readable JSON manifest: {error}") from None
    return manifest_from_dict(data, source=str(path))


def resolve_inside(directory: os.PathLike, relative: str, what: str) -> Path:
    """``directory/relative`` after checking it cannot leave ``directory``.

    Refuses absolute paths, ``..`` components and symlinks resolving outside the directory, so a
    manifest can only name files shipped with it.
    """
    base = Path(directory)
    candidate = Path(relative)
    if not relative or candidate.is_absolute() or ".." in candidate.parts or "\x00" in relative:
        raise ArtifactError(
            f"{base / 'manifest.json'}: {what} path {relative!r} is not a relative path inside "
            "the artifacts directory"
        )
    path = base / candidate
    try:
        inside = path.resolve().is_relative_to(base.resolve())
    except (OSError, RuntimeError, ValueError):
        inside = False
    if not inside:
        raise ArtifactError(
            f"{path}: {what} resolves to {path.resolve()} outside the artifacts directory "
            f"{base.resolve()} (a symlink out?)"
        )
    return path


def verified_file(directory: os.PathLike, relative: str, sha256: str, what: str) -> Path:
    """The path of a manifest-listed file after checking it is inside, exists and hashes right."""
    path = resolve_inside(directory, relative, what)
    if not path.is_file():
        raise ArtifactError(f"{path}: {what} listed in the manifest is missing")
    actual = sha256_file(path)
    if actual != sha256:
        raise ArtifactError(
            f"{path}: sha256 {actual[:12]}... does not match the manifest's {sha256[:12]}..."
            f" ({what} corrupt or replaced; re-export or re-copy the artifacts)"
        )
    return path


def verified_path(directory: os.PathLike, entry: ArtifactEntry) -> Path:
    """The artifact's file path after checking it is inside, exists and its sha256 matches."""
    return verified_file(directory, entry.path, entry.sha256, f"artifact {entry.name!r}")


def verified_content(
    directory: os.PathLike, relative: str, sha256: str, what: str, limit_name: str
) -> tuple[Path, bytes]:
    """(path, content) of a manifest-listed file: the bytes read once, hashed, then handed on.

    The caller uses ``content`` itself, never the path again, so a file renamed or rewritten
    after the check cannot be what runs (re-opening by path after hashing is a race). The size is
    checked against LIMITS ``limit_name`` before the file is read.
    """
    path = resolve_inside(directory, relative, what)
    if not path.exists():
        raise ArtifactError(f"{path}: {what} listed in the manifest is missing")
    content = read_bytes(path, what, limit_name)
    actual = hashlib.sha256(content).hexdigest()
    if actual != sha256:
        raise ArtifactError(
            f"{path}: sha256 {actual[:12]}... does not match the manifest's {sha256[:12]}..."
            f" ({what} corrupt or replaced; re-export or re-copy the artifacts)"
        )
    return path, content


def verified_artifact(directory: os.PathLike, entry: ArtifactEntry) -> tuple[Path, bytes]:
    """(path, content) of an artifact whose sha256 matched: load ``content``, not the path."""
    return verified_content(
        directory, entry.path, entry.sha256, f"artifact {entry.name!r}", "model_bytes"
    )
