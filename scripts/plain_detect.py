"""Detect with detector.<precision>.tflite and a plain TFLite interpreter (no roiedge code).

python plain_detect.py detector.int8.tflite photo.png  ->  one "label score y1 x1 y2 x2" line each
"""

import sys
import zipfile

import numpy as np
from PIL import Image, ImageOps

try:
    from tflite_runtime.interpreter import Interpreter  # Raspberry Pi: pip install tflite-runtime
except ImportError:
    from ai_edge_litert.interpreter import Interpreter

model, photo = sys.argv[1], sys.argv[2]
labels = zipfile.ZipFile(model).read("labels.txt").decode().splitlines()  # packed in the file
interpreter = Interpreter(model_path=model)
interpreter.allocate_tensors()
image = interpreter.get_input_details()[0]
_, height, width, _ = image["shape"]
picture = ImageOps.exif_transpose(Image.open(photo)).convert("RGB")
pixels = np.asarray(picture.resize((width, height), Image.BILINEAR), np.uint8)
interpreter.set_tensor(image["index"], pixels[None])
interpreter.invoke()
out = {d["name"]: interpreter.get_tensor(d["index"])[0] for d in interpreter.get_output_details()}
size = np.array([picture.height, picture.width] * 2, np.float32)
for n in range(int(out["number_of_detections"])):  # rows past the count are padding
    box = out["location"][n] * size  # normalized (ymin, xmin, ymax, xmax) -> pixels
    label = labels[int(out["category"][n])]
    print(label, f"{out['score'][n]:.5f}", " ".join(f"{v:.2f}" for v in box))
