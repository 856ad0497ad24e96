"""Load Janus-Pro from a local folder in its released transformers layout (`deepseek-community/Janus-Pro-1B`,
`-7B`: what `JanusForConditionalGeneration.save_pretrained` + `JanusProcessor.save_pretrained` write) into a
`JanusImageGenerator`, through transformers' own classes; safetensors only, no code from the folder is run.

Clear errors before anything heavy loads:
- a missing folder, config.json, weights, tokenizer or processor file: `FileNotFoundError` naming what is missing;
- `model_type` other than "janus" (DeepSeek's original `deepseek-ai/Janus-Pro-*` folders say "multi_modality":
  they need transformers' conversion script `convert_janus_weights_to_hf.py` first): `ValueError`;
- an image-token count that the VQ decoder cannot take (`model.tokens_per_image` ≠ the checkpoint's grid, or a
  config whose generation grid and VQ grid disagree): `ValueError` with both numbers;
- weights that do not fit the config: `CheckpointMismatchError` listing missing / unexpected / mis-shaped keys.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from rollouts.config import ModelConfig

REQUIRED = {
    "config": ("config.json",),
    "weights": ("model.safetensors", "model.safetensors.index.json"),
    "tokenizer": ("tokenizer.json", "tokenizer_config.json"),
    "processor": ("processor_config.json", "preprocessor_config.json"),
}


def read_model_type(path: str | Path) -> str | None:
    config = Path(path) / "config.json"
    if not config.is_file():
        return None
    try:
        return json.loads(config.read_text()).get("model_type")
    except (OSError, ValueError):
        return None


def check_janus_folder(path: Path) -> dict[str, Any]:
    """→ config.json as a dict, after the file and model_type checks of the module doc."""
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: not a directory (a Janus-Pro checkpoint is a folder)")
    missing = [f"{part} ({' or '.join(names)})" for part, names in REQUIRED.items()
               if not any((path / n).is_file() for n in names)]
    if missing:
        raise FileNotFoundError(f"{path}: not a Janus-Pro checkpoint in the transformers layout: missing "
                                + "; ".join(missing))
    config = json.loads((path / "config.json").read_text())
    model_type = config.get("model_type")
    if model_type == "multi_modality":
        raise ValueError(f"{path}/config.json: model_type 'multi_modality' is DeepSeek's original Janus release "
                         "(custom code); convert it to the transformers layout first (transformers' "
                         "models/janus/convert_janus_weights_to_hf.py), then point model.path at the result")
    if model_type != "janus":
        raise ValueError(f"{path}/config.json: model_type {model_type!r}, expected 'janus' (Janus-Pro in the "
                         "transformers layout)")
    return config


def checkpoint_tokens_per_image(config) -> int:
    """Image tokens the checkpoint generates and its VQ decoder takes; ValueError if those disagree."""
    vision, vq = config.vision_config, config.vq_config
    generated = int(vision.num_image_tokens)
    grid = int(vq.num_patches) ** 2
    if generated != grid:
        raise ValueError(f"config.json: vision_config.num_image_tokens = {generated} but the VQ decoder takes "
                         f"{vq.num_patches}x{vq.num_patches} = {grid} codes (image_size / patch_size)")
    return generated


def assemble_janus_generator(model, processor, generation_config: dict[str, Any], cfg: ModelConfig, source: str):
    """A loaded `JanusForConditionalGeneration` + `JanusProcessor` → `JanusImageGenerator` on cfg's device/dtype.
    The VQ model moves out of the LM into the renderer (generator module doc)."""
    from rollouts.device import resolve_device, resolve_dtype
    from rollouts.janus.cfg_sampler import JanusSpecialIds
    from rollouts.janus.generator import JANUS_DEFAULT_GUIDANCE, JanusImageGenerator, JanusVQRenderer

    n = checkpoint_tokens_per_image(model.config)
    if cfg.tokens_per_image is not None and cfg.tokens_per_image != n:
        raise ValueError(f"model.tokens_per_image = {cfg.tokens_per_image}, but this Janus checkpoint generates "
                         f"and decodes exactly {n} image tokens (its VQ grid); remove model.tokens_per_image")
    if getattr(processor, "num_image_tokens", n) != n:
        raise ValueError(f"processor_config.json: num_image_tokens = {processor.num_image_tokens}, config.json: {n}")
    tok = processor.tokenizer
    boi = (generation_config.get("generation_kwargs") or {}).get("boi_token_id")
    boi = boi if boi is not None else tok.convert_tokens_to_ids(processor.image_start_token)
    bos = generation_config.get("bos_token_id", tok.bos_token_id)
    pad = generation_config.get("pad_token_id", tok.pad_token_id)
    if None in (bos, boi, pad):
        raise ValueError(f"{source}: cannot find the BOS / <begin_of_image> / pad token ids CFG needs "
                         f"(bos {bos}, boi {boi}, pad {pad}) in generation_config.json or the tokenizer")
    special = JanusSpecialIds(bos=int(bos), boi=int(boi), pad=int(pad))
    vqmodel = model.model.vqmodel
    model.model.vqmodel = None  # the renderer holds it; the policy LM must not (rl/policy.py)
    device = resolve_device(cfg.device)
    dtype = resolve_dtype(cfg.dtype, device)
    image_processor = processor.image_processor
    renderer = JanusVQRenderer(vqmodel, image_processor.image_mean, image_processor.image_std)
    gen = JanusImageGenerator(model, processor, renderer, tokens_per_image=n, special=special,
                              default_guidance=float(generation_config.get("guidance_scale") or
                                                     JANUS_DEFAULT_GUIDANCE))
    gen = gen.to(device=device, dtype=dtype)
    gen.generation_config = dict(generation_config) if generation_config else None
    gen.load_report = {"source": source, "family": "janus-pro", "image_tokens": n,
                       "codebook": gen.vocab.num_image_tokens, "default_guidance": gen.default_guidance,
                       "renderer": "JanusVQVAE (frozen VQ decoder, reads token ids)"}
    return gen


def _shape_line(entry) -> str:
    if isinstance(entry, (tuple, list)) and len(entry) == 3:  # (key, checkpoint shape, model shape)
        key, ckpt, model = entry
        return f"{key}: checkpoint {tuple(ckpt)} vs config {tuple(model)}"
    return str(entry)


def load_janus_checkpoint(path: str | Path, cfg: ModelConfig):
    from transformers import JanusConfig, JanusForConditionalGeneration, JanusProcessor

    from rollouts.blip3o_checkpoint import CheckpointMismatchError

    path = Path(path)
    check_janus_folder(path)
    config = JanusConfig.from_pretrained(str(path), local_files_only=True)
    checkpoint_tokens_per_image(config)  # before the weights load
    model, info = JanusForConditionalGeneration.from_pretrained(
        str(path), config=config, local_files_only=True, use_safetensors=True, output_loading_info=True,
        dtype=torch.float32, ignore_mismatched_sizes=True)  # mis-shaped keys come back in `info`: raised below
    bad = {k: list(info.get(k) or []) for k in ("missing_keys", "unexpected_keys", "mismatched_keys")}
    if any(bad.values()):
        raise CheckpointMismatchError(f"{path} (JanusForConditionalGeneration)", bad["missing_keys"],
                                      bad["unexpected_keys"], [_shape_line(m) for m in bad["mismatched_keys"]])
    processor = JanusProcessor.from_pretrained(str(path), local_files_only=True)
    gc_file = path / "generation_config.json"
    generation_config = json.loads(gc_file.read_text()) if gc_file.is_file() else {}
    gen = assemble_janus_generator(model.eval(), processor, generation_config, cfg, str(path))
    if not gc_file.is_file():
        gen.generation_config = None
    return gen
