"""A straight numpy port of keras-frcnn's own inference post-processing, written for the tests.

Follows yhenon/keras-frcnn's ``roi_helpers.rpn_to_roi`` / ``apply_regr_np`` / ``apply_regr`` /
``non_max_suppression_fast`` and ``test_frcnn.py``'s loop (chunks of ``num_rois`` padded with the
first RoI, skip background/low scores, class deltas divided by ``classifier_regr_std``, boxes
times ``rpn_stride``, per-class NMS) step by step, in its own layout (anchor-major flattening,
ascending argsort, float64). Independent of :mod:`runtime.card_processing` by construction: it
reads no card and shares no code with it.
"""

from __future__ import annotations

import math

import numpy as np


def apply_regr_np(X, T):
    x, y, w, h = X[0], X[1], X[2], X[3]
    tx, ty, tw, th = T[0], T[1], T[2], T[3]
    cx = x + w / 2.0
    cy = y + h / 2.0
    cx1 = tx * w + cx
    cy1 = ty * h + cy
    w1 = np.exp(tw.astype(np.float64)) * w
    h1 = np.exp(th.astype(np.float64)) * h
    x1 = cx1 - w1 / 2.0
    y1 = cy1 - h1 / 2.0
    return np.stack([np.round(x1), np.round(y1), np.round(w1), np.round(h1)])


def apply_regr(x, y, w, h, tx, ty, tw, th):
    cx = x + w / 2.0
    cy = y + h / 2.0
    cx1 = tx * w + cx
    cy1 = ty * h + cy
    w1 = math.exp(tw) * w
    h1 = math.exp(th) * h
    x1 = cx1 - w1 / 2.0
    y1 = cy1 - h1 / 2.0
    return round(x1), round(y1), round(w1), round(h1)  # Python round: half to even


def non_max_suppression_fast(boxes, probs, overlap_thresh=0.9, max_boxes=300):
    if len(boxes) == 0:
        return np.zeros((0, 4), int), np.zeros(0)
    x1, y1, x2, y2 = boxes[:, 0], boxes[:, 1], boxes[:, 2], boxes[:, 3]
    boxes = boxes.astype("float")
    pick = []
    area = (x2 - x1) * (y2 - y1)
    idxs = np.argsort(probs, kind="stable")
    while len(idxs) > 0:
        last = len(idxs) - 1
        i = idxs[last]
        pick.append(i)
        xx1 = np.maximum(x1[i], x1[idxs[:last]])
        yy1 = np.maximum(y1[i], y1[idxs[:last]])
        xx2 = np.minimum(x2[i], x2[idxs[:last]])
        yy2 = np.minimum(y2[i], y2[idxs[:last]])
        ww = np.maximum(0, xx2 - xx1)
        hh = np.maximum(0, yy2 - yy1)
        area_int = ww * hh
        area_union = area[i] + area[idxs[:last]] - area_int
        overlap = area_int / (area_union + 1e-6)
        idxs = np.delete(idxs, np.concatenate(([last], np.where(overlap > overlap_thresh)[0])))
        if len(pick) >= max_boxes:
            break
    return boxes[pick].astype("int"), probs[pick]


