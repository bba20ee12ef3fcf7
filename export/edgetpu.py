"""Edge TPU: a compatibility report that applies the compiler's documented rules, and a compile step.

``edgetpu_report`` predicts, op by op in execution order, what ``edgetpu_compiler`` maps to the
Edge TPU and what it leaves on the CPU, from Coral's documented requirements
(https://coral.ai/docs/edgetpu/models-intro/): the op is in the supported list; its tensors are
8-bit quantized with static shapes; a tensor has at most 3 non-unit dimensions and only the 3
innermost may exceed 1; pooling and concatenation carry no fused activation; and the first op
that cannot be mapped sends every op after it to the CPU (the compiler cuts the graph once).

``python -m export edgetpu DIR`` (``make edgetpu``) runs ``edgetpu_compiler`` on the ``int8_io``
backbone when it is installed and adds ``backbone_rpn.int8_io_edgetpu.tflite`` to the manifest;
without the compiler it says in one line how to install it (the compiler is in no registry
reachable here, so it is detected, never faked).
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from runtime.manifest import EDGETPU_PRECISION as COMPILED_PRECISION

#: Coral's supported operations, as TFLite builtin op names. Transcribed from
#: "Supported operations" on https://coral.ai/docs/edgetpu/models-intro/ (table of ops the Edge TPU
#: compiler maps to the TPU; LSTM is unidirectional only). Data, not code: update it from that
#: page when Coral revises the list.
EDGETPU_SUPPORTED_OPS: frozenset[str] = frozenset(
    {
        "ADD",
        "AVERAGE_POOL_2D",
        "CONCATENATION",
        "CONV_2D",
        "DEPTHWISE_CONV_2D",
        "EXPAND_DIMS",
        "FULLY_CONNECTED",
        "L2_NORMALIZATION",
        "LOGISTIC",
        "UNIDIRECTIONAL_SEQUENCE_LSTM",
        "MAXIMUM",
        "MAX_POOL_2D",
        "MEAN",
        "MINIMUM",
        "MUL",
        "PACK",
        "PAD",
        "PRELU",
        "QUANTIZE",
        "REDUCE_MAX",
        "REDUCE_MIN",
        "RELU",
        "RELU6",
        "RELU_N1_TO_1",
        "RESHAPE",
        "RESIZE_BILINEAR",
        "RESIZE_NEAREST_NEIGHBOR",
        "RSQRT",
        "SLICE",
        "SOFTMAX",
        "SPACE_TO_DEPTH",
        "SPLIT",
        "SQUARED_DIFFERENCE",
        "SQUEEZE",
        "STRIDED_SLICE",
        "SUB",
        "SUM",
        "TANH",
        "TRANSPOSE",
        "TRANSPOSE_CONV",
    }
)
EDGETPU_SOURCE = 'https://coral.ai/docs/edgetpu/models-intro/ ("Supported operations")'


#: Ops whose fused activation the Edge TPU cannot apply ("No fused activation function").
NO_FUSED_ACTIVATION_OPS = frozenset({"AVERAGE_POOL_2D", "MAX_POOL_2D", "CONCATENATION"})
#: At most this many innermost dimensions of a tensor may be larger than 1.
MAX_NON_UNIT_INNER_DIMS = 3
_QUANTIZED_TYPES = ("int8", "uint8")
#: Integer tensors the compiler accepts unquantized (biases, shape/axis operands).
_INTEGER_OPERANDS = ("int32", "int64")

COMPILER = "edgetpu_compiler"
INSTALL_HINT = (
    "edgetpu_compiler not found on PATH; install it on a Debian/Ubuntu x86-64 host from Coral's "
    "apt repository (https://coral.ai/docs/edgetpu/compiler/: add packages.cloud.google.com/apt "
    "coral-edgetpu-stable, then apt-get install edgetpu-compiler) and run `make edgetpu` again"
)


def _tensor_rule_breaks(tensor: Any, constant: bool, name: str) -> list[str]:
    from export.tf_private import flatbuffer_utils

    dtype = flatbuffer_utils().type_to_name(tensor.type).lower()
    raw = tensor.shapeSignature if tensor.shapeSignature is not None else tensor.shape
    shape = [int(d) for d in (raw if raw is not None else [])]
    broken = []
    if dtype not in _QUANTIZED_TYPES and not (constant and dtype in _INTEGER_OPERANDS):
        broken.append(f"tensor {name} is {dtype}, not 8-bit quantized")
    if constant:
        return (
            broken  # weights (e.g. a conv's [out, kh, kw, in] filter) are laid out by the compiler
        )
    if any(d < 0 for d in shape):
        broken.append(f"tensor {name} has a dynamic shape {shape}")
    outer = shape[:-MAX_NON_UNIT_INNER_DIMS]
    if any(d > 1 for d in outer):
        broken.append(
            f"tensor {name} shape {shape} has a non-unit dimension outside the "
            f"{MAX_NON_UNIT_INNER_DIMS} innermost"
        )
    return broken


def op_placement(model_bytes: bytes) -> list[dict[str, Any]]:
    """Per op of the main subgraph, in execution order: op name, ``where`` it would run, why.

    ``where`` is "edgetpu" until the first op that breaks a rule, "cpu" from that op on (the
    compiler cuts the graph once). ``reason`` lists the rules an op breaks itself, or says it
    follows an unmapped op.
    """
    from export.audit import tflite_model, tflite_op_name

    model = tflite_model(model_bytes)
    graph = model.subgraphs[0]
    produced = {o for op in graph.operators for o in op.outputs}
    graph_inputs = set(graph.inputs)
    rows, cut = [], None
    for index, op in enumerate(graph.operators):
        name = tflite_op_name(model, op.opcodeIndex)
        broken = []
        if name not in EDGETPU_SUPPORTED_OPS:
            broken.append(f"{name} is not in Coral's supported ops")
        if name in NO_FUSED_ACTIVATION_OPS:
            fused = getattr(op.builtinOptions, "fusedActivationFunction", 0)
            if fused:
                broken.append(f"{name} has a fused activation (code {fused})")
        for t in [*op.inputs, *op.outputs]:
            if t < 0:
                continue
            tensor = graph.tensors[t]
            constant = t not in produced and t not in graph_inputs
            label = tensor.name.decode() if tensor.name else f"t{t}"
            broken.extend(_tensor_rule_breaks(tensor, constant, label))
        if cut is None and broken:
            cut = index
        if cut is not None and not broken:
            broken = [f"after the first unmapped op (#{cut})"]
        rows.append(
            {
                "index": index,
                "op": name,
                "where": "edgetpu" if cut is None else "cpu",
                "reason": "; ".join(broken) or None,
            }
        )
    return rows


def edgetpu_report(model_bytes: bytes) -> dict[str, Any]:
    """Edge TPU table of one TFLite model: op coverage, tensor facts, and per-op placement."""
    from export.audit import tflite_ops, tflite_tensor_report

    ops = tflite_ops(model_bytes)
    tensors = tflite_tensor_report(model_bytes)["tensors"]
    unsupported = {op: n for op, n in sorted(ops.items()) if op not in EDGETPU_SUPPORTED_OPS}
    non_int8 = [
        {"name": t["name"], "dtype": t["dtype"]}
        for t in tensors
        if t["activation"] and t["dtype"] != "int8"
    ]
    dynamic = [
        {"name": t["name"], "shape": t["shape"]}
        for t in tensors
        if t["activation"] and any(d < 0 for d in t["shape"])
    ]
    placement = op_placement(model_bytes)
    first_cpu = next((row for row in placement if row["where"] == "cpu"), None)
    return {
        "source": EDGETPU_SOURCE,
        "compiler_run": False,
        "ops": [
            {"op": op, "count": n, "edgetpu_supported": op in EDGETPU_SUPPORTED_OPS}
            for op, n in sorted(ops.items())
        ],
        "unsupported_ops": unsupported,
        "non_int8_activation_tensors": non_int8,
        "dynamic_shape_tensors": dynamic,
        "placement": placement,
        "edgetpu_ops": sum(row["where"] == "edgetpu" for row in placement),
        "cpu_ops": sum(row["where"] == "cpu" for row in placement),
        "first_cpu_op": first_cpu,
        "likely_fully_mapped": first_cpu is None and not non_int8 and not dynamic,
    }


def format_placement(report: dict[str, Any]) -> str:
    """Which ops would run where, one line per op, and the cut point."""
    lines = [
        f"{r['index']:>4} {r['op']:<24} {r['where']:<8} {r['reason'] or ''}"
        for r in report["placement"]
    ]
    first = report["first_cpu_op"]
    lines.append(
        f"{report['edgetpu_ops']} ops on the Edge TPU, {report['cpu_ops']} on the CPU"
        + (f" (from #{first['index']} {first['op']})" if first else "")
    )
    return "\n".join(lines)


def compile_edgetpu(directory: Path, compiler: str | None = None) -> Any:
    """Run edgetpu_compiler on the manifest's int8_io backbone; add the result to the manifest.

    Returns the new manifest. Raises RoiedgeError (one line) when the compiler is missing, fails,
    or produces a model without ``edgetpu-custom-op``.
    """
    from runtime.errors import RoiedgeError
    from runtime.flatbuffer import validate_tflite_file
    from runtime.manifest import (
        ArtifactEntry,
        atomic_write_bytes,
        read_manifest,
        sha256_file,
        verified_path,
        write_manifest,
    )

    compiler = compiler or shutil.which(COMPILER)
    if compiler is None:
        raise RoiedgeError(INSTALL_HINT)
    manifest = read_manifest(directory)
    source = manifest.find("backbone_rpn", "tflite", "int8_io")
    source_path = verified_path(directory, source)
    with tempfile.TemporaryDirectory(prefix="edgetpu-") as work:
        proc = subprocess.run(
            [compiler, "--show_operations", "--out_dir", work, str(source_path)],
            capture_output=True,
            text=True,
            check=False,
        )
        built = Path(work) / f"{source_path.stem}_edgetpu.tflite"
        if proc.returncode != 0 or not built.is_file():
            last = (proc.stderr or proc.stdout).strip().splitlines()
            raise RoiedgeError(
                f"{COMPILER} failed on {source_path} (exit {proc.returncode}): "
                f"{last[-1] if last else 'no output'}"
            )
        if not validate_tflite_file(built).edgetpu_compiled:
            raise RoiedgeError(
                f"{COMPILER} output {built.name} maps no op to the Edge TPU (no edgetpu-custom-op)"
            )
        relative = f"backbone_rpn.{COMPILED_PRECISION}.tflite"
        atomic_write_bytes(Path(directory) / relative, built.read_bytes())
        log = f"reports/backbone_rpn.{COMPILED_PRECISION}.compiler.log"
        atomic_write_bytes(Path(directory) / log, proc.stdout.encode())
    target = Path(directory) / relative
    entry = ArtifactEntry(
        name=f"backbone_rpn/tflite/{COMPILED_PRECISION}",
        model="backbone_rpn",
        format="tflite",
        precision=COMPILED_PRECISION,
        path=relative,
        sha256=sha256_file(target),
        bytes=target.stat().st_size,
        inputs=source.inputs,
        outputs=source.outputs,
        op_report=log,
    )
    kept = tuple(e for e in manifest.artifacts if e.precision != COMPILED_PRECISION)
    updated = dataclasses.replace(manifest, artifacts=(*kept, entry))
    write_manifest(updated, directory)
    return updated


def main(argv: list[str] | None = None) -> int:
    """``python -m export edgetpu DIR``: compile the int8_io backbone, or say how to get the compiler."""
    from runtime.errors import RoiedgeError, one_line, say

    parser = argparse.ArgumentParser(
        prog="python -m export edgetpu",
        description="Compile the int8_io backbone for the Coral Edge TPU (needs edgetpu_compiler).",
    )
    parser.add_argument("artifacts", type=Path, metavar="DIR")
    args = parser.parse_args(argv)
    try:
        if shutil.which(COMPILER) is None:
            raise RoiedgeError(INSTALL_HINT)
        manifest = compile_edgetpu(args.artifacts)
    except RoiedgeError as error:
        print(f"error: {one_line(error)}", file=sys.stderr)
        return 2
    entry = manifest.find("backbone_rpn", "tflite", COMPILED_PRECISION)
    say(
        f"wrote {args.artifacts / entry.path} ({entry.bytes} bytes); compiler log: {entry.op_report}"
    )
    return 0
