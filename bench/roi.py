"""RoIPooling micro-benchmark: the builtin-only TFLite forms against TensorFlow's fused kernel.

``python -m bench.roi [--json PATH]`` (run by ``make bench``) times, in one run:

* TensorFlow's fused ``CropAndResize`` + ``MaxPool`` (the reference, ``tf.function``);
* for every builtin-only implementation of :func:`models.roi_pooling.roi_pool`, its TFLite
  conversion in float32 and in full-integer int8 (``Optimize.DEFAULT`` + a representative
  dataset, builtin ops only, nothing else: what any user converting a model with the layer gets),

on a realistic case (38x38x512 features, 300 boxes, 7x7, samples_per_bin 2, 2 threads) and prints
each form's latency ratio to the reference and its max abs error against it on features in [0, 1),
and whether it meets :data:`TARGETS` (``--json``/``--png`` also write the result and a bar chart).
The reference and every form are timed in turn over ``--rounds`` rounds (a ratio per round, so
load that comes and goes hits both; the range is reported), the JSON names the host (CPU model,
flags, caches, load), and ``--profile 1`` adds a per-op profile of the first implementation
(the default one unless ``--implementations`` names others; :mod:`bench.tflite_profile`). The
split lowerings size their tiles for the precision converted to (``--tile-bytes`` per tile,
``--tile-per-precision 0`` for float32-sized tiles everywhere), and their int8 tiles share one
range per tensor (``--share-tile-ranges 0`` to measure without); ``--ablate 1`` also times
``fixed_point_split`` int8 with cut-down tile bodies (one GATHER; one GATHER and one MUL; four
GATHERs and three ADDs; the full tile), interleaved with the rest. Timings are never asserted in tests: these machines are noisy.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import sys
import time
from typing import Any

import numpy as np

from runtime import strict_json

#: Issue 2's bars per precision: (max latency ratio to TF's fused kernel, max abs error).
TARGETS = {"float32": (3.0, 1e-5), "int8": (1.0, 0.02)}


@dataclasses.dataclass(frozen=True)
class BenchConfig:
    """The benchmark case; the CLI flags map 1:1 onto these fields."""

    height: int = 38
    width: int = 38
    channels: int = 512
    num_rois: int = 300
    size: int = 7
    samples_per_bin: int = 2
    threads: int = 2
    runs: int = 10
    rounds: int = 3
    warmup: int = 1
    calibration_samples: int = 8
    seed: int = 0
    profile: int = 1
    implementations: str | None = None
    #: Bytes of one tile's intermediate in the split lowerings, a comma list (each a form;
    #: None: their default, one L2).
    tile_bytes: str | None = None
    #: 1: the split lowerings size tiles for the converted precision (int8 tiles hold 4x the
    #: RoIs); 0: float32-sized tiles for every precision.
    tile_per_precision: int = 1
    #: 1: int8 tiles share one range per tensor role (models.tflite_convert.share_tile_ranges).
    share_tile_ranges: int = 1
    #: 1: also time fixed_point_split int8 with cut-down tile bodies (where its time goes).
    ablate: int = 0
    json: str | None = None
    png: str | None = None


def random_case(config: BenchConfig, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(features [1,H,W,C] float32 in [0,1), rois [N,4] normalized y1x1y2x2, some past the map)."""
    features = rng.random((1, config.height, config.width, config.channels), dtype=np.float32)
    centers = rng.uniform(0.0, 1.0, (config.num_rois, 2))
    extents = rng.uniform(0.05, 0.6, (config.num_rois, 2))
    rois = np.concatenate([centers - extents / 2, centers + extents / 2], axis=1)
    return features, rois[:, [0, 1, 2, 3]].astype(np.float32)


def _p50_ms(call: Any, runs: int, warmup: int) -> float:
    from runtime.bench import latencies

    return latencies(call, runs, warmup)["p50_ms"]


def _tile_byte_sizes(config: BenchConfig) -> list[int | None]:
    """``--tile-bytes`` as ints (``[None]``: the lowerings' default)."""
    if not config.tile_bytes:
        return [None]
    return [int(v) for v in config.tile_bytes.split(",") if v]


