"""Detect with detector.<precision>.tflite through MediaPipe Tasks' ObjectDetector (no roiedge code).

python mediapipe_detect.py detector.int8.tflite photo.png  ->  one "label score x y w h" line each
"""

import sys

import mediapipe as mp
from mediapipe.tasks.python import BaseOptions, vision

model, photo = sys.argv[1], sys.argv[2]
options = vision.ObjectDetectorOptions(
    base_options=BaseOptions(model_asset_path=model),
    score_threshold=0.0,  # keep all: the file applies its own threshold and detection limit
    max_results=-1,
)
with vision.ObjectDetector.create_from_options(options) as detector:
    result = detector.detect(mp.Image.create_from_file(photo))
for detection in result.detections:
    box = detection.bounding_box  # integer pixels
    where = f"{box.origin_x} {box.origin_y} {box.width} {box.height}"
    for category in detection.categories:  # classes found at one box share its detection
        print(category.category_name, f"{category.score:.5f}", where)
