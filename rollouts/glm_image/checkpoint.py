"""Load GLM-Image from a local folder in its released diffusers layout (`zai-org/GLM-Image`: what
`GlmImagePipeline.save_pretrained` writes) into a `GlmImageGenerator`, component by component through each
library's own class; safetensors only, no code from the folder is run.

Clear errors before anything heavy loads:
- a missing folder, `model_index.json`, component subfolder, config or weights file: `FileNotFoundError` naming it;
- `model_index.json` naming another pipeline than `GlmImagePipeline`, or a component of another class: `ValueError`;
- AR and DiT that disagree on the codebook (the generation head's codes vs the DiT's prior embedding table):
  `ValueError` with both numbers;
- weights that do not fit a component's config: `CheckpointMismatchError` naming the component and listing the
  missing / unexpected / mis-shaped keys.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from rollouts.config import ModelConfig

PIPELINE_CLASS = "GlmImagePipeline"
# component → (class model_index.json must name, files its subfolder must hold: one of each tuple)
COMPONENTS: dict[str, tuple[str, tuple[tuple[str, ...], ...]]] = {
    "vision_language_encoder": ("GlmImageForConditionalGeneration",
                                (("config.json",), ("model.safetensors", "model.safetensors.index.json"))),
    "processor": ("GlmImageProcessor", (("tokenizer.json",), ("processor_config.json", "preprocessor_config.json"))),
    "transformer": ("GlmImageTransformer2DModel", (("config.json",), ("diffusion_pytorch_model.safetensors",
                                                                      "diffusion_pytorch_model.safetensors.index.json"))),
    "vae": ("AutoencoderKL", (("config.json",), ("diffusion_pytorch_model.safetensors",
                                                 "diffusion_pytorch_model.safetensors.index.json"))),
    "text_encoder": ("T5EncoderModel", (("config.json",), ("model.safetensors", "model.safetensors.index.json"))),
    "tokenizer": ("ByT5Tokenizer", (("tokenizer_config.json",),)),
    "scheduler": ("FlowMatchEulerDiscreteScheduler", (("scheduler_config.json",),)),
}


def read_pipeline_class(path: str | Path) -> str | None:
    index = Path(path) / "model_index.json"
    if not index.is_file():
        return None
    try:
        return json.loads(index.read_text()).get("_class_name")
    except (OSError, ValueError):
        return None


def check_glm_image_folder(path: Path) -> dict[str, Any]:
    """→ model_index.json as a dict, after the file and class checks of the module doc."""
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: not a directory (a GLM-Image checkpoint is a diffusers pipeline folder)")
    index_file = path / "model_index.json"
    if not index_file.is_file():
        raise FileNotFoundError(f"{path}: no model_index.json (GLM-Image's released layout is a diffusers pipeline "
                                "folder: model_index.json + one subfolder per component)")
    index = json.loads(index_file.read_text())
    if index.get("_class_name") != PIPELINE_CLASS:
        raise ValueError(f"{index_file}: _class_name {index.get('_class_name')!r}, expected {PIPELINE_CLASS!r}")
    problems = []
    for name, (cls, files) in COMPONENTS.items():
        entry = index.get(name)
        if not isinstance(entry, list) or len(entry) != 2:
            problems.append(f"model_index.json has no component {name!r}")
            continue
        if entry[1] != cls:
            raise ValueError(f"{index_file}: component {name!r} is {entry[1]!r}, expected {cls!r}")
        for options in files:
            if not any((path / name / f).is_file() for f in options):
                problems.append(f"{name}/{' or '.join(options)}")
    if problems:
        raise FileNotFoundError(f"{path}: not a GLM-Image checkpoint in the diffusers layout: missing "
                                + "; ".join(problems))
    return index


def _shape_line(entry) -> str:
    if isinstance(entry, (tuple, list)) and len(entry) == 3:
        key, ckpt, model = entry
        return f"{key}: checkpoint {tuple(ckpt)} vs config {tuple(model)}"
    return str(entry)


def _raise_on_mismatch(where: str, info: dict) -> None:
    from rollouts.blip3o_checkpoint import CheckpointMismatchError

    bad = {k: list(info.get(k) or []) for k in ("missing_keys", "unexpected_keys", "mismatched_keys")}
    if any(bad.values()):
        raise CheckpointMismatchError(where, bad["missing_keys"], bad["unexpected_keys"],
                                      [_shape_line(m) for m in bad["mismatched_keys"]])


def _load_model(cls, folder: Path, where: str):
    """A transformers or diffusers model from `folder`, fp32, refusing any key mismatch."""
    try:
        model, info = cls.from_pretrained(str(folder), local_files_only=True, use_safetensors=True,
                                          output_loading_info=True, torch_dtype=torch.float32,
                                          ignore_mismatched_sizes=True, low_cpu_mem_usage=False) \
            if cls.__module__.startswith("diffusers") else \
            cls.from_pretrained(str(folder), local_files_only=True, use_safetensors=True, output_loading_info=True,
                                dtype=torch.float32, ignore_mismatched_sizes=True)
    except (OSError, ValueError, RuntimeError) as err:
        raise ValueError(f"{where}: {cls.__name__} cannot load it: {err}") from err
    _raise_on_mismatch(f"{where} ({cls.__name__})", info)
    return model.eval()


def load_glm_image_checkpoint(path: str | Path, cfg: ModelConfig):
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, GlmImagePipeline, GlmImageTransformer2DModel
    from transformers import ByT5Tokenizer, GlmImageForConditionalGeneration, GlmImageProcessor, T5EncoderModel

    from rollouts.device import resolve_device, resolve_dtype
    from rollouts.glm_image.generator import GlmImageDiTRenderer, GlmImageGenerator
    from rollouts.glm_image.prior_sampler import GlmImageGrids

    path = Path(path)
    check_glm_image_folder(path)
    ar = _load_model(GlmImageForConditionalGeneration, path / "vision_language_encoder",
                     f"{path}/vision_language_encoder")
    transformer = _load_model(GlmImageTransformer2DModel, path / "transformer", f"{path}/transformer")
    num_codes = int(transformer.config.prior_vq_quantizer_codebook_size)
    head = int(ar.config.text_config.vision_vocab_size)
    if head < num_codes:
        raise ValueError(f"{path}: the AR's generation head has {head} outputs (text_config.vision_vocab_size) but "
                         f"the DiT's prior codebook has {num_codes} codes (transformer/config.json "
                         "prior_vq_quantizer_codebook_size)")
    vae = _load_model(AutoencoderKL, path / "vae", f"{path}/vae")
    text_encoder = _load_model(T5EncoderModel, path / "text_encoder", f"{path}/text_encoder")
    if int(transformer.config.text_embed_dim) != int(text_encoder.config.d_model):
        raise ValueError(f"{path}: transformer/config.json text_embed_dim {transformer.config.text_embed_dim} but "
                         f"text_encoder/config.json d_model {text_encoder.config.d_model}")
    processor = GlmImageProcessor.from_pretrained(str(path / "processor"), local_files_only=True)
    glyph_tokenizer = ByT5Tokenizer.from_pretrained(str(path / "tokenizer"), local_files_only=True)
    scheduler = FlowMatchEulerDiscreteScheduler.from_pretrained(str(path / "scheduler"), local_files_only=True)
    pipe = GlmImagePipeline(tokenizer=glyph_tokenizer, processor=processor, text_encoder=text_encoder,
                            vision_language_encoder=None, vae=vae, transformer=transformer, scheduler=scheduler)
    pipe.set_progress_bar_config(disable=True)
    # The image side: the VAE config's sample_size (the tiny checkpoint: 64 px). The pipeline's own default is
    # transformer.config.sample_size (absent: 128) x the VAE factor; model.tokens_per_image cannot change it.
    resolution = int(getattr(vae.config, "sample_size", 0) or 128 * pipe.vae_scale_factor)
    token_h, token_w, prev_h, prev_w = processor._get_target_shape(height=resolution, width=resolution)
    start = int(ar.config.image_start_token_id)
    grids = GlmImageGrids(target=(token_h, token_w), preview=(prev_h, prev_w), image_start=start)
    if processor.tokenizer.convert_tokens_to_ids(processor.bos_token) != start:
        raise ValueError(f"{path}/processor: the tokenizer's bos_token {processor.bos_token!r} is not the AR's "
                         f"image_start_token_id {start}")
    if cfg.tokens_per_image is not None and cfg.tokens_per_image != grids.num_tokens:
        raise ValueError(f"model.tokens_per_image = {cfg.tokens_per_image}, but GLM-Image at {resolution} px samples "
                         f"exactly {grids.num_tokens} prior tokens (grids {grids.preview} + {grids.target}); remove "
                         "model.tokens_per_image")
    renderer = GlmImageDiTRenderer(pipe, grids, resolution)
    gen = GlmImageGenerator(ar, processor, renderer, num_codes=num_codes)
    device = resolve_device(cfg.device)
    gen = gen.to(device=device, dtype=resolve_dtype(cfg.dtype, device))
    gc_file = path / "vision_language_encoder" / "generation_config.json"
    gen.generation_config = json.loads(gc_file.read_text()) if gc_file.is_file() else None
    gen.load_report = {"source": str(path), "family": "glm-image", "image_tokens": gen.tokens_per_image,
                       "codebook": num_codes, "resolution": resolution,
                       "renderer": "GlmImagePipeline (frozen DiT + VAE + glyph T5; reads token ids)"}
    return gen