def rpn_to_roi(rpn_layer, regr_layer, C, max_boxes=300, overlap_thresh=0.7):
    regr_layer = regr_layer / C["std_scaling"]
    rows, cols = rpn_layer.shape[1:3]
    curr_layer = 0
    A = np.zeros((4, rpn_layer.shape[1], rpn_layer.shape[2], rpn_layer.shape[3]))
    for anchor_size in C["anchor_box_scales"]:
        for anchor_ratio in C["anchor_box_ratios"]:
            anchor_x = (anchor_size * anchor_ratio[0]) / C["rpn_stride"]
            anchor_y = (anchor_size * anchor_ratio[1]) / C["rpn_stride"]
            regr = regr_layer[0, :, :, 4 * curr_layer : 4 * curr_layer + 4]
            regr = np.transpose(regr, (2, 0, 1))
            X, Y = np.meshgrid(np.arange(cols), np.arange(rows))
            A[0, :, :, curr_layer] = X - anchor_x / 2
            A[1, :, :, curr_layer] = Y - anchor_y / 2
            A[2, :, :, curr_layer] = anchor_x
            A[3, :, :, curr_layer] = anchor_y
            A[:, :, :, curr_layer] = apply_regr_np(A[:, :, :, curr_layer], regr)
            A[2, :, :, curr_layer] = np.maximum(1, A[2, :, :, curr_layer])
            A[3, :, :, curr_layer] = np.maximum(1, A[3, :, :, curr_layer])
            A[2, :, :, curr_layer] += A[0, :, :, curr_layer]
            A[3, :, :, curr_layer] += A[1, :, :, curr_layer]
            A[0, :, :, curr_layer] = np.maximum(0, A[0, :, :, curr_layer])
            A[1, :, :, curr_layer] = np.maximum(0, A[1, :, :, curr_layer])
            A[2, :, :, curr_layer] = np.minimum(cols - 1, A[2, :, :, curr_layer])
            A[3, :, :, curr_layer] = np.minimum(rows - 1, A[3, :, :, curr_layer])
            curr_layer += 1
    all_boxes = np.reshape(A.transpose((0, 3, 1, 2)), (4, -1)).transpose((1, 0))
    all_probs = rpn_layer.transpose((0, 3, 1, 2)).reshape(-1)
    x1, y1, x2, y2 = all_boxes[:, 0], all_boxes[:, 1], all_boxes[:, 2], all_boxes[:, 3]
    idxs = np.where((x1 - x2 >= 0) | (y1 - y2 >= 0))
    all_boxes = np.delete(all_boxes, idxs, 0)
    all_probs = np.delete(all_probs, idxs, 0)
    return non_max_suppression_fast(
        all_boxes, all_probs, overlap_thresh=overlap_thresh, max_boxes=max_boxes
    )[0]


def test_frcnn_detect(model_rpn, model_classifier, X, C, class_mapping, bbox_threshold):
    """test_frcnn.py's loop on one formatted image X [1,H,W,3]: {class name: [(x1, y1, x2, y2,
    prob)]} in model-input pixels, after the per-class NMS at 0.5."""
    Y1, Y2, F = model_rpn(X)
    R = rpn_to_roi(Y1, Y2, C, overlap_thresh=0.7)
    R = R.astype(np.float64)
    R[:, 2] -= R[:, 0]
    R[:, 3] -= R[:, 1]
    bboxes, probs = {}, {}
    for jk in range(R.shape[0] // C["num_rois"] + 1):
        ROIs = np.expand_dims(R[C["num_rois"] * jk : C["num_rois"] * (jk + 1), :], axis=0)
        if ROIs.shape[1] == 0:
            break
        if jk == R.shape[0] // C["num_rois"]:
            curr_shape = ROIs.shape
            ROIs_padded = np.zeros((curr_shape[0], C["num_rois"], curr_shape[2]), ROIs.dtype)
            ROIs_padded[:, : curr_shape[1], :] = ROIs
            ROIs_padded[0, curr_shape[1] :, :] = ROIs[0, 0, :]
            ROIs = ROIs_padded
        P_cls, P_regr = model_classifier(F, ROIs)
        for ii in range(P_cls.shape[1]):
            if np.max(P_cls[0, ii, :]) < bbox_threshold or np.argmax(P_cls[0, ii, :]) == (
                P_cls.shape[2] - 1
            ):
                continue
            cls_name = class_mapping[np.argmax(P_cls[0, ii, :])]
            bboxes.setdefault(cls_name, [])
            probs.setdefault(cls_name, [])
            x, y, w, h = ROIs[0, ii, :]
            cls_num = np.argmax(P_cls[0, ii, :])
            tx, ty, tw, th = P_regr[0, ii, 4 * cls_num : 4 * (cls_num + 1)].astype(np.float64)
            tx /= C["classifier_regr_std"][0]
            ty /= C["classifier_regr_std"][1]
            tw /= C["classifier_regr_std"][2]
            th /= C["classifier_regr_std"][3]
            x, y, w, h = apply_regr(x, y, w, h, tx, ty, tw, th)
            s = C["rpn_stride"]
            bboxes[cls_name].append([s * x, s * y, s * (x + w), s * (y + h)])
            probs[cls_name].append(np.max(P_cls[0, ii, :]))
    found = {}
    for key in bboxes:
        new_boxes, new_probs = non_max_suppression_fast(
            np.array(bboxes[key]), np.array(probs[key]), overlap_thresh=0.5
        )
        found[key] = [(*b, p) for b, p in zip(new_boxes.tolist(), new_probs.tolist())]
    return found
