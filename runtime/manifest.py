"""The artifact manifest: the contract between `export` (which writes it) and the runtime (which reads it).

``artifacts/manifest.json`` lists every exported file with its hash and tensor specs, the golden
data of each stage, where the source Keras models came from, and the detector configuration the
runtime needs for pre- and post-processing. Serialised in this module only.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from runtime.errors import ArtifactError

SCHEMA_VERSION = 1
MANIFEST_NAME = "manifest.json"
MODELS = ("backbone_rpn", "head")
FORMATS = ("tflite", "onnx")
#: Precisions each format is exported in (export/formats.py builds its artifact table from this).
FORMAT_PRECISIONS: dict[str, tuple[str, ...]] = {
    "tflite": ("float32", "float16", "dynamic_int8", "int8", "int8_io"),
    "onnx": ("float32", "int8"),
}


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
    """Write ``data`` to ``path`` through a temp file in the same directory and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        # mkstemp creates 0600; give the file the mode a plain open() would (0666 minus umask).
        os.chmod(tmp_name, 0o666 & ~_umask())
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def manifest_to_dict(manifest: Manifest) -> dict[str, Any]:
    """The JSON-ready form of a manifest."""
    return dataclasses.asdict(manifest)


def manifest_from_dict(data: Any, source: str = "manifest") -> Manifest:
    """Parse a manifest dict, with a one-line error naming ``source`` on any mismatch."""
    if not isinstance(data, dict):
        raise ArtifactError(f"{source}: expected a JSON object, got {type(data).__name__}")
    version = data.get("schema_version")
    if version != SCHEMA_VERSION:
        raise ArtifactError(
            f"{source}: schema_version {version!r} is not supported; this runtime reads "
            f"schema_version {SCHEMA_VERSION} (re-export the artifacts with a matching roiedge)"
        )
    try:
        artifacts = tuple(
            ArtifactEntry(
                **{
                    **entry,
                    "inputs": tuple(_spec(s) for s in entry["inputs"]),
                    "outputs": tuple(_spec(s) for s in entry["outputs"]),
                }
            )
            for entry in data["artifacts"]
        )
        manifest = Manifest(
            artifacts=artifacts,
            golden=dict(data["golden"]),
            source_models=dict(data["source_models"]),
            detector=dict(data["detector"]),
            versions=dict(data.get("versions", {})),
            schema_version=version,
        )
    except (KeyError, TypeError) as error:
        raise ArtifactError(f"{source}: malformed manifest ({error!r})") from None
    for entry in manifest.artifacts:
        if entry.model not in MODELS or entry.format not in FORMATS:
            raise ArtifactError(
                f"{source}: artifact {entry.name!r} has model={entry.model!r} format={entry.format!r};"
                f" expected model in {MODELS} and format in {FORMATS}"
            )
    return manifest


def _spec(data: dict[str, Any]) -> TensorSpec:
    return TensorSpec(name=data["name"], shape=tuple(data["shape"]), dtype=data["dtype"])


def write_manifest(manifest: Manifest, directory: os.PathLike) -> Path:
    """Atomically write ``directory/manifest.json``; returns its path."""
    path = Path(directory) / MANIFEST_NAME
    text = json.dumps(manifest_to_dict(manifest), indent=2, sort_keys=False) + "\n"
    atomic_write_bytes(path, text.encode("utf-8"))
    return path


def read_manifest(directory: os.PathLike) -> Manifest:
    """Read and validate ``directory/manifest.json`` (structure and version, not yet hashes)."""
    path = Path(directory) / MANIFEST_NAME
    if not path.is_file():
        raise ArtifactError(
            f"{path}: no manifest found; expected an artifacts directory made by `make export`"
        )
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ArtifactError(f"{path}: not a readable JSON manifest ({error})") from None
    return manifest_from_dict(data, source=str(path))


def verified_path(directory: os.PathLike, entry: ArtifactEntry) -> Path:
    """The artifact's file path after checking it exists and its sha256 matches the manifest."""
    path = Path(directory) / entry.path
    if not path.is_file():
        raise ArtifactError(f"{path}: artifact {entry.name!r} listed in the manifest is missing")
    actual = sha256_file(path)
    if actual != entry.sha256:
        raise ArtifactError(
            f"{path}: sha256 {actual[:12]}... does not match the manifest's {entry.sha256[:12]}..."
            " (file corrupt or replaced; re-export or re-copy the artifacts)"
        )
    return path
