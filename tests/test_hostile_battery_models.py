"""Issue 20's held-out battery, the models/export side: exits in custom-objects files, ``--samples``
box indexes, datasets with two categories of one name or a FIFO, small model sizes, a second
training to one ``--out``, every numeric flag of ``models.train``, outputs naming inputs, a full
disk at save. Each was a traceback, a hang, a lost file or a silently wrong result before its fix.
"""

from __future__ import annotations

import json
import os
import re

import numpy as np
import pytest
from test_hostile_io import run_cli
from test_hostile_runtime import one_line_exit_2

# ------------------------------------------ item 5: exits in a custom-objects file, both loaders


@pytest.mark.parametrize(
    "code, call",
    [
        ("import os\nos._exit(0)\n", "os._exit(0)"),  # was: the export exited 0, nothing written
        ("import sys\nsys.exit(0)\n", "sys.exit(0)"),
    ],
)
def test_exits_in_custom_objects_are_one_line_in_both_keras_loaders(tmp_path, code, call):
    from keras_frcnn_style import card_dict

    from export.keras_loading import load_keras_model
    from models.card_models import CardModels
    from runtime.card import CardError, read_card
    from runtime.errors import RoiedgeError

    custom = tmp_path / "frcnn_layers.py"
    custom.write_text(code)
    model = tmp_path / "m.keras"
    model.write_bytes(b"not read: the custom objects are imported first")
    with pytest.raises(
        RoiedgeError, match=rf"--custom-objects .*called {re.escape(call)}"
    ) as caught:
        load_keras_model(model, [custom], "RoiPoolingConv", 2)
    assert "\n" not in str(caught.value)
    # The detector card's loader (export --detector, models.evaluate --detector) shares the
    # importer; before, its sys.exit(0) ended `export --detector` with 0 and nothing written.
    card = tmp_path / "card.json"
    card.write_text(json.dumps(card_dict((64, 64))))
    for name in ("model_rpn.keras", "model_classifier.keras"):
        (tmp_path / name).write_bytes(b"not read either")
    with pytest.raises(CardError, match=rf"card custom_objects .*called {re.escape(call)}"):
        CardModels(read_card(card), tmp_path)


def test_custom_objects_that_are_a_fifo_or_a_folder_are_named_as_such(tmp_path):
    from models.custom_objects import import_custom_objects
    from runtime.errors import RoiedgeError

    os.mkfifo(tmp_path / "pipe.py")
    with pytest.raises(RoiedgeError, match=r"pipe\.py: is a FIFO"):
        import_custom_objects(tmp_path / "pipe.py", "--custom-objects", "m")
    with pytest.raises(RoiedgeError, match="is a directory"):
        import_custom_objects(tmp_path, "--custom-objects", "m")


# ------------------------------------- item 4: box indexes in --samples outside the batch


def test_samples_with_box_indexes_outside_the_batch_are_one_line_before_tensorflow_fails(
    tmp_path,
):
    import keras
    from keras_models import head_model, import_layer_file, sample_arrays, write_layer_file

    from export.config import ExportInputError
    from export.keras_model import KerasExportConfig, run_keras_export

    layer_file = write_layer_file(tmp_path)
    module = import_layer_file(layer_file)
    keras.utils.set_random_seed(0)
    model = head_model(module.RoIPooling(size=(3, 3), name="roi_pool"), 6, 8, 2, 4, hidden=8)
    model.save(tmp_path / "m.keras")
    arrays = sample_arrays(8, 6, 8, 2, 4, seed=0)
    arrays["box_indexes"][5, 2] = 7  # the feature maps hold one image: only index 0 exists
    np.savez(tmp_path / "s.npz", **arrays)
    config = KerasExportConfig(
        keras_model=tmp_path / "m.keras",
        samples=tmp_path / "s.npz",
        out=tmp_path / "out",
        custom_objects=(layer_file,),
        formats=("tflite",),
        precisions=("float32",),
        progress=False,
    )
    # Before: an InvalidArgumentError traceback from crop_and_resize, exit 1.
    with pytest.raises(ExportInputError, match=r"sample 5: layer 'roi_pool' gets box_indexes 0..7"):
        run_keras_export(config)
    assert not (tmp_path / "out").exists()


# ----------------------------------------------- item 2: two categories of one name


