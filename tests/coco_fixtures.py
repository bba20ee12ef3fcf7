"""Small COCO instances datasets written by tests: two classes, mixed sizes and image modes."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from models.coco import write_coco
from models.data import DataConfig, make_sample, sample_rng

CLASS_NAMES = ("disc", "block")  # procedural circles and rectangles; triangles stay unlabelled
#: (height, width) of the photos, cycled; none is the model size.
SIZES = ((120, 180), (200, 150), (96, 96), (176, 264), (240, 160))


def write_dataset(folder: Path, count: int, seed: int, crowd_every: int = 0, sizes=SIZES) -> Path:
    """Write ``count`` photos (JPEG, PNG, grayscale PNG, RGBA PNG in turn) under
    ``folder/images`` and ``folder/annotations.json``; returns the JSON path.

    Every ``crowd_every``-th image (0 = none) gets one object marked ``iscrowd``.
    """
    from PIL import Image

    images_dir = folder / "images"
    images_dir.mkdir(parents=True, exist_ok=True)
    files, shapes, annotations = [], [], []
    for index in range(count):
        height, width = sizes[index % len(sizes)]
        side = min(height, width)
        config = dataclasses.replace(
            DataConfig(image_size=(height, width)),
            min_size=max(8.0, side * 0.12),
            max_size=side * 0.5,
            max_objects=4,
        )
        sample = make_sample(sample_rng(seed, 7, index), config)
        kind = index % 4
        if kind == 0:
            name, image = f"photo_{index:03d}.jpg", Image.fromarray(sample.image)
        elif kind == 1:
            name, image = f"photo_{index:03d}.png", Image.fromarray(sample.image)
        elif kind == 2:
            name, image = f"gray_{index:03d}.png", Image.fromarray(sample.image).convert("L")
        else:
            name, image = f"rgba_{index:03d}.png", Image.fromarray(sample.image).convert("RGBA")
        image.save(images_dir / name, **({"quality": 92} if name.endswith(".jpg") else {}))
        objects = []
        for k, (box, label) in enumerate(zip(sample.boxes, sample.labels)):
            if label >= len(CLASS_NAMES):
                continue
            crowd = bool(crowd_every) and index % crowd_every == 0 and k == 0
            objects.append((box.tolist(), int(label), crowd))
        files.append(f"images/{name}")
        shapes.append((height, width))
        annotations.append(objects)
    return write_coco(folder / "annotations.json", files, shapes, annotations, CLASS_NAMES)
