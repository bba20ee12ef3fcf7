"""Where onnxruntime spends an ONNX artifact's time: int8 against float32, per stage and op group.

A stage with an ONNX float32 and an ONNX int8 artifact is profiled (:func:`profile_stage`, used
by ``export.report``; ``python -m bench.onnx_profile --artifacts DIR`` runs it for every stage) with onnxruntime's own profiler (``SessionOptions.enable_profiling``) on
the golden inputs, the two sessions alternated run by run so load that comes and goes hits both.
Each node's kernel time goes into one group:

* ``roi_pooling``: the nodes :func:`export.onnx_format.roi_pooling_nodes` names (the coordinate
  path, the gathers at the sample positions, the bilinear lerp, the max pool), which the int8
  export keeps float;
* ``weights``: layers with weights, float or integer (Conv, Gemm, MatMul and onnxruntime's fused
  and quantized forms of them);
* ``quantize``: QuantizeLinear / DequantizeLinear;
* ``other``: the rest (activations, softmax, layout changes, nodes onnxruntime fused and renamed).

The profiler adds overhead per node, so its totals run high and the shares are what it shows.
The ratios come from unprofiled sessions timed interleaved (:func:`runtime.bench.interleaved`):
int8 against float32, and the float32 model's RoIPooling part alone, extracted as its own model
(:func:`roi_pooling_model`). That part's ratio is the stage's **floor**: an int8 model that keeps
RoIPooling float runs it in full, so its int8/float32 ratio cannot go below it whatever its
integer layers cost. A floor above a speed target says quantizing the layers cannot meet it.
"""

from __future__ import annotations

import json
import statistics
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

#: Op types (as onnxruntime's profiler names them) of layers with weights.
WEIGHT_OPS = frozenset(
    {
        "Conv",
        "ConvInteger",
        "ConvTranspose",
        "FusedConv",
        "FusedGemm",
        "FusedMatMul",
        "Gemm",
        "MatMul",
        "MatMulInteger",
        "MatMulIntegerToFloat",
        "DynamicQuantizeMatMul",
        "NhwcFusedConv",
        "QGemm",
        "QLinearConv",
        "QLinearMatMul",
    }
)
#: Op types that only convert between float and 8 bits.
QUANTIZE_OPS = frozenset({"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear"})
#: The groups, in the order they are reported and plotted.
GROUPS = ("roi_pooling", "weights", "quantize", "other")
_KERNEL_SUFFIX = "_kernel_time"


def group_of(node_name: str, op_type: str, roi_pooling: frozenset[str]) -> str:
    """The group of one profiled node (``node_name`` without the profiler's suffix)."""
    if op_type in WEIGHT_OPS:
        return "weights"
    if op_type in QUANTIZE_OPS:
        return "quantize"
    if node_name in roi_pooling:
        return "roi_pooling"
    return "other"


def runs_from_events(events: list[dict], roi_pooling: frozenset[str], skip: int) -> list[dict]:
    """Per ``model_run`` after the first ``skip``: its wall time and per-group node time, in ms.

    ``events`` is onnxruntime's profile (a Chrome trace: ``cat`` Session/Node, ``ts``/``dur`` in
    microseconds); a node belongs to the run whose interval contains its start.
    """
    runs = sorted(
        (e for e in events if e.get("cat") == "Session" and e.get("name") == "model_run"),
        key=lambda e: e["ts"],
    )
    result = [
        {"start": e["ts"], "end": e["ts"] + e["dur"], "ms": e["dur"] / 1e3, "groups": {}}
        for e in runs
    ]
    starts = np.asarray([r["start"] for r in result])
    for event in events:
        if event.get("cat") != "Node" or not event.get("name", "").endswith(_KERNEL_SUFFIX):
            continue
        index = int(np.searchsorted(starts, event["ts"], side="right")) - 1
        if index < 0 or event["ts"] > result[index]["end"]:
            continue
        name = event["name"][: -len(_KERNEL_SUFFIX)]
        group = group_of(name, event.get("args", {}).get("op_name", ""), roi_pooling)
        groups = result[index]["groups"]
        groups[group] = groups.get(group, 0.0) + event["dur"] / 1e3
    return [{"ms": r["ms"], "groups": r["groups"]} for r in result[skip:]]


def _session(path: Path, threads: int, profile_prefix: str | None = None) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    if profile_prefix:
        options.enable_profiling = True
        options.profile_file_prefix = profile_prefix
    return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])


def _feeds(directory: Path, entry: Any, manifest: Any) -> dict[str, np.ndarray]:
    """The first golden sample of ``entry``'s stage, by the manifest's input names."""
    from runtime.golden import golden_samples
    from runtime.manifest import verified_file
    from runtime.safe_files import load_npz

    path = verified_file(
        directory, manifest.golden[entry.model], manifest.golden_sha256[entry.model], "golden"
    )
    golden = load_npz(path, "golden")  # limits and dtypes checked before reading (no pickles)
    sample = golden_samples(golden, entry, str(path))[0]
    return {spec.name: np.asarray(a) for spec, a in zip(entry.inputs, sample)}


