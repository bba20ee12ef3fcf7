"""``runtime detect --data COCO.json``: the dataset's images under their own ids, so pycocotools
scores ``--json`` against the user's annotations; ``--out`` writes bounded JPEGs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from runtime_fakes import fake_image
from test_runtime import _one_line_exit_2, run_cli

from runtime.detector import Detector

#: Image ids with gaps, a 0 and no order: nothing may assume 1..N in file order.
IDS = (907, 0, 13, 12)


def _dataset(folder: Path, ids=IDS) -> Path:
    (folder / "pics").mkdir(parents=True, exist_ok=True)
    images = []
    for n, ident in enumerate(ids):
        name = f"pics/shot_{n}.png"
        Image.fromarray(fake_image(n)).save(folder / name)
        images.append({"id": ident, "file_name": name, "width": 32, "height": 32})
    data = {"images": images, "annotations": [], "categories": [{"id": 1, "name": "square"}]}
    path = folder / "val.json"
    path.write_text(json.dumps(data))
    return path


def test_detect_data_writes_each_images_own_id(fake_dir, tmp_path):
    dataset = _dataset(tmp_path)
    results = tmp_path / "results.json"
    proc = run_cli("detect", "--artifacts", fake_dir, "--data", dataset, "--json", results)
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(results.read_text())
    detector = Detector(fake_dir, precision="int8")
    for n, ident in enumerate(IDS):
        path = tmp_path / "pics" / f"shot_{n}.png"
        mine = [r for r in rows if r["file_name"] == str(path)]
        expected = detector.detect(path)
        assert expected and len(mine) == len(expected)
        assert {r["image_id"] for r in mine} == {ident}

    # --data-images: file_name entries relative to another folder.
    moved = tmp_path / "elsewhere"
    shutil.move(str(tmp_path / "pics"), str(moved / "pics"))
    again = tmp_path / "again.json"
    proc = run_cli(
        "detect", "--artifacts", fake_dir, "--data", dataset, "--data-images", moved,
        "--json", again,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert sorted(r["image_id"] for r in json.loads(again.read_text())) == sorted(
        r["image_id"] for r in rows
    )


def test_detect_data_mistakes_are_one_line_exit_2(fake_dir, tmp_path):
    dataset = _dataset(tmp_path)
    image = tmp_path / "pics" / "shot_0.png"
    proc = run_cli("detect", "--artifacts", fake_dir, "--data", dataset, image)
    _one_line_exit_2(proc, "IMAGE arguments and --data")
    _one_line_exit_2(run_cli("detect", "--artifacts", fake_dir), "no images")
    _one_line_exit_2(
        run_cli("detect", "--artifacts", fake_dir, image, "--data-images", tmp_path),
        "--data-images",
    )
    data = json.loads(dataset.read_text())
    data["images"][2]["id"] = 907
    repeated = tmp_path / "repeated.json"
    repeated.write_text(json.dumps(data))
    _one_line_exit_2(
        run_cli("detect", "--artifacts", fake_dir, "--data", repeated),
        "images[2] (id 907)",
        "repeats",
    )
    _one_line_exit_2(
        run_cli("detect", "--artifacts", fake_dir, "--data", tmp_path / "none.json"), "none.json"
    )
    (tmp_path / "pics" / "shot_1.png").unlink()
    _one_line_exit_2(run_cli("detect", "--artifacts", fake_dir, "--data", dataset), "shot_1.png")


def test_annotated_output_is_a_bounded_jpeg_with_labels_scaled_to_it(fake_dir, tmp_path):
    from runtime.images import ANNOTATED_MAX_SIDE, draw_detections
    from runtime.processing import Detection

    big = np.full((3000, 4000, 3), 90, np.uint8)
    found = [Detection((600.0, 800.0, 2400.0, 3200.0), 0.9, 0, "square")]
    drawn = draw_detections(big, found, max_side=ANNOTATED_MAX_SIDE)
    assert drawn.size == (1280, 960)
    pixels = np.asarray(drawn)
    colour = pixels[int(600 * 0.32) + 40, int(800 * 0.32)]  # on the box's left edge
    assert tuple(colour) != (90, 90, 90)
    # The box moved with the picture: its left edge is at x = 800 * 1280 / 4000 = 256.
    edge_columns = np.nonzero((pixels[600:700] == colour).all(axis=-1).any(axis=0))[0]
    assert abs(int(edge_columns.min()) - 256) <= 1
    # The label (filled with the box colour above the box) is a readable share of the picture.
    top = int(600 * 0.32)  # the box's top edge in the drawn picture
    label = np.nonzero((pixels[:top, 256:300] == colour).all(axis=-1).any(axis=1))[0]
    assert top - int(label.min()) >= 20  # a ~25 px label; Pillow's fixed bitmap font is ~11 px

    photo = tmp_path / "photo.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (1500, 2100, 3), np.uint8)).save(
        photo
    )
    proc = run_cli("detect", "--artifacts", fake_dir, photo, "--out", tmp_path / "out")
    assert proc.returncode == 0, proc.stderr
    with Image.open(tmp_path / "out" / "photo_detections.jpg") as written:
        assert written.format == "JPEG" and written.size == (1280, round(1500 * 1280 / 2100))


@pytest.mark.slow  # exports the shipped detector's float32 TFLite (~1 min)
def test_detect_data_scores_with_pycocotools_like_models_evaluate(tmp_path):
    from test_category_ids import cocoeval_stats, float32_export_with_ids, procedural_dataset

    from models.evaluate import main as evaluate

    dataset = procedural_dataset(tmp_path, 40)  # category ids 5/9/12
    data = json.loads(dataset.read_text())
    new_id = {img["id"]: 1000 - 7 * n for n, img in enumerate(data["images"])}  # gaps, falling
    for img in data["images"]:
        img["id"] = new_id[img["id"]]
    for ann in data["annotations"]:
        ann["image_id"] = new_id[ann["image_id"]]
    data["images"].reverse()
    dataset.write_text(json.dumps(data))
    model, artifacts = float32_export_with_ids(tmp_path)
    summary_path = tmp_path / "evaluate.json"
    assert (
        evaluate(["--model", str(model), "--data", str(dataset), "--json", str(summary_path)]) == 0
    )
    summary = json.loads(summary_path.read_text())
    assert summary["map50"] > 0.5

    results = tmp_path / "detections.json"
    proc = run_cli(
        "detect", "--artifacts", artifacts, "--precision", "float32", "--data", dataset,
        "--json", results,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(results.read_text())
    assert {r["image_id"] for r in rows} <= set(new_id.values())
    map50_95, map50 = cocoeval_stats(dataset, rows)  # no renumbering by the test
    np.testing.assert_allclose(
        [map50, map50_95], [summary["map50"], summary["map50_95"]], atol=5e-3
    )
