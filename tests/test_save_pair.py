"""models.detector.save_detector: the .keras model and its config are replaced together or not at
all (issue 20 item 9), whatever point a save is killed at."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import runtime.manifest
from models.detector import (
    DetectorLoadError,
    build_detector,
    config_path,
    load_detector,
    save_detector,
)
from runtime.config import DetectorConfig

OLD = DetectorConfig()  # three classes
NEW = dataclasses.replace(DetectorConfig(), class_names=("cat", "dog"))  # two: other head shapes
ROOT = Path(__file__).resolve().parent.parent


class Killed(BaseException):
    """Stands for kill -9: nothing of the save after this point runs."""


@pytest.fixture(scope="module")
def stages():
    return {config: build_detector(config)[1:] for config in (OLD, NEW)}


def _save(stages, config, path):
    return save_detector(*stages[config], config, path)


@pytest.mark.parametrize("killed_at", [1, 2, 3])
def test_a_save_killed_at_any_rename_leaves_a_pair_that_loads(
    stages, tmp_path, monkeypatch, killed_at
):
    path = _save(stages, OLD, tmp_path / "own.keras")
    renames = []
    real_replace = os.replace

    def replace(source, target):
        renames.append(Path(target).name)
        if len(renames) == killed_at:
            raise Killed
        real_replace(source, target)

    monkeypatch.setattr(runtime.manifest.os, "replace", replace)
    with pytest.raises(Killed):
        _save(stages, NEW, path)
    monkeypatch.undo()
    # The save renames config (with the old pair kept), model, config: whichever of the two
    # models is in place loads, with its own config; never the new config on the old model.
    assert renames[-1] == ("own.json", "own.keras", "own.json")[killed_at - 1]
    loaded = load_detector(path)
    assert loaded.config == (OLD if killed_at < 3 else NEW)
    assert loaded.head.outputs[0].shape[-1] == loaded.config.num_classes + 1
    # The next save completes and leaves exactly the pair.
    _save(stages, NEW, path)
    assert load_detector(path).config == NEW
    assert sorted(p.name for p in tmp_path.iterdir()) == ["own.json", "own.keras"]


def test_a_model_and_config_that_are_not_a_pair_are_refused(stages, tmp_path):
    first = _save(stages, OLD, tmp_path / "a" / "own.keras")
    second = _save(stages, NEW, tmp_path / "b" / "own.keras")
    config_path(first).write_bytes(config_path(second).read_bytes())
    with pytest.raises(DetectorLoadError, match=r"own\.keras: its sha256 .* are not a pair") as err:
        load_detector(first)
    assert "\n" not in str(err.value)
    # A sidecar from before model_sha256 was recorded is taken as it is.
    legacy = json.loads(config_path(second).read_text())
    del legacy["model_sha256"]
    config_path(second).write_text(json.dumps(legacy))
    assert load_detector(second).config == NEW


_KILLED_IN_MODEL_SAVE = """
import os, sys
import dataclasses
import keras
from models.detector import build_detector, save_detector
from runtime.config import DetectorConfig

real_save = keras.Model.save

def save_then_die(self, file, *args, **kwargs):
    real_save(self, file, *args, **kwargs)
    os._exit(9)  # kill -9 right after Keras wrote the temp model

keras.Model.save = save_then_die
config = dataclasses.replace(DetectorConfig(), class_names=("cat", "dog"))
save_detector(*build_detector(config)[1:], config, sys.argv[1])
"""


def test_a_save_killed_in_a_subprocess_keeps_the_old_model_and_the_next_save_cleans_up(
    stages, tmp_path
):
    path = _save(stages, OLD, tmp_path / "own.keras")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "3"}
    result = subprocess.run(
        [sys.executable, "-c", _KILLED_IN_MODEL_SAVE, str(path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 9, result.stderr[-2000:]
    leftovers = [p for p in tmp_path.iterdir() if p.name.startswith(".own.keras.saving-")]
    assert leftovers, sorted(p.name for p in tmp_path.iterdir())  # the killed save's temp model
    assert load_detector(path).config == OLD
    _save(stages, NEW, path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["own.json", "own.keras"]
    assert load_detector(path).config == NEW
