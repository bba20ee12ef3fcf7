"""The models/ and export/ loaders apply runtime.limits before reading (issue 20 item 13): a .keras
zip bomb, a COCO JSON nested too deep or with too many boxes on one image, each refused in one line
naming the file and the LIMITS row."""

from __future__ import annotations

import dataclasses
import json
import shutil
import zipfile

import pytest
from PIL import Image

from export.config import ExportInputError
from models.coco import DatasetError, load_coco
from models.detector import SHIPPED, DetectorLoadError, config_path, load_detector
from runtime import limits

KERAS_ROW = "a .keras archive: its members' declared sizes together"


def _bomb(path, declared_bytes: int) -> None:
    """A small zip whose one member inflates to ``declared_bytes`` zeros (written in chunks)."""
    with (
        zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive,
        archive.open("config.json", "w", force_zip64=True) as member,
    ):
        chunk = b"\0" * (1 << 20)
        for _ in range(declared_bytes // len(chunk)):
            member.write(chunk)


@pytest.fixture
def small_keras_limit(monkeypatch):
    """keras_bytes lowered to 1 MiB, so a bomb of a few MiB stands for one of gigabytes."""
    row = dataclasses.replace(limits.LIMITS["keras_bytes"], value=1 << 20)
    monkeypatch.setitem(limits.LIMITS, "keras_bytes", row)
    return row.value


def test_detector_zip_bomb_is_refused_before_keras_inflates_it(tmp_path, small_keras_limit):
    model = tmp_path / "bomb.keras"
    _bomb(model, 4 * small_keras_limit)
    assert model.stat().st_size < small_keras_limit // 10
    shutil.copyfile(config_path(SHIPPED), config_path(model))
    with pytest.raises(DetectorLoadError, match=rf"bomb\.keras: .*{KERAS_ROW}") as caught:
        load_detector(model)
    assert "\n" not in str(caught.value)


def test_keras_model_zip_bomb_is_refused_by_the_export_loader(tmp_path, small_keras_limit):
    from export.keras_loading import saved_config

    model = tmp_path / "bomb.keras"
    _bomb(model, 4 * small_keras_limit)
    with pytest.raises(ExportInputError, match=rf"--keras-model .*bomb\.keras: .*{KERAS_ROW}"):
        saved_config(model)


def _dataset(tmp_path, annotations_on_first: int, nesting: int = 0):
    Image.new("RGB", (64, 48)).save(tmp_path / "a.png")
    data = {
        "images": [{"id": 1, "file_name": "a.png", "height": 48, "width": 64}],
        "annotations": [
            {"id": i + 1, "image_id": 1, "category_id": 1, "bbox": [1, 1, 10, 10]}
            for i in range(annotations_on_first)
        ],
        "categories": [{"id": 1, "name": "thing"}],
    }
    deep: object = 0
    for _ in range(nesting):
        deep = [deep]
    data["info"] = deep
    path = tmp_path / "ann.json"
    path.write_text(json.dumps(data))
    return path


def test_coco_boxes_per_image_are_bounded(tmp_path):
    most = limits.limit("annotations_per_image")
    assert len(load_coco(_dataset(tmp_path, most)).images[0].boxes) == most
    with pytest.raises(
        DatasetError, match=r"annotations\[1000\].*box 1,001 of image_id 1.*annotations_per_image"
    ):
        load_coco(_dataset(tmp_path, most + 1))


def test_coco_json_nested_too_deep_is_one_line(tmp_path):
    depth = limits.limit("json_depth")
    with pytest.raises(
        DatasetError, match=r"ann\.json: nesting: 641 levels is over the limit of 64"
    ) as caught:
        load_coco(_dataset(tmp_path, 1, nesting=10 * depth))
    assert "\n" not in str(caught.value)
