"""Detector cards: schema validation, the keras-frcnn conventions against an independent numpy
port of keras-frcnn's post-processing, and the whole path card -> export -> TF-free runtime ->
COCO results scored by pycocotools with the dataset's own category ids."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import keras_frcnn_port as port
import keras_frcnn_style as kf
import numpy as np
import pytest

from runtime.card import CardError, card_to_json, parse_card

SIZE = (64, 64)
NUM_ROIS = 8


def _card(**changes):
    data = kf.card_dict(SIZE, NUM_ROIS)
    for dotted, value in changes.items():
        target = data
        *path, last = dotted.split(".")
        for key in path:
            target = target[key]
        if value is KeyError:
            del target[last]
        else:
            target[last] = value
    return data


# ------------------------------------------------------------------------------------ the schema


def test_card_round_trips_through_its_json():
    card = parse_card(_card())
    assert parse_card(json.loads(json.dumps(card_to_json(card)))) == card
    assert card.anchors.per_cell == 6 and card.category_ids == kf.CATEGORY_IDS


@pytest.mark.parametrize(
    ("change", "value", "words"),
    [
        ("colour", 1, ["unknown key colour"]),
        ("rpn.nms", 0.7, ["unknown key rpn.nms"]),
        ("head.background", "middle", ["head.background", '"middle"', '"first", "last"']),
        ("rpn.layouts.scores", "[H,W,A]", ["rpn.layouts.scores", "[1,H,W,A]"]),
        ("anchors.stride", 0, ["anchors.stride is 0", ">= 1"]),
        ("rois.num_rois", 2.5, ["rois.num_rois is 2.5", "an integer"]),
        ("category_ids", [7], ["category_ids is [7]", "2 distinct"]),
        ("preprocess.std", [1, 0, 1], ["preprocess.std", "positive"]),
        ("rpn.delta_scales", KeyError, ["rpn.delta_scales is missing"]),
        ("schema_version", 2, ["schema_version is 2", "expected 1"]),
        ("head.inputs", ["rois", "image"], ["head.inputs", "features, rois"]),
    ],
)
def test_bad_card_is_one_line_naming_key_seen_expected(change, value, words):
    with pytest.raises(CardError) as caught:
        parse_card(_card(**{change: value}), source="card.json")
    message = str(caught.value)
    assert "\n" not in message and message.startswith("card.json: ")
    for word in words:
        assert word in message


# ------------------------------------------------------ the conventions vs keras-frcnn's own code


def _frcnn_config(size):
    root = np.sqrt(2.0)
    return {
        "std_scaling": kf.RPN_STD,
        "anchor_box_scales": list(kf.anchor_sizes(size)),
        # keras-frcnn's ratio pairs (x, y) for w/h ratios 1, 0.5, 2
        "anchor_box_ratios": [[1, 1], [1 / root, 2 / root], [2 / root, 1 / root]],
        "rpn_stride": kf.STRIDE,
        "num_rois": NUM_ROIS,
        "classifier_regr_std": list(kf.CLASSIFIER_STD),
    }


def _compare_to_port(card, run_rpn, run_head, tensor, threshold, ours=None):
    """Runtime card_processing (or the given Detections ``ours``) vs the port on the model
    outputs of ``run_rpn``/``run_head``: the same detections (boxes to 1e-3 of the image size,
    classes, scores to 1e-4); returns their count."""
    from runtime import card_processing as cp

    if ours is None:
        ours = cp.detect(tensor, run_rpn, run_head, card, (1, NUM_ROIS, 4))
    theirs = port.test_frcnn_detect(
        lambda x: run_rpn(x),
        lambda f, r: run_head(f, r.astype(np.float32)),
        tensor,
        _frcnn_config(card.image_size),
        dict(enumerate(kf.CLASS_NAMES)),
        threshold,
    )
    rows = sorted((name, *box, prob) for name, found in theirs.items() for (*box, prob) in found)
    mine = sorted(
        (kf.CLASS_NAMES[c], b[1], b[0], b[3], b[2], s)
        for b, s, c in zip(ours.boxes.tolist(), ours.scores.tolist(), ours.class_ids.tolist())
    )
    assert len(mine) == len(rows)
    for a, b in zip(mine, rows):
        assert a[0] == b[0]
        assert np.allclose(a[1:5], b[1:5], atol=1e-3 * max(card.image_size))
        assert abs(a[5] - b[5]) <= 1e-4
    return len(rows)


def test_card_processing_equals_keras_frcnn_port_on_random_outputs():
    """Random RPN/head outputs (many boxes, ties of rounding, clipping, padded chunks): the card
    pipeline and the port of keras-frcnn's rpn_to_roi/apply_regr/NMS agree exactly."""
    card = parse_card(_card(**{"postprocess.score_threshold": 0.4}))
    rng = np.random.default_rng(3)
    rows, cols, a = SIZE[0] // kf.STRIDE, SIZE[1] // kf.STRIDE, 6
    total = 0
    for trial in range(6):
        scores = rng.uniform(0, 1, (1, rows, cols, a)).astype(np.float32)
        deltas = rng.normal(0, 1.5, (1, rows, cols, 4 * a)).astype(np.float32)
        features = rng.normal(size=(1, rows, cols, 4)).astype(np.float32)
        head_rng = np.random.default_rng(trial)
        table = {}

        def run_head(f, r, table=table, head_rng=head_rng):
            key = (r.astype(np.float64) + 0.0).tobytes()  # same RoI, same outputs (-0.0 == 0.0)
            if key not in table:
                logits = head_rng.normal(0, 2, (1, NUM_ROIS, 3))
                probs = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
                regr = head_rng.normal(0, 1, (1, NUM_ROIS, 8))
                table[key] = [probs.astype(np.float32), regr.astype(np.float32)]
            return table[key]

        def run_head_rowwise(f, r, run_head=run_head):
            # outputs per RoI row (a head's rows are independent): one call per row
            probs, regr = [], []
            for row in r[0]:
                p, d = run_head(f, np.repeat(row[None, None], NUM_ROIS, axis=1))
                probs.append(p[0, 0])
                regr.append(d[0, 0])
            return [np.stack(probs)[None], np.stack(regr)[None]]

        outputs = [scores, deltas, features]
        total += _compare_to_port(card, lambda x, o=outputs: o, run_head_rowwise, None, 0.4)
    assert total > 20  # the comparison saw detections, not empty lists


