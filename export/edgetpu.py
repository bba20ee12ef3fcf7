"""Edge TPU: a compatibility report that applies the compiler's documented rules, and a compile step.

``edgetpu_report`` predicts, op by op in execution order, what ``edgetpu_compiler`` maps to the
Edge TPU and what it leaves on the CPU, from Coral's documented requirements
(https://coral.ai/docs/edgetpu/models-intro/): the op is in the supported list; its tensors are
8-bit quantized with static shapes; a tensor has at most 3 non-unit dimensions and only the 3
innermost may exceed 1; pooling and concatenation carry no fused activation; and the first op
that cannot be mapped sends every op after it to the CPU (the compiler cuts the graph once).

For the single-file detector (``detector.int8_io.tflite``) the report also says which chained
piece (backbone_rpn, proposals, head, detections) each op belongs to and where the CPU part starts:
the integer backbone maps, and the float post-processing from its first DEQUANTIZE on (TOPK_V2,
NON_MAX_SUPPRESSION_V4, the box arithmetic, and the head after it) stays on the CPU.

``python -m export edgetpu DIR`` (``make edgetpu``) runs ``edgetpu_compiler`` on the ``int8_io``
backbone and, when the export has it, on ``detector.int8_io.tflite``, when the compiler is
installed, and adds ``<model>.int8_io_edgetpu.tflite`` to the manifest (the detector's MediaPipe
metadata and labels attached again: the compiler drops model metadata); without the compiler it
says in one line how to install it (the compiler is in no registry reachable here, so it is
detected, never faked).
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
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


def _op_pieces(graph: Any, pieces: Sequence[str]) -> list[str | None]:
    """The chained piece of each op: the ``<piece>/`` prefix of its output tensors' names.

    An op whose outputs carry no prefix (a conversion op between pieces, a renamed final output)
    belongs to the next op's piece that has one, or else the previous one's.
    """
    found: list[str | None] = []
    for op in graph.operators:
        names = [graph.tensors[t].name.decode() for t in op.outputs if t >= 0]
        found.append(next((p for n in names for p in pieces if n.startswith(f"{p}/")), None))
    following = None
    for i in reversed(range(len(found))):
        found[i] = following = found[i] or following
    previous = None
    for i, piece in enumerate(found):
        found[i] = previous = piece or previous
    return found


def op_placement(model_bytes: bytes, pieces: Sequence[str] = ()) -> list[dict[str, Any]]:
    """Per op of the main subgraph, in execution order: op name, ``where`` it would run, why.

    ``where`` is "edgetpu" until the first op that breaks a rule, "cpu" from that op on (the
    compiler cuts the graph once). ``reason`` lists the rules an op breaks itself, or says it
    follows an unmapped op. With ``pieces`` (a chained model's piece names, see
    :data:`export.single_file.PIECES`) each row also has the ``piece`` the op belongs to.
    """
    from export.audit import tflite_model, tflite_op_name

    model = tflite_model(model_bytes)
    graph = model.subgraphs[0]
    produced = {o for op in graph.operators for o in op.outputs}
    graph_inputs = set(graph.inputs)
    op_pieces = _op_pieces(graph, pieces) if pieces else None
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
        row = {
            "index": index,
            "op": name,
            "where": "edgetpu" if cut is None else "cpu",
            "reason": "; ".join(broken) or None,
        }
        if op_pieces is not None:
            row["piece"] = op_pieces[index]
        rows.append(row)
    return rows


def _piece_summary(placement: list[dict[str, Any]], pieces: Sequence[str]) -> list[dict[str, Any]]:
    """Per chained piece, in order: how many of its ops would run on the Edge TPU and the CPU."""
    return [
        {
            "piece": piece,
            "edgetpu_ops": sum(r["where"] == "edgetpu" for r in placement if r["piece"] == piece),
            "cpu_ops": sum(r["where"] == "cpu" for r in placement if r["piece"] == piece),
        }
        for piece in pieces
    ]


def cpu_part(report: dict[str, Any]) -> str:
    """One line: where the CPU part of a model starts (or that the whole model maps)."""
    first = report["first_cpu_op"]
    if first is None:
        return f"all {report['edgetpu_ops']} ops map to the Edge TPU"
    piece = f" of {first['piece']}" if first.get("piece") else ""
    later = sorted({r["op"] for r in report["placement"] if r["where"] == "cpu"} - {first["op"]})
    return (
        f"{report['edgetpu_ops']} ops map to the Edge TPU; the CPU part starts at op "
        f"#{first['index']} {first['op']}{piece} ({first['reason']}) and runs the remaining "
        f"{report['cpu_ops']} ops ({', '.join(later)})"
    )


def edgetpu_report(model_bytes: bytes, pieces: Sequence[str] = ()) -> dict[str, Any]:
    """Edge TPU table of one TFLite model: op coverage, tensor facts, and per-op placement.

    ``pieces``: a chained model's piece names (the single file's): rows say their piece, and
    ``pieces`` counts each piece's Edge TPU and CPU ops.
    """
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
    placement = op_placement(model_bytes, pieces)
    first_cpu = next((row for row in placement if row["where"] == "cpu"), None)
    report = {
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
    if pieces:
        report["pieces"] = _piece_summary(placement, pieces)
    report["cpu_part"] = cpu_part(report)
    return report


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


#: The models ``python -m export edgetpu`` compiles, in order: the backbone is required, the
#: single-file detector is compiled when the export has it.
COMPILED_MODELS = ("backbone_rpn", "detector")


def _compiled(compiler: str, source_path: Path, work: Path) -> tuple[bytes, str]:
    """(compiled model bytes, compiler stdout) of one model, or a one-line RoiedgeError."""
    from runtime.errors import RoiedgeError
    from runtime.flatbuffer import validate_tflite_file

    proc = subprocess.run(
        [compiler, "--show_operations", "--out_dir", str(work), str(source_path)],
        capture_output=True,
        text=True,
        check=False,
    )
    built = work / f"{source_path.stem}_edgetpu.tflite"
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
    return built.read_bytes(), proc.stdout


def compile_edgetpu(directory: Path, compiler: str | None = None) -> Any:
    """Run edgetpu_compiler on the manifest's int8_io backbone and single-file detector (when the
    export has one); add the results to the manifest.

    Returns the new manifest. Raises RoiedgeError (one line) when the compiler is missing, fails,
    or produces a model without ``edgetpu-custom-op``; then nothing is written. The compiled
    detector gets its MediaPipe metadata and labels again (the compiler keeps none).
    """
    from runtime.config import DetectorConfig
    from runtime.errors import RoiedgeError
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
    directory = Path(directory)
    manifest = read_manifest(directory)
    sources = [manifest.find("backbone_rpn", "tflite", "int8_io")]
    sources += [
        e
        for e in manifest.artifacts
        if e.model in COMPILED_MODELS[1:] and e.format == "tflite" and e.precision == "int8_io"
    ]
    outputs: list[tuple[Any, bytes, str]] = []
    with tempfile.TemporaryDirectory(prefix="edgetpu-") as work:
        for source in sources:
            data, log = _compiled(compiler, verified_path(directory, source), Path(work))
            if source.model == "detector":
                from export.detection_metadata import attach

                config = DetectorConfig.from_dict(manifest.detector, source="manifest detector")
                data = attach(data, config.class_names, config.image_size)
            outputs.append((source, data, log))
    entries = []
    for source, data, log in outputs:  # every compile succeeded: now write them all
        relative = f"{source.model}.{COMPILED_PRECISION}.tflite"
        log_path = f"reports/{source.model}.{COMPILED_PRECISION}.compiler.log"
        atomic_write_bytes(directory / relative, data)
        atomic_write_bytes(directory / log_path, log.encode())
        target = directory / relative
        entries.append(
            ArtifactEntry(
                name=f"{source.model}/tflite/{COMPILED_PRECISION}",
                model=source.model,
                format="tflite",
                precision=COMPILED_PRECISION,
                path=relative,
                sha256=sha256_file(target),
                bytes=target.stat().st_size,
                inputs=source.inputs,
                outputs=source.outputs,
                op_report=log_path,
            )
        )
    kept = tuple(e for e in manifest.artifacts if e.precision != COMPILED_PRECISION)
    updated = dataclasses.replace(manifest, artifacts=(*kept, *entries))
    write_manifest(updated, directory)
    return updated


def main(argv: list[str] | None = None) -> int:
    """``python -m export edgetpu DIR``: compile the int8_io backbone and single file, or say how
    to get the compiler."""
    from runtime.errors import RoiedgeError, one_line, say

    parser = argparse.ArgumentParser(
        prog="python -m export edgetpu",
        description="Compile the int8_io backbone and detector.int8_io.tflite for the Coral Edge "
        "TPU (needs edgetpu_compiler).",
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
    for entry in manifest.artifacts:
        if entry.precision == COMPILED_PRECISION:
            say(
                f"wrote {args.artifacts / entry.path} ({entry.bytes} bytes); "
                f"compiler log: {entry.op_report}"
            )
    return 0
