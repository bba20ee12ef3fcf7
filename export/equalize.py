"""Cross-layer equalization of the detector backbone, in a copy proven equal in float.

Per-tensor int8 gives every channel of a tensor the same step, so a channel whose values span a
tenth of the tensor's range keeps ~3 bits. ReLU is positively homogeneous: scaling a layer's
output channel ``i`` by ``1/s_i`` and the next layer's input weights of channel ``i`` by ``s_i``
computes the same function (Nagel et al., "Data-Free Quantization Through Weight Equalization
and Bias Correction", ICCV 2019). :func:`equalized_backbone` rebuilds the backbone of
:class:`models.detector.DetectorLayers` with BatchNorm folded into its convolutions and:

* the stem chain (stem0 -> stem1 -> stem2 -> stem3) and each block's depthwise -> pointwise pair
  equalized by DFQ's weight balance ``s = sqrt(r1 / r2)`` (r1: the producer's max |weight| per
  output channel, r2: the consumer's per input channel), so per-tensor weight scales fit;
* the residual trunk (stem3's output, every pointwise output and block sum) scaled per channel by
  one shared vector ``t`` (a residual ADD needs both operands in the same units) that brings the
  calibration activations' per-channel ranges to the largest one, undone for the
  ``features`` output by a 1x1 depthwise convolution whose weights are ``t`` snapped to the
  per-tensor int8 grid (``k * max(t) / 127``, k integer), so int8 multiplies by them exactly.
  The RPN convolution reads the scaled trunk with its input weights multiplied by ``t``.

The user's model is never edited: the copy has new layers and new weight arrays, and
:func:`prove_equal` checks it against the original on given inputs before it is used.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np

from export.config import ExportCheckError

#: Largest allowed max |copy - original| / max |original| per output, in float32.
PROOF_MAX_RELATIVE = 1e-5
#: Percentile of each channel's |activation| over the calibration samples taken as its range
#: (the maximum is one pixel of one image; the MSE ranges clip the tensor's tail anyway).
RANGE_PERCENTILE = 99.99
#: Calibration samples whose activations choose the scales.
EQUALIZE_SAMPLES = 64
#: Per-tensor int8 weight grid of the restoring 1x1 depthwise convolution.
_INT8_LEVELS = 127


class NotEqualizable(Exception):
    """The model is not the detector backbone this transform knows (left as it is)."""


@dataclasses.dataclass
class _Conv:
    """A convolution with BatchNorm folded in: kernel [kh,kw,in,out] (depthwise: [kh,kw,C,1])."""

    kernel: np.ndarray
    bias: np.ndarray
    strides: int
    padding: str
    depthwise: bool
    relu: bool

    def scale_out(self, scale: np.ndarray) -> None:
        """Output channel ``o`` divided by ``scale[o]``."""
        if self.depthwise:
            self.kernel = self.kernel / scale[None, None, :, None]
        else:
            self.kernel = self.kernel / scale
        self.bias = self.bias / scale

    def scale_in(self, scale: np.ndarray) -> None:
        """Input channel ``i`` multiplied by ``scale[i]`` (undoes its producer's ``1/scale``)."""
        self.kernel = self.kernel * scale[None, None, :, None]

    def weight_ranges_out(self) -> np.ndarray:
        """[out] max |weight| per output channel."""
        axes = (0, 1, 3) if self.depthwise else (0, 1, 2)
        return np.abs(self.kernel).max(axis=axes)

    def weight_ranges_in(self) -> np.ndarray:
        """[in] max |weight| per input channel."""
        return np.abs(self.kernel).max(axis=(0, 1, 3))


def _folded(model: Any, conv_name: str, bn_name: str | None, relu: bool) -> _Conv:
    conv = model.get_layer(conv_name)
    depthwise = type(conv).__name__ == "DepthwiseConv2D"
    if depthwise and int(conv.depth_multiplier) != 1:
        raise NotEqualizable(f"{conv_name}: depth_multiplier {conv.depth_multiplier}")
    kernel = np.asarray(conv.kernel.numpy(), np.float64)
    out_channels = kernel.shape[2] if depthwise else kernel.shape[3]
    bias = np.asarray(conv.bias.numpy(), np.float64) if conv.use_bias else np.zeros(out_channels)
    if bn_name is not None:
        bn = model.get_layer(bn_name)
        gamma = np.asarray(bn.gamma.numpy(), np.float64) if bn.scale else 1.0
        beta = np.asarray(bn.beta.numpy(), np.float64) if bn.center else 0.0
        mean = np.asarray(bn.moving_mean.numpy(), np.float64)
        variance = np.asarray(bn.moving_variance.numpy(), np.float64)
        factor = gamma / np.sqrt(variance + bn.epsilon)
        kernel = kernel * (factor[None, None, :, None] if depthwise else factor)
        bias = beta + (bias - mean) * factor
    strides = conv.strides[0] if isinstance(conv.strides, (tuple, list)) else conv.strides
    if conv.dilation_rate not in ((1, 1), 1) or conv.groups != 1 if not depthwise else False:
        raise NotEqualizable(f"{conv_name}: dilation {conv.dilation_rate}")
    return _Conv(kernel, bias, int(strides), conv.padding, depthwise, relu)


def _channel_ranges(model: Any, names: Sequence[str], images: Sequence[np.ndarray]) -> dict:
    """{layer name: [C] RANGE_PERCENTILE of |output| per channel} on ``images``."""
    import keras

    probe = keras.Model(model.inputs, [model.get_layer(n).output for n in names])
    batch = np.concatenate([np.asarray(x, np.float32) for x in images])
    outputs = probe.predict(batch, batch_size=16, verbose=0)
    ranges = {}
    for name, value in zip(names, outputs):
        flat = np.abs(value.reshape(-1, value.shape[-1]))
        ranges[name] = np.maximum(np.percentile(flat, RANGE_PERCENTILE, axis=0), 0.0)
    return ranges


def _balance(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """DFQ's scale s = sqrt(first / second) that makes first/s == second*s (1 where either is 0)."""
    ok = (first > 0) & (second > 0)
    scale = np.ones_like(first)
    scale[ok] = np.sqrt(first[ok] / second[ok])
    return scale


def _to_range(ranges: np.ndarray) -> np.ndarray:
    """Scale s with ranges/s equal to the largest range (1 for a dead channel)."""
    scale = np.ones_like(ranges)
    alive = ranges > 0
    scale[alive] = ranges[alive] / ranges[alive].max()
    return scale


def _snap(scale: np.ndarray) -> np.ndarray:
    """``scale`` moved onto the per-tensor int8 grid k * max / 127 (k = 1..127)."""
    top = scale.max()
    steps = np.clip(np.round(scale * _INT8_LEVELS / top), 1, _INT8_LEVELS)
    return steps * top / _INT8_LEVELS


def _layer_names(blocks: int) -> dict[str, list[str]]:
    return {
        "stem": [f"stem{i}" for i in range(4)],
        "blocks": [f"block{i}" for i in range(blocks)],
    }


def _count_blocks(model: Any) -> int:
    names = {layer.name for layer in model.layers}
    count = 0
    while f"block{count}_dw" in names:
        count += 1
    required = {"normalize", "rpn_conv", "rpn_logits", "rpn_box", "features"}
    required |= {f"stem{i}_{k}" for i in range(4) for k in ("conv", "bn", "relu")}
    missing = required - names
    if count == 0 or missing:
        raise NotEqualizable(f"not a roiedge detector backbone (missing {sorted(missing)[:3]})")
    return count


def equalized_backbone(model: Any, images: Sequence[np.ndarray]) -> tuple[Any, dict[str, Any]]:
    """(copy of ``model`` with folded BN and equalized channels, notes) for the int8 export.

    ``model`` is a ``backbone_rpn`` stage of :mod:`models.detector`; ``images`` are its [1,H,W,3]
    float32 calibration inputs. Raises NotEqualizable for any other model.
    """
    blocks = _count_blocks(model)
    stems = [_folded(model, f"stem{i}_conv", f"stem{i}_bn", True) for i in range(4)]
    dws = [_folded(model, f"block{i}_dw", f"block{i}_dw_bn", True) for i in range(blocks)]
    pws = [_folded(model, f"block{i}_pw", f"block{i}_pw_bn", False) for i in range(blocks)]
    rpn_conv = _folded(model, "rpn_conv", None, True)
    rpn_logits = _folded(model, "rpn_logits", None, False)
    rpn_box = _folded(model, "rpn_box", None, False)
    trunk_names = ["stem3_relu"] + [f"block{i}_pw_bn" for i in range(blocks)]
    trunk_names += [f"block{i}_relu" for i in range(blocks - 1)] + ["features"]
    ranges = _channel_ranges(model, trunk_names, images[:EQUALIZE_SAMPLES])

    # Stem chain and depthwise -> pointwise: DFQ's weight balance (one pass along the chain), so
    # each per-tensor weight scale serves all its channels.
    stem_scales = []
    for i in range(3):
        scale = _balance(stems[i].weight_ranges_out(), stems[i + 1].weight_ranges_in())
        stems[i].scale_out(scale)
        stems[i + 1].scale_in(scale)
        stem_scales.append(scale)
    # Trunk: one vector for every tensor of the residual stream (geometric mean of their
    # per-channel ranges), on the int8 grid so the restoring depthwise multiply is exact.
    trunk = np.exp(np.mean([np.log(np.maximum(ranges[n], 1e-6)) for n in trunk_names], axis=0))
    trunk = _snap(_to_range(trunk))
    stems[3].scale_out(trunk)
    dw_scales = []
    for i in range(blocks):
        dws[i].scale_in(trunk)
        scale = _balance(dws[i].weight_ranges_out(), pws[i].weight_ranges_in())
        dws[i].scale_out(scale)
        pws[i].scale_in(scale)
        pws[i].scale_out(trunk)
        dw_scales.append(scale)
    rpn_conv.scale_in(trunk)
    copy = _build(model, stems, dws, pws, rpn_conv, rpn_logits, rpn_box, trunk)
    notes = {
        "method": "cross-layer equalization (stem chain, depthwise->pointwise, residual trunk)",
        "trunk_scale_range": [float(trunk.min()), float(trunk.max())],
        "stem_scale_range": _span(stem_scales),
        "dw_scale_range": _span(dw_scales),
        "samples": min(len(images), EQUALIZE_SAMPLES),
    }
    return copy, notes


def _span(scales: Sequence[np.ndarray]) -> list[float]:
    return [float(min(s.min() for s in scales)), float(max(s.max() for s in scales))]


def _build(model, stems, dws, pws, rpn_conv, rpn_logits, rpn_box, trunk):
    """A new functional backbone_rpn from folded, scaled convolutions (new layers, new arrays)."""
    import keras

    L = keras.layers
    counter = iter(range(1000))

    def conv(x, spec: _Conv, name: str):
        kernel_size = spec.kernel.shape[:2]
        if spec.depthwise:
            layer = L.DepthwiseConv2D(kernel_size, spec.strides, spec.padding, name=name)
        else:
            filters = spec.kernel.shape[3]
            layer = L.Conv2D(filters, kernel_size, spec.strides, spec.padding, name=name)
        y = layer(x)
        layer.set_weights([spec.kernel.astype(np.float32), spec.bias.astype(np.float32)])
        return L.ReLU(name=f"{name}_relu")(y) if spec.relu else y

    image = keras.Input(batch_shape=tuple(model.inputs[0].shape), name="image")
    normalize = model.get_layer("normalize")
    x = L.Rescaling(normalize.scale, offset=normalize.offset, name="normalize")(image)
    for i, spec in enumerate(stems):
        x = conv(x, spec, f"eq_stem{i}")
    for i, (dw, pw) in enumerate(zip(dws, pws)):
        y = conv(conv(x, dw, f"eq_block{i}_dw"), pw, f"eq_block{i}_pw")
        x = L.ReLU(name=f"eq_block{i}_relu")(L.Add(name=f"eq_block{i}_add")([x, y]))
    restore = L.DepthwiseConv2D(1, use_bias=False, name="eq_features")
    features = restore(x)
    restore.set_weights([trunk.astype(np.float32)[None, None, :, None]])
    r = conv(x, rpn_conv, "eq_rpn_conv")
    logits = model.get_layer("rpn_logits_flat").__class__.from_config(
        {**model.get_layer("rpn_logits_flat").get_config(), "name": f"eq_flat{next(counter)}"}
    )(conv(r, rpn_logits, "eq_rpn_logits"))
    scores = L.Activation("sigmoid", name="eq_rpn_scores")(logits)
    deltas_layer = model.get_layer("rpn_deltas")
    deltas = deltas_layer.__class__.from_config(
        {**deltas_layer.get_config(), "name": "eq_rpn_deltas"}
    )(conv(r, rpn_box, "eq_rpn_box"))
    return keras.Model(image, [features, scores, deltas], name=f"{model.name}_equalized")


def prove_equal(original: Any, copy: Any, inputs: Sequence[np.ndarray]) -> list[float]:
    """Per output, max |copy - original| / max |original| over ``inputs``; raises
    ExportCheckError above PROOF_MAX_RELATIVE (the copy must compute what the user's model does)."""
    import tensorflow as tf

    run_original = tf.function(lambda x: original(x, training=False))
    run_copy = tf.function(lambda x: copy(x, training=False))
    worst = None
    for x in inputs:
        a = [np.asarray(t, np.float64) for t in run_original(x)]
        b = [np.asarray(t, np.float64) for t in run_copy(x)]
        errors = np.array([np.abs(p - q).max() / max(np.abs(p).max(), 1e-30) for p, q in zip(a, b)])
        worst = errors if worst is None else np.maximum(worst, errors)
    if worst is None or not np.all(worst <= PROOF_MAX_RELATIVE):
        raise ExportCheckError(
            f"equalized {original.name}: differs from the original by "
            f"{np.array2string(worst, precision=2)} (max |diff| / max |output| per output), "
            f"expected <= {PROOF_MAX_RELATIVE:g}"
        )
    return [float(v) for v in worst]
