"""Issue 20 item 1: the dataset's own category ids travel from training to `detect --json`.

The bar: on a dataset whose category ids are 5/9/12, pycocotools scores `runtime detect --json`
the same as `models.evaluate` scores the float detector (the float32 TFLite artifact agrees
with Keras to ~1e-5; the JSON rounds boxes to 0.01 px and scores to 1e-5)."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_runtime import run_cli

from runtime.config import ConfigError, DetectorConfig
from runtime.manifest import read_manifest

REMAP = {1: 5, 2: 9, 3: 12}


def test_category_ids_default_to_1_to_k_and_old_configs_still_load():
    config = DetectorConfig()
    assert config.coco_ids == (1, 2, 3) and config.category_ids is None
    old = config.to_dict()
    assert "category_ids" not in old  # what runtimes from before the field read unchanged
    assert DetectorConfig.from_dict(old) == config
    own = DetectorConfig(category_ids=(5, 9, 12))
    assert own.to_dict()["category_ids"] == [5, 9, 12]
    assert DetectorConfig.from_dict(own.to_dict()) == own
    assert DetectorConfig(category_ids=(0, 1, 2)).coco_ids == (0, 1, 2)
    assert DetectorConfig(category_ids=(1, 2, 3)) == config  # one spelling of the default
    # Changing the classes of a default config keeps the default numbering (1..K).
    assert dataclasses.replace(config, class_names=("a", "b")).coco_ids == (1, 2)


@pytest.mark.parametrize(
    "ids, match",
    [
        ([5, 5, 9], "unique"),
        ([5, 9], "one id per class"),
        ([True, 9, 12], "wrong type"),
        ([5.0, 9, 12], "wrong type"),
        (["5", 9, 12], "wrong type"),
        ([-1, 9, 12], r"\[0, "),
        ("5,9,12", "wrong type"),
    ],
)
def test_bad_category_ids_are_one_line(ids, match):
    data = {**DetectorConfig().to_dict(), "category_ids": ids}
    with pytest.raises(ConfigError, match=match) as caught:
        DetectorConfig.from_dict(data, source="manifest.json detector")
    assert "\n" not in str(caught.value) and "manifest.json detector" in str(caught.value)


def procedural_dataset(folder: Path, count: int, remap: dict[int, int] | None = REMAP) -> Path:
    """``count`` held-out procedural images as PNGs + a COCO JSON with category ids 5/9/12
    (``remap`` of the classes' 1..3; None keeps 1..3)."""
    from models.coco import write_coco
    from models.data import CLASS_NAMES, eval_split

    batch = eval_split(count)
    files = []
    for n, image in enumerate(batch.images):
        files.append(f"scene_{n:03d}.png")
        Image.fromarray(image).save(folder / files[-1])
    annotations = [
        [(box, int(label), False) for box, label in zip(boxes, labels)]
        for boxes, labels in zip(batch.boxes, batch.labels)
    ]
    path = write_coco(
        folder / "dataset.json", files, [(160, 160)] * count, annotations, CLASS_NAMES
    )
    if remap is None:
        return path
    data = json.loads(path.read_text())
    for row in data["categories"] + data["annotations"]:
        key = "id" if "name" in row else "category_id"
        row[key] = remap[row[key]]
    path.write_text(json.dumps(data))
    return path


def test_training_records_the_datasets_category_ids(tmp_path):
    from models.train import TrainConfig
    from models.train_data import training_data

    dataset = procedural_dataset(tmp_path, 4)
    data = training_data(TrainConfig(data=dataset, quiet=True), None)
    assert data.det.coco_ids == (5, 9, 12)
    assert data.det.class_names == ("circle", "rectangle", "triangle")


def cocoeval_stats(dataset: Path, results: list[dict]) -> tuple[float, float]:
    """(mAP@0.5:0.95, mAP@0.5) of ``results`` by pycocotools, quietly."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        truth = COCO(str(dataset))
        found = truth.loadRes(results) if results else None
        if found is None:
            return 0.0, 0.0
        run = COCOeval(truth, found, "bbox")
        run.evaluate()
        run.accumulate()
        run.summarize()
    return float(run.stats[0]), float(run.stats[1])


def float32_export_with_ids(folder: Path) -> tuple[Path, Path]:
    """(model, artifacts): the shipped detector as if trained on a dataset with ids 5/9/12 (its
    sidecar carries them) and its float32 TFLite export, under ``folder``."""
    from export.config import ExportConfig
    from export.pipeline import run_export
    from models.detector import SHIPPED, config_path

    model = folder / "own.keras"
    shutil.copyfile(SHIPPED, model)
    sidecar = json.loads(config_path(SHIPPED).read_text())
    sidecar["config"]["category_ids"] = [5, 9, 12]
    config_path(model).write_text(json.dumps(sidecar))
    artifacts = folder / "artifacts"
    run_export(
        ExportConfig(
            out=artifacts,
            model=model,
            formats=("tflite",),
            precisions=("float32",),
            golden_samples=2,
            progress=False,
        )
    )
    return model, artifacts


def test_detect_json_scores_like_models_evaluate_on_ids_5_9_12(tmp_path):
    from models.evaluate import main as evaluate

    dataset = procedural_dataset(tmp_path, 40)
    model, artifacts = float32_export_with_ids(tmp_path)
    assert read_manifest(artifacts).detector["category_ids"] == [5, 9, 12]

    summary_path = tmp_path / "evaluate.json"
    code = evaluate(["--model", str(model), "--data", str(dataset), "--json", str(summary_path)])
    assert code == 0
    summary = json.loads(summary_path.read_text())
    assert summary["map50"] > 0.5  # non-trivial

    results = tmp_path / "detections.json"
    files = sorted(tmp_path.glob("scene_*.png"))
    proc = run_cli(
        "detect", "--artifacts", artifacts, "--precision", "float32", *files, "--json", results
    )
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(results.read_text())
    assert {r["category_id"] for r in rows} <= {5, 9, 12}
    ids = {img["file_name"]: img["id"] for img in json.loads(dataset.read_text())["images"]}
    for row in rows:
        row["image_id"] = ids[Path(row["file_name"]).name]
    map50_95, map50 = cocoeval_stats(dataset, rows)
    np.testing.assert_allclose(
        [map50, map50_95], [summary["map50"], summary["map50_95"]], atol=5e-3
    )

    # A dataset numbered otherwise is refused by models.evaluate (its mAP would not be what
    # pycocotools gives `detect --json`), in one line, exit 2.
    other = tmp_path / "renumbered.json"
    data = json.loads(dataset.read_text())
    for row in data["categories"] + data["annotations"]:
        key = "id" if "name" in row else "category_id"
        row[key] += 100
    other.write_text(json.dumps(data))
    assert evaluate(["--model", str(model), "--data", str(other)]) == 2