def test_a_dataset_with_two_categories_of_one_name_is_refused(tmp_path):
    from PIL import Image

    from models.coco import DatasetError, load_coco

    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(tmp_path / "a.png")
    data = {
        "images": [{"id": 1, "file_name": "a.png", "height": 32, "width": 32}],
        "annotations": [],
        "categories": [{"id": 1, "name": "cat"}, {"id": 7, "name": "cat"}],
    }
    (tmp_path / "d.json").write_text(json.dumps(data))
    # Before: accepted; training then labelled two classes "cat" and every per-class table
    # (keyed by name) kept one of the two rows.
    with pytest.raises(DatasetError, match=r"categories\[1\] \(id 7\): name 'cat' repeats"):
        load_coco(tmp_path / "d.json", require_annotations=False)


def test_a_fifo_given_as_dataset_or_detector_is_named_as_a_fifo(tmp_path):
    from models.coco import DatasetError, load_coco
    from models.detector import DetectorLoadError, load_detector

    os.mkfifo(tmp_path / "d.json")
    os.mkfifo(tmp_path / "m.keras")
    with pytest.raises(DatasetError, match="is a FIFO"):  # was: "no such dataset file"
        load_coco(tmp_path / "d.json")
    with pytest.raises(DetectorLoadError, match="is a FIFO"):  # was: "no such detector file"
        load_detector(tmp_path / "m.keras")


# --------------------------------- item 11: a model size with fewer anchors than pre-NMS top-n


def test_pre_nms_count_is_every_anchor_on_a_small_feature_map():
    from runtime.config import DetectorConfig
    from runtime.nms import top_k_indices

    small = DetectorConfig(image_size=(32, 32))  # 4 x 4 cells x 12 anchors = 192 < 300
    assert small.num_anchors == 192 and small.rpn_pre_nms_count == 192
    assert DetectorConfig().rpn_pre_nms_count == 300  # 4800 anchors: the top 300
    # The runtime's own top-k takes the same count (every anchor when there are fewer).
    scores = np.random.default_rng(0).random(small.num_anchors).astype(np.float32)
    assert len(top_k_indices(scores, small.rpn_pre_nms_top_n)) == small.rpn_pre_nms_count


@pytest.mark.slow  # trains one step in TensorFlow (~1 min on 2 cores)
def test_training_at_32x32_runs_where_top_k_failed(tmp_path):
    from PIL import Image

    from models.coco import write_coco
    from models.train import main as train

    boxes = [[(4.0, 4.0, 20.0, 20.0), 0, False]]
    files = []
    for index in range(4):
        Image.fromarray(np.full((32, 32, 3), 40 * index, np.uint8)).save(tmp_path / f"{index}.png")
        files.append(f"{index}.png")
    dataset = write_coco(tmp_path / "d.json", files, [(32, 32)] * 4, [boxes] * 4, ("thing",))
    # Before: "input must have last dimension >= k = 300 but is 192" (TopKV2), a traceback.
    code = train(
        ["--data", str(dataset), "--image-size", "32", "32", "--epochs", "1",
         "--steps-per-epoch", "1", "--batch-size", "2", "--warmup-steps", "1", "--quiet",
         "--out", str(tmp_path / "m.keras")]
    )  # fmt: skip
    assert code == 0 and (tmp_path / "m.keras").is_file()


# --------------------------------------------- item 3: a second training to the same --out


def test_a_second_training_to_the_same_out_is_refused_at_once(tmp_path, capsys):
    from models.train import main as train
    from runtime.replace import output_lock

    out = tmp_path / "own.keras"
    # Before: both trainings ran to the end and the later save silently replaced the other.
    with output_lock(out, "--out", "models.train"):  # the first training, still running
        code = train(["--out", str(out), "--quiet", "--epochs", "1", "--steps-per-epoch", "1"])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "another models.train is writing it" in err[0], err
    assert not out.exists()


# ---------------------------------------------- item 11: every numeric flag of models.train


