"""Mixed precision search and the mAP@.5:.95 bounds.

The search runs on the shipped detector's head (a small model: 64 RoIs, three dense layers) with
an SNR target its full-int8 form misses; the result is re-measured independently through the
runtime's backend and golden judge. The bounds test quantizes the head with deliberately wrong
activation ranges and checks that the report's judge fails it on mAP@.5:.95.
"""

from __future__ import annotations

import numpy as np
import pytest

from export.stages import STAGE_IO

CALIBRATION_IMAGES = 24
HELD_OUT_IMAGES = 60


@pytest.fixture(scope="module")
def head_setup():
    """(detector, head calibration samples as dicts)."""
    from export.calibration import procedural_images, stage_samples
    from export.config import CALIBRATION_SPLIT
    from models.detector import load_detector

    detector = load_detector()
    samples = stage_samples(detector, procedural_images(CALIBRATION_IMAGES, CALIBRATION_SPLIT))
    names = STAGE_IO["head"][0]
    return detector, [dict(zip(names, s)) for s in samples["head"]]


def test_greedy_search_keeps_only_the_layers_the_target_needs():
    from export.mixed import greedy_search

    sensitive = {"c", "f"}
    layers = ("a", "b", "c", "d", "e", "f", "g")
    calls = []

    def evaluate(kept):
        calls.append(kept)
        # a layer's error counts only while it is quantized; "b" adds noise that hides nothing
        return len(sensitive - set(kept)) - 0.5

    ranked = greedy_search(layers, evaluate)
    assert ranked.met and set(ranked.kept_float) == sensitive
    in_order = greedy_search(layers, evaluate, rank=False)
    assert in_order.met and sensitive <= set(in_order.kept_float)
    assert in_order.kept_float == layers[: layers.index("f") + 1]
    capped = greedy_search(layers, evaluate, rank=False, max_evaluations=2)
    assert capped.fallback and capped.kept_float == layers
    assert greedy_search(layers, lambda kept: -1.0).kept_float == ()


def test_a_search_that_does_not_reach_its_target_never_says_met():
    from export.mixed import greedy_search, measured_fallback

    layers = ("a", "b", "c", "d")
    # Out of measurements: the unmeasured fallback is not claimed met...
    capped = greedy_search(layers, lambda kept: 5.0 - len(kept), rank=False, max_evaluations=2)
    assert capped.fallback and not capped.met and capped.why
    # ...until what it ships is measured: met only if that measurement meets the target.
    short = measured_fallback(capped, lambda kept: 7.6)  # e.g. 22.4 dB against 30 dB
    assert not short.met and short.reached_loss == 7.6 and "7.6" in short.why
    assert measured_fallback(capped, lambda kept: -0.1).met
    # Every layer float and still short: not met, with the shortfall.
    never = greedy_search(layers, lambda kept: 1.0, rank=False)
    assert not never.met and never.reached_loss == 1.0 and not never.fallback
    notes = never.notes()
    assert notes["target_met"] is False and "short by 1" in notes["why"]


def test_an_snr_floor_above_what_8_bit_outputs_keep_is_refused_before_searching(head_setup):
    from export.config import ExportInputError
    from export.mixed import SnrTarget, tflite_mixed
    from export.tflite_format import BuildInput

    detector, samples = head_setup
    build = BuildInput("head", detector.head, samples)
    target = SnrTarget(build, min_snr_db=80.0, samples=samples[-4:])
    # Each output's ceiling: its own float values at 8 bits (tens of dB, never 80).
    ceilings = target.ceiling_db()
    assert set(ceilings) == set(STAGE_IO["head"][1])
    assert all(10.0 < c < 80.0 for c in ceilings.values())
    with pytest.raises(ExportInputError, match="unreachable by int8") as error:
        tflite_mixed(build, target=target)
    assert "\n" not in str(error.value)


