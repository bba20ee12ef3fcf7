"""Cross-layer equalization of the backbone (export.equalize): the copy computes what the user's
model computes, in float, and the proof refuses a copy that does not."""

from __future__ import annotations

import numpy as np
import pytest


def _random_backbone(seed: int):
    """A detector backbone with random weights and non-trivial BatchNorm statistics, so BN
    folding and every scale are exercised away from the shipped model's values."""
    from models.detector import build_detector, detector_config

    _, backbone, _ = build_detector(detector_config())
    rng = np.random.default_rng(seed)
    for layer in backbone.layers:
        weights = layer.get_weights()
        if not weights:
            continue
        if type(layer).__name__ == "BatchNormalization":
            gamma, beta, mean, variance = weights
            weights = [
                rng.uniform(0.2, 3.0, gamma.shape),
                rng.normal(0, 0.5, beta.shape),
                rng.normal(0, 0.5, mean.shape),
                rng.uniform(0.1, 4.0, variance.shape),
            ]
        else:
            weights = [
                rng.normal(0, 0.3, w.shape) * rng.uniform(0.1, 3.0, w.shape[-1:]) for w in weights
            ]
        layer.set_weights([w.astype(np.float32) for w in weights])
    return backbone


def _images(count: int, seed: int) -> list[np.ndarray]:
    from export.calibration import procedural_images

    scenes = procedural_images(count, split=3, seed=seed)
    return [np.asarray(image, np.float32)[None] for image in scenes]


def _outputs(model, x):
    return [np.asarray(t, np.float64) for t in model(x, training=False)]


@pytest.mark.parametrize("source", ["shipped", "random"])
def test_equalized_copy_computes_the_original_in_float(source):
    from export.equalize import PROOF_MAX_RELATIVE, equalized_backbone
    from models.detector import load_detector

    model = load_detector().backbone_rpn if source == "shipped" else _random_backbone(7)
    before = [w.copy() for w in model.get_weights()]
    copy, notes = equalized_backbone(model, _images(12, seed=1))
    # The equalization did something: scales away from 1 on every part of the chain.
    for key in ("trunk_scale_range", "stem_scale_range", "dw_scale_range"):
        low, high = notes[key]
        assert high / low > 1.5, (key, notes[key])
    rng = np.random.default_rng(0)
    inputs = [*_images(3, seed=2), rng.uniform(0, 255, (1, 160, 160, 3)).astype(np.float32)]
    for x in inputs:
        for a, b in zip(_outputs(model, x), _outputs(copy, x)):
            assert np.abs(a - b).max() <= PROOF_MAX_RELATIVE * np.abs(a).max()
    # The user's model is untouched.
    for old, new in zip(before, model.get_weights()):
        np.testing.assert_array_equal(old, new)


def test_a_broken_equalization_is_refused(monkeypatch):
    from export import equalize
    from export.config import ExportCheckError
    from models.detector import load_detector

    model = load_detector().backbone_rpn
    images = _images(6, seed=1)
    # Forget to undo the producer's scale in the consumer: the copy no longer equals the model.
    monkeypatch.setattr(equalize._Conv, "scale_in", lambda self, scale: None)
    broken, _ = equalize.equalized_backbone(model, images)
    with pytest.raises(ExportCheckError, match="differs from the original"):
        equalize.prove_equal(model, broken, images[:2])


def test_features_restoring_weights_are_exact_on_the_int8_grid():
    from export.equalize import _snap

    scales = np.random.default_rng(3).uniform(0.05, 1.0, 64)
    snapped = _snap(scales)
    step = snapped.max() / 127  # per-tensor symmetric int8 weight scale
    codes = snapped / step
    np.testing.assert_allclose(codes, np.round(codes), atol=1e-9)
    assert np.abs(snapped - scales).max() <= step / 2 + 1e-12


def test_other_models_are_not_equalized():
    from export.equalize import NotEqualizable, equalized_backbone
    from models.detector import load_detector

    with pytest.raises(NotEqualizable):
        equalized_backbone(load_detector().head, [])