def test_card_refuses_models_that_disagree():
    from runtime.card_processing import check_model_shapes

    card = parse_card(_card())
    good = [(None, 8, 8, 6), (None, 8, 8, 24), (None, 8, 8, 16)]
    head_in = [(None, 8, 8, 16), (None, NUM_ROIS, 4)]
    head_out = [(None, NUM_ROIS, 3), (None, NUM_ROIS, 8)]
    check_model_shapes(card, good, head_in, head_out)
    bad_rpn = [(None, 8, 8, 9), *good[1:]]
    with pytest.raises(CardError, match=r"scores has shape .* 6 anchors on 8x8 cells"):
        check_model_shapes(card, bad_rpn, head_in, head_out)
    with pytest.raises(CardError, match="last axis of 3"):
        check_model_shapes(card, good, head_in, [(None, NUM_ROIS, 2), head_out[1]])
    with pytest.raises(CardError, match=r"rois.num_rois 8 expects \[1, 8, 4\]"):
        check_model_shapes(card, good, [head_in[0], (None, 4, 4)], head_out)


# ------------------------------------------------------------------------------------ end to end


def _run(*args, cwd=None):
    return subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, cwd=cwd, timeout=900
    )


def _coco_map50(data_json: Path, results_json: Path) -> float:
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    rows = json.loads(results_json.read_text())
    if not rows:
        return 0.0
    truth = COCO(str(data_json))
    evaluation = COCOeval(truth, truth.loadRes(rows), "bbox")
    evaluation.evaluate()
    evaluation.accumulate()
    evaluation.summarize()
    return float(evaluation.stats[1])


def _detector(tmp_path, steps, images, score_threshold, size=SIZE):
    data = kf.write_coco_set(tmp_path / "data", images, size, seed=11)
    card = kf.write_detector(
        tmp_path / "det",
        data,
        size,
        steps=steps,
        num_rois=NUM_ROIS,
        score_threshold=score_threshold,
    )
    return data, card


