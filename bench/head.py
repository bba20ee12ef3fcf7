"""A realistic Faster R-CNN head in every format: float Keras vs TFLite vs ONNX (speed, memory).

``python -m bench.head [--json PATH]`` (run by ``make bench``) builds a head of the usual
size — RoIPooling 7x7 (samples_per_bin 2) over ``[1, 38, 38, 256]`` features and 300 RoIs, two
FC 1024 (ReLU), 21-class softmax scores and 21x4 box deltas — with random weights (speed only,
no download), converts it to TFLite float32/float16/int8 (standard settings,
:mod:`models.tflite_convert`) and ONNX float32/int8 (tf2onnx, onnxruntime QDQ), and measures in
one run, interleaved: latency against float Keras (a ``tf.function`` of the model), the int8
forms' top-1 class agreement with float Keras, and each form's peak RSS in a fresh process
(load + 10 inferences). ``--variants`` adds the TFLite float32 head with other RoIPooling
lowerings (rows ``tflite/float32@<implementation>``, same weights), ``--profile 1`` per-op
profiles of the TFLite float32 and int8 heads.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from runtime import strict_json

#: Bars: latency ratio to float Keras per form (None = measured, no bar).
TARGETS = {"tflite/float32": 1.0, "tflite/int8": 0.5}
#: Minimum top-1 class agreement with float Keras for the int8 forms.
MIN_TOP1_AGREEMENT = 0.95


@dataclasses.dataclass(frozen=True)
class HeadBenchConfig:
    """The benchmark case; the CLI flags map 1:1 onto these fields."""

    height: int = 38
    width: int = 38
    channels: int = 256
    num_rois: int = 300
    size: int = 7
    fc: int = 1024
    classes: int = 21
    threads: int = 2
    runs: int = 5
    rounds: int = 3
    calibration_samples: int = 8
    agreement_samples: int = 4
    implementation: str = "fixed_point_split"  # models.roi_pooling.DEFAULT_IMPLEMENTATION
    variants: str = "fixed_point,fixed_point_tiled,neighbour_pool_split"
    profile: int = 1
    rss: int = 1
    seed: int = 0
    json: str | None = None


def build_head(config: HeadBenchConfig, tile_precision: str = "float32"):
    """The Keras head: (features, rois, box_indexes) -> (class_scores [N, K], box_deltas [N, K, 4]).

    ``tile_precision``: what a tiled lowering sizes its tiles for (the int8 form gets int8
    tiles, as the export gives its int8 artifacts); the same weights either way (same seed).
    """
    import keras

    from models.roi_lowerings import SIZED_TILE_LOWERINGS
    from models.roi_pooling import RoIPooling

    keras.utils.set_random_seed(config.seed)
    features = keras.Input(
        (config.height, config.width, config.channels), batch_size=1, name="features"
    )
    rois = keras.Input((4,), batch_size=config.num_rois, name="rois")
    box_indexes = keras.Input((), batch_size=config.num_rois, dtype="int32", name="box_indexes")
    tiles = (
        {"tile_precision": tile_precision} if config.implementation in SIZED_TILE_LOWERINGS else {}
    )
    pooled = RoIPooling(config.size, 2, config.implementation, name="roi_pooling", **tiles)(
        features, rois, box_indexes
    )
    x = keras.layers.Flatten()(pooled)
    x = keras.layers.Dense(config.fc, activation="relu", name="fc1")(x)
    x = keras.layers.Dense(config.fc, activation="relu", name="fc2")(x)
    scores = keras.layers.Dense(config.classes, activation="softmax", name="class_scores")(x)
    deltas = keras.layers.Reshape((config.classes, 4), name="box_deltas")(
        keras.layers.Dense(config.classes * 4, name="box_fc")(x)
    )
    return keras.Model([features, rois, box_indexes], [scores, deltas], name="head")


def random_inputs(config: HeadBenchConfig, rng) -> list[np.ndarray]:
    """Features (ReLU-like: half zeros, [0, 4)), boxes inside the map, one image."""
    features = rng.random((1, config.height, config.width, config.channels), dtype=np.float32)
    features = np.maximum(features * 8.0 - 4.0, 0.0).astype(np.float32)
    centers = rng.uniform(0.1, 0.9, (config.num_rois, 2))
    extents = rng.uniform(0.05, 0.5, (config.num_rois, 2))
    rois = np.clip(np.concatenate([centers - extents / 2, centers + extents / 2], 1), 0, 1)
    return [features, rois.astype(np.float32), np.zeros(config.num_rois, np.int32)]


def _specs(config: HeadBenchConfig):
    import tensorflow as tf

    return [
        tf.TensorSpec((1, config.height, config.width, config.channels), tf.float32, "features"),
        tf.TensorSpec((config.num_rois, 4), tf.float32, "rois"),
        tf.TensorSpec((config.num_rois,), tf.int32, "box_indexes"),
    ]


def _keras_function(model, config: HeadBenchConfig):
    import tensorflow as tf

    @tf.function(input_signature=_specs(config))
    def head(features, rois, box_indexes):
        scores, deltas = model([features, rois, box_indexes], training=False)
        return {"class_scores": scores, "box_deltas": deltas}

    return head


def _onnx(function, config: HeadBenchConfig, calibration: list, int8: bool) -> bytes:
    """tf2onnx float32; int8: onnxruntime static QDQ (U8S8), per-channel weights, with the nodes
    computed from the box inputs alone kept float (as the export does: quantized coordinates
    move samples by pixels)."""
    import onnx
    import tf2onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    proto, _ = tf2onnx.convert.from_function(function, input_signature=_specs(config), opset=17)
    if not int8:
        return proto.SerializeToString()

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.samples = iter(calibration)

        def get_next(self):
            sample = next(self.samples, None)
            return (
                None if sample is None else dict(zip(("features", "rois", "box_indexes"), sample))
            )

    with tempfile.TemporaryDirectory(prefix="roiedge-bench-") as tmp:
        src, pre, dst = (Path(tmp) / f"{n}.onnx" for n in ("float", "pre", "int8"))
        src.write_bytes(proto.SerializeToString())
        quant_pre_process(os.fspath(src), os.fspath(pre), skip_symbolic_shape=True)
        graph = onnx.load(os.fspath(pre)).graph
        coordinates, feature_path, excluded = {"rois", "box_indexes"}, {"features"}, []
        for node in graph.node:
            inputs = [i for i in node.input if i]
            if any(i in feature_path for i in inputs):
                feature_path.update(node.output)
            elif any(i in coordinates for i in inputs):
                coordinates.update(node.output)
                excluded.append(node.name)
        # The export's choice (export.onnx_format): uint8 activations, which onnxruntime's x86
        # kernels fuse into integer ops.
        quantize_static(
            os.fspath(pre),
            os.fspath(dst),
            Reader(),
            quant_format=QuantFormat.QDQ,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            per_channel=True,
            reduce_range=True,
            nodes_to_exclude=excluded,
        )
        return dst.read_bytes()


def _tflite_call(model: bytes, threads: int, xnnpack: bool = True):
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    resolver = OpResolverType.AUTO if xnnpack else OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
    interpreter = Interpreter(
        model_content=model, num_threads=threads, experimental_op_resolver_type=resolver
    )
    interpreter.allocate_tensors()
    inputs = {d["name"]: d["index"] for d in interpreter.get_input_details()}
    order = [next(i for n, i in inputs.items() if key in n) for key in ("features", "rois", "box")]
    outputs = interpreter.get_output_details()
    scores = next(d["index"] for d in outputs if len(d["shape"]) == 2)

    def call(arrays):
        for index, array in zip(order, arrays):
            interpreter.set_tensor(index, array)
        interpreter.invoke()
        return interpreter.get_tensor(scores)

    return call


def _onnx_call(model: bytes, threads: int):
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    session = onnxruntime.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    order = [next(n for n in names if key in n) for key in ("features", "rois", "box")]
    scores = next(o.name for o in session.get_outputs() if len(o.shape) == 2)

    def call(arrays):
        return session.run([scores], dict(zip(order, arrays)))[0]

    return call


def _rss_child(kind: str, path: str, config: HeadBenchConfig) -> None:
    """In a fresh process: load ``path`` (no TensorFlow for TFLite/ONNX), run 10 times."""

    arrays = random_inputs(config, np.random.default_rng(config.seed))
    if kind == "keras":
        import keras

        import models.roi_pooling  # noqa: F401  (registers RoIPooling for loading)
        from models.tf_threads import set_tensorflow_threads

        set_tensorflow_threads(config.threads)
        model = keras.saving.load_model(path)
        call = _keras_function(model, config)
        run = lambda: call(*arrays)  # noqa: E731
    else:
        data = Path(path).read_bytes()
        maker = _tflite_call if kind == "tflite" else _onnx_call
        call = maker(data, config.threads)
        run = lambda: call(arrays)  # noqa: E731
    for _ in range(10):
        run()
    print(strict_json.dumps({"peak_rss_mb": _high_water_mb()}))


def _high_water_mb() -> float | None:
    """This process's peak RSS since exec (VmHWM; ru_maxrss would carry the parent's, which
    Linux folds in across fork + exec)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    from runtime.bench import peak_rss_mb

    return peak_rss_mb()


