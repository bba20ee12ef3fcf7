"""models.coco: reading COCO datasets, one-line errors, resizing like the runtime; train augmentation."""

from __future__ import annotations

import json

import numpy as np
import pytest
from coco_fixtures import CLASS_NAMES, write_dataset
from PIL import Image

from models.coco import DatasetError, load_coco, resized_batch


def _photo(path, height, width, box, colour=(250, 20, 20), mode="RGB"):
    """A dark photo with one solid rectangle ``box`` (y1, x1, y2, x2 integer pixels)."""
    pixels = np.full((height, width, 3), 30, np.uint8)
    y1, x1, y2, x2 = box
    pixels[y1:y2, x1:x2] = colour
    Image.fromarray(pixels).convert(mode).save(path)


def _dataset(folder, images, annotations, categories=({"id": 1, "name": "thing"},)):
    path = folder / "data.json"
    path.write_text(
        json.dumps(
            {"images": list(images), "annotations": list(annotations), "categories": categories}
        )
    )
    return path


def test_reads_a_written_dataset(tmp_path):
    path = write_dataset(tmp_path, 8, seed=1, crowd_every=3)
    dataset = load_coco(path)
    assert dataset.class_names == CLASS_NAMES
    assert len(dataset.images) == 8
    raw = json.loads(path.read_text())
    assert dataset.num_annotations == len(raw["annotations"])
    first = raw["annotations"][0]
    x, y, w, h = first["bbox"]
    item = next(i for i in dataset.images if i.image_id == first["image_id"])
    np.testing.assert_allclose(item.boxes[0], [y, x, y + h, x + w], rtol=1e-6)
    assert sum(int(i.crowd.sum()) for i in dataset.images) == sum(
        a["iscrowd"] for a in raw["annotations"]
    )
    batch = resized_batch(dataset, (64, 96))
    assert batch.images.shape == (8, 64, 96, 3) and batch.images.dtype == np.uint8
    # crowd boxes are not training targets
    assert sum(len(b) for b in batch.boxes) == sum(int((~i.crowd).sum()) for i in dataset.images)


def test_categories_ordered_by_id_and_images_dir(tmp_path):
    (tmp_path / "pics").mkdir()
    _photo(tmp_path / "pics" / "a.png", 40, 60, (5, 5, 20, 30))
    path = _dataset(
        tmp_path,
        [{"id": 3, "file_name": "a.png", "height": 40, "width": 60}],
        [{"id": 1, "image_id": 3, "category_id": 9, "bbox": [5, 5, 25, 15]}],
        categories=[{"id": 9, "name": "zebra"}, {"id": 2, "name": "apple"}],
    )
    dataset = load_coco(path, tmp_path / "pics")
    assert dataset.class_names == ("apple", "zebra") and dataset.category_ids == (2, 9)
    assert dataset.images[0].labels.tolist() == [1]


@pytest.mark.parametrize(
    ("mode", "height", "width", "box"),
    [("RGB", 90, 150, (10, 20, 50, 90)), ("L", 200, 120, (100, 30, 180, 110)),
     ("RGBA", 57, 203, (3, 150, 40, 200))],
)  # fmt: skip
def test_boxes_follow_the_runtime_resize(tmp_path, mode, height, width, box):
    # the rectangle's pixels, found in the resized image itself, sit inside the mapped box
    _photo(tmp_path / "p.png", height, width, box, mode=mode)
    y1, x1, y2, x2 = box
    path = _dataset(
        tmp_path,
        [{"id": 1, "file_name": "p.png", "height": height, "width": width}],
        [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [x1, y1, x2 - x1, y2 - y1]}],
    )
    size = (64, 96)
    batch = resized_batch(load_coco(path), size)
    image = batch.images[0]
    assert image.shape == (*size, 3)
    bright = image.astype(int).sum(-1) > 3 * 30 + 60  # blended or solid rectangle pixels
    rows, cols = np.flatnonzero(bright.any(1)), np.flatnonzero(bright.any(0))
    found = np.array([rows[0], cols[0], rows[-1] + 1, cols[-1] + 1], float)
    np.testing.assert_allclose(batch.boxes[0][0], found, atol=1.5)


def _bad(tmp_path, images=None, annotations=None, categories=None):
    _photo(tmp_path / "a.jpg", 40, 60, (5, 5, 20, 30))
    return _dataset(
        tmp_path,
        images if images is not None else [{"id": 1, "file_name": "a.jpg"}],
        annotations
        if annotations is not None
        else [{"id": 7, "image_id": 1, "category_id": 1, "bbox": [1, 1, 10, 10]}],
        categories or [{"id": 1, "name": "thing"}],
    )