def _untied(run_backbone, run_head):
    """The two stages with their scores made tie-free, identically on every side compared.

    A small model's dead-ReLU cells give exactly equal scores, and keras-frcnn's np.argsort
    leaves the order of equal scores unspecified (its default sort is not stable; the port's
    stable one is a choice), so on ties "the same detections" is not defined. RPN scores become
    their rank ((k + 1) / (N + 1), equal scores ranked by index): the order NMS needs, with no
    tie. Head probabilities get an offset of whole float32 steps (2**-23) injective in the
    integer RoI, so RoIs with equal outputs no longer tie. Both are functions of the model
    outputs and RoIs only (not of either implementation's layout or order).
    """

    def backbone(tensor):
        scores, *rest = run_backbone(tensor)
        flat = np.asarray(scores, np.float64).reshape(-1)
        order = np.lexsort((np.arange(flat.size), flat))
        ranked = np.empty(flat.size)
        ranked[order] = (np.arange(flat.size) + 1) / (flat.size + 1)
        return [ranked.reshape(np.shape(scores)).astype(np.float32), *rest]

    def head(features, rois):
        probs, deltas = run_head(features, rois)
        x, y, w, h = np.asarray(rois[0], np.int64).T  # integer feature pixels, < 16 each
        code = ((x * 16 + y) * 16 + w) * 16 + h
        return [(probs + (code * 2.0**-23)[None, :, None]).astype(np.float32), deltas]

    return backbone, head


def _images(data: Path, count: int | None = None) -> list[Path]:
    return sorted((data.parent / "images").glob("*.png"))[:count]


def _float_reference_vs_port(card_path: Path, data: Path, images: int = 6):
    """The float reference (original Keras models + card_processing) vs the keras-frcnn port on
    the same Keras models, ties broken alike: same detections on every image (their count)."""
    from models.card_models import CardModels
    from runtime.card import read_card
    from runtime.card_processing import preprocess
    from runtime.images import load_image

    card = read_card(card_path)
    models = CardModels(card, card_path.parent)
    run_backbone, run_head = _untied(models.run_backbone, models.run_head)
    count = 0
    for path in _images(data, images):
        tensor, _ = preprocess(load_image(path), card)
        count += _compare_to_port(card, run_backbone, run_head, tensor, card.score_threshold)
    return count


