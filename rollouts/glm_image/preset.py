"""GLM-Image presets (`model: {source: preset, preset: NAME}`), random weights, no hub:

| name | AR (GlmImageForConditionalGeneration) | K | N (preview + target) | DiT | image |
|---|---|---|---|---|---|
| `glm-image-tiny` | 2 layers, hidden 64 | 64 | 256 + 4 | 1 layer, width 32 | 64 px |

It goes through the same path as a real checkpoint: written in the released diffusers layout
(`rollouts/glm_image/tiny_checkpoint.py`) to a temporary folder and loaded by `load_glm_image_checkpoint`.
"""

from __future__ import annotations

import tempfile

from rollouts.config import ModelConfig


def glm_image_tiny(cfg: ModelConfig):
    from rollouts.glm_image.checkpoint import load_glm_image_checkpoint
    from rollouts.glm_image.tiny_checkpoint import write_tiny_glm_image_checkpoint

    with tempfile.TemporaryDirectory(prefix="glm-image-tiny-") as tmp:
        write_tiny_glm_image_checkpoint(tmp, seed=cfg.seed)
        gen = load_glm_image_checkpoint(tmp, cfg)
    gen.load_report["source"] = f"preset:glm-image-tiny (seed {cfg.seed})"
    return gen