def _peak_rss(kind: str, path: Path, config: HeadBenchConfig) -> float | None:
    fields = strict_json.dumps(dataclasses.asdict(config))
    code = (
        "import sys; from runtime import strict_json; "
        "from bench.head import HeadBenchConfig, _rss_child; "
        f"_rss_child({kind!r}, {str(path)!r}, HeadBenchConfig(**strict_json.loads({fields!r})))"
    )
    # bench/ is a dev folder, not installed: the child finds it through the repository root.
    root = str(Path(__file__).resolve().parent.parent)
    path_list = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=path_list)
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=False
    )
    if done.returncode != 0:
        print(done.stderr[-2000:], file=sys.stderr)
        return None
    return strict_json.loads(done.stdout.strip().splitlines()[-1])["peak_rss_mb"]


def _variants(config: HeadBenchConfig) -> list[str]:
    """The ``--variants`` lowerings other than the head's own ``--implementation``."""
    names = [name for name in config.variants.split(",") if name]
    return [name for name in dict.fromkeys(names) if name != config.implementation]


def run(config: HeadBenchConfig) -> dict[str, Any]:
    """Build, convert, measure; returns the JSON-ready result."""
    from tqdm import tqdm

    from bench.tflite_profile import profile_tflite
    from models.roi_lowerings import SIZED_TILE_LOWERINGS, TILE_SCOPE
    from models.tf_threads import set_tensorflow_threads
    from models.tflite_convert import convert_function
    from runtime.bench import host_info, interleaved, load_avg

    host = host_info()
    tf_threads = set_tensorflow_threads(config.threads)
    rng = np.random.default_rng(config.seed)
    model = build_head(config)
    function = _keras_function(model, config)
    # A tiled lowering's int8 form gets int8-sized tiles (the same weights); others the same head.
    tiled = config.implementation in SIZED_TILE_LOWERINGS
    int8_function = _keras_function(build_head(config, "int8"), config) if tiled else function
    calibration = [random_inputs(config, rng) for _ in range(config.calibration_samples)]
    agreement = [random_inputs(config, rng) for _ in range(config.agreement_samples)]
    arrays = agreement[0]

    def keras_scores(sample):
        return function(*sample)["class_scores"].numpy()

    builders = {
        "tflite/float32": lambda: convert_function(function, "float32"),
        "tflite/float16": lambda: convert_function(function, "float16"),
        "tflite/int8": lambda: convert_function(int8_function, "int8", lambda: iter(calibration)),
        "onnx/float32": lambda: _onnx(function, config, calibration, int8=False),
        "onnx/int8": lambda: _onnx(function, config, calibration, int8=True),
    }
    for variant in _variants(config):
        # The same weights (same seed) around another lowering of the same RoIPooling.
        other = _keras_function(
            build_head(dataclasses.replace(config, implementation=variant)), config
        )
        builders[f"tflite/float32@{variant}"] = functools.partial(
            convert_function, other, "float32"
        )
    blobs, calls, rows = {}, {"keras/float32": lambda: function(*arrays)}, {}
    for name, build in tqdm(builders.items(), desc="convert", file=sys.stderr):
        blobs[name] = build()
    # The TFLite forms also without XNNPACK (the interpreter's builtin kernels: ruy GEMMs).
    makers = {}
    for name in blobs:
        if "@" in name:
            makers[name] = functools.partial(_tflite_call, blobs[name], config.threads)
        elif name.startswith("tflite"):
            makers[name] = functools.partial(_tflite_call, blobs[name], config.threads)
            makers[f"{name}:no_xnnpack"] = functools.partial(
                _tflite_call, blobs[name], config.threads, xnnpack=False
            )
        else:
            makers[name] = functools.partial(_onnx_call, blobs[name], config.threads)
    for name, maker in makers.items():
        call = maker()
        calls[name] = lambda call=call: call(arrays)
        top1 = [
            float(np.mean(np.argmax(call(s), 1) == np.argmax(keras_scores(s), 1)))
            for s in agreement
        ]
        rows[name] = {
            "bytes": len(blobs[name.split(":")[0]]),
            "top1_agreement": float(np.mean(top1)),
        }
    rows["keras/float32"] = {"bytes": None, "top1_agreement": 1.0}
    timed = interleaved(
        calls,
        "keras/float32",
        config.rounds,
        config.runs,
        1,
        progress=lambda steps: tqdm(steps, desc="interleaved rounds", file=sys.stderr),
    )
    for name, row in rows.items():
        row.update(
            latency_ms=timed[name]["p50_ms"],
            ratio_vs_keras=timed[name]["ratio"],
            ratio_range=[timed[name]["ratio_min"], timed[name]["ratio_max"]],
            round_ratios=timed[name]["round_ratios"],
            target=TARGETS.get(name.split("@")[0]),
        )
        # A variant row (another lowering of the same head) is held to its precision's bar.
        if row["target"] is not None:
            met = timed[name]["ratio"] <= row["target"]
            if name.endswith("int8"):
                met = met and row["top1_agreement"] >= MIN_TOP1_AGREEMENT
            row["meets_target"] = bool(met)
    if config.rss:
        with tempfile.TemporaryDirectory(prefix="roiedge-head-") as tmp:
            keras_path = Path(tmp) / "head.keras"
            model.save(keras_path)
            rows["keras/float32"]["peak_rss_mb"] = _peak_rss("keras", keras_path, config)
            for name, blob in tqdm(blobs.items(), desc="peak RSS", file=sys.stderr):
                path = Path(tmp) / name.replace("/", ".")
                path.write_bytes(blob)
                rows[name]["peak_rss_mb"] = _peak_rss(name.split("/")[0], path, config)
    profiles = {}
    if config.profile:
        inputs = dict(zip(("features", "rois", "box_indexes"), arrays))
        for name in tqdm(("tflite/float32", "tflite/int8"), desc="profile", file=sys.stderr):
            # 256 KiB cuts: the int8 FULLY_CONNECTED outputs ([300, 1024] int8) are 300 KB.
            profiles[name] = profile_tflite(
                blobs[name], inputs, config.threads, 5, 3, 1 << 18, 64, TILE_SCOPE
            )
    return {
        "config": dataclasses.asdict(config),
        "host": host,
        "load_avg_after": load_avg(),
        "tf_threads": tf_threads,
        "forms": rows,
        "profiles": profiles,
    }


