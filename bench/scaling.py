"""RoIPooling cost curves: latency against work for TF's fused kernel and the TFLite forms.

``python -m bench.scaling [--json PATH] [--png PATH]`` (run by ``make bench``) sweeps the
number of RoIs and the feature channels on a 38x38 map (7x7, samples_per_bin 2, 2 threads) and
times, per case and interleaved, TF's fused CropAndResize+MaxPool against the default
builtin-only lowering converted to TFLite float32 and full-integer int8. One model per channel
count and precision, with a dynamic number of RoIs (resized per case). The PNG plots latency
against work (RoIs x channels) on log-log axes, so where each form's cost grows faster shows.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import sys
from pathlib import Path
from typing import Any

import numpy as np

from runtime import strict_json
from runtime.errors import one_line


@dataclasses.dataclass(frozen=True)
class ScalingConfig:
    """The sweep; the CLI flags map 1:1 onto these fields (lists comma-separated)."""

    rois: str = "16,64,300,1000"
    channels: str = "64,256,512,1024"
    height: int = 38
    width: int = 38
    size: int = 7
    threads: int = 2
    runs: int = 3
    rounds: int = 2
    calibration_samples: int = 2
    implementation: str = "fixed_point"
    seed: int = 0
    json: str | None = None
    png: str | None = None


def _ints(text: str, flag: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        values = []
    if not values or min(values) < 1:
        raise ValueError(f"--{flag} is {text!r}; expected comma-separated ints >= 1")
    return values


def _function(config: ScalingConfig, channels: int, implementation: str):
    import tensorflow as tf

    from models.roi_pooling import roi_pool

    @tf.function(
        input_signature=[
            tf.TensorSpec((1, config.height, config.width, channels), tf.float32),
            tf.TensorSpec((None, 4), tf.float32),
            tf.TensorSpec((None,), tf.int32),
        ]
    )
    def pool(features, rois, box_indexes):
        return roi_pool(features, rois, box_indexes, (config.size, config.size), 2, implementation)

    return pool


def _case(config: ScalingConfig, rng, num_rois: int, channels: int):
    features = rng.random((1, config.height, config.width, channels), dtype=np.float32)
    centers = rng.uniform(0.0, 1.0, (num_rois, 2))
    extents = rng.uniform(0.05, 0.6, (num_rois, 2))
    rois = np.concatenate([centers - extents / 2, centers + extents / 2], 1).astype(np.float32)
    return features, rois, np.zeros(num_rois, np.int32)


def _resizable_runner(model: bytes, threads: int):
    """``call(features, rois, box_indexes)`` over a TFLite model with a dynamic RoI count."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=model, num_threads=threads)
    details = interpreter.get_input_details()
    indexes = [
        next(d["index"] for d in details if key in d["name"])
        for key in ("features", "rois", "box_indexes")
    ]
    output = interpreter.get_output_details()[0]["index"]
    state = {"rois": None}

    def call(*arrays):
        if state["rois"] != len(arrays[1]):
            for index, array in zip(indexes, arrays):
                interpreter.resize_tensor_input(index, array.shape, strict=False)
            interpreter.allocate_tensors()
            state["rois"] = len(arrays[1])
        for index, array in zip(indexes, arrays):
            interpreter.set_tensor(index, array)
        interpreter.invoke()
        return interpreter.get_tensor(output)

    return call


def run(config: ScalingConfig) -> dict[str, Any]:
    from tqdm import tqdm

    from models.tf_threads import set_tensorflow_threads
    from models.tflite_convert import convert_function
    from runtime.bench import host_info, interleaved, load_avg

    host = host_info()
    tf_threads = set_tensorflow_threads(config.threads)
    rng = np.random.default_rng(config.seed)
    roi_counts = _ints(config.rois, "rois")
    channel_counts = _ints(config.channels, "channels")
    rows = []
    cases = [(c, n) for c in channel_counts for n in roi_counts]
    progress = tqdm(total=len(cases), desc="scaling sweep", file=sys.stderr)
    for channels in channel_counts:
        reference = _function(config, channels, "crop_and_resize")
        lowered = _function(config, channels, config.implementation)

        def representative(channels=channels):
            for _ in range(config.calibration_samples):
                yield list(_case(config, rng, 64, channels))

        runners = {
            precision: _resizable_runner(
                convert_function(lowered, precision, representative), config.threads
            )
            for precision in ("float32", "int8")
        }
        for num_rois in roi_counts:
            arrays = _case(config, rng, num_rois, channels)
            expected = reference(*arrays).numpy()
            calls = {"tf_fused": functools.partial(reference, *arrays)}
            errors = {}
            for precision, runner in runners.items():
                errors[precision] = float(np.abs(runner(*arrays) - expected).max())
                calls[f"tflite/{precision}"] = functools.partial(runner, *arrays)
            timed = interleaved(calls, "tf_fused", config.rounds, config.runs, 1)
            rows.append(
                {
                    "num_rois": num_rois,
                    "channels": channels,
                    "work": num_rois * channels,
                    "tf_fused_ms": timed["tf_fused"]["p50_ms"],
                    **{f"{p}_ms": timed[f"tflite/{p}"]["p50_ms"] for p in ("float32", "int8")},
                    **{
                        f"{p}_ratio_range": [
                            timed[f"tflite/{p}"]["ratio_min"],
                            timed[f"tflite/{p}"]["ratio_max"],
                        ]
                        for p in ("float32", "int8")
                    },
                    **{f"{p}_max_abs_error": errors[p] for p in errors},
                    "load_avg": load_avg(),
                }
            )
            progress.update()
    progress.close()
    return {
        "config": dataclasses.asdict(config),
        "host": host,
        "load_avg_after": load_avg(),
        "tf_threads": tf_threads,
        "cases": rows,
    }


