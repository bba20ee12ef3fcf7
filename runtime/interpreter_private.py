"""The one private TFLite interpreter API the runtime uses, behind a guard. TF-free.

``Interpreter._get_full_signature_list()`` is the only way to map a signature key (``image``) to a
tensor index in every interpreter the runtime supports (tflite-runtime 2.14, ai-edge-litert 2.3,
tf.lite): the public ``get_signature_list`` gives names without indexes. It is private, so its
shape is checked here and a change fails here, naming the API and the interpreter's version.
"""

from __future__ import annotations

from typing import Any

from runtime.errors import RoiedgeError

#: Interpreters this guard was checked with: ai-edge-litert by tests/test_private_apis.py,
#: tflite-runtime by `make test-edge` (tests/test_edge_envs.py), tf.lite by the fallback test.
CHECKED_VERSIONS = {"ai-edge-litert": "2.3.0", "tflite-runtime": "2.14.0", "tensorflow-cpu": "2.21"}
API = "Interpreter._get_full_signature_list"


def _version(interpreter: Any) -> str:
    module = type(interpreter).__module__.split(".")[0]
    try:
        from importlib.metadata import version

        dist = {"tflite_runtime": "tflite-runtime", "tensorflow": "tensorflow-cpu"}.get(
            module, module.replace("_", "-")
        )
        return f"{dist} {version(dist)}"
    except Exception:  # metadata of a vendored or renamed wheel: the module name is enough
        return module


def full_signature_list(interpreter: Any) -> dict[str, dict[str, dict[str, int]]]:
    """Signature key -> {"inputs"/"outputs": {tensor key: tensor index}}; {} without the API.

    Without the method (an interpreter that never had it) the caller binds tensors by name
    instead; a method that answers in another shape raises a RoiedgeError naming the API.
    """
    method = getattr(interpreter, "_get_full_signature_list", None)
    if method is None:
        return {}
    signatures = method()
    if not isinstance(signatures, dict) or not all(
        isinstance(sig, dict)
        and all(
            isinstance(index, int)
            for side in ("inputs", "outputs")
            for index in sig.get(side, {}).values()
        )
        for sig in signatures.values()
    ):
        raise RoiedgeError(
            f"{API} of {_version(interpreter)} returned {type(signatures).__name__} in an unknown "
            f"shape; expected {{key: {{'inputs': {{name: index}}, 'outputs': ...}}}} as in "
            f"{', '.join(f'{k} {v}' for k, v in CHECKED_VERSIONS.items())}"
        )
    return signatures
