"""Interpreter backends behind one small interface: load a file, list its tensors, run by names.

TFLite runs through ``ai_edge_litert`` (preferred), ``tflite_runtime`` or, as a last resort,
``tensorflow.lite``; ONNX through ``onnxruntime``. Callers always pass and receive float arrays
(or int32 for integer inputs): tensors stored as int8/uint8 with a scale and zero point are
quantized on the way in and dequantized on the way out. Every interpreter is imported lazily.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from runtime.edgetpu import (  # noqa: F401  (public here too, as before)
    EDGETPU_MODES,
    BackendError,
    edgetpu_available,
    edgetpu_mode_for,
    load_edgetpu_delegate,
)
from runtime.errors import ArtifactError
from runtime.input_checks import check_range, refuse_kind
from runtime.interpreter_private import full_signature_list
from runtime.safe_files import read_bytes

# Backend names by artifact format, in order of preference.
PREFERENCE: dict[str, tuple[str, ...]] = {
    "tflite": ("ai_edge_litert", "tflite_runtime", "tensorflow"),
    "onnx": ("onnxruntime",),
}

_REGISTRY: dict[str, type[Backend]] = {}


@dataclasses.dataclass(frozen=True)
class TensorInfo:
    """One tensor as the interpreter sees it.

    ``dtype`` is the stored numpy dtype name; ``scale``/``zero_point`` are set (scale > 0) for
    per-tensor quantized int8/uint8 tensors, else None. ``aliases`` are other names that refer to
    the same tensor (for TFLite the signature key, e.g. ``image`` for ``serving_default_image:0``).
    """

    name: str
    shape: tuple[int | None, ...]
    dtype: str
    scale: float | None = None
    zero_point: int | None = None
    aliases: tuple[str, ...] = ()


def register(name: str) -> Callable[[type[Backend]], type[Backend]]:
    """Class decorator adding a backend to the registry under ``name``."""

    def decorate(cls: type[Backend]) -> type[Backend]:
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return decorate


def backend_names() -> tuple[str, ...]:
    """Every registered backend name."""
    return tuple(_REGISTRY)


class Backend:
    """A loaded artifact. Subclasses implement ``available``, ``__init__`` and ``_run``."""

    name: ClassVar[str] = ""
    format: ClassVar[str] = ""
    inputs: tuple[TensorInfo, ...]
    outputs: tuple[TensorInfo, ...]
    delegate: str | None = None

    @classmethod
    def available(cls) -> bool:
        """Whether the interpreter package can be imported here."""
        raise NotImplementedError

    def __init__(
        self,
        path: Path,
        num_threads: int | None = None,
        edgetpu: str = "off",
        content: bytes | None = None,
    ) -> None:
        """Load ``content`` (the bytes that were hashed), else ``path``; threads None = all cores.

        ``edgetpu`` is one of EDGETPU_MODES; ``path`` names the model in messages.
        """
        raise NotImplementedError

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run once; ``feeds`` maps every input name to a float (or int) array -> outputs by name.

        Quantized tensors are converted with their scale and zero point, so inputs may be float and
        outputs are float32 whenever the stored tensor is quantized.
        """
        missing = [t.name for t in self.inputs if t.name not in feeds]
        if missing:
            raise BackendError(f"{self.name}: no value for inputs {missing}")
        arrays = {t.name: to_stored(feeds[t.name], t, self.name) for t in self.inputs}
        raw = self._run(arrays)
        return {t.name: from_stored(raw[t.name], t) for t in self.outputs}

    def _run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        raise NotImplementedError


