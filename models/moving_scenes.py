"""Procedural videos: the shapes of one ``models.data`` scene moving over an empty background.

Frame ``t`` draws each object of the scene, with its own colour, shifted by its velocity times
``t`` (wrapping at the edges), over the background of a second, object-free scene, plus fresh
pixel noise per frame. Deterministic in ``seed``. Used by the stream tests and the stream benchmark.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from models.data import data_config_for, make_sample, sample_rng

#: models.data's split number for video scenes (apart from the training and evaluation splits).
VIDEO_SPLIT = 7


def moving_frames(
    num_frames: int, image_size: tuple[int, int] = (240, 320), seed: int = 0
) -> Iterator[np.ndarray]:
    """``num_frames`` frames [H,W,3] uint8 RGB of moving shapes (``image_size`` = (H, W))."""
    config = data_config_for(image_size)
    scene = make_sample(
        sample_rng(seed, VIDEO_SPLIT, 0), dataclasses.replace(config, min_objects=3)
    )
    empty = dataclasses.replace(config, min_objects=0, max_objects=0, noise_min=0.0, noise_max=0.0)
    background = make_sample(sample_rng(seed, VIDEO_SPLIT, 1), empty).image.astype(np.float32)
    rng = np.random.default_rng([seed, VIDEO_SPLIT, 2])
    colours = [np.median(scene.image[mask], axis=0) for mask in scene.masks]
    velocities = rng.uniform(-3.0, 3.0, size=(len(scene.masks), 2))
    for t in range(num_frames):
        image = background.copy()
        for mask, colour, (vy, vx) in zip(scene.masks, colours, velocities):
            image[np.roll(mask, (round(vy * t), round(vx * t)), axis=(0, 1))] = colour
        image += np.float32(4.0) * rng.standard_normal(image.shape, dtype=np.float32)
        yield np.clip(np.rint(image), 0, 255).astype(np.uint8)


def write_video(path: os.PathLike, frames: Iterator[np.ndarray], fps: float = 15.0) -> int:
    """Write RGB ``frames`` with OpenCV: ``.avi`` as MJPG, anything else as mp4v -> frame count."""
    import cv2

    path = Path(path)
    writer = None
    count = 0
    for frame in frames:
        if writer is None:
            fourcc = "MJPG" if path.suffix.lower() == ".avi" else "mp4v"
            height, width = frame.shape[:2]
            writer = cv2.VideoWriter(
                str(path), cv2.VideoWriter_fourcc(*fourcc), fps, (width, height)
            )
            if not writer.isOpened():
                raise OSError(f"{path}: OpenCV cannot write a {fourcc} video")
        writer.write(np.ascontiguousarray(frame[:, :, ::-1]))
        count += 1
    if writer is not None:
        writer.release()
    return count