def format_table(result: dict[str, Any]) -> str:
    from bench.tflite_profile import format_profile
    from runtime.bench import host_line

    c = result["config"]
    lines = [
        f"Head: RoIPooling {c['size']}x{c['size']} over {c['height']}x{c['width']}x"
        f"{c['channels']}, {c['num_rois']} RoIs, 2x FC {c['fc']}, {c['classes']} classes; "
        f"{c['threads']} threads, {c['rounds']} interleaved rounds",
        host_line(result["host"]) + f" -> {result['load_avg_after']} after",
        f"{'form':<38} {'p50 ms':>8} {'x Keras (range)':>18} {'top-1':>6} {'RSS MB':>7}  target",
    ]
    for name, row in result["forms"].items():
        low, high = row["ratio_range"]
        ratio = f"{row['ratio_vs_keras']:.2f} ({low:.2f}-{high:.2f})"
        rss = row.get("peak_rss_mb")
        rss = f"{rss:7.0f}" if rss else f"{'-':>7}"
        verdict = ""
        if "meets_target" in row:
            verdict = f"{'met' if row['meets_target'] else 'missed'} (<= {row['target']:g}x)"
        lines.append(
            f"{name:<38} {row['latency_ms']:>8.2f} {ratio:>18} {row['top1_agreement']:>6.3f} "
            f"{rss}  {verdict}"
        )
    for name, profile in result["profiles"].items():
        lines.append(format_profile(profile, f"per-op profile of {name} head"))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    import bench.lowerings  # noqa: F401  (registers the benchmark-only RoIPooling lowerings)

    defaults = HeadBenchConfig()
    parser = argparse.ArgumentParser(prog="python -m bench.head", description=__doc__)
    for field in dataclasses.fields(HeadBenchConfig):
        flag = "--" + field.name.replace("_", "-")
        kind = str if field.name in ("json", "implementation", "variants") else int
        parser.add_argument(flag, type=kind, default=getattr(defaults, field.name))
    config = HeadBenchConfig(**vars(parser.parse_args(argv)))
    for field in dataclasses.fields(HeadBenchConfig):
        value = getattr(config, field.name)
        if isinstance(value, int) and field.name not in ("seed", "profile", "rss") and value < 1:
            flag = field.name.replace("_", "-")
            print(f"error: --{flag} is {value}; expected >= 1", file=sys.stderr)
            return 2
    from models.roi_pooling import IMPLEMENTATIONS

    if config.implementation not in IMPLEMENTATIONS:
        print(
            f"error: --implementation is {config.implementation!r}; expected one of "
            f"{', '.join(IMPLEMENTATIONS)}",
            file=sys.stderr,
        )
        return 2
    unknown = [v for v in config.variants.split(",") if v and v not in IMPLEMENTATIONS]
    if unknown:
        print(
            f"error: --variants has {unknown[0]!r}; expected a comma list of "
            f"{', '.join(IMPLEMENTATIONS)}",
            file=sys.stderr,
        )
        return 2
    result = run(config)
    print(format_table(result))
    if config.json:
        from runtime.manifest import atomic_write_bytes

        atomic_write_bytes(Path(config.json), strict_json.dump_bytes(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