def to_stored(value: Any, info: TensorInfo, backend: str) -> np.ndarray:
    """A caller's array -> the tensor's stored dtype: quantized (round, clip) when it has a scale.

    A float array for an integer tensor without a scale (e.g. int32 box indexes) is refused: a
    silent cast would truncate 2.7 to 2.
    """
    array = np.asarray(value)
    if info.shape and None not in info.shape and tuple(array.shape) != tuple(info.shape):
        raise BackendError(
            f"{backend}: input {info.name!r} has shape {array.shape}; expected {info.shape}"
        )
    dtype = np.dtype(info.dtype)
    refuse_kind(array, dtype, f"{backend}: input {info.name!r}")
    if info.scale and dtype.kind in "iu" and array.dtype.kind == "f":
        limits = np.iinfo(dtype)
        quantized = np.round(array.astype(np.float64) / info.scale) + (info.zero_point or 0)
        return np.clip(quantized, limits.min, limits.max).astype(dtype)
    if dtype.kind in "iu" and array.dtype.kind == "f":
        raise BackendError(
            f"{backend}: input {info.name!r} is {array.dtype} but the tensor is {dtype.name} "
            "without a quantization scale; expected an integer array"
        )
    check_range(array, dtype, f"{backend}: input {info.name!r}")
    return np.ascontiguousarray(array, dtype=dtype)


def from_stored(value: np.ndarray, info: TensorInfo) -> np.ndarray:
    """A stored output -> float32 (dequantized with its scale and zero point) or unchanged."""
    if info.scale and np.dtype(info.dtype).kind in "iu":
        return ((value.astype(np.float32) - np.float32(info.zero_point or 0)) * info.scale).astype(
            np.float32
        )
    return value


def missing_interpreter(format: str, backend: str | None = None) -> str | None:
    """Why no interpreter can run ``format`` here (e.g. "onnxruntime not installed"), else None."""
    if backend is not None:
        known = _REGISTRY.get(backend)
        return None if known is None or known.available() else f"{backend} not installed"
    if any(_REGISTRY[n].available() for n in PREFERENCE.get(format, ())):
        return None
    names = [n for n in PREFERENCE.get(format, ()) if n != "tensorflow"]
    return f"{' or '.join(names) or format} not installed"


def open_backend(
    path: os.PathLike,
    format: str,
    backend: str | None = None,
    num_threads: int | None = None,
    edgetpu: str = "off",
    content: bytes | None = None,
) -> Backend:
    """Load ``path`` (a ``format`` artifact) with ``backend``, or the first available for the format.

    ``content`` is the file's bytes when the caller has read (and hashed) them: then those bytes
    are loaded and ``path`` only names the model in messages.
    """
    if format not in PREFERENCE:
        raise BackendError(
            f"{path}: format {format!r} unknown; expected one of {tuple(PREFERENCE)}"
        )
    if edgetpu not in EDGETPU_MODES:
        raise BackendError(f"edgetpu={edgetpu!r} unknown; expected one of {EDGETPU_MODES}")
    if backend is None:
        candidates = [n for n in PREFERENCE[format] if _REGISTRY[n].available()]
        if not candidates:
            raise BackendError(
                f"{path}: no {format} interpreter installed; expected one of "
                f"{PREFERENCE[format]} (e.g. pip install {PREFERENCE[format][0].replace('_', '-')})"
            )
        backend = candidates[0]
    if backend not in _REGISTRY:
        raise BackendError(f"backend {backend!r} unknown; expected one of {backend_names()}")
    cls = _REGISTRY[backend]
    if cls.format != format:
        raise BackendError(f"{path}: backend {backend!r} runs {cls.format} files, not {format}")
    if not cls.available():
        raise BackendError(
            f"backend {backend!r} is not installed in this Python ({sys.executable})"
        )
    return cls(Path(path), num_threads=num_threads, edgetpu=edgetpu, content=content)


# --------------------------------------------------------------------------------------- TFLite


