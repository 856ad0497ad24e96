"""The shapes world's image tokenizer: a VQ codebook learned by k-means on 16x16 cell patches.

BLIP3o-NEXT tokenizes a 384^2 image into 27x27 = 729 codes of a 65,536-entry codebook (TA-Tok, frozen). Here one
token is one grid cell: `encode` maps a 64x64 image to 16 codes (raster order, the order the AR emits them),
`decode` maps codes back to pixels (each code's centroid patch). The codebook is learned, not hand-made: k-means++
then Lloyd iterations on patches of random scenes. The world has 61 distinct cell patches (25 visual classes,
4 shapes x 6 colours + empty, each in 1-4 rasterised sizes, see `world.py`), so K = 64 codes cover every patch:
k-means++ seeds each distinct patch before it can repeat one (D^2 sampling gives an already chosen patch
probability 0). The codes are pure (one class each) and decoding is exact; tests/test_shapes_world.py checks both.

Saved as `image_tokenizer/config.json` + `image_tokenizer/codebook.safetensors` next to the model.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file, save_file

from worlds.shapes.world import CELL, GRID, cell_patches, patches_to_images, render_scene, sample_random_scene

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "codebook.safetensors"


@dataclass(frozen=True)
class VQTokenizerConfig:
    num_codes: int = 64
    grid: int = GRID
    cell: int = CELL
    kmeans_iterations: int = 30
    num_fit_scenes: int = 3000
    seed: int = 0


class ShapesVQTokenizer:
    """encode: uint8 [B, 64, 64, 3] -> long [B, 16]; decode: [B, 16] -> uint8 [B, 64, 64, 3]."""

    def __init__(self, codebook: np.ndarray, config: VQTokenizerConfig):
        expected = (config.num_codes, config.cell * config.cell * 3)
        if codebook.shape != expected:
            raise ValueError(f"codebook has shape {codebook.shape}, config expects {expected}")
        self.codebook = codebook.astype(np.float32)  # [K, cell*cell*3] in [0, 1]
        self.config = config
        self._sq_norms = (self.codebook ** 2).sum(axis=1)

    @property
    def num_codes(self) -> int:
        return self.config.num_codes

    @property
    def tokens_per_image(self) -> int:
        return self.config.grid * self.config.grid

    def encode(self, images: np.ndarray) -> np.ndarray:
        patches = cell_patches(np.asarray(images))  # [B, N, D]
        b, n, d = patches.shape
        flat = patches.reshape(b * n, d)
        dist = self._sq_norms[None, :] - 2.0 * flat @ self.codebook.T  # |x|^2 is constant per row
        return dist.argmin(axis=1).reshape(b, n).astype(np.int64)

    def decode(self, codes: np.ndarray) -> np.ndarray:
        codes = np.asarray(codes, dtype=np.int64)
        if codes.min() < 0 or codes.max() >= self.num_codes:
            raise ValueError(f"codes must lie in [0, {self.num_codes}), got [{codes.min()}, {codes.max()}]")
        return patches_to_images(self.codebook[codes])

    @classmethod
    def fit(cls, config: VQTokenizerConfig | None = None) -> ShapesVQTokenizer:
        """k-means on the cell patches of `num_fit_scenes` random full-ish scenes (seeded, reproducible)."""
        config = config or VQTokenizerConfig()
        rng = np.random.default_rng(config.seed)
        images = np.stack([render_scene(sample_random_scene(rng, max_objects=GRID * GRID))
                           for _ in range(config.num_fit_scenes)])
        data = cell_patches(images).reshape(-1, config.cell * config.cell * 3)
        return cls(_kmeans(data, config.num_codes, config.kmeans_iterations, rng), config)

    def save_pretrained(self, directory: str | Path) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / CONFIG_NAME).write_text(json.dumps({"_class_name": type(self).__name__, **asdict(self.config)},
                                                        indent=2) + "\n")
        save_file({"codebook": self.codebook}, str(directory / WEIGHTS_NAME))

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> ShapesVQTokenizer:
        directory = Path(directory)
        path = directory / CONFIG_NAME
        if not path.is_file():
            raise FileNotFoundError(f"no VQ tokenizer config at {path}")
        raw = json.loads(path.read_text())
        raw.pop("_class_name", None)
        try:
            config = VQTokenizerConfig(**raw)
        except TypeError as exc:
            raise ValueError(f"{path}: bad VQ tokenizer config: {exc}") from exc
        return cls(load_file(str(directory / WEIGHTS_NAME))["codebook"], config)


def _kmeans(data: np.ndarray, k: int, iterations: int, rng: np.random.Generator) -> np.ndarray:
    """k-means++ seeding (Arthur & Vassilvitskii 2007), then Lloyd iterations. Empty clusters are re-seeded on
    the worst-fit point so no code is wasted."""
    data = data.astype(np.float32)
    sq = (data ** 2).sum(axis=1)
    centers = [data[int(rng.integers(len(data)))]]
    closest = ((data - centers[0]) ** 2).sum(axis=1)
    for _ in range(1, k):
        p = closest / closest.sum() if closest.sum() > 0 else None
        centers.append(data[int(rng.choice(len(data), p=p))])
        closest = np.minimum(closest, ((data - centers[-1]) ** 2).sum(axis=1))
    c = np.stack(centers)
    for _ in range(iterations):
        dist = sq[:, None] - 2.0 * data @ c.T + (c ** 2).sum(axis=1)[None, :]
        assign = dist.argmin(axis=1)
        err = dist[np.arange(len(data)), assign]
        for j in range(k):
            members = assign == j
            if members.any():
                c[j] = data[members].mean(axis=0)
            else:
                worst = int(err.argmax())
                c[j], err[worst] = data[worst], 0.0
    return c
