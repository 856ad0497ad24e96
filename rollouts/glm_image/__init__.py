"""GLM-Image (Z.ai) text-to-image as a nativerl model family, through transformers' and diffusers' own classes.

- `checkpoint.py`: load a local folder in the released diffusers pipeline layout, with clear mismatch errors.
- `generator.py`: `GlmImageGenerator` (the generator interface) and `GlmImageDiTRenderer` (the frozen DiT pipeline).
- `prior_sampler.py`: sampling and trainer log-probs of the AR prior tokens at GLM's 3D-rope positions.
- `tiny_checkpoint.py`: a tiny random checkpoint in the released layout (`python -m rollouts.glm_image.tiny_checkpoint`).
- `preset.py`: the `glm-image-tiny` preset.
"""