class _TFLiteBackend(Backend):
    format = "tflite"
    _module = ""

    @classmethod
    def available(cls) -> bool:
        import importlib.util

        try:
            return importlib.util.find_spec(cls._module) is not None
        except (ImportError, ValueError):
            return False

    @classmethod
    def _interpreter_module(cls) -> Any:
        raise NotImplementedError

    def __init__(
        self,
        path: Path,
        num_threads: int | None = None,
        edgetpu: str = "off",
        content: bytes | None = None,
    ) -> None:
        from runtime.flatbuffer import validate_tflite_bytes

        content = read_bytes(path, "artifact", "model_bytes") if content is None else content
        self._content = content  # the interpreter points into it: keep it alive as long
        # Old interpreters (tflite-runtime 2.14) do not verify the flatbuffer and can segfault on
        # a truncated or corrupt file: walk its structure first (a few ms).
        self.summary = validate_tflite_bytes(content, path)
        edgetpu = edgetpu_mode_for(path, self.summary.edgetpu_compiled, edgetpu)
        module = self._interpreter_module()
        # A TFLite interpreter holds one set of tensors: two threads interleaving set_tensor /
        # invoke / get_tensor swap each other's inputs or hit "There is at least 1 reference to
        # internal data". One lock per interpreter serialises a stage; different stages (and
        # different artifacts) still run concurrently (measured against per-thread interpreters
        # in runtime/README.md).
        self._lock = threading.Lock()
        delegates = []
        if edgetpu != "off":
            delegate = load_edgetpu_delegate(module, required=edgetpu == "require")
            if delegate is not None:
                delegates.append(delegate)
                self.delegate = "edgetpu"
        try:
            self._interpreter = module.Interpreter(
                model_content=content,
                num_threads=num_threads or os.cpu_count() or 1,
                experimental_delegates=delegates or None,
            )
            self._interpreter.allocate_tensors()
            keys = _signature_keys(self._interpreter)
            self._in_index: dict[str, int] = {}
            self._out_index: dict[str, int] = {}
            self.inputs = tuple(
                self._info(d, keys, self._in_index) for d in self._interpreter.get_input_details()
            )
            self.outputs = tuple(
                self._info(d, keys, self._out_index) for d in self._interpreter.get_output_details()
            )
        except (ValueError, RuntimeError) as error:
            # UnicodeDecodeError (a ValueError) too: a tensor or signature name not UTF-8.
            message = str(error).strip().splitlines()
            raise ArtifactError(
                f"{path}: {self.name} cannot load it as a TFLite model "
                f"({message[0][:160] if message else type(error).__name__})"
            ) from None

    @staticmethod
    def _info(detail: dict, keys: dict[int, str], index: dict[str, int]) -> TensorInfo:
        scale, zero_point = detail.get("quantization", (0.0, 0))
        params = detail.get("quantization_parameters") or {}
        if len(np.atleast_1d(params.get("scales", []))) > 1:
            scale, zero_point = 0.0, 0  # per-axis I/O quantization is not used for model I/O
        index[detail["name"]] = detail["index"]
        alias = keys.get(detail["index"])
        return TensorInfo(
            name=detail["name"],
            shape=tuple(int(v) for v in detail["shape"]),
            dtype=np.dtype(detail["dtype"]).name,
            scale=float(scale) if scale else None,
            zero_point=int(zero_point) if scale else None,
            aliases=(alias,) if alias and alias != detail["name"] else (),
        )

    def _run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        interpreter = self._interpreter
        with self._lock:
            try:
                for name, value in feeds.items():
                    interpreter.set_tensor(self._in_index[name], value)
                interpreter.invoke()
            except (ValueError, RuntimeError) as error:
                raise BackendError(
                    f"{self.name}: the model failed on these inputs ({_first(error)})"
                ) from None
            # get_tensor copies, so the results stay valid after the lock is released.
            return {name: interpreter.get_tensor(i) for name, i in self._out_index.items()}


