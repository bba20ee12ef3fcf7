"""``python -m runtime <verb>``: detect, check, bench, run. Exit 0 ok, 1 check failed, 2 bad input.

Ctrl-C / SIGTERM: one line, exit 130 / 143 (``runtime.interrupts.run_main`` in ``__main__``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from runtime import strict_json
from runtime.detector_flags import add_detector_arguments
from runtime.errors import RoiedgeError, one_line, say
from runtime.images import ANNOTATED_MAX_SIDE, IMAGE_SUFFIXES
from runtime.limits import flag_type
from runtime.manifest import MANIFEST_NAME
from runtime.safe_files import writable_output

_threads = flag_type(1, "flag_threads")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m runtime", description="TF-free roiedge runtime (TFLite / ONNX)."
    )
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB")

    detect = verbs.add_parser("detect", help="detect objects in images, draw boxes")
    detect.add_argument(
        "images",
        nargs="*",
        type=Path,
        metavar="IMAGE",
        help="image files or directories (searched recursively for "
        f"{', '.join(IMAGE_SUFFIXES)}); numbered 1, 2, ... in --json. Or give --data",
    )
    detect.add_argument(
        "--data",
        type=Path,
        default=None,
        metavar="COCO.json",
        help="run on the images[] of this COCO file instead of IMAGE arguments, writing each "
        "image's own id to --json (score it with pycocotools against the same file)",
    )
    detect.add_argument(
        "--data-images",
        type=Path,
        default=None,
        metavar="DIR",
        help="folder the --data file_name entries are relative to (default: the JSON's folder)",
    )
    add_detector_arguments(detect)
    detect.add_argument(
        "--threads", type=_threads, default=None, help="interpreter threads (default: its own)"
    )
    detect.add_argument(
        "--edgetpu",
        default="off",
        choices=("off", "try", "require"),
        help="run the int8_io backbone on a Coral Edge TPU: off, try (fall back to CPU), require "
        "(fail without one) (default off)",
    )
    detect.add_argument(
        "--pipeline",
        default="two-stage",
        choices=("two-stage", "single"),
        help="two-stage: the stage files + numpy post-processing; single: "
        "detector.<precision>.tflite, one interpreter (its own post-processing and thresholds)",
    )
    detect.add_argument(
        "--out",
        type=Path,
        default=None,
        help="directory for annotated copies, <name>_detections.jpg, longest side at most "
        f"{ANNOTATED_MAX_SIDE} px",
    )
    detect.add_argument(
        "--json",
        type=Path,
        default=None,
        help="write the detections as COCO results (image_id, category_id, bbox [x, y, w, h] "
        "in the photo's pixels, score)",
    )
    detect.add_argument(
        "--keep-going",
        action="store_true",
        help="continue past unreadable images (exit 1 at the end if any failed)",
    )

    check = verbs.add_parser("check", help="every artifact vs the float Keras golden outputs")
    check.add_argument("artifacts", type=Path, metavar="DIR", help="artifacts directory")
    check.add_argument(
        "--only",
        nargs="+",
        default=None,
        help="artifact names to check, as in manifest.json, e.g. backbone_rpn/tflite/int8 "
        "(default: all, plus a detection on the golden image)",
    )
    check.add_argument(
        "--formats", nargs="+", default=None, choices=("tflite", "onnx"), help="formats to check"
    )
    check.add_argument(
        "--tflite-backend",
        default=None,
        help="TFLite interpreter: ai_edge_litert, tflite_runtime or tensorflow "
        "(default: the first installed)",
    )
    check.add_argument(
        "--threads", type=_threads, default=None, help="interpreter threads (default: its own)"
    )
    check.add_argument("--json", type=Path, default=None, help="also write the results as JSON")
    check.add_argument(
        "--require-all",
        action="store_true",
        help="fail (exit 1) when an artifact is skipped because its interpreter is not installed",
    )

    bench = verbs.add_parser("bench", help="load/latency/RSS per artifact and per pipeline")
    bench.add_argument("artifacts", type=Path, metavar="DIR", help="artifacts directory")
    bench.add_argument(
        "--runs",
        type=flag_type(1, "flag_runs"),
        default=20,
        help="timed runs per measurement (default 20)",
    )
    bench.add_argument(
        "--warmup",
        type=flag_type(0, "flag_runs"),
        default=3,
        help="untimed runs before them (default 3)",
    )
    bench.add_argument(
        "--threads", type=_threads, default=None, help="interpreter threads (default: its own)"
    )
    bench.add_argument("--backend", default=None, help="TFLite interpreter (default: automatic)")
    bench.add_argument(
        "--pipelines",
        nargs="*",
        default=["float32", "int8", "onnx:int8"],
        help="pipeline precisions, [format:]precision (default: float32 int8 onnx:int8)",
    )
    bench.add_argument("--only", nargs="*", default=None, help="artifact names (default: all)")
    bench.add_argument("--json", type=Path, default=None, help="also write the rows as JSON")
    bench.add_argument(
        "--video",
        type=Path,
        default=None,
        help="instead: stream fps on this video, pipelined vs sequential, 1 and 2 cores",
    )
    bench.add_argument(
        "--rounds",
        type=flag_type(1, "flag_runs"),
        default=3,
        help="--video: runs per mode and setting",
    )
    bench.add_argument(
        "--require-all",
        action="store_true",
        help="fail (exit 1) when a measurement is skipped because its interpreter is not installed",
    )

    from runtime.run import add_arguments as add_run_arguments

    add_run_arguments(verbs.add_parser("run", help="run one artifact on inputs from an .npz"))

    from runtime.stream_cli import add_arguments as add_stream_arguments

    add_stream_arguments(verbs.add_parser("stream", help="detect on a video or camera stream"))

    child = verbs.add_parser("_bench-child")  # internal: one measurement in a fresh process
    child.add_argument("kind", choices=("artifact", "pipeline"))
    child.add_argument("what")
    child.add_argument("artifacts")
    child.add_argument("--runs", type=int, default=20)
    child.add_argument("--warmup", type=int, default=3)
    child.add_argument("--threads", type=int, default=None)
    child.add_argument("--backend", default=None)
    return parser


def image_files(paths: list[Path]) -> list[Path]:
    """Files as given, directories expanded to their image files (recursively, sorted)."""
    found = []
    for path in paths:
        if path.is_dir():
            inside = sorted(
                p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
            )
            if not inside:
                raise RoiedgeError(
                    f"{path}: directory has no image files; expected {', '.join(IMAGE_SUFFIXES)}"
                )
            found.extend(inside)
        else:
            found.append(path)
    return found


def unique_name(stem: str, taken: set[str], suffix: str = ".jpg") -> str:
    """``stem_detections.jpg``, or ``stem_detections-2.jpg``... if this run already wrote it."""
    name, n = f"{stem}_detections{suffix}", 1
    while name in taken:
        n += 1
        name = f"{stem}_detections-{n}{suffix}"
    taken.add(name)
    return name


def coco_results(
    path: Path, image_id: int, found: list, category_ids: tuple[int, ...] | None = None
) -> list[dict]:
    """COCO results rows of one image: bbox [x, y, width, height] in pixels.

    ``category_id`` is ``category_ids[class id]``, the training dataset's own id of the class
    (``DetectorConfig.coco_ids``); None means COCO's 1..K.
    """
    rows = []
    for d in found:
        y1, x1, y2, x2 = (float(v) for v in d.box)
        rows.append(
            {
                "image_id": image_id,
                "file_name": str(path),
                "category_id": (
                    int(category_ids[d.class_id]) if category_ids else int(d.class_id) + 1
                ),
                "category_name": d.class_name,
                "bbox": [round(x1, 2), round(y1, 2), round(x2 - x1, 2), round(y2 - y1, 2)],
                "score": round(float(d.score), 5),
            }
        )
    return rows


def _numbered_images(args: argparse.Namespace) -> list[tuple[int, Path]]:
    """(image_id, path) of every image to run: the --data file's own ids, else 1, 2, ..."""
    if args.data is not None:
        if args.images:
            raise RoiedgeError(
                f"detect: got IMAGE arguments and --data {args.data}; expected one of them"
            )
        from runtime.coco_images import read_coco_images

        return [(e.image_id, e.path) for e in read_coco_images(args.data, args.data_images)]
    if args.data_images is not None:
        raise RoiedgeError(f"detect: --data-images {args.data_images} needs --data COCO.json")
    if not args.images:
        raise RoiedgeError(
            "detect: no images; expected IMAGE files/directories or --data COCO.json"
        )
    return list(enumerate(image_files(args.images), 1))


