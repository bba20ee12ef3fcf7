"""Issue 20 item 6: an edited detector config with its sha256 recomputed is caught by `check` (its
pipeline row) and refused by `detect` in one line, never a traceback, a silent empty result or a
memory blow-up; every LIMITS row is in the runtime README's Limits table."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_hostile_runtime import one_line_exit_2
from test_runtime import run_cli

from runtime.check_pipeline import check_pipeline
from runtime.limits import LIMITS
from runtime.manifest import detector_digest, read_manifest

REPO = Path(__file__).resolve().parent.parent
#: Fields that fix a tensor shape of the exported artifacts: any change must fail the check.
SHAPE_FIELDS = {
    "image_size",
    "stride",
    "feature_channels",
    "anchor_sizes",
    "anchor_ratios",
    "num_proposals",
    "class_names",
}


def edit_config(directory: Path, **changes) -> None:
    """Change the manifest's detector config and recompute its sha256, as an attacker would."""
    path = directory / "manifest.json"
    data = json.loads(path.read_text())
    data["detector"].update(changes)
    data["detector_sha256"] = detector_digest(data["detector"])
    path.write_text(json.dumps(data))


def pipeline_row(directory: Path):
    return check_pipeline(directory, read_manifest(directory), formats=("tflite",))


def test_the_untouched_fake_detector_passes_its_pipeline_row(fake_dir):
    row = pipeline_row(fake_dir)
    assert row.ok and "golden images" in row.detail


@pytest.mark.parametrize(
    "changes, match",
    [
        ({"score_threshold": 1.0}, "no detections"),
        ({"num_proposals": 16, "rpn_pre_nms_top_n": 32}, "does not fit its artifacts"),
        ({"image_size": [40000, 40000]}, "over the limit"),
        ({"max_detections": 10**9}, "over the limit"),
        ({"rpn_pre_nms_top_n": 10**8}, "over the limit"),
        ({"feature_channels": 8}, "does not fit"),
        ({"stride": "8"}, "wrong type"),
        ({"class_names": ["disc", "square", "star"]}, "category_ids|does not fit"),
    ],
)
def test_an_edited_config_fails_check_and_detect_in_one_line(fake_copy, changes, match):
    edit_config(fake_copy, **changes)
    proc = run_cli("check", fake_copy, "--formats", "tflite")
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    fail = [line for line in proc.stdout.splitlines() if line.startswith("FAIL pipeline/")]
    assert len(fail) == 1, proc.stdout
    assert "detector pipeline tflite/float32 FAIL" in proc.stdout
    if match != "no detections":
        image = fake_copy / "golden_backbone_rpn.npz"  # any file: detect fails on the config first
        one_line_exit_2(run_cli("detect", "--artifacts", fake_copy, image), "")


FIELD_VALUES = st.one_of(
    st.integers(-(2**40), 2**40),
    st.floats(allow_nan=False, allow_infinity=False, width=32),
    st.lists(st.integers(-(2**20), 2**20), max_size=5),
    st.booleans(),
    st.text(max_size=5),
)
CONFIG_FIELDS = st.sampled_from(
    [
        "image_size",
        "stride",
        "feature_channels",
        "anchor_sizes",
        "anchor_ratios",
        "rpn_pre_nms_top_n",
        "rpn_nms_iou",
        "rpn_min_size",
        "num_proposals",
        "pool_size",
        "samples_per_bin",
        "score_threshold",
        "nms_iou",
        "max_detections",
        "category_ids",
    ]
)


@settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck))
@given(field=CONFIG_FIELDS, value=FIELD_VALUES)
def test_any_edit_of_a_config_field_gives_a_row_never_a_crash(fake_copy, field, value):
    original = json.loads((fake_copy / "manifest.json").read_text())
    try:
        edit_config(fake_copy, **{field: value})
        row = pipeline_row(fake_copy)
        assert row is not None and all("\n" not in f for f in row.failures)
        if field in SHAPE_FIELDS and value != original["detector"][field]:
            assert not row.ok, (field, value)
    finally:
        (fake_copy / "manifest.json").write_text(json.dumps(original))


def test_every_limit_is_in_the_readme_table():
    text = (REPO / "runtime" / "README.md").read_text()
    table = text[text.index("| limit | value | bounds |") :]
    for name, row in LIMITS.items():
        assert f"| `{name}` |" in table, name
        assert row.what in table, name
