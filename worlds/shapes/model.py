"""Build, save and load the shapes world's generator: the `shapes` preset plus its two fitted image codecs.

- `build_shapes_generator(seed)`: random AR + random renderer (preset `shapes`), with the renderer's VAE replaced
  by a `PatchAutoencoder` fitted (PCA, closed form) on random scenes, and a `ShapesVQTokenizer` fitted (k-means)
  on random scenes. This is what `worlds/shapes/sft.py` starts from.
- `save_shapes_model(gen, vq, dir)`: the generator in the BLIP3o-NEXT layout (`NativeImageGenerator.
  save_pretrained`) plus `dir/image_tokenizer/` (the VQ codebook; BLIP3o-NEXT ships TA-Tok separately too).
- `load_shapes_model(dir)`: the inverse; `dir` defaults to the committed checkpoint `PRETRAINED_DIR`, which the
  normal loader also reads (`ModelConfig(source="path", path=PRETRAINED_DIR)`): the VQ is only needed to make
  training data, never to generate.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from rollouts.generator import NativeImageGenerator
from rollouts.presets import build_components
from worlds.shapes.patch_autoencoder import PatchAutoencoder
from worlds.shapes.preset import LATENT_CHANNELS, NUM_IMAGE_TOKENS, SHAPES_PROMPT_TEMPLATE, shapes_spec
from worlds.shapes.vq_tokenizer import ShapesVQTokenizer, VQTokenizerConfig
from worlds.shapes.world import GRID, render_scene, sample_random_scene

PRETRAINED_DIR = Path(__file__).parent / "pretrained"
IMAGE_TOKENIZER_SUBDIR = "image_tokenizer"


def fit_patch_autoencoder(num_scenes: int = 2000, seed: int = 0,
                          latent_channels: int = LATENT_CHANNELS) -> PatchAutoencoder:
    rng = np.random.default_rng(seed)
    images = np.stack([render_scene(sample_random_scene(rng, max_objects=GRID * GRID)) for _ in range(num_scenes)])
    return PatchAutoencoder.fit(images, latent_channels=latent_channels)


def build_shapes_generator(seed: int = 0, *, vq_fit_scenes: int = 1000, vae_fit_scenes: int = 1000
                           ) -> tuple[NativeImageGenerator, ShapesVQTokenizer]:
    """A fresh (untrained) shapes generator on CPU, float32, with fitted VAE and VQ tokenizer.

    Fitting scenes are full-ish (1-16 shapes), so 1000 scenes give ~8,000 shape patches: every class many times."""
    spec = shapes_spec()
    lm, tokenizer, vocab, renderer = build_components(spec, seed, "cpu")
    renderer.vae = fit_patch_autoencoder(num_scenes=vae_fit_scenes, seed=seed)
    vq = ShapesVQTokenizer.fit(VQTokenizerConfig(num_codes=NUM_IMAGE_TOKENS, num_fit_scenes=vq_fit_scenes,
                                                 seed=seed))
    if vq.num_codes != vocab.num_image_tokens:
        raise ValueError(f"VQ has {vq.num_codes} codes but the generator's image vocabulary has "
                         f"{vocab.num_image_tokens}")
    gen = NativeImageGenerator(lm, tokenizer, vocab, renderer, spec.tokens_per_image, SHAPES_PROMPT_TEMPLATE)
    gen.load_report = {"source": "worlds.shapes.model.build_shapes_generator", "seed": seed}
    return gen, vq


def save_shapes_model(gen: NativeImageGenerator, vq: ShapesVQTokenizer, directory: str | Path) -> None:
    directory = Path(directory)
    gen.save_pretrained(directory)
    vq.save_pretrained(directory / IMAGE_TOKENIZER_SUBDIR)


def load_shapes_model(directory: str | Path = PRETRAINED_DIR, device: str = "cpu"
                      ) -> tuple[NativeImageGenerator, ShapesVQTokenizer]:
    directory = Path(directory)
    gen = NativeImageGenerator.from_pretrained(directory, device=device, dtype="float32")
    vq = ShapesVQTokenizer.from_pretrained(directory / IMAGE_TOKENIZER_SUBDIR)
    return gen, vq


def images_to_latents(gen: NativeImageGenerator, images: np.ndarray, batch: int = 512) -> torch.Tensor:
    """uint8 [B, 64, 64, 3] -> scaled clean latents [B, C, 4, 4] (the renderer's flow-matching targets)."""
    out = []
    with torch.no_grad():
        for s in range(0, len(images), batch):
            out.append(gen.renderer.encode_images(torch.from_numpy(np.ascontiguousarray(images[s:s + batch]))))
    return torch.cat(out)