@pytest.mark.parametrize(
    ("images", "annotations", "message"),
    [
        ([{"id": 1, "file_name": "missing.jpg"}], None, r"images\[0\] \(id 1\): .*missing\.jpg: image not found"),
        ([{"id": 1, "file_name": "garbage.png"}], None, r"images\[0\] \(id 1\): .*garbage\.png: cannot read it as an image"),
        ([{"id": 1, "file_name": "a.jpg", "width": 61}], None, r"images\[0\] \(id 1\): width 61 but .*a\.jpg is 60x40"),
        (None, [{"id": 7, "image_id": 1, "category_id": 1, "bbox": [50, 1, 20, 10]}], r"annotations\[0\] \(id 7\): bbox \[50, 1, 20, 10\] lies outside image a\.jpg \(60x40"),
        (None, [{"id": 7, "image_id": 1, "category_id": 1, "bbox": [-3, 1, 20, 10]}], r"annotations\[0\] \(id 7\): bbox .* lies outside"),
        (None, [{"id": 7, "image_id": 1, "category_id": 1, "bbox": [1, 1, 0, 10]}], r"annotations\[0\] \(id 7\): bbox \[1, 1, 0, 10\] has non-positive size"),
        (None, [{"id": 7, "image_id": 1, "category_id": 1, "bbox": [1, 1, 5]}], r"annotations\[0\] \(id 7\): bbox \[1, 1, 5\]; expected \[x, y, w, h\]"),
        (None, [{"id": 7, "image_id": 1, "category_id": 4, "bbox": [1, 1, 5, 5]}], r"annotations\[0\] \(id 7\): unknown category_id 4; expected one of the categories' ids \[1\]"),
        (None, [{"id": 7, "image_id": 2, "category_id": 1, "bbox": [1, 1, 5, 5]}], r"annotations\[0\] \(id 7\): image_id 2 is not in images"),
        ([], None, r"data\.json: empty dataset \(no images\)"),
        (None, [], r"data\.json: empty dataset \(no non-crowd annotations\)"),
    ],
)  # fmt: skip
def test_one_line_errors_name_file_and_entry(tmp_path, images, annotations, message):
    (tmp_path / "garbage.png").write_bytes(b"not an image at all" * 20)
    path = _bad(tmp_path, images, annotations)
    with pytest.raises(DatasetError, match=message) as error:
        load_coco(path)
    assert "\n" not in str(error.value) and "data.json" in str(error.value)


def test_unreadable_json_and_missing_file(tmp_path):
    with pytest.raises(DatasetError, match=r"nope\.json: no such dataset file"):
        load_coco(tmp_path / "nope.json")
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(DatasetError, match=r"broken\.json: not valid JSON"):
        load_coco(tmp_path / "broken.json")
    (tmp_path / "list.json").write_text("[]")
    with pytest.raises(DatasetError, match=r"list\.json: a JSON list; expected an object"):
        load_coco(tmp_path / "list.json")


def test_clis_refuse_a_bad_dataset_in_one_line(tmp_path, capsys):
    from models.evaluate import main as evaluate_main
    from models.train import main as train_main

    path = _bad(tmp_path, annotations=[{"id": 7, "image_id": 1, "category_id": 3, "bbox": [1, 1, 5, 5]}])  # fmt: skip
    out = str(tmp_path / "m.keras")
    assert train_main(["--data", str(path), "--image-size", "64", "64", "--out", out]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unknown category_id 3" in err and "data.json" in err
    assert train_main(["--data", str(path), "--image-size", "64", "64"]) == 2  # no --out
    assert "--data needs --out" in capsys.readouterr().err
    assert evaluate_main(["--data", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unknown category_id 3" in err


@pytest.mark.parametrize("seed", range(12))
def test_augment_keeps_boxes_on_their_objects(seed):
    # a solid rectangle on a flat background: after flip and zoom, the box still encloses it
    from models.train_data import augment

    pixels = np.full((64, 96, 3), 30, np.uint8)
    pixels[10:40, 50:80] = (250, 20, 20)
    boxes = np.array([[10, 50, 40, 80]], np.float32)
    image, out_boxes, labels = augment(pixels, boxes, np.array([1]), np.random.default_rng(seed))
    assert image.shape == pixels.shape and image.dtype == np.uint8
    red = (image[..., 0].astype(int) - image[..., 1]) > 60
    if len(out_boxes) == 0:  # dropped only when mostly cut off
        assert red.sum() < 0.5 * 30 * 30 * 1.25**2
        return
    assert labels.tolist() == [1]
    rows, cols = np.flatnonzero(red.any(1)), np.flatnonzero(red.any(0))
    found = np.array([rows[0], cols[0], rows[-1] + 1, cols[-1] + 1], float)
    np.testing.assert_allclose(out_boxes[0], found, atol=1.5)


def test_export_calibration_sources_hold_back_golden_images(tmp_path):
    from export.calibration import calibration_files, hold_out_golden
    from export.config import ExportInputError

    path = write_dataset(tmp_path, 9, seed=3)
    files = calibration_files(path)  # a COCO json: its images, in file order
    assert files == [i.path for i in load_coco(path).images]
    assert calibration_files(tmp_path / "images") == sorted(files)  # a folder of images
    calibration, golden = hold_out_golden(files, 3)
    assert len(golden) == 3 and len(calibration) == 6
    assert not set(golden) & set(calibration) and set(golden) | set(calibration) == set(files)
    with pytest.raises(ExportInputError, match=r"has 3 images; expected more than --golden"):
        hold_out_golden(files[:3], 3)
    with pytest.raises(ExportInputError, match=r"--calibration .*nope\.json: no such dataset"):
        calibration_files(tmp_path / "nope.json")