def _tile_options(
    config: BenchConfig, implementation: str, precision: str, tile_bytes: int | None = None
) -> dict[str, Any]:
    """The ``tile_precision``/``tile_bytes`` the benchmark gives a split lowering (else none)."""
    from models.roi_lowerings import SIZED_TILE_LOWERINGS

    if implementation not in SIZED_TILE_LOWERINGS:
        return {}
    return {
        "tile_precision": precision if config.tile_per_precision else "float32",
        "tile_bytes": tile_bytes,
    }


def _function(
    config: BenchConfig,
    implementation: str,
    precision: str = "float32",
    tile_bytes: int | None = None,
):
    import tensorflow as tf

    from models.roi_pooling import roi_pool

    size = (config.size, config.size)
    tile_options = _tile_options(config, implementation, precision, tile_bytes)

    @tf.function(
        input_signature=[
            tf.TensorSpec((1, config.height, config.width, config.channels), tf.float32),
            tf.TensorSpec((config.num_rois, 4), tf.float32),
            tf.TensorSpec((config.num_rois,), tf.int32),
        ]
    )
    def pool(features, rois, box_indexes):  # argument names become the TFLite input names
        return roi_pool(
            features,
            rois,
            box_indexes,
            size=size,
            samples_per_bin=config.samples_per_bin,
            implementation=implementation,
            **tile_options,
        )

    return pool


def convert(
    config: BenchConfig,
    implementation: str,
    precision: str,
    rng,
    tile_bytes: int | None = None,
    function=None,
) -> bytes:
    """The TFLite flatbuffer of one implementation on the benchmark case (see
    :func:`models.tflite_convert.convert_function`; ``function`` instead of the
    implementation's); int8 calibrates on random cases."""
    from models.tflite_convert import convert_function

    def representative():
        for _ in range(config.calibration_samples):
            features, rois = random_case(config, rng)
            yield [features, rois, np.zeros(config.num_rois, np.int32)]

    if function is None:
        function = _function(config, implementation, precision, tile_bytes)
    return convert_function(function, precision, representative, bool(config.share_tile_ranges))


def _tile_ablations() -> dict[str, Any]:
    """Cut-down tile bodies of ``fixed_point_split`` (see ``roi_lowerings.bilinear_tile``):
    what each tile op costs, the rest of the graph (int32 path, pools, (DE)QUANTIZE) kept."""
    import tensorflow as tf

    from models.roi_lowerings import bilinear_tile

    def one_gather(table, corners, weights):
        return tf.gather(table, corners[0])

    def one_gather_one_mul(table, corners, weights):
        return tf.multiply(tf.gather(table, corners[0]), weights[0], "product_0")

    def four_gathers_three_adds(table, corners, weights):
        samples = tf.gather(table, corners[0])
        for corner in range(1, 4):
            samples = tf.add(samples, tf.gather(table, corners[corner]), f"sum_{corner}")
        return samples

    return {
        "1 GATHER": one_gather,
        "1 GATHER, 1 MUL": one_gather_one_mul,
        "4 GATHERs, 3 ADDs": four_gathers_three_adds,
        "4 GATHERs, 4 MULs, 3 ADDs (the lowering)": bilinear_tile,
    }


def _ablation_function(config: BenchConfig, tile_body, tile_bytes: int | None):
    """``fixed_point_split`` with int8-sized tiles and ``tile_body`` as a ``tf.function``."""
    import tensorflow as tf

    from models.roi_lowerings import ELEMENT_BYTES, Tiling, fixed_point_split_roi_pool

    crop = (config.size * config.samples_per_bin,) * 2
    tiling = Tiling(tile_bytes, ELEMENT_BYTES["int8"])

    @tf.function(
        input_signature=[
            tf.TensorSpec((1, config.height, config.width, config.channels), tf.float32),
            tf.TensorSpec((config.num_rois, 4), tf.float32),
            tf.TensorSpec((config.num_rois,), tf.int32),
        ]
    )
    def pool(features, rois, box_indexes):
        return fixed_point_split_roi_pool(
            features, rois, box_indexes, crop, config.samples_per_bin, tiling, tile_body
        )

    return pool


