"""JPEG compressibility: smaller JPEG files score higher (a simple, model-free reward from DDPO).

Each image is encoded with PIL as JPEG at quality 95 (other settings PIL defaults); size_kB = bytes / 1000.
Versions (tag `jpeg_compressibility@<version>`):
- `flowgrpo` (default) — Flow-GRPO `rewards.jpeg_compressibility`: score = −size_kB / 500.
- `ddpo` — ddpo-pytorch `jpeg_compressibility`: score = −size_kB.
"""

from __future__ import annotations

import io
from typing import Any, ClassVar, Literal, Sequence

import numpy as np
from PIL import Image
from pydantic import BaseModel, ConfigDict

from rewards.base import RewardOutput

DIVISORS = {"flowgrpo": 500.0, "ddpo": 1.0}  # score = -size_kB / divisor


class JPEGCompressibilityOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    quality: int = 95
    version: Literal["flowgrpo", "ddpo"] = "flowgrpo"


def jpeg_size_kb(image: np.ndarray, quality: int = 95) -> float:
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected a uint8 HxWx3 image, got {image.dtype} {image.shape}")
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="JPEG", quality=quality)
    return buf.tell() / 1000.0


class JPEGCompressibilityReward:
    name: ClassVar[str] = "jpeg_compressibility"
    OPTIONS: ClassVar[type] = JPEGCompressibilityOptions  # checked by `nativerl validate` without building the reward
    VERSIONS: ClassVar[tuple[str, ...]] = tuple(DIVISORS)

    def __init__(self, **options: Any):
        self.options = JPEGCompressibilityOptions(**options)
        self.version = self.options.version

    def __call__(self, images: Sequence[np.ndarray], prompts: Sequence[str],
                 metadata: Sequence[dict[str, Any]]) -> RewardOutput:
        sizes = [jpeg_size_kb(np.asarray(im), self.options.quality) for im in images]
        return RewardOutput(scores=[-s / DIVISORS[self.version] for s in sizes],
                            details=[{"jpeg_kb": s} for s in sizes])
