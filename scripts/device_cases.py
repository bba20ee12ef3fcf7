"""The device cases of the runtime, run where only runtime/ and artifacts/ were copied.

    python device_cases.py ARTIFACTS_DIR      (next to a runtime/ directory; numpy, Pillow and
                                               one interpreter installed, nothing else)

Each case is one thing a Raspberry Pi or Coral user does (README install then check, a Detector
shared by threads, phone photos, bad files, interrupted commands); prints one PASS/FAIL line per
case and exits 1 if any failed. `scripts/test_edge.sh` runs it in every device environment.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from runtime.check import load_golden  # noqa: E402
from runtime.detector import Detector  # noqa: E402
from runtime.errors import RoiedgeError  # noqa: E402
from runtime.manifest import read_manifest, sha256_file, write_manifest  # noqa: E402

CASES = []


def case(function):
    CASES.append(function)
    return function


def cli(*args, **kwargs):
    return subprocess.run(
        [sys.executable, "-m", "runtime", *map(str, args)],
        cwd=HERE,
        capture_output=True,
        text=True,
        check=False,
        **kwargs,
    )


def one_line_error(proc, code, *fragments):
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip() and not ln.startswith("INFO:")]
    ok = proc.returncode == code and len(lines) == 1 and "Traceback" not in proc.stderr
    ok = ok and all(f in lines[0] for f in fragments)
    return ok, f"exit {proc.returncode}, stderr {lines[-3:]}"


def scene(artifacts) -> np.ndarray:
    x = load_golden(artifacts, read_manifest(artifacts), "backbone_rpn")["input_0"]
    return np.clip(x.reshape(-1, *x.shape[-3:])[0], 0, 255).astype(np.uint8)


def copy_of(artifacts, work) -> Path:
    target = Path(tempfile.mkdtemp(dir=work)) / "artifacts"
    shutil.copytree(artifacts, target)
    return target


def boxes(found):
    return [(d.class_id, round(d.score, 4), tuple(round(v, 2) for v in d.box)) for d in found]


@case
def readme_install_check_exits_0(artifacts, work):
    proc = cli("check", artifacts)
    lines = proc.stdout.splitlines()
    skipped = sum(" skipped (" in ln and "artifacts within" not in ln for ln in lines)
    return (
        proc.returncode == 0,
        f"exit {proc.returncode}, {skipped} skipped; {proc.stdout.splitlines()[-1:]}",
    )


@case
def one_detector_4_threads_x_100_calls(artifacts, work):
    detector = Detector(artifacts, precision="int8", num_threads=1)
    base = scene(artifacts)
    images = [np.ascontiguousarray(np.roll(base, 7 * k, axis=1)) for k in range(4)]
    expected = [boxes(detector.detect(im)) for im in images]
    bad = []

    def work_(k):
        try:
            for call in range(100):
                i = (call + k) % 4
                if boxes(detector.detect(images[i])) != expected[i]:
                    bad.append((k, call))
        except Exception as error:
            bad.append(repr(error))

    threads = [threading.Thread(target=work_, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return not bad, f"{len(bad)} of 400 calls differed or raised {bad[:2]}"


@case
def exif_orientation_6_jpeg(artifacts, work):
    shown = scene(artifacts)
    exif = Image.Exif()
    exif[0x0112] = 6  # stored turned counter-clockwise; a viewer turns it clockwise
    path = work / "phone.jpg"
    Image.fromarray(shown).transpose(Image.Transpose.ROTATE_90).save(path, quality=95, exif=exif)
    with Image.open(path) as stored:
        stored_pixels = np.asarray(stored.convert("RGB"))
    displayed = np.ascontiguousarray(np.rot90(stored_pixels, k=-1))  # numpy reference
    detector = Detector(artifacts, precision="int8")
    got, want = boxes(detector.detect(path)), boxes(detector.detect(displayed))
    return got == want and len(want) > 0, f"{len(got)} vs {len(want)} detections"


@case
def gray16_png_scaled_not_clipped(artifacts, work):
    gray = scene(artifacts).mean(axis=-1).round().astype(np.uint8)
    path = work / "gray16.png"
    Image.fromarray(gray.astype(np.uint16) * 257).save(path)
    detector = Detector(artifacts, precision="int8")
    got = boxes(detector.detect(path))
    want = boxes(detector.detect(np.repeat(gray[..., None], 3, axis=-1)))
    return got == want, f"{len(got)} vs {len(want)} detections"


@case
def decompression_bomb_png_header(artifacts, work):
    def chunk(kind, data):
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    path = work / "bomb.png"
    ihdr = struct.pack(">IIBBBBB", 30000, 30000, 8, 2, 0, 0, 0)
    body = chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + body)
    return one_line_error(cli("detect", "--artifacts", artifacts, path), 2, "decompression bomb")


@case
def detect_out_onto_an_existing_file(artifacts, work):
    image = work / "scene.png"
    Image.fromarray(scene(artifacts)).save(image)
    taken = work / "taken.png"
    taken.write_bytes(b"x")
    proc = cli("detect", "--artifacts", artifacts, image, "--out", taken)
    return one_line_error(proc, 2, "is an existing file")


@case
def empty_array_through_the_api(artifacts, work):
    try:
        Detector(artifacts, precision="int8").detect(np.zeros((0, 0, 3), np.uint8))
    except RoiedgeError as error:
        return "expected at least 2x2" in str(error), str(error)
    return False, "returned detections"


@case
def photo_8000x6000_peak_rss_under_200_mb(artifacts, work):
    from PIL import ImageDraw

    photo = Image.new("RGB", (8000, 6000), (40, 40, 40))
    ImageDraw.Draw(photo).ellipse((2000, 1500, 5000, 4500), fill=(220, 220, 220))
    path = work / "big.jpg"
    photo.save(path, quality=90)
    del photo
    code = (
        "import sys\nfrom runtime.detector import Detector\n"
        "Detector(sys.argv[1], precision='int8').detect(sys.argv[2])\n"
        "s = open('/proc/self/status').read()\n"
        "print(next(int(l.split()[1]) for l in s.splitlines() if l.startswith('VmHWM:')) / 1024)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, str(artifacts), str(path)],
        cwd=HERE,
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        return False, proc.stderr.strip().splitlines()[-1:]
    peak = float(proc.stdout.split()[-1])
    return peak < 200, f"peak RSS {peak:.0f} MB"


@case
def edgetpu_try_with_an_uncompiled_model(artifacts, work):
    image = work / "scene.png"
    Image.fromarray(scene(artifacts)).save(image)
    tried = cli(
        "detect", "--artifacts", artifacts, image, "--precision", "int8_io", "--edgetpu", "try"
    )
    said = "not compiled by edgetpu_compiler" in tried.stderr
    required = cli(
        "detect", "--artifacts", artifacts, image, "--precision", "int8_io", "--edgetpu", "require"
    )
    ok, detail = one_line_error(required, 2, "not compiled by edgetpu_compiler")
    return (
        tried.returncode == 0 and said and ok,
        f"try exit {tried.returncode} said={said}; require {detail}",
    )


@case
def golden_edited_manifest_untouched(artifacts, work):
    copy = copy_of(artifacts, work)
    manifest = read_manifest(copy)
    golden = copy / manifest.golden["head"]
    with np.load(golden) as data:
        arrays = dict(data)
    arrays["output_0"] = arrays["output_0"] * 0.5
    np.savez(golden, **arrays)
    proc = cli("check", copy)
    ok = proc.returncode == 1 and "golden: " in proc.stdout and "does not match" in proc.stdout
    return ok, f"exit {proc.returncode}"


@case
def manifest_path_outside_the_directory(artifacts, work):
    copy = copy_of(artifacts, work)
    manifest = read_manifest(copy)
    entry = manifest.find("backbone_rpn", "tflite", "int8")
    shutil.copy(copy / entry.path, copy.parent / "outside.tflite")
    moved = dataclasses.replace(entry, path="../outside.tflite")
    artifacts_ = tuple(moved if e == entry else e for e in manifest.artifacts)
    write_manifest(dataclasses.replace(manifest, artifacts=artifacts_), copy)
    image = work / "scene.png"
    Image.fromarray(scene(artifacts)).save(image)
    return one_line_error(
        cli("detect", "--artifacts", copy, image, "--precision", "int8"), 2, "not a relative path"
    )


@case
def one_missing_one_corrupt_artifact(artifacts, work):
    copy = copy_of(artifacts, work)
    manifest = read_manifest(copy)
    tflite = [e for e in manifest.artifacts if e.format == "tflite"]
    (copy / tflite[0].path).unlink()
    corrupt = copy / tflite[1].path
    corrupt.write_bytes(corrupt.read_bytes()[:-100] + b"\0" * 100)
    proc = cli("check", copy, "--formats", "tflite")
    rows = [e.name for e in tflite if e.name in proc.stdout]
    # The two broken artifacts fail their own rows; the detector pipeline row that needs them fails
    # too (it cannot run), and every other artifact row stays ok.
    broken = {tflite[0].name, tflite[1].name}
    failed = {e.name for e in tflite if f"FAIL {e.name} " in proc.stdout}
    ok = proc.returncode == 1 and len(rows) == len(tflite) and failed == broken
    return (
        ok,
        f"exit {proc.returncode}, {len(rows)}/{len(tflite)} rows, last: {proc.stdout.splitlines()[-1:]}",
    )


@case
def interrupted_bench(artifacts, work):
    results = []
    for signum in (signal.SIGINT, signal.SIGTERM):
        out = work / f"bench-{signum}"
        out.mkdir()
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "runtime",
                "bench",
                str(artifacts),
                "--runs",
                "100000",
                "--json",
                str(out / "bench.json"),
            ],
            cwd=HERE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        time.sleep(3)
        proc.send_signal(signum)
        _, err = proc.communicate(timeout=120)
        lines = [ln for ln in err.splitlines() if ln.strip() and not ln.startswith("INFO:")]
        results.append(
            (
                proc.returncode == 128 + signum and len(lines) == 1 and not list(out.iterdir()),
                proc.returncode,
                lines[-1:],
            )
        )
    return all(r[0] for r in results), str([r[1:] for r in results])


@case
def truncated_artifact_with_updated_sha256(artifacts, work):
    copy = copy_of(artifacts, work)
    manifest = read_manifest(copy)
    entry = manifest.find("head", "tflite", "int8")
    path = copy / entry.path
    path.write_bytes(path.read_bytes()[: entry.bytes // 2])
    fixed = dataclasses.replace(entry, sha256=sha256_file(path), bytes=path.stat().st_size)
    artifacts_ = tuple(fixed if e == entry else e for e in manifest.artifacts)
    write_manifest(dataclasses.replace(manifest, artifacts=artifacts_), copy)
    proc = cli("check", copy, "--only", entry.name)
    ok = proc.returncode == 1 and "not a structurally valid TFLite flatbuffer" in proc.stdout
    return ok, f"exit {proc.returncode} (a segfault is -11)"


def main() -> int:
    artifacts = Path(sys.argv[1]).resolve()
    failed = 0
    with tempfile.TemporaryDirectory(prefix="device-cases-") as tmp:
        for number, function in enumerate(CASES, 1):
            work = Path(tmp) / function.__name__
            work.mkdir()
            try:
                ok, detail = function(artifacts, work)
            except Exception:
                ok, detail = False, traceback.format_exc().strip().splitlines()[-1]
            failed += not ok
            print(f"case {number:2d} {function.__name__}: {'PASS' if ok else 'FAIL'} ({detail})")
            sys.stdout.flush()
    print(f"{len(CASES) - failed}/{len(CASES)} device cases passed")
    return 1 if failed else 0


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sys.exit(main())