def _signature_keys(interpreter: Any) -> dict[int, str]:
    """Tensor index -> signature key of the model's only signature ({} if none or several)."""
    signatures = full_signature_list(interpreter)
    if not signatures or len(signatures) != 1:
        return {}
    (signature,) = signatures.values()
    keys = {}
    for side in ("inputs", "outputs"):
        for key, index in signature.get(side, {}).items():
            keys[int(index)] = key
    return keys


@register("ai_edge_litert")
class LiteRTBackend(_TFLiteBackend):
    """TFLite through Google's ``ai-edge-litert`` wheel (the successor of tflite-runtime)."""

    _module = "ai_edge_litert"

    @classmethod
    def _interpreter_module(cls) -> Any:
        from ai_edge_litert import interpreter

        return interpreter


@register("tflite_runtime")
class TFLiteRuntimeBackend(_TFLiteBackend):
    """TFLite through the legacy ``tflite-runtime`` wheel (Raspberry Pi OS images, Python <= 3.11)."""

    _module = "tflite_runtime"

    @classmethod
    def _interpreter_module(cls) -> Any:
        from tflite_runtime import interpreter

        return interpreter


@register("tensorflow")
class TensorFlowLiteBackend(_TFLiteBackend):
    """TFLite through a full TensorFlow install (last resort; slow to import)."""

    _module = "tensorflow"

    @classmethod
    def _interpreter_module(cls) -> Any:
        import tensorflow as tf

        class _Module:
            Interpreter = tf.lite.Interpreter
            load_delegate = staticmethod(tf.lite.experimental.load_delegate)

        return _Module


# ----------------------------------------------------------------------------------------- ONNX

_ONNX_DTYPES = {
    "tensor(float)": "float32",
    "tensor(float16)": "float16",
    "tensor(double)": "float64",
    "tensor(int8)": "int8",
    "tensor(uint8)": "uint8",
    "tensor(int32)": "int32",
    "tensor(int64)": "int64",
    "tensor(bool)": "bool",
}


@register("onnxruntime")
class OnnxRuntimeBackend(Backend):
    """ONNX through ``onnxruntime`` on the CPU execution provider."""

    format = "onnx"

    @classmethod
    def available(cls) -> bool:
        import importlib.util

        return importlib.util.find_spec("onnxruntime") is not None

    def __init__(
        self,
        path: Path,
        num_threads: int | None = None,
        edgetpu: str = "off",
        content: bytes | None = None,
    ) -> None:
        import onnxruntime as ort

        if edgetpu == "require":
            raise BackendError(f"{path}: the Edge TPU runs TFLite files only, not ONNX")
        options = ort.SessionOptions()
        options.log_severity_level = 3
        if num_threads:
            options.intra_op_num_threads = int(num_threads)
            options.inter_op_num_threads = 1
        content = read_bytes(path, "artifact", "model_bytes") if content is None else content
        try:
            self._session = ort.InferenceSession(
                content, sess_options=options, providers=["CPUExecutionProvider"]
            )
        except Exception as error:  # onnxruntime raises its own exception types per failure
            message = str(error).strip().splitlines()
            raise ArtifactError(
                f"{path}: onnxruntime cannot load it as an ONNX model "
                f"({message[0] if message else type(error).__name__})"
            ) from None
        self.inputs = tuple(self._info(t) for t in self._session.get_inputs())
        self.outputs = tuple(self._info(t) for t in self._session.get_outputs())

    @staticmethod
    def _info(arg: Any) -> TensorInfo:
        shape = tuple(d if isinstance(d, int) else None for d in arg.shape)
        return TensorInfo(name=arg.name, shape=shape, dtype=_ONNX_DTYPES.get(arg.type, "float32"))

    def _run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        # InferenceSession.run is thread-safe (onnxruntime documents concurrent Run calls).
        names = [t.name for t in self.outputs]
        try:
            return dict(zip(names, self._session.run(names, feeds)))
        except Exception as error:  # onnxruntime raises its own exception types per failure
            raise BackendError(
                f"{self.name}: the model failed on these inputs ({_first(error)})"
            ) from None


