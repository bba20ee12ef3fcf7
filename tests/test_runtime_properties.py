"""Property-based tests (hypothesis): random corruptions of a real manifest, of real image bytes and
random CLI arguments give a one-line RoiedgeError (or a clean result), never another exception;
and a slow soak: 10,000 detect calls without memory growth."""

from __future__ import annotations

import copy
import io
import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from runtime_fakes import fake_image, shared_fake_artifacts
from test_runtime import REPO

from runtime.cli import main
from runtime.detector import Detector
from runtime.errors import RoiedgeError
from runtime.images import load_image
from runtime.manifest import detector_digest, read_manifest

SETTINGS = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A private copy of the fake artifacts whose manifest.json each example overwrites."""
    target = tmp_path_factory.mktemp("prop") / "artifacts"
    shutil.copytree(shared_fake_artifacts(tmp_path_factory), target)
    return target, (target / "manifest.json").read_bytes(), _load_everything(target)


def _one_line(error: RoiedgeError) -> None:
    text = str(error)
    assert text and "\n" not in text and len(text) < 600, text


def _load_everything(directory) -> list:
    """What a device does with a manifest: read it, build a Detector (hashes, paths, loads);
    returns the detections on one image."""
    read_manifest(directory)
    return Detector(directory, precision="float32").detect(fake_image(0))


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**40), 2**40) | st.floats() | st.text(max_size=12),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=6,
)


def _paths(node, prefix=()):
    yield prefix
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _paths(value, (*prefix, key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _paths(value, (*prefix, i))


@SETTINGS
@given(data=st.data())
def test_corrupted_manifest_json_values_give_one_line_errors(workdir, data):
    directory, original, baseline = workdir
    manifest = json.loads(original)
    paths = [p for p in _paths(manifest) if p]
    corrupted = copy.deepcopy(manifest)
    for _ in range(data.draw(st.integers(1, 3))):
        path = data.draw(st.sampled_from(paths))
        parent = corrupted
        try:
            for key in path[:-1]:
                parent = parent[key]
            if data.draw(st.booleans()) and isinstance(parent, dict):
                parent.pop(path[-1], None)
            else:
                parent[path[-1]] = data.draw(json_values)
        except (KeyError, IndexError, TypeError):
            continue  # an earlier mutation removed this path
    rehashed = data.draw(st.booleans()) and isinstance(corrupted.get("detector"), dict)
    if rehashed:
        # Re-hash the detector so a corrupted config reaches the config parser too.
        corrupted["detector_sha256"] = detector_digest(corrupted["detector"])
    (directory / "manifest.json").write_text(json.dumps(corrupted))
    try:
        found = _load_everything(directory)
    except RoiedgeError as error:
        _one_line(error)
        return
    # Accepted: then the corruption was harmless. Without a re-hashed (possibly different but
    # valid) detector config, the device must detect exactly what the intact manifest gives.
    if not rehashed or corrupted["detector"] == manifest["detector"]:
        assert found == baseline, (corrupted, found)


@SETTINGS
@given(
    edits=st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), min_size=1, max_size=8),
    cut=st.one_of(st.none(), st.integers(0, 10**6)),
)
def test_corrupted_manifest_bytes_give_one_line_errors(workdir, edits, cut):
    directory, original, baseline = workdir
    data = bytearray(original)
    for position, value in edits:
        data[position % len(data)] = value
    if cut is not None:
        data = data[: cut % len(data)]
    (directory / "manifest.json").write_bytes(bytes(data))
    try:
        found = _load_everything(directory)
    except RoiedgeError as error:
        _one_line(error)
        return
    # Accepted bytes (the config is hashed, files are hashed): the same detections as intact.
    assert found == baseline, bytes(data)


def _encoded(fmt: str) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(fake_image(5)).save(buffer, format=fmt)
    return buffer.getvalue()


IMAGES = {fmt: _encoded(fmt) for fmt in ("PNG", "JPEG", "BMP", "GIF", "TIFF")}


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    fmt=st.sampled_from(sorted(IMAGES)),
    # Headers (sizes, modes, offsets) are where decoders trip: bias edits to the first 64 bytes.
    edits=st.lists(
        st.tuples(st.integers(0, 63) | st.integers(0, 10**6), st.integers(0, 255)), max_size=6
    ),
    cut=st.one_of(st.none(), st.integers(0, 10**6)),
)
def test_corrupted_image_bytes_give_an_image_or_a_one_line_error(tmp_path, fmt, edits, cut):
    data = bytearray(IMAGES[fmt])
    for position, value in edits:
        data[position % len(data)] = value
    if cut is not None:
        data = data[: cut % len(data)]
    path = tmp_path / f"image.{fmt.lower()}"
    path.write_bytes(bytes(data))
    try:
        pixels = load_image(path)
    except RoiedgeError as error:
        _one_line(error)
        assert str(path) in str(error)
    else:
        assert pixels.dtype == np.uint8 and pixels.ndim == 3 and pixels.shape[2] == 3
        assert min(pixels.shape[:2]) >= 2


_FLAGS = [
    "--precision",
    "--head-precision",
    "--format",
    "--backend",
    "--threads",
    "--edgetpu",
    "--score-threshold",
    "--only",
    "--formats",
    "--tflite-backend",
    "--require-all",
    "--keep-going",
    "int8",
    "float32",
    "onnx",
    "tflite",
    "0",
    "-1",
    "nan",
    "try",
    "x",
]


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    verb=st.sampled_from(["detect", "check"]),
    extra=st.lists(st.sampled_from(_FLAGS) | st.text(max_size=6), max_size=5),
)
def test_random_cli_arguments_exit_0_1_or_2_without_a_traceback(workdir, tmp_path, verb, extra):
    directory, original, _ = workdir
    (directory / "manifest.json").write_bytes(original)
    image = tmp_path / "scene.png"
    Image.fromarray(fake_image(1)).save(image)
    head = (
        ["detect", "--artifacts", str(directory), str(image)]
        if verb == "detect"
        else ["check", str(directory), "--only", "head/tflite/float32"]
    )
    try:
        code = main([*head, *extra])
    except SystemExit as stop:  # argparse's usage error
        code = stop.code
    assert code in (0, 1, 2)


_SOAK = """
import sys
import numpy as np
from runtime.detector import Detector

def rss_mb():
    status = open("/proc/self/status").read()
    return next(int(l.split()[1]) for l in status.splitlines() if l.startswith("VmRSS:")) / 1024

detector = Detector(sys.argv[1], precision="int8", num_threads=1)
images = [np.random.default_rng(i).integers(0, 255, (48, 64, 3), dtype=np.uint8) for i in range(8)]
for i in range(1000):  # warm-up: allocator pools, interpreter arenas
    detector.detect(images[i % 8])
before = rss_mb()
for i in range(10000):
    detector.detect(images[i % 8])
print(before, rss_mb())
"""


@pytest.mark.slow
def test_soak_10000_detect_calls_grow_rss_by_under_10_mb(tmp_path_factory):
    directory = shared_fake_artifacts(tmp_path_factory)
    proc = subprocess.run(
        [sys.executable, "-c", _SOAK, str(directory)],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"},
        timeout=1200,
    )
    assert proc.returncode == 0, proc.stderr
    before, after = map(float, proc.stdout.split())
    assert after - before < 10.0, (before, after)
