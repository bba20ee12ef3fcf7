"""models.evaluate on a COCO file: refuses duplicate annotation ids (and bool ids) exactly as
models.coco does, in one line, exit 2; on valid data its mAP is pycocotools' (issue 20 item 2)."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_category_ids import procedural_dataset

from models.coco import DatasetError, load_coco
from models.evaluate import main as evaluate
from runtime.errors import one_line


def _dataset(folder: Path, count: int) -> Path:
    """``count`` held-out procedural scenes (the shipped detector's classes, ids 1..3)."""
    return procedural_dataset(folder, count, remap=None)


def _evaluate(*argv: str) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = evaluate(list(argv))
    return code, err.getvalue()


@pytest.mark.parametrize(
    "edit, why",
    [
        (lambda data: data["annotations"][1].update(id=data["annotations"][0]["id"]), "repeats"),
        (lambda data: data["annotations"][0].update(image_id=True), "image_id True"),
        (lambda data: data["images"][0].update(id=True), "id True"),
    ],
)
def test_evaluate_refuses_what_load_coco_refuses_in_the_same_line(tmp_path, edit, why):
    path = _dataset(tmp_path, 3)
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))
    with pytest.raises(DatasetError) as caught:
        load_coco(path)
    assert why in str(caught.value)
    code, err = _evaluate("--data", str(path))
    assert code == 2
    assert err.strip().splitlines() == [f"error: {one_line(caught.value)}"]


def test_evaluate_map_equals_pycocotools_on_valid_data(tmp_path):
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    from models.detector import SHIPPED, FloatDetector, load_detector

    path = _dataset(tmp_path, 24)
    summary_path = tmp_path / "summary.json"
    code, err = _evaluate("--data", str(path), "--json", str(summary_path))
    assert code == 0, err
    summary = json.loads(summary_path.read_text())

    # The same float detections, scored by pycocotools (the images are at the model's size).
    detector = load_detector(SHIPPED)
    run = FloatDetector(detector)
    ids = detector.config.coco_ids
    results = []
    for image in json.loads(path.read_text())["images"]:
        found = run(np.asarray(Image.open(tmp_path / image["file_name"]).convert("RGB")))
        for (y1, x1, y2, x2), score, cls in zip(found.boxes, found.scores, found.class_ids):
            results.append(
                {
                    "image_id": image["id"],
                    "category_id": ids[int(cls)],
                    "bbox": [float(x1), float(y1), float(x2 - x1), float(y2 - y1)],
                    "score": float(score),
                }
            )
    with contextlib.redirect_stdout(io.StringIO()):
        truth = COCO(str(path))
        reference = COCOeval(truth, truth.loadRes(results), "bbox")
        reference.evaluate()
        reference.accumulate()
        reference.summarize()
    assert summary["map50"] > 0.5  # a non-trivial comparison
    np.testing.assert_allclose(
        [summary["map50_95"], summary["map50"]], reference.stats[:2], atol=1e-4
    )
