"""Janus-Pro (DeepSeek) text-to-image as a nativerl model family, through transformers' own Janus classes.

- `checkpoint.py`: load a local folder in the released transformers layout, with clear mismatch errors.
- `generator.py`: `JanusImageGenerator` (the generator interface) and `JanusVQRenderer` (frozen VQ decoder).
- `cfg_sampler.py`: sampling and trainer log-probs of the classifier-free-guided distribution.
- `tiny_checkpoint.py`: a tiny random checkpoint in the released layout (`python -m rollouts.janus.tiny_checkpoint`).
- `preset.py`: `janus-pro-tiny`, `janus-pro-1b-shape` presets.
- `upstream_reference.py`: transformers' generate with CFG, for `nativerl doctor` and the throughput benchmark.
"""