def _detect(args: argparse.Namespace) -> int:
    from runtime.detector import Detector, DetectorOptions
    from runtime.images import draw_detections, load_image, save_image
    from runtime.manifest import atomic_write_bytes

    # Outputs are checked before any work: a run never ends in "cannot write" after the work.
    if args.out is not None:
        writable_output(args.out, "--out", kind="dir")
    numbered = _numbered_images(args)
    if args.json is not None:  # never one of the images, the --data file or the manifest it reads
        inputs = [path for _, path in numbered] + [args.artifacts / MANIFEST_NAME]
        writable_output(args.json, "--json", inputs=inputs + ([args.data] if args.data else []))
    options = DetectorOptions(
        precision=args.precision,
        head_precision=args.head_precision,
        format=args.format,
        backend=args.backend,
        num_threads=args.threads,
        edgetpu=args.edgetpu,
        score_threshold=args.score_threshold,
    )
    if args.pipeline == "single":
        from runtime.single import SingleDetector

        detector = SingleDetector(args.artifacts, args.precision, args.backend, args.threads)
    else:
        detector = Detector(args.artifacts, options)
    say(f"# {detector.describe()}")
    taken: set[str] = set()
    results, failed = [], []
    for image_id, path in numbered:
        try:
            found = detector.detect(path)
        except RoiedgeError as error:
            if not args.keep_going:
                raise
            failed.append(path)
            say(f"error: {one_line(error)}", file=sys.stderr)
            continue
        ms = detector.timings["total"] * 1e3
        say(f"{path}: {len(found)} detections in {ms:.1f} ms")
        for d in found:
            y1, x1, y2, x2 = d.box
            say(
                f"  {d.class_name:<12} {d.score:.3f}  box y1={y1:.1f} x1={x1:.1f} y2={y2:.1f} x2={x2:.1f}"
            )
        results.extend(coco_results(path, image_id, found, detector.config.coco_ids))
        if args.out is not None:
            # Drawn from the full photo (the detector itself decoded a reduced JPEG), shrunk.
            drawn = draw_detections(load_image(path), found, max_side=ANNOTATED_MAX_SIDE)
            target = save_image(drawn, args.out / unique_name(path.stem, taken))
            say(f"  wrote {target}")
    if args.json is not None:
        atomic_write_bytes(args.json, strict_json.dump_bytes(results, indent=1))
        say(f"wrote {len(results)} detections to {args.json}")
    if failed:
        say(f"{len(failed)} of {len(numbered)} images could not be read", file=sys.stderr)
        return 1
    return 0


