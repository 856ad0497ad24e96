"""Object detectors that feed GenEval scoring: each returns `Detection`s for one image.

`build_detector(name, **options)` imports a backend only when it is asked for, so an unused detector's heavy
dependencies (OpenCV DNN, transformers, mmdet) are never loaded. To add one: write
`rewards/detectors/<name>.py` with a class that has `name` and `detect(image) -> list[Detection]`, then add one
line to `DETECTORS`. A world's own detector (e.g. the shapes world's exact one) lives in its folder and is named
in its manifest (`detectors`, worlds/manifest.py); `known_detectors` adds those.
"""

from __future__ import annotations

import difflib
import importlib
from typing import Any

from rewards.detectors.base import Detection, Detector

DETECTORS: dict[str, str] = {
    "yolov3tiny": "rewards.detectors.yolov3_tiny:YOLOv3TinyDetector",
    "mask2former": "rewards.detectors.mask2former:Mask2FormerDetector",
}

__all__ = ["DETECTORS", "Detection", "Detector", "build_detector", "known_detectors"]


def known_detectors() -> dict[str, str]:
    """Name → "module:Class": the built-in detectors and the worlds'."""
    import worlds

    return {**worlds.contributions("detectors"), **DETECTORS}


def build_detector(name: str, **options: Any) -> Detector:
    known = known_detectors()
    if name not in known:
        close = difflib.get_close_matches(name, known, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ValueError(f"unknown detector {name!r}{hint}; known: {sorted(known)}")
    module_name, _, class_name = known[name].partition(":")
    cls = getattr(importlib.import_module(module_name), class_name)
    return cls(**options)
