"""Hostile COCO entries refused in one line (issue 20 item 2)."""

import json

import numpy as np
import pytest
from PIL import Image

from models.coco import load_coco
from runtime.errors import RoiedgeError


def _dataset(tmp_path, annotations):
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(tmp_path / "a.png")
    data = {
        "images": [{"id": 1, "file_name": "a.png", "height": 32, "width": 32}],
        "annotations": annotations,
        "categories": [{"id": 1, "name": "x"}],
    }
    path = tmp_path / "d.json"
    path.write_text(json.dumps(data))
    return path


def _ann(ident, image_id=1):
    return {"id": ident, "image_id": image_id, "category_id": 1, "bbox": [1, 1, 10, 10]}


@pytest.mark.parametrize(
    "annotations,needle",
    [
        ([_ann(1), _ann(1)], "repeats"),
        ([_ann(1, image_id=True)], "image_id True"),
        ([_ann(True)], "id True"),
    ],
)
def test_refused_in_one_line(tmp_path, annotations, needle):
    with pytest.raises(RoiedgeError) as info:
        load_coco(_dataset(tmp_path, annotations))
    assert needle in str(info.value) and "\n" not in str(info.value)


def test_distinct_ids_accepted(tmp_path):
    assert load_coco(_dataset(tmp_path, [_ann(1), _ann(2)])).num_annotations == 2
