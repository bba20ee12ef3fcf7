"""Where a TFLite model spends its time: per-op latency from timing prefixes of its graph.

The Python interpreter (ai-edge-litert, tflite-runtime) exposes no op profiler, so each op's
cost is measured as the growth in latency between two prefixes of the graph: the model cut after
op ``k`` (every intermediate tensor kept as an output, so XNNPACK prunes nothing) against the
model cut at the previous cut point. Cuts are placed after every op whose output has at least
``min_output_bytes`` bytes; the small ops before a cut are charged to it together (for
RoIPooling: the int32 coordinate arithmetic). Noisy on a loaded machine: the prefixes are timed
interleaved over ``rounds`` rounds and each prefix's time is its minimum (load only adds time).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np


def _op_names(model) -> list[str]:
    from ai_edge_litert import schema_py_generated as schema
    from ai_edge_litert.tools import flatbuffer_utils

    names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    codes = model.operatorCodes
    return [
        names.get(flatbuffer_utils.get_builtin_code_from_operator_code(codes[op.opcodeIndex]), "?")
        for op in model.subgraphs[0].operators
    ]


_ITEM_BYTES = {0: 4, 1: 2, 2: 4, 3: 1, 4: 8, 6: 1, 7: 2, 9: 1, 10: 8}  # schema TensorType sizes


def _prefix(model_bytes: bytes, last_op: int) -> bytes:
    from ai_edge_litert.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model_from_bytearray(bytearray(model_bytes))
    graph = model.subgraphs[0]
    graph.operators = graph.operators[: last_op + 1]
    graph.outputs = sorted({index for op in graph.operators for index in op.outputs})
    model.signatureDefs = []
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def _runner(model: bytes, inputs: dict[str, np.ndarray], threads: int) -> Callable[[], None]:
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=model, num_threads=threads)
    interpreter.allocate_tensors()
    feeds = []
    for detail in interpreter.get_input_details():
        key = next((k for k in inputs if k in detail["name"]), None)
        if key is not None:
            feeds.append((detail["index"], inputs[key]))

    def call():
        for index, array in feeds:
            interpreter.set_tensor(index, array)
        interpreter.invoke()

    return call


def profile_tflite(
    model_bytes: bytes,
    inputs: dict[str, np.ndarray],
    threads: int,
    rounds: int = 5,
    runs: int = 3,
    min_output_bytes: int = 1 << 20,
    max_cuts: int | None = None,
    no_cut_inside: str | None = None,
) -> dict[str, Any]:
    """Per-op (or per group of small ops) latency of ``model_bytes`` on ``inputs``.

    ``inputs`` maps a substring of each input tensor's name to its array. Returns ``ops``: rows of
    ``{"ops": [op names], "last_index", "output_shape", "ms"}``, ``by_op``: ms summed per op name
    (runs of small ops grouped under ``"small ops (...)"``), and ``total_ms`` (the full model).
    ``max_cuts`` keeps only the first ``max_cuts - 1`` cut points and the end (every prefix is
    alive at once, each holding all its intermediates: a model of hundreds of tiled ops would
    not fit in memory); the ops after the last kept cut are one row, ``by_op`` key ``"rest"``.
    ``no_cut_inside``: no cut after an op whose output tensor's name contains it (e.g.
    ``models.roi_lowerings.TILE_SCOPE``: a tiled RoIPooling is timed as one group, not tile by
    tile, which for hundreds of tiles would not fit in memory).
    """
    from ai_edge_litert.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model_from_bytearray(bytearray(model_bytes))
    graph = model.subgraphs[0]
    names = _op_names(model)
    sizes, shapes, inside = [], [], []
    for op in graph.operators:
        tensor = graph.tensors[op.outputs[0]]
        name = tensor.name.decode() if isinstance(tensor.name, bytes) else str(tensor.name or "")
        inside.append(bool(no_cut_inside) and no_cut_inside in name)
        shape = [int(d) for d in (tensor.shape if tensor.shape is not None else [])]
        shapes.append(shape)
        sizes.append(int(np.prod(shape)) * _ITEM_BYTES.get(tensor.type, 4))
    big = [size >= min_output_bytes and not tiled for size, tiled in zip(sizes, inside)]
    last = len(big) - 1
    # A cut after every big op, and after the last small op before one (so runs of small ops
    # are timed as one group, apart from the big ops).
    cuts = sorted(
        {i for i in range(len(big)) if big[i]}
        | {i - 1 for i in range(1, len(big)) if big[i] and not big[i - 1]}
        | {last}
    )
    if max_cuts is not None and len(cuts) > max_cuts:
        cuts = [*cuts[: max_cuts - 1], last]
    calls = [_runner(_prefix(model_bytes, cut), inputs, threads) for cut in cuts]
    # The minimum over rounds and runs: other processes' load only ever adds time, and the
    # difference of two medians on a loaded machine can even come out negative.
    times = np.full(len(cuts), np.inf)
    for _ in range(rounds):
        for c, call in enumerate(calls):
            call()
            for _ in range(runs):
                start = time.perf_counter()
                call()
                times[c] = min(times[c], (time.perf_counter() - start) * 1e3)
    cumulative = times
    rows, by_op, previous, first = [], {}, 0.0, 0
    small_key = "small ops"
    for cut, total in zip(cuts, cumulative):
        group = names[first : cut + 1]
        delta = float(total - previous)
        rows.append({"ops": group, "last_index": cut, "output_shape": shapes[cut], "ms": delta})
        if any(big[first:cut]):
            key = "rest"  # past the last kept cut: big ops among them
        else:
            key = group[0] if len(group) == 1 and big[cut] else small_key
        by_op[key] = by_op.get(key, 0.0) + delta
        previous, first = float(total), cut + 1
    del calls
    print(f"profiled {len(cuts)} prefixes of {len(names)} ops", file=sys.stderr)
    return {"ops": rows, "by_op": by_op, "total_ms": float(cumulative[-1]), "rounds": rounds}


def format_profile(profile: dict[str, Any], title: str) -> str:
    lines = [f"{title}: {profile['total_ms']:.2f} ms (prefix timing)"]
    for row in profile["ops"]:
        ops = row["ops"]
        label = ops[0] if len(ops) == 1 else f"{len(ops)} ops ({ops[0]} .. {ops[-1]})"
        lines.append(f"  {label:<40} {row['ms']:>8.2f} ms  -> {row['output_shape']}")
    return "\n".join(lines)