def test_keras_frcnn_card_end_to_end_float32(tmp_path):
    """Fast: a keras-frcnn-style detector trained 15 steps (score threshold 0: every
    non-background argmax is a detection) exports float32 and int8 by its card, passes `runtime
    check` TF-free, `detect --json` rows carry the dataset's category ids and score under
    pycocotools, and export.report scores its pipelines on the data."""
    data, card = _detector(tmp_path, steps=15, images=8, score_threshold=0.0)
    out = tmp_path / "art"
    done = _run(
        "-m", "export", "--detector", str(card), "--calibration", str(data), "--out", str(out),
        "--precisions", "float32,int8", "--formats", "tflite", "--golden-samples", "2",
        "--no-progress",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["detector"]["card"]["category_ids"] == list(kf.CATEGORY_IDS)
    # No single-file detector for a card, and the summary says so in its last line.
    from export.card_export import SINGLE_FILE_NOT_BUILT

    assert done.stdout.strip().splitlines()[-1] == SINGLE_FILE_NOT_BUILT
    assert not list(out.glob("detector.*")) and "detector" not in {
        a["model"] for a in manifest["artifacts"]
    }
    assert (out / "reports" / "swap_proof.json").is_file()  # RoiPoolingConv swapped and proven
    checked = _run("-m", "runtime", "check", str(out))
    assert checked.returncode == 0, checked.stdout[-2000:] + checked.stderr[-2000:]
    assert "detector pipeline tflite/float32 ok" in checked.stdout
    results = tmp_path / "det.json"
    detected = _run(
        "-m", "runtime", "detect", "--artifacts", str(out), "--precision", "float32",
        "--json", str(results), str(data.parent / "images"),
    )  # fmt: skip
    assert detected.returncode == 0, detected.stderr[-2000:]
    rows = json.loads(results.read_text())
    assert rows and {r["category_id"] for r in rows} <= set(kf.CATEGORY_IDS)
    assert 0.0 <= _coco_map50(data, results) <= 1.0
    assert _float_reference_vs_port(card, data) > 0
    _check_card_report(out, data)


def _check_card_report(out: Path, data: Path) -> None:
    """`python -m export.report --artifacts DIR --data VAL.json` on card artifacts: a row per
    exported pipeline and artifact, scored on the data against the card's Keras models."""
    reported = _run(
        "-m", "export.report", "--artifacts", str(out), "--data", str(data), "--runs", "1",
        "--warmup", "0", "--threads", "1", "--no-progress",
    )  # fmt: skip
    assert reported.returncode in (0, 1), reported.stderr[-2000:]
    report = json.loads((out / "report.json").read_text())
    assert report["keras"]["scored_on"] == str(data) and report["keras"]["images"] == 8
    pipelines = {row["name"]: row for row in report["pipelines"]}
    assert set(pipelines) == {"tflite/float32", "tflite/int8"}
    # float32 runs the Keras models' maths: the same detections, so no drop and full agreement
    float_row = pipelines["tflite/float32"]
    assert float_row["map50"] == report["keras"]["map50"]
    assert float_row["agreement"]["references"] == 0 or float_row["agreement"]["matched"] == 1.0
    artifacts = {row["name"]: row for row in report["artifacts"]}
    assert set(artifacts["backbone_rpn/tflite/int8"]["outputs"]) == {"scores", "deltas", "features"}
    assert set(artifacts["head/tflite/int8"]["outputs"]) == {"class_scores", "box_deltas"}
    assert 0.0 <= artifacts["head/tflite/int8"]["top1_agreement"] <= 1.0
    assert artifacts["head/tflite/float32"]["outputs"]["class_scores"]["max_abs"] < 1e-4
    # a card has no held-out split: the report asks for --data in one line
    missing = _run("-m", "export.report", "--artifacts", str(out), "--no-progress")
    assert missing.returncode == 2
    assert (
        missing.stderr.strip().splitlines()[-1].startswith("error: ")
        and "--data" in (missing.stderr.strip().splitlines()[-1])
    )


def test_card_export_refuses_a_card_its_models_disagree_with(tmp_path):
    data, card = _detector(tmp_path, steps=0, images=6, score_threshold=0.0)
    broken = json.loads(card.read_text())
    broken["anchors"]["sizes"] = [16, 32, 64]  # 9 anchors a cell; the RPN has 6
    bad = card.with_name("bad.json")
    bad.write_text(json.dumps(broken))
    done = _run(
        "-m", "export", "--detector", str(bad), "--calibration", str(data),
        "--out", str(tmp_path / "art"), "--no-progress",
    )  # fmt: skip
    assert done.returncode == 2
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and "9 anchors on 8x8 cells" in last
    assert not (tmp_path / "art").exists()


def _runtime_vs_port(artifacts: Path, card_path: Path, data: Path) -> int:
    """`Detector.detect_tensor` on the float32 TFLite artifacts vs the keras-frcnn port on the
    original Keras models, ties broken alike on both (:func:`_untied`): the same detections on
    every image (boxes to 1e-3 of the image size, classes, scores to 1e-4); their count."""
    from models.card_models import CardModels
    from runtime.card import read_card
    from runtime.card_processing import preprocess
    from runtime.detector import Detector
    from runtime.images import load_image

    card = read_card(card_path)
    models = CardModels(card, card_path.parent)
    keras_backbone, keras_head = _untied(models.run_backbone, models.run_head)
    detector = Detector(artifacts, precision="float32", format="tflite")
    # the Detector's own stages (TFLite, float32) with the same tie-break around them
    tflite_backbone, tflite_head = _untied(detector.backbone.run, detector.head.run)
    detector.backbone = SimpleNamespace(run=tflite_backbone)
    detector.head = SimpleNamespace(run=tflite_head)
    count = 0
    for path in _images(data):
        tensor, _ = preprocess(load_image(path), card)
        found = detector.detect_tensor(tensor)
        count += _compare_to_port(
            card, keras_backbone, keras_head, tensor, card.score_threshold, ours=found
        )
    return count


@pytest.mark.slow
def test_keras_frcnn_card_trained_float_vs_int8(tmp_path):
    """Slow: a keras-frcnn-style detector at 128x128 (objects 5-8 feature pixels), trained 2000
    steps on 48 images, exported by its card with those images as calibration; on 100 held-out
    images: every artifact passes `runtime check`, the float reference and the float32 TFLite
    runtime == keras-frcnn's post-processing port on the Keras models (ties broken alike), and
    every int8 pipeline (int8 head, and int8 backbone + head, TFLite and ONNX) keeps mAP@0.5
    (pycocotools, the dataset's ids) within 1 point of float32."""
    size = (128, 128)
    data, card = _detector(tmp_path, steps=2000, images=48, score_threshold=0.5, size=size)
    val = kf.write_coco_set(tmp_path / "val", 100, size, seed=12)
    assert _float_reference_vs_port(card, data, images=24) > 0
    out = tmp_path / "art"
    done = _run(
        "-m", "export", "--detector", str(card), "--calibration", str(data), "--out", str(out),
        "--no-progress",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    checked = _run("-m", "runtime", "check", str(out))
    assert checked.returncode == 0, checked.stdout[-3000:]
    assert _runtime_vs_port(out, card, val) > 0
    scores = {}
    for fmt, precision, head in (
        ("tflite", "float32", "float32"),
        ("tflite", "float32", "int8"),
        ("onnx", "float32", "int8"),
        ("tflite", "int8", "int8"),
        ("onnx", "int8", "int8"),
    ):
        results = tmp_path / f"{fmt}-{precision}-{head}.json"
        detected = _run(
            "-m", "runtime", "detect", "--artifacts", str(out), "--format", fmt,
            "--precision", precision, "--head-precision", head, "--json", str(results),
            str(val.parent / "images"),
        )  # fmt: skip
        assert detected.returncode == 0, detected.stderr[-2000:]
        scores[fmt, precision, head] = _coco_map50(val, results)
    print("mAP@0.5 on 100 held-out images (format, backbone, head):", scores)
    float_map = scores["tflite", "float32", "float32"]
    assert float_map > 0.4  # a detector, not noise
    for key, value in scores.items():
        assert float_map - value <= 0.01 + 1e-9, (key, scores)


@pytest.mark.slow  # builds the device venvs with pip (scripts/edge_envs.py) when missing
def test_keras_frcnn_card_artifacts_in_device_envs(tmp_path):
    """Every card artifact passes `runtime check` TF-free under tflite-runtime 2.14 (numpy<2)
    and under ai-edge-litert + onnxruntime, and `detect --json` there (float32) gives the
    detections this machine's runtime gives (same classes, boxes to 1e-3 of the image size)."""
    import shutil

    from scripts.edge_envs import BACKENDS, FORMATS, edge_env

    data, card = _detector(tmp_path, steps=60, images=8, score_threshold=0.5)
    out = tmp_path / "art"
    done = _run(
        "-m", "export", "--detector", str(card), "--calibration", str(data), "--out", str(out),
        "--golden-samples", "2", "--no-progress",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    here = tmp_path / "here.json"
    detected = _run(
        "-m", "runtime", "detect", "--artifacts", str(out), "--precision", "float32",
        "--json", str(here), str(data.parent / "images"),
    )  # fmt: skip
    assert detected.returncode == 0, detected.stderr[-2000:]
    device = tmp_path / "device"
    root = Path(__file__).resolve().parent.parent
    shutil.copytree(root / "runtime", device / "runtime", ignore=shutil.ignore_patterns("__py*"))
    shutil.copytree(out, device / "artifacts")
    shutil.copytree(data.parent / "images", device / "images")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    manifest = json.loads((out / "manifest.json").read_text())
    for name, formats in FORMATS.items():
        python = str(edge_env(name))

        def device_run(*args, python=python):
            return subprocess.run(
                [python, "-m", "runtime", *args], cwd=device, env=env, capture_output=True,
                text=True, timeout=600,
            )  # fmt: skip

        checked = device_run(
            "check", "artifacts", "--formats", *formats, "--tflite-backend", BACKENDS[name]
        )
        assert checked.returncode == 0, checked.stdout[-3000:] + checked.stderr[-2000:]
        count = sum(e["format"] in formats for e in manifest["artifacts"])
        assert f"{count}/{count} artifacts within their precision's tolerance" in checked.stdout
        results = device / f"{name}.json"
        found = device_run(
            "detect", "--artifacts", "artifacts", "--precision", "float32", "--backend",
            BACKENDS[name], "--json", results.name, "images",
        )  # fmt: skip
        assert found.returncode == 0, found.stderr[-2000:]
        mine, theirs = json.loads(results.read_text()), json.loads(here.read_text())
        assert len(mine) == len(theirs) > 0, name

        def key(row):
            return (row["image_id"], row["category_id"], round(row["score"], 3))

        for a, b in zip(sorted(mine, key=key), sorted(theirs, key=key)):
            assert (a["image_id"], a["category_id"]) == (b["image_id"], b["category_id"]), name
            assert np.allclose(a["bbox"], b["bbox"], atol=1e-3 * max(SIZE)), name
            assert abs(a["score"] - b["score"]) <= 1e-4, name
