"""Detector interface shared by Mask2Former, YOLOv3-tiny and the shapes world's exact detector.

All backends return class names in GenEval/COCO spelling ("motorcycle", "dining table", ...) or the world's own
class names (shapes: "circle", "square", "triangle"), so one GenEval scoring function serves them all.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np


@dataclass
class Detection:
    class_name: str
    box: tuple[float, float, float, float]  # x1, y1, x2, y2 in pixels
    confidence: float
    color: str | None = None  # set when the backend classifies colour itself (the shapes detector does)
    mask: np.ndarray | None = None  # [H, W] bool, when the backend has instance masks


@runtime_checkable
class Detector(Protocol):
    name: str  # goes into the reward's version tag, e.g. "yolov3tiny"

    def detect(self, image: np.ndarray) -> list[Detection]:
        """image: uint8 [H, W, 3] RGB."""
        ...