def _check(args: argparse.Namespace) -> int:
    from runtime.check import check_directory, format_results
    from runtime.manifest import atomic_write_bytes, read_manifest
    from runtime.progress import progress

    if args.json is not None:
        writable_output(args.json, "--json", inputs=[args.artifacts / MANIFEST_NAME])
    backends = {"tflite": args.tflite_backend} if args.tflite_backend else None
    only = args.only
    if args.formats:
        only = [
            e.name
            for e in read_manifest(args.artifacts).artifacts
            if e.format in args.formats and (only is None or e.name in only)
        ]
    results = check_directory(
        args.artifacts, backends=backends, num_threads=args.threads, only=only, progress=progress
    )
    if args.only is None:  # the detector config and a detection on the golden image
        from runtime.check_pipeline import check_pipeline

        row = check_pipeline(
            args.artifacts,
            read_manifest(args.artifacts),
            formats=tuple(args.formats or ("tflite", "onnx")),
            backends=backends,
            num_threads=args.threads,
        )
        results += [row] if row is not None else []
    if not results:
        raise RoiedgeError(
            f"{args.artifacts}: no artifacts to check (--only {args.only}, --formats {args.formats})"
        )
    say(format_results(results))
    if args.json is not None:
        rows = [
            {
                "name": r.entry.name,
                "precision": r.entry.precision,
                "backend": r.backend,
                "ok": r.ok,
                "top1_agreement": r.top1_agreement,
                "outputs": {
                    o.name: {**vars(o.metrics), "failures": list(o.failures)} for o in r.outputs
                },
                "failures": list(r.failures),
                "skipped": r.skipped,
            }
            for r in results
        ]
        atomic_write_bytes(args.json, strict_json.dump_bytes(rows, default=str))
    ran = [r for r in results if r.skipped is None]
    skipped = len(results) - len(ran)
    if not ran:
        say("error: no artifact could run here; install an interpreter", file=sys.stderr)
        return 1
    if skipped and args.require_all:
        say(f"check failed: {skipped} artifact(s) skipped and --require-all given", file=sys.stderr)
        return 1
    return 0 if all(r.ok for r in ran) else 1