@pytest.mark.parametrize(
    "flags, named",
    [
        (["--rpn-positive-iou", "2"], "--rpn-positive-iou is 2.0"),  # trained, no positives
        (["--rpn-positive-iou", "0.2", "--rpn-negative-iou", "0.5"], "--rpn-negative-iou 0.5"),
        (["--rpn-negative-iou", "-0.5"], "--rpn-negative-iou is -0.5"),
        (["--head-positive-iou", "1.5"], "--head-positive-iou is 1.5"),
        (["--rpn-positive-fraction", "2"], "--rpn-positive-fraction is 2.0"),
        (["--weight-decay", "nan"], "--weight-decay is nan"),  # NaN weights
        (["--clip-norm", "-1"], "--clip-norm is -1.0"),
        (["--warmup-steps", "-5"], "--warmup-steps is -5"),
        (["--rpn-batch", "0"], "--rpn-batch is 0"),
        (["--train-proposals", "100000"], "--train-proposals is 100000"),
        (["--jitter-per-gt", "100000"], "--jitter-per-gt is 100000"),
        (["--batch-size", "1000000"], "--batch-size is 1000000"),
        (["--seed", str(2**70)], "--seed is"),  # TensorFlow's int32 stateless seed
        (["--pool-size", "1000", "1000"], "--pool-size side is 1000"),
        (["--num-proposals", "0"], "--num-proposals is 0"),
        (["--max-detections", "0"], "--max-detections is 0"),
        (["--score-threshold", "nan"], "--score-threshold is nan"),
    ],
)
def test_train_flags_out_of_range_never_reach_training(flags, named, monkeypatch, capsys, tmp_path):
    import models.train as training

    def reached(cfg):
        raise AssertionError(f"training started with {flags}")

    monkeypatch.setattr(training, "train", reached)
    code = training.main(["--out", str(tmp_path / "m.keras"), "--quiet", *flags])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith(f"error: {named}"), err


# ------------------------------------------- data lost: an output that is one of the inputs


def test_an_output_naming_one_of_the_runs_inputs_is_refused_before_the_work(
    fake_copy, tmp_path, monkeypatch, capsys
):
    from runtime_fakes import fake_image

    import models.train as training
    from models.evaluate import main as evaluate
    from runtime.safe_files import writable_output

    photo = tmp_path / "photo.png"
    from PIL import Image

    Image.fromarray(fake_image(0)).save(photo)
    manifest = fake_copy / "manifest.json"
    before = manifest.read_bytes()
    inputs = tmp_path / "x.npz"
    np.savez(inputs, image=np.zeros((1, 32, 32, 3), np.float32))
    for args in [
        ("detect", "--artifacts", fake_copy, photo, "--json", manifest),
        ("detect", "--artifacts", fake_copy, photo, "--json", photo),
        ("check", fake_copy, "--json", manifest),
        ("run", fake_copy, "--model", "backbone_rpn", "--inputs", inputs, "--out", inputs),
    ]:
        one_line_exit_2(run_cli(*args), "is also an input of this run")
    assert manifest.read_bytes() == before

    # `models.train --data own.json --out own.keras` wrote the model's sidecar own.json over
    # the dataset at the end of the training; `evaluate --model own.keras --json own.json`
    # wrote the summary over the sidecar, after which the model no longer loaded.
    dataset = tmp_path / "own.json"
    dataset.write_text("{}")
    monkeypatch.setattr(training, "train", lambda cfg: pytest.fail("training started"))
    code = training.main(["--data", str(dataset), "--out", str(tmp_path / "own.keras"), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and "--out (its config sidecar)" in err and "also an input" in err, err
    assert dataset.read_text() == "{}"
    model = tmp_path / "m.keras"
    model.write_bytes(b"a model")
    (tmp_path / "m.json").write_text("{}")
    assert evaluate(["--model", str(model), "--json", str(tmp_path / "m.json")]) == 2
    assert "is also an input of this run" in capsys.readouterr().err
    assert (tmp_path / "m.json").read_text() == "{}"
    # Hard links are the same file too; a new name or another file is fine.
    os.link(dataset, tmp_path / "link.json")
    with pytest.raises(Exception, match="also an input"):
        writable_output(tmp_path / "link.json", "--json", inputs=[dataset])
    writable_output(tmp_path / "new.json", "--json", inputs=[dataset, None])


# ----------------------------------------- item 14: a full disk when the trained model is saved


def test_a_full_disk_while_saving_the_model_is_one_line_and_keeps_the_old_pair(
    tmp_path, monkeypatch
):
    import errno

    import keras

    from models.detector import SHIPPED, config_path, load_detector, save_detector
    from runtime.errors import RoiedgeError

    loaded = load_detector(SHIPPED)
    target = tmp_path / "own.keras"
    save_detector(loaded.backbone_rpn, loaded.head, loaded.config, target)
    before = (target.read_bytes(), config_path(target).read_bytes())

    def full(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(keras.Model, "save", full)
    # Before: `models.train` ended a whole training with an OSError traceback here.
    with pytest.raises(
        RoiedgeError, match=r"own\.keras: cannot write it \(No space left on device\)"
    ):
        save_detector(loaded.backbone_rpn, loaded.head, loaded.config, target)
    assert (target.read_bytes(), config_path(target).read_bytes()) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["own.json", "own.keras"]