def _runner(model: bytes, threads: int):
    """A callable ``(features, rois, box_indexes) -> pooled`` over the TFLite model, by name."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=model, num_threads=threads)
    interpreter.allocate_tensors()
    by_name = {detail["name"]: detail["index"] for detail in interpreter.get_input_details()}
    indexes = [
        next(index for name, index in by_name.items() if arg in name)
        for arg in ("features", "rois", "box_indexes")
    ]
    output = interpreter.get_output_details()[0]["index"]

    def call(*arrays):
        for index, array in zip(indexes, arrays):
            interpreter.set_tensor(index, array)
        interpreter.invoke()
        return interpreter.get_tensor(output)

    return call


def _forms(config: BenchConfig) -> list[tuple[str, str, int | None]]:
    """(implementation, precision, tile bytes or None) of every form; the split lowerings once
    per ``--tile-bytes`` value."""
    from models.roi_lowerings import SIZED_TILE_LOWERINGS
    from models.roi_pooling import IMPLEMENTATIONS

    chosen = config.implementations.split(",") if config.implementations else IMPLEMENTATIONS
    return [
        (impl, precision, tile_bytes)
        for impl in chosen
        if impl != "crop_and_resize"
        for tile_bytes in (_tile_byte_sizes(config) if impl in SIZED_TILE_LOWERINGS else [None])
        for precision in ("float32", "int8")
    ]


def _form_name(implementation: str, precision: str, tile_bytes: int | None) -> str:
    return f"{implementation}/{precision}" + ("" if tile_bytes is None else f"@{tile_bytes}")


def run(config: BenchConfig) -> dict[str, Any]:
    """Measure every form, interleaved with the reference; returns the JSON-ready result."""
    from tqdm import tqdm

    from bench.tflite_profile import profile_tflite
    from models.tf_threads import set_tensorflow_threads
    from runtime.bench import host_info, interleaved, load_avg

    host = host_info()
    tf_threads = set_tensorflow_threads(config.threads)
    rng = np.random.default_rng(config.seed)
    features, rois = random_case(config, rng)
    box_indexes = np.zeros(config.num_rois, np.int32)
    reference_fn = _function(config, "crop_and_resize")
    reference = reference_fn(features, rois, box_indexes).numpy()
    calls = {"tf_fused": lambda: reference_fn(features, rois, box_indexes)}
    runs = {"tf_fused": config.runs}
    models, rows = {}, []
    for implementation, precision, tile_bytes in tqdm(
        _forms(config), desc="convert", file=sys.stderr
    ):
        model = convert(config, implementation, precision, rng, tile_bytes)
        call = functools.partial(_runner(model, config.threads), features, rois, box_indexes)
        start = time.perf_counter()
        output = call()
        first_s = time.perf_counter() - start
        name = _form_name(implementation, precision, tile_bytes)
        models[name] = model
        calls[name] = call
        # Keep a slow variant from dominating the run: about half a second per round each.
        runs[name] = int(np.clip(0.5 / max(first_s, 1e-6), 1, config.runs))
        rows.append(
            {
                "implementation": implementation,
                "precision": precision,
                "max_abs_error": float(np.max(np.abs(output - reference))),
                "bytes": len(model),
                **_tile_options(config, implementation, precision, tile_bytes),
            }
        )
    if config.ablate:
        tile_bytes = _tile_byte_sizes(config)[0]
        for label, body in tqdm(_tile_ablations().items(), desc="ablation", file=sys.stderr):
            function = _ablation_function(config, body, tile_bytes)
            model = convert(config, "fixed_point_split", "int8", rng, function=function)
            runner = _runner(model, config.threads)
            calls[f"ablation/{label}"] = functools.partial(runner, features, rois, box_indexes)
            runs[f"ablation/{label}"] = config.runs
    timed = interleaved(
        calls,
        "tf_fused",
        config.rounds,
        runs,
        config.warmup,
        progress=lambda steps: tqdm(steps, desc="interleaved rounds", file=sys.stderr),
    )
    for row in rows:
        name = _form_name(row["implementation"], row["precision"], row.get("tile_bytes"))
        max_ratio, max_error = TARGETS[row["precision"]]
        row.update(
            latency_ms=timed[name]["p50_ms"],
            ratio_vs_tf_fused=timed[name]["ratio"],
            ratio_range=[timed[name]["ratio_min"], timed[name]["ratio_max"]],
            round_ratios=timed[name]["round_ratios"],
            runs_per_round=runs[name],
            meets_target=bool(
                timed[name]["ratio"] <= max_ratio and row["max_abs_error"] <= max_error
            ),
        )
    profiles = {}
    inputs = {"features": features, "rois": rois, "box_indexes": box_indexes}
    if config.profile:
        # The first implementation asked for (the default one unless --implementations says).
        first = _forms(config)[0][0]
        targets = [n for n in models if n.split("/")[0] == first]
        for name in tqdm(targets, desc="per-op profile", file=sys.stderr):
            profiles[name] = profile_tflite(models[name], inputs, config.threads)
    ablation = [
        {
            "tile_body": name.split("/", 1)[1],
            "latency_ms": values["p50_ms"],
            "ratio_vs_tf_fused": values["ratio"],
            "ratio_range": [values["ratio_min"], values["ratio_max"]],
        }
        for name, values in timed.items()
        if name.startswith("ablation/")
    ]
    return {
        "config": dataclasses.asdict(config),
        "ablation": ablation,
        "host": host,
        "load_avg_after": load_avg(),
        "tf_threads": tf_threads,
        "tf_fused_ms": timed["tf_fused"]["p50_ms"],
        "tf_fused_round_ms": timed["tf_fused"]["round_ms"],
        "forms": rows,
        "profiles": profiles,
    }


def format_table(result: dict[str, Any]) -> str:
    from bench.tflite_profile import format_profile
    from models.roi_lowerings import TILE_BYTES
    from runtime.bench import host_line

    config = result["config"]
    lines = [
        f"RoIPooling {config['height']}x{config['width']}x{config['channels']}, "
        f"{config['num_rois']} boxes, {config['size']}x{config['size']}, samples_per_bin "
        f"{config['samples_per_bin']}, {config['threads']} threads "
        f"(TensorFlow: {result['tf_threads']}); {config['rounds']} interleaved rounds",
        host_line(result["host"]) + f" -> {result['load_avg_after']} after",
        f"{'form':<48} {'p50 ms':>9} {'x TF fused (range)':>20} {'max abs err':>12}  target",
        f"{'TF CropAndResize+MaxPool':<48} {result['tf_fused_ms']:>9.2f} {'1.00':>20} {0.0:>12.2e}",
    ]
    for row in result["forms"]:
        name = f"tflite {row['implementation']} {row['precision']}"
        if "tile_precision" in row:
            tile_bytes = row["tile_bytes"] or TILE_BYTES
            name += f" [{row['tile_precision']} {tile_bytes / 2**20:g}M]"
        max_ratio, max_error = TARGETS[row["precision"]]
        verdict = "met" if row["meets_target"] else "missed"
        low, high = row["ratio_range"]
        ratio = f"{row['ratio_vs_tf_fused']:.2f} ({low:.2f}-{high:.2f})"
        lines.append(
            f"{name:<48} {row['latency_ms']:>9.2f} {ratio:>20} "
            f"{row['max_abs_error']:>12.2e}  {verdict} (<= {max_ratio:g}x, <= {max_error:g})"
        )
    if result.get("ablation"):
        lines.append("fixed_point_split int8 with cut-down tiles (rest of the graph kept):")
    for row in result.get("ablation", []):
        low, high = row["ratio_range"]
        ratio = f"{row['ratio_vs_tf_fused']:.2f} ({low:.2f}-{high:.2f})"
        lines.append(f"  {row['tile_body']:<46} {row['latency_ms']:>9.2f} {ratio:>20}")
    for name, profile in result["profiles"].items():
        lines.append(format_profile(profile, f"per-op profile of tflite {name}"))
    return "\n".join(lines)


def plot(result: dict[str, Any]) -> bytes:
    """PNG bytes: each form's latency ratio to TF's fused kernel (median, range over rounds as
    whiskers; log scale) with its max error, the precision's bar as a dashed line."""

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from models.figures import png_bytes

    forms = result["forms"]
    names = [f"{row['implementation']} {row['precision']}" for row in forms]
    ratios = np.asarray([row["ratio_vs_tf_fused"] for row in forms])
    low = ratios - np.asarray([row["ratio_range"][0] for row in forms])
    high = np.asarray([row["ratio_range"][1] for row in forms]) - ratios
    colors = ["tab:green" if row["meets_target"] else "tab:red" for row in forms]
    figure, axes = plt.subplots(figsize=(8, 0.45 * len(forms) + 1.6))
    positions = np.arange(len(forms))[::-1]
    axes.barh(positions, ratios, xerr=[low, high], color=colors, alpha=0.8, capsize=3)
    axes.set_yticks(positions, names, fontsize=8)
    for position, row, ratio in zip(positions, forms, ratios):
        axes.annotate(
            f"  {ratio:.2f}x, err {row['max_abs_error']:.1e}",
            (row["ratio_range"][1], position),
            va="center",
            fontsize=7,
        )
    for precision, (max_ratio, _) in TARGETS.items():
        axes.axvline(max_ratio, linestyle="--", color="gray", linewidth=0.8)
        axes.annotate(f"{precision} bar", (max_ratio, len(forms) - 0.4), fontsize=7, ha="center")
    axes.axvline(1.0, color="black", linewidth=0.8)
    axes.set_xscale("log")
    axes.set_xlim(right=axes.get_xlim()[1] * 4)
    config, host = result["config"], result["host"]
    axes.set_title(
        f"RoIPooling in TFLite vs TF fused CropAndResize+MaxPool ({result['tf_fused_ms']:.1f} ms), "
        f"{config['height']}x{config['width']}x{config['channels']}, {config['num_rois']} boxes\n"
        f"{host['cpu_model']}, {config['threads']} threads, load {host['load_avg']}; "
        f"median and range over {config['rounds']} rounds; green = meets its bar",
        fontsize=8,
    )
    axes.set_xlabel("latency / TF fused (log; lower is faster)")
    return png_bytes(figure)