def _first(error: BaseException) -> str:
    """The first line of an interpreter's message, at most 200 characters."""
    lines = str(error).strip().splitlines()
    return lines[0][:200] if lines else type(error).__name__


# ---------------------------------------------------------------------------------------- stages


class Stage:
    """One manifest artifact loaded and bound to its manifest specs (matched by name, never position).

    ``run(*arrays)`` takes the inputs in the manifest's (Keras) order and returns the outputs in
    that order, as float32 (or the manifest dtype for non-quantized integer outputs).
    """

    def __init__(self, entry: Any, backend: Backend, path: Path) -> None:
        self.entry = entry
        self.backend = backend
        self.path = path
        self._in = [_bind(spec, backend.inputs, "input", path) for spec in entry.inputs]
        self._out = [_bind(spec, backend.outputs, "output", path) for spec in entry.outputs]
        if len(entry.inputs) != len(backend.inputs):
            names = [t.name for t in backend.inputs]
            raise ArtifactError(
                f"{path}: has inputs {names}; the manifest lists {len(entry.inputs)} "
                f"({[s.name for s in entry.inputs]})"
            )

    @property
    def output_labels(self) -> list[str]:
        """Readable output names in manifest order (TFLite signature keys, else tensor names)."""
        return [t.aliases[0] if t.aliases else t.name for t in self._out]

    def run(self, *arrays: np.ndarray) -> list[np.ndarray]:
        """Inputs in manifest order -> outputs in manifest order."""
        if len(arrays) != len(self._in):
            raise BackendError(
                f"{self.path}: got {len(arrays)} inputs; expected {len(self._in)} "
                f"({[s.name for s in self.entry.inputs]})"
            )
        results = self.backend.run({t.name: a for t, a in zip(self._in, arrays)})
        return [results[t.name] for t in self._out]


def canonical_name(name: str) -> str:
    """``serving_default_image:0`` -> ``image``; ``StatefulPartitionedCall:1`` is left as is."""
    if name.endswith(":0"):
        name = name[:-2]
    return name.removeprefix("serving_default_")


def _bind(spec: Any, tensors: tuple[TensorInfo, ...], side: str, path: Path) -> TensorInfo:
    """The interpreter tensor a manifest spec names: exact name, then signature key, then canonical."""
    for match in (
        lambda t: t.name == spec.name,
        lambda t: spec.name in t.aliases,
        lambda t: (
            canonical_name(t.name) == canonical_name(spec.name)
            or any(canonical_name(a) == canonical_name(spec.name) for a in t.aliases)
        ),
    ):
        found = [t for t in tensors if match(t)]
        if len(found) == 1:
            tensor = found[0]
            break
    else:
        have = sorted({t.name for t in tensors} | {a for t in tensors for a in t.aliases})
        raise ArtifactError(
            f"{path}: the manifest's {side} {spec.name!r} is not a tensor of this file; it has {have}"
        )
    known = tuple(spec.shape)
    if len(known) != len(tensor.shape) or any(
        a is not None and b is not None and a != b for a, b in zip(known, tensor.shape)
    ):
        raise ArtifactError(
            f"{path}: {side} {spec.name!r} has shape {tensor.shape}; the manifest expects {known}"
        )
    return tensor


def load_stage(
    directory: os.PathLike,
    entry: Any,
    backend: str | None = None,
    num_threads: int | None = None,
    edgetpu: str = "off",
) -> Stage:
    """Verify the sha256 of a manifest ``entry`` under ``directory``, load it and bind its tensors.

    The bytes that were hashed are the bytes loaded (the file is read once).
    """
    from runtime.manifest import verified_artifact

    path, content = verified_artifact(directory, entry)
    loaded = open_backend(
        path, entry.format, backend, num_threads=num_threads, edgetpu=edgetpu, content=content
    )
    return Stage(entry, loaded, path)
