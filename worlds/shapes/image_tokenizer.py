"""The shapes world's k-means VQ (`vq_tokenizer.py`) behind the generic `rollouts.image_tokenizer.ImageTokenizer`
interface (plus `decode`, which TA-Tok cannot do). Registered by class name in the world's manifest
(`image_tokenizers`), so a checkpoint whose `image_tokenizer/config.json` says `ShapesVQTokenizer` loads as this."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from rollouts.image_tokenizer import check_uint8_images


class ShapesImageTokenizer:
    """`worlds.shapes.vq_tokenizer.ShapesVQTokenizer` behind `ImageTokenizer` (plus `decode`)."""

    def __init__(self, vq: Any):
        self.vq = vq

    @property
    def num_codes(self) -> int:
        return int(self.vq.num_codes)

    @property
    def tokens_per_image(self) -> int:
        return int(self.vq.tokens_per_image)

    def encode(self, images: np.ndarray) -> np.ndarray:
        return np.asarray(self.vq.encode(check_uint8_images(images, "ShapesImageTokenizer.encode")), dtype=np.int64)

    def decode(self, codes: np.ndarray) -> np.ndarray:
        return self.vq.decode(codes)

    def save_pretrained(self, directory: str | Path) -> None:
        self.vq.save_pretrained(directory)

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> ShapesImageTokenizer:
        from worlds.shapes.vq_tokenizer import ShapesVQTokenizer

        return cls(ShapesVQTokenizer.from_pretrained(directory))