def main(argv: list[str] | None = None) -> int:
    import bench.lowerings  # noqa: F401  (registers the benchmark-only RoIPooling lowerings)

    defaults = BenchConfig()
    parser = argparse.ArgumentParser(prog="python -m bench.roi", description=__doc__)
    for field in dataclasses.fields(BenchConfig):
        flag = "--" + field.name.replace("_", "-")
        kind = str if field.name in ("json", "png", "implementations", "tile_bytes") else int
        parser.add_argument(flag, type=kind, default=getattr(defaults, field.name))
    config = BenchConfig(**vars(parser.parse_args(argv)))
    for field in dataclasses.fields(BenchConfig):
        value = getattr(config, field.name)
        minimum = 0 if field.name == "warmup" else 1
        unchecked = ("json", "png", "seed", "implementations", "profile", "tile_bytes")
        if field.name not in (*unchecked, "tile_per_precision", "share_tile_ranges", "ablate") and (
            value < minimum
        ):
            print(
                f"error: --{field.name.replace('_', '-')} is {value}; expected >= {minimum}",
                file=sys.stderr,
            )
            return 2
    try:
        if any(size < 1 for size in _tile_byte_sizes(config) if size is not None):
            raise ValueError
    except ValueError:
        print(
            f"error: --tile-bytes is {config.tile_bytes!r}; expected a comma list of ints >= 1",
            file=sys.stderr,
        )
        return 2
    result = run(config)
    print(format_table(result))
    from pathlib import Path

    from runtime.manifest import atomic_write_bytes

    if config.json:
        atomic_write_bytes(Path(config.json), strict_json.dump_bytes(result))
    if config.png:
        atomic_write_bytes(Path(config.png), plot(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
