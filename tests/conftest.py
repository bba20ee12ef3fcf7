"""Shared fixtures: one export of the shipped detector per test session (exports are slow)."""

from __future__ import annotations

import os
import shutil

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

#: Small on purpose: `make export` calibrates on 300 images; tests only need every artifact built.
SESSION_CALIBRATION_IMAGES = 40
SESSION_GOLDEN_SAMPLES = 3
#: Validation images of the mixed-precision search (make export: 200).
SESSION_VAL_IMAGES = 40


@pytest.fixture(scope="session")
def exported_artifacts(tmp_path_factory):
    """(artifacts directory, Manifest) of every artifact of the shipped detector."""
    from export.config import ExportConfig
    from export.pipeline import run_export

    out = tmp_path_factory.mktemp("session_export") / "artifacts"
    config = ExportConfig(
        out=out,
        calibration_images=SESSION_CALIBRATION_IMAGES,
        golden_samples=SESSION_GOLDEN_SAMPLES,
        val_images=SESSION_VAL_IMAGES,
        progress=False,
    )
    return out, run_export(config)


@pytest.fixture(scope="module")
def fake_dir(tmp_path_factory):
    """A complete artifacts directory of the fake detector (read-only for tests: copy to modify)."""
    from runtime_fakes import shared_fake_artifacts

    return shared_fake_artifacts(tmp_path_factory)


@pytest.fixture
def fake_copy(fake_dir, tmp_path):
    """A private copy of the fake artifacts that a test may break."""
    target = tmp_path / "artifacts"
    shutil.copytree(fake_dir, target)
    return target