def format_table(result: dict[str, Any]) -> str:
    from runtime.bench import host_line

    lines = [
        f"RoIPooling cost curves ({result['config']['implementation']}), "
        f"{result['config']['height']}x{result['config']['width']} map, 7x7, samples_per_bin 2",
        host_line(result["host"]) + f" -> {result['load_avg_after']} after",
        f"{'RoIs':>5} {'C':>5} {'TF ms':>9} {'f32 ms':>9} {'int8 ms':>9} "
        f"{'f32 x TF (range)':>18} {'int8 x TF (range)':>18}",
    ]
    for row in result["cases"]:
        f32, i8 = row["float32_ratio_range"], row["int8_ratio_range"]
        lines.append(
            f"{row['num_rois']:>5} {row['channels']:>5} {row['tf_fused_ms']:>9.2f} "
            f"{row['float32_ms']:>9.2f} {row['int8_ms']:>9.2f} "
            f"{f'{f32[0]:.2f}-{f32[1]:.2f}':>18} {f'{i8[0]:.2f}-{i8[1]:.2f}':>18}"
        )
    return "\n".join(lines)


def plot(result: dict[str, Any]) -> bytes:
    """PNG bytes: latency against RoIs x channels, log-log, one line per form and channel count."""

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from models.figures import png_bytes

    figure, axes = plt.subplots(figsize=(7, 5))
    styles = {"tf_fused_ms": ("TF fused", "black"), "float32_ms": ("TFLite float32", "tab:blue")}
    styles["int8_ms"] = ("TFLite int8", "tab:orange")
    channel_counts = sorted({row["channels"] for row in result["cases"]})
    markers = dict(zip(channel_counts, "osD^v<>"))
    for key, (label, color) in styles.items():
        for channels in channel_counts:
            rows = sorted(
                (r for r in result["cases"] if r["channels"] == channels), key=lambda r: r["work"]
            )
            axes.plot(
                [r["work"] for r in rows],
                [r[key] for r in rows],
                color=color,
                marker=markers[channels],
                linewidth=0.9,
                label=f"{label}, C={channels}",
            )
    axes.set_xscale("log")
    axes.set_yscale("log")
    axes.set_xlabel("work: RoIs x channels (7x7 bins, 14x14 samples each)")
    axes.set_ylabel("p50 latency (ms)")
    host = result["host"]
    axes.set_title(
        f"RoIPooling cost curves on {host['cpu_model']} ({host['usable_cpus']} cpus), "
        f"{result['config']['threads']} threads",
        fontsize=9,
    )
    axes.legend(fontsize=6, ncol=3)
    axes.grid(True, which="both", linewidth=0.3)
    return png_bytes(figure)


def main(argv: list[str] | None = None) -> int:
    import bench.lowerings  # noqa: F401  (registers the benchmark-only RoIPooling lowerings)

    defaults = ScalingConfig()
    parser = argparse.ArgumentParser(prog="python -m bench.scaling", description=__doc__)
    for field in dataclasses.fields(ScalingConfig):
        flag = "--" + field.name.replace("_", "-")
        kind = int if isinstance(getattr(defaults, field.name), int) else str
        parser.add_argument(flag, type=kind, default=getattr(defaults, field.name))
    config = ScalingConfig(**vars(parser.parse_args(argv)))
    try:
        _ints(config.rois, "rois")
        _ints(config.channels, "channels")
        for field in dataclasses.fields(ScalingConfig):
            value = getattr(config, field.name)
            if isinstance(value, int) and field.name != "seed" and value < 1:
                raise ValueError(f"--{field.name.replace('_', '-')} is {value}; expected >= 1")
    except ValueError as error:
        print(f"error: {one_line(error)}", file=sys.stderr)
        return 2
    result = run(config)
    print(format_table(result))
    from runtime.manifest import atomic_write_bytes

    if config.json:
        atomic_write_bytes(Path(config.json), strict_json.dump_bytes(result))
    if config.png:
        atomic_write_bytes(Path(config.png), plot(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