def roi_pooling_model(model: Any, roi_pooling: frozenset[str]) -> Any | None:
    """The RoIPooling part of a float ONNX model alone (same inputs; outputs: what the rest of the
    model reads from it), or None if it has none. Its run time is what an int8 model that keeps
    RoIPooling float pays whatever its integer layers cost."""
    import onnx
    import onnx.utils

    graph = model.graph
    if not roi_pooling:
        return None
    produced = {output: node.name for node in graph.node for output in node.output}
    outputs: list[str] = []
    for node in graph.node:
        if node.name in roi_pooling:
            continue
        for name in node.input:
            if produced.get(name) in roi_pooling and name not in outputs:
                outputs.append(name)
    inferred = onnx.shape_inference.infer_shapes(model)
    known = {v.name for v in (*inferred.graph.value_info, *inferred.graph.output)}
    for name in outputs:
        if name not in known:  # shape inference cannot always follow the int32 path
            inferred.graph.value_info.append(
                onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None)
            )
    inputs = [i.name for i in graph.input]
    return onnx.utils.Extractor(inferred).extract_model(inputs, outputs)


def _profile(
    paths: dict[str, Path], roi_names: dict, feeds: dict, threads: int, runs: int, warmup: int
) -> dict[str, list[dict]]:
    """Per precision, the profiled runs (the sessions alternated run by run)."""
    with tempfile.TemporaryDirectory(prefix="roiedge-onnx-profile-") as scratch:
        sessions = {p: _session(path, threads, f"{scratch}/{p}") for p, path in paths.items()}
        for _ in range(warmup + runs):
            for session in sessions.values():
                session.run(None, feeds)
        return {
            p: runs_from_events(
                json.loads(Path(s.end_profiling()).read_text(encoding="utf-8")),
                roi_names[p],
                warmup,
            )
            for p, s in sessions.items()
        }


def profile_stage(
    directory: Path, stage: str, threads: int = 2, runs: int = 50, rounds: int = 7
) -> dict[str, Any]:
    """Profile and time ``stage``'s ONNX float32 and int8 artifacts in ``directory``.

    ``profile``: per precision the median ms per run of each op group under onnxruntime's
    profiler (which adds per-node overhead: the shares, not the totals, are what it shows).
    ``timing``: unprofiled, interleaved over ``rounds`` rounds of ``runs`` calls: int8 and the
    float RoIPooling part alone (:func:`roi_pooling_model`), each as a ratio to float32. The
    stage's ``floor`` is that RoIPooling ratio: an int8 model keeping RoIPooling float cannot run
    faster than it (None without RoIPooling).
    """
    import onnx

    from export.onnx_format import roi_pooling_nodes
    from runtime.bench import interleaved
    from runtime.manifest import read_manifest, verified_path

    manifest = read_manifest(directory)
    entries = {p: manifest.find(stage, "onnx", p) for p in ("float32", "int8")}
    paths = {p: verified_path(directory, e) for p, e in entries.items()}
    feeds = _feeds(directory, entries["float32"], manifest)
    models = {p: onnx.load(str(path)) for p, path in paths.items()}
    roi_names = {p: frozenset(roi_pooling_nodes(m.graph, stage)) for p, m in models.items()}
    profiled = _profile(paths, roi_names, feeds, threads, runs, warmup=5)
    result: dict[str, Any] = {"stage": stage, "threads": threads, "runs": runs, "profile": {}}
    for precision, timed in profiled.items():
        result["profile"][precision] = {
            "p50_ms": statistics.median(r["ms"] for r in timed),
            "groups_ms": {
                g: statistics.median(r["groups"].get(g, 0.0) for r in timed) for g in GROUPS
            },
        }
    with tempfile.TemporaryDirectory(prefix="roiedge-onnx-roi-") as scratch:
        sessions = {p: _session(path, threads) for p, path in paths.items()}
        roi_only = roi_pooling_model(models["float32"], roi_names["float32"])
        if roi_only is not None:
            onnx.save(roi_only, f"{scratch}/roi_pooling.onnx")
            sessions["roi_pooling_float32"] = _session(Path(f"{scratch}/roi_pooling.onnx"), threads)
        calls = {name: (lambda s=s: s.run(None, feeds)) for name, s in sessions.items()}
        timing = interleaved(calls, "float32", rounds, runs, warmup=5)
    result["timing"] = timing
    result["ratio"] = timing["int8"]["ratio"]
    result["ratio_range"] = [timing["int8"]["ratio_min"], timing["int8"]["ratio_max"]]
    roi_timing = timing.get("roi_pooling_float32")
    result["floor"] = roi_timing["ratio"] if roi_timing else None
    result["floor_range"] = (
        [roi_timing["ratio_min"], roi_timing["ratio_max"]] if roi_timing else None
    )
    return result