def _bench(args: argparse.Namespace) -> int:
    if args.video is not None:
        from runtime.stream_bench import run_from_cli

        return run_from_cli(args)
    from runtime.backends import edgetpu_available, missing_interpreter
    from runtime.bench import format_table, run_child
    from runtime.manifest import EDGETPU_PRECISION, atomic_write_bytes, read_manifest
    from runtime.progress import progress

    if args.json is not None:
        writable_output(args.json, "--json", inputs=[args.artifacts / MANIFEST_NAME])
    manifest = read_manifest(args.artifacts)
    entries = [e for e in manifest.artifacts if args.only is None or e.name in args.only]
    common = ["--runs", str(args.runs), "--warmup", str(args.warmup)]
    if args.threads:
        common += ["--threads", str(args.threads)]
    if args.backend:
        common += ["--backend", args.backend]

    def why_not(fmt: str) -> str | None:
        return missing_interpreter(fmt, args.backend if fmt == "tflite" else None)

    jobs = [
        (
            "artifact",
            e.name,
            why_not(e.format)
            or (
                "Edge TPU runtime libedgetpu not installed"
                if e.precision == EDGETPU_PRECISION and not edgetpu_available()
                else None
            ),
        )
        for e in entries
    ]
    for pipeline in args.pipelines:
        fmt = pipeline.rpartition(":")[0] or "tflite"
        fmt = "tflite" if fmt == "single" else fmt  # single:PRECISION, detector.PRECISION.tflite
        jobs.append(("pipeline", pipeline, why_not(fmt) if fmt in ("tflite", "onnx") else None))
    rows = []
    skipped = []
    for kind, what, reason in progress(jobs, len(jobs), "bench"):
        if reason is None:
            rows.append(run_child([kind, what, str(args.artifacts), *common]))
        else:
            skipped.append({"kind": kind, "name": what, "skipped": reason})
    say(format_table(rows))
    for row in skipped:
        say(f"{row['name']:<34} skipped ({row['skipped']})")
    if args.json is not None:
        atomic_write_bytes(args.json, strict_json.dump_bytes(rows + skipped))
    if skipped and args.require_all:
        say(f"bench failed: {len(skipped)} skipped and --require-all given", file=sys.stderr)
        return 1
    return 0


def _bench_child(args: argparse.Namespace) -> int:
    from runtime.bench import measure_artifact, measure_pipeline

    measure = measure_artifact if args.kind == "artifact" else measure_pipeline
    result = measure(args.artifacts, args.what, args.runs, args.warmup, args.backend, args.threads)
    print(strict_json.dumps(result))
    return 0


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv``, run the verb; user mistakes print one line to stderr and return 2."""
    args = _parser().parse_args(argv)
    from runtime.run import main as _run

    verb = {"detect": _detect, "check": _check, "bench": _bench, "_bench-child": _bench_child}
    verb["run"] = _run
    from runtime.stream_cli import main as _stream

    verb["stream"] = _stream
    try:
        return verb[args.verb](args)
    except RoiedgeError as error:
        message = one_line(error)
        say(f"error: {message}", file=sys.stderr)
        return 2