def test_mixed_search_meets_an_snr_target_with_fewer_float_layers_than_all_float(head_setup):
    from export.mixed import SnrTarget, tflite_layers, tflite_mixed, tflite_runner
    from export.tflite_format import BuildInput, calibrate, quantize_calibrated

    detector, samples = head_setup
    build = BuildInput("head", detector.head, samples)
    calibrated = calibrate(build)
    probe = SnrTarget(build, samples=samples[-8:])
    int8_snr = min(probe.snrs(tflite_runner(quantize_calibrated(calibrated, build))).values())
    wanted = int8_snr + 3.0  # full int8 misses this by 3 dB
    built = tflite_mixed(build, target=SnrTarget(build, min_snr_db=wanted, samples=samples[-8:]))
    notes = built.notes["mixed"]
    candidates = tflite_layers(calibrated, build)
    assert notes["target_met"] and not notes["all_float_fallback"]
    assert 0 < len(notes["kept_float_layers"]) < len(candidates)
    # Independent re-measurement, none of export.mixed's code: the built bytes run by
    # ai-edge-litert's signature runner, the reference by calling the Keras head, SNR in numpy.
    from ai_edge_litert.interpreter import Interpreter

    run = Interpreter(model_content=built.data).get_signature_runner()
    names_in, names_out = STAGE_IO["head"]
    keras = [
        [np.asarray(o) for o in detector.head([s[n] for n in names_in], training=False)]
        for s in samples[-8:]
    ]
    for j, name in enumerate(names_out):
        actual = np.stack([run(**s)[name] for s in samples[-8:]]).astype(np.float64)
        reference = np.stack([r[j] for r in keras]).astype(np.float64)
        snr = 10 * np.log10(np.sum(reference**2.0) / np.sum((actual - reference) ** 2.0))
        assert snr >= wanted, name


def _held_out_map(detector, head_bytes, images):
    """(keras mAP@0.5, mAP@.5:.95, artifact mAP@0.5, mAP@.5:.95) with the head replaced."""
    from export.mixed import tflite_runner
    from models.data import eval_split
    from models.detector import FloatDetector
    from models.evaluate import score
    from runtime.processing import detections_from_head

    keras = FloatDetector(detector)
    batch = eval_split(images)
    run = tflite_runner(head_bytes)
    ref_dets, dets = [], []
    for image in batch.images:
        ref = keras.stages(image)
        n = int(ref["num_valid"])
        out = run({k: ref[k] for k in STAGE_IO["head"][0]})
        for target, (scores, deltas) in (
            (ref_dets, (ref["class_scores"], ref["box_deltas"])),
            (dets, (out["class_scores"], out["box_deltas"])),
        ):
            target.append(
                detections_from_head(scores, deltas, ref["proposals"], n, detector.config)
            )
    names = detector.config.class_names
    a, b = score(ref_dets, batch, names), score(dets, batch, names)
    return {"map50": a["map50"], "map50_95": a["map50_95"]}, {
        "map50": b["map50"],
        "map50_95": b["map50_95"],
    }


def test_map50_95_bound_fails_a_deliberately_miscalibrated_int8_head(head_setup):
    from export.report.verdicts import map_drop_failures
    from export.tflite_format import BuildInput, tflite_int8
    from runtime.tolerances import tolerance_for

    detector, samples = head_setup
    assert tolerance_for("int8").max_map50_95_drop is not None
    # Calibrated on features 8x their real size: every activation range of the feature path is
    # ~8x too wide, so the real features use ~3 bits fewer. Classes survive, boxes do not.
    wrong = [{**s, "features": (s["features"] * 8.0).astype(np.float32)} for s in samples]
    verdicts = {}
    for label, calibration in (("right", samples), ("wrong", wrong)):
        head = tflite_int8(BuildInput("head", detector.head, calibration)).data
        keras, row = _held_out_map(detector, head, HELD_OUT_IMAGES)
        verdicts[label] = (map_drop_failures("int8", keras, row), keras, row)
    assert verdicts["right"][0] == [], verdicts["right"]
    failures = verdicts["wrong"][0]
    assert any("mAP@.5:.95" in f for f in failures), verdicts["wrong"]
    # mAP@0.5 alone would have passed it: the bound the new one adds is what catches it.
    assert not any("mAP@0.5 " in f for f in failures), verdicts["wrong"]
