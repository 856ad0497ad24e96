"""`NativeImageGenerator`: an AR policy that writes image tokens plus a frozen renderer that draws them.

Two halves behind one small interface:

- **AR policy** `.lm`: a transformers causal LM (Qwen3) whose vocabulary ends with the image vocabulary
  (`.vocab`, `rollouts/vocab.py`). The trainer may wrap it with peft and assign it back to `.lm`.
- **Renderer** `.renderer`: frozen `Renderer` (connector → SanaTransformer2DModel → Euler flow matching with CFG →
  VAE), conditioned on the LM's last hidden states over the conditioning window (`rollouts/conditioning.py`).

How another AR + diffusion model plugs in (see also docs/ADDING_A_MODEL.md): the rest of nativerl touches only
`encode_prompts`, `.lm` (through `rollouts/lm_parts.py`: `get_decoder()` returning `last_hidden_state`, and
`get_output_embeddings()`), `.vocab` (a contiguous image-token id range), `.tokens_per_image`, and
`.renderer` (anything with `encoder_states/sample_latents/decode/training_loss` and `latent_size`,
`latent_channels`). A different LM family works if it follows the transformers causal-LM layout; a different
diffusion backbone or VAE is a different module inside `Renderer` (the VAE is already pluggable). A different
conditioning window is one edit in `conditioning.py`. A new checkpoint layout is a new loader next to
`blip3o_checkpoint.py` returning a `NativeImageGenerator`.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from rollouts.config import ModelConfig, PromptTemplateConfig, RendererConfig, SamplingConfig
from rollouts.device import lm_autocast, resolve_device, resolve_dtype
from rollouts.prompt_template import encode_prompts as _encode_prompts
from rollouts.renderer import Renderer, render_images
from rollouts.vocab import ImageVocab

# Model families other than BLIP3o-NEXT plug in here, each with its code in its own folder (docs/ADDING_A_MODEL.md):
# checkpoint loaders by the folder's config.json `model_type` (or, for a diffusers pipeline folder, its
# model_index.json `_class_name`), and presets that build a whole generator; all "module:function" strings, imported
# on first use. Anything else loads as BLIP3o-NEXT (rollouts/blip3o_checkpoint.py).
CHECKPOINT_LOADERS: dict[str, str] = {
    "janus": "rollouts.janus.checkpoint:load_janus_checkpoint",
}
PIPELINE_LOADERS: dict[str, str] = {
    "GlmImagePipeline": "rollouts.glm_image.checkpoint:load_glm_image_checkpoint",
}
GENERATOR_PRESETS: dict[str, str] = {
    "janus-pro-tiny": "rollouts.janus.preset:janus_pro_tiny",
    "janus-pro-small": "rollouts.janus.preset:janus_pro_small",
    "janus-pro-1b-shape": "rollouts.janus.preset:janus_pro_1b_shape",
    "glm-image-tiny": "rollouts.glm_image.preset:glm_image_tiny",
}


def _import_target(target: str):
    import importlib

    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(module), attr)


def checkpoint_loader_for(path: str | Path) -> str:
    """The loader of a checkpoint folder, by its config.json model_type or its model_index.json pipeline class
    (BLIP3o-NEXT's for any other)."""
    import json

    index = Path(path) / "model_index.json"
    if index.is_file() and not (Path(path) / "config.json").is_file():
        try:
            pipeline = json.loads(index.read_text()).get("_class_name")
        except ValueError:
            pipeline = None
        if pipeline in PIPELINE_LOADERS:
            return PIPELINE_LOADERS[pipeline]
    config = Path(path) / "config.json"
    model_type = None
    if config.is_file():
        try:
            model_type = json.loads(config.read_text()).get("model_type")
        except ValueError:
            model_type = None
    return CHECKPOINT_LOADERS.get(model_type, "rollouts.blip3o_checkpoint:load_blip3o_checkpoint")


class NativeImageGenerator(nn.Module):
    # The renderer reads the LM's hidden states, so an update can change what stored tokens paint
    # (rl/monitors/drift.py). A family whose renderer reads token ids sets this False.
    conditioning_tracks_policy = True
    # The writer of this family's checkpoint layout, "module:function" (a family overrides save_pretrained or this).
    CHECKPOINT_SAVER = "rollouts.blip3o_checkpoint:save_blip3o_checkpoint"

    def __init__(self, lm: nn.Module, tokenizer, vocab: ImageVocab, renderer: Renderer, tokens_per_image: int,
                 prompt_template: PromptTemplateConfig | None = None, *, image_tokenizer=None,
                 edit_template=None):
        super().__init__()
        self.lm = lm
        self.tokenizer = tokenizer
        self.vocab = vocab
        self.renderer = renderer
        self.tokens_per_image = int(tokens_per_image)
        self.prompt_template = prompt_template or PromptTemplateConfig()
        self.load_report: dict = {}
        # The checkpoint's generation_config.json (HF sampling defaults), read by `rollout.sampling.source:
        # checkpoint` (rollouts/sampling_source.py); None for presets and checkpoints without one.
        self.generation_config: dict | None = None
        # Editing (rollouts/reference_image.py): the tokenizer that turns a reference image into codes, and the
        # edit prompt template. Both None/default for text-to-image-only generators.
        # Not a registered submodule: it is frozen, never trained, saved separately, and must not follow .to(dtype).
        object.__setattr__(self, "image_tokenizer", image_tokenizer)
        self.edit_template = edit_template
        # The precision the LM computes in, wherever it runs (sampler, trainer, reference, eval): `autocast()`.
        # None = the LM's storage dtype. The trainer sets it when it keeps fp32 master weights (rl/policy.py).
        self.compute_dtype: torch.dtype | None = None
        self.renderer.requires_grad_(False)
        self.renderer.eval()

    # ---- construction --------------------------------------------------------------------------------------
    @classmethod
    def from_config(cls, cfg: ModelConfig) -> NativeImageGenerator:
        device = resolve_device(cfg.device)
        dtype = resolve_dtype(cfg.dtype, device)
        if cfg.source == "path":
            if not cfg.path:
                raise ValueError("ModelConfig.path is required when source='path'")
            gen = _import_target(checkpoint_loader_for(cfg.path))(cfg.path, cfg)
        elif cfg.preset in GENERATOR_PRESETS:  # another family's preset builds its own generator
            gen = _import_target(GENERATOR_PRESETS[cfg.preset])(cfg)
        else:
            from rollouts.presets import build_components, preset_spec

            spec = preset_spec(cfg.preset)
            lm, tokenizer, vocab, renderer = build_components(spec, cfg.seed, device)
            template = cfg.prompt_template or spec.prompt_template or PromptTemplateConfig()
            gen = cls(lm, tokenizer, vocab, renderer, cfg.tokens_per_image or spec.tokens_per_image, template)
            gen.load_report = {"source": f"preset:{cfg.preset}", "seed": cfg.seed}
            gen = gen.to(device=device, dtype=dtype)
        if cfg.image_tokenizer:
            from rollouts.image_tokenizer_loading import load_image_tokenizer

            gen.enable_editing(load_image_tokenizer(cfg.image_tokenizer))
            gen.load_report["image_tokenizer"] = f"{cfg.image_tokenizer} (model.image_tokenizer)"
        return gen

    @classmethod
    def from_pretrained(cls, path: str | Path, **overrides) -> NativeImageGenerator:
        return cls.from_config(ModelConfig(source="path", path=str(path), **overrides))

    def save_pretrained(self, directory: str | Path, *, renderer_in_shards: bool = False,
                        max_shard_bytes: int = 4 * 1024**3, layout: str = "blip3o") -> None:
        """Write the BLIP3o-NEXT layout, or with layout="transformers" the same loadable by plain transformers
        (see `rollouts/blip3o_checkpoint.py`)."""
        save = _import_target(self.CHECKPOINT_SAVER)  # by name, as the loaders: the saver builds generators too
        save(self, directory, renderer_in_shards=renderer_in_shards, max_shard_bytes=max_shard_bytes, layout=layout)

    # ---- properties --------------------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return next(self.lm.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.lm.parameters()).dtype

    def autocast(self):
        """The LM's one autocast policy (`rollouts.device.lm_autocast`): sampler, trainer and reference."""
        return lm_autocast(self.lm, self.compute_dtype)

    # ---- the interface ---------------------------------------------------------------------------------------
    def encode_prompts(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """→ (prompt_ids [B,P], prompt_mask [B,P]) long, left-padded, ending `<im_start><S0>`, on `.device`."""
        ids, mask = _encode_prompts(prompts, self.tokenizer, self.vocab, self.prompt_template)
        return ids.to(self.device), mask.to(self.device)

    def enable_editing(self, image_tokenizer, edit_template=None) -> None:
        """Make this generator accept editing rows: attach the reference image tokenizer (its K must be the
        image vocabulary's) and add the vision markers to the tokenizer/LM when missing."""
        from rollouts.image_tokenizer import as_image_tokenizer
        from rollouts.reference_image import EditTemplateConfig, add_reference_markers

        image_tokenizer = as_image_tokenizer(image_tokenizer)
        if image_tokenizer.num_codes != self.vocab.num_image_tokens:
            raise ValueError(f"image tokenizer has {image_tokenizer.num_codes} codes but the image vocabulary has "
                             f"{self.vocab.num_image_tokens}")
        add_reference_markers(self.tokenizer, self.lm)
        object.__setattr__(self, "image_tokenizer", image_tokenizer)
        self.edit_template = edit_template or self.edit_template or EditTemplateConfig()

    def encode_edit_prompts(self, instructions: list[str], reference_images) -> tuple[torch.Tensor, torch.Tensor]:
        """Instructions + uint8 reference images [B,H,W,3] → (prompt_ids, prompt_mask) with the reference's image
        tokens between vision markers, ending `<im_start><S0>` (rollouts/reference_image.py)."""
        from rollouts.reference_image import EditTemplateConfig, ReferenceMarkers, encode_edit_prompts

        if self.image_tokenizer is None:
            raise ValueError("this generator has no image tokenizer for reference images: call enable_editing()")
        codes = torch.as_tensor(self.image_tokenizer.encode(reference_images), dtype=torch.long)
        ids, mask = encode_edit_prompts(instructions, codes, self.tokenizer, self.vocab,
                                        ReferenceMarkers.from_tokenizer(self.tokenizer),
                                        self.edit_template or EditTemplateConfig())
        return ids.to(self.device), mask.to(self.device)

    @staticmethod
    def _no_ar_guidance(sampling: SamplingConfig) -> None:
        if sampling.guidance_scale not in (None, 1.0):
            raise ValueError(f"rollout.sampling.guidance_scale = {sampling.guidance_scale}: BLIP3o-NEXT samples its "
                             "AR tokens without classifier-free guidance (its renderer is guided: "
                             "rollout.renderer.guidance_scale); remove it or set 1")

    def sample_image_tokens(self, prompt_ids, prompt_mask, sampling: SamplingConfig,
                            generator: torch.Generator | None = None):
        from rollouts.sampler import sample_image_tokens

        self._no_ar_guidance(sampling)
        with self.autocast():
            return sample_image_tokens(self.lm, prompt_ids, prompt_mask, vocab=self.vocab,
                                       num_tokens=self.tokens_per_image, sampling=sampling, generator=generator)

    def token_logprobs(self, lm: nn.Module, prompt_ids, prompt_mask, image_tokens, sampling: SamplingConfig, *,
                       chunk_size: int | None = None, with_entropy: bool = False, with_hidden: bool = False):
        """Log-probs of `image_tokens` under `lm` (the policy, a peft wrap of it, or the reference copy) with this
        generator's image vocabulary; the trainer's entry point (rl/policy.py). The caller sets the autocast.
        `with_hidden` appends the conditioning hidden states (the trainer's conditioning anchor)."""
        from rollouts.sampler import image_token_logprobs

        self._no_ar_guidance(sampling)
        return image_token_logprobs(lm, prompt_ids, prompt_mask, image_tokens, vocab=self.vocab, sampling=sampling,
                                    chunk_size=chunk_size, with_entropy=with_entropy, with_hidden=with_hidden)

    def image_token_logprobs(self, prompt_ids, prompt_mask, image_tokens, sampling: SamplingConfig, **kw):
        with self.autocast():
            return self.token_logprobs(self.lm, prompt_ids, prompt_mask, image_tokens, sampling, **kw)

    def conditioning_hidden_states(self, prompt_ids, prompt_mask, image_tokens) -> torch.Tensor:
        from rollouts.conditioning import conditioning_hidden_states

        with self.autocast():
            return conditioning_hidden_states(self.lm, prompt_ids, prompt_mask, image_tokens, self.vocab)

    def render(self, cond_hidden: torch.Tensor, seeds, cfg: RendererConfig) -> torch.Tensor:
        return render_images(self.renderer, cond_hidden, seeds, cfg)
