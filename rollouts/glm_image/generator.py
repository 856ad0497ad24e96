"""`GlmImageGenerator`: GLM-Image text-to-image behind the generator interface the rest of nativerl uses.

- **AR policy** `.lm`: transformers' `GlmImageForConditionalGeneration` (the pipeline's `vision_language_encoder`).
  GRPO trains it on the prior tokens it samples (`rollouts/glm_image/prior_sampler.py`). Its VQ tokenizer and
  vision tower ride along unused (they tokenize source images for image-to-image, which we do not train).
- **Renderer** `.renderer`: `GlmImageDiTRenderer`, diffusers' own `GlmImagePipeline` holding the frozen DiT
  (`GlmImageTransformer2DModel`), VAE, scheduler and ByT5/T5 glyph encoder, *without* the AR (so the full-weights
  reference copy of rl/policy.py never duplicates the renderer and the trainer never sees its parameters). It is
  called with `prior_token_ids=`, so the pipeline skips its own AR pass and runs its denoising loop as released.
- **Conditioning**: the DiT reads the prior token *ids* (an embedding table of its own, `prior_token_embedding`)
  and glyph embeddings of the prompt's quoted text from its own frozen T5 encoder; it never reads the AR's hidden
  states. What a stored token sequence paints therefore cannot change when the policy is updated: conditioning
  drift cannot happen, and the drift monitor reports `drift/not_applicable` (`conditioning_tracks_policy` is
  False). The conditioning tensor of a rollout (`cond_hidden`) is int64 [B, N + L]: the N prior tokens, then the
  prompt's text as UTF-8 bytes (-1 padded), from which the pipeline extracts the glyph text as it does from a
  prompt.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from rollouts.config import RendererConfig, SamplingConfig
from rollouts.device import lm_autocast
from rollouts.glm_image.prior_sampler import GlmImageGrids, prior_token_logprobs, sample_prior_tokens
from rollouts.sampler import SampledImageTokens


@dataclass(frozen=True)
class GlmImageVocab:
    """GLM-Image's prior codes are ids [0, K) of the generation head (K = the DiT's prior codebook size)."""

    num_image_tokens: int


def text_bytes(texts: list[str], device) -> torch.Tensor:
    """UTF-8 bytes of each text, right-padded with -1 → int64 [B, L] (L >= 1)."""
    raw = [list(t.encode("utf-8")) for t in texts]
    out = torch.full((len(raw), max([1, *map(len, raw)])), -1, dtype=torch.long)
    for i, r in enumerate(raw):
        out[i, :len(r)] = torch.tensor(r, dtype=torch.long)
    return out.to(device)


def bytes_text(row: torch.Tensor) -> str:
    return bytes(int(v) for v in row.tolist() if v >= 0).decode("utf-8", errors="replace")


class GlmImageDiTRenderer(nn.Module):
    """cond [B, N + L] (prior tokens, prompt bytes) → uint8 images [B, H, W, 3] through diffusers' GlmImagePipeline
    (frozen DiT + VAE + glyph encoder; the AR is not part of it)."""

    uses_reference = False

    def __init__(self, pipe, grids: GlmImageGrids, resolution: int):
        super().__init__()
        self.pipe = pipe
        # nn.Module children so .to(device/dtype) and requires_grad_ reach them.
        self.transformer, self.vae, self.text_encoder = pipe.transformer, pipe.vae, pipe.text_encoder
        self.grids = grids
        self.resolution = int(resolution)

    @property
    def native_resolution(self) -> int:
        return self.resolution

    def dit_token_ids(self, tokens: torch.Tensor) -> torch.Tensor:
        """The prior tokens the DiT reads: the target grid (after the preview), upsampled 2x as the pipeline does."""
        h, w = self.grids.target
        target = tokens[:, self.grids.num_tokens - h * w:self.grids.num_tokens]
        return torch.cat([self.pipe._upsample_token_ids(row, h, w) for row in target])

    @torch.no_grad()
    def render(self, cond: torch.Tensor, seeds, cfg: RendererConfig) -> torch.Tensor:
        n = self.grids.num_tokens
        if seeds is None:
            seeds = list(range(cond.shape[0]))
        dev = next(self.transformer.parameters()).device
        out = []
        for s in range(0, cond.shape[0], cfg.decode_chunk_size):
            part = cond[s:s + cfg.decode_chunk_size]
            prompts = [bytes_text(row) for row in part[:, n:]]
            generators = [torch.Generator(device=dev).manual_seed(int(x)) for x in seeds[s:s + part.shape[0]]]
            images = self.pipe(prompt=prompts, prior_token_ids=self.dit_token_ids(part[:, :n]).to(dev),
                               height=self.resolution, width=self.resolution,
                               num_inference_steps=cfg.num_inference_steps, guidance_scale=cfg.guidance_scale,
                               generator=generators, output_type="pt").images
            out.append((images.float() * 255.0).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).cpu())
        return torch.cat(out) if out else torch.empty((0, 0, 0, 3), dtype=torch.uint8)


class GlmImageGenerator(nn.Module):
    conditioning_tracks_policy = False  # the DiT reads token ids and glyph text, not hidden states (module doc)

    def __init__(self, lm: nn.Module, processor, renderer: GlmImageDiTRenderer, *, num_codes: int):
        super().__init__()
        self.lm = lm
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.renderer = renderer
        self.grids = renderer.grids
        self.tokens_per_image = self.grids.num_tokens
        self.vocab = GlmImageVocab(int(num_codes))
        self.load_report: dict = {}
        self.generation_config: dict | None = None
        self.image_tokenizer = None  # text-to-image only
        self.edit_template = None
        self.compute_dtype: torch.dtype | None = None
        self.renderer.requires_grad_(False)
        self.renderer.eval()

    @property
    def device(self) -> torch.device:
        return next(self.lm.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.lm.parameters()).dtype

    def autocast(self):
        return lm_autocast(self.lm, self.compute_dtype)

    # ---- the interface ---------------------------------------------------------------------------------------
    def encode_prompts(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Captions → (ids, mask) [B, P], left-padded, as `GlmImagePipeline.generate_prior_tokens` builds them: the
        checkpoint's chat template through `GlmImageProcessor`, which appends the target and preview grid sizes and
        the image-start token."""
        messages = [[{"role": "user", "content": [{"type": "text", "text": p}]}] for p in prompts]
        enc = self.processor.apply_chat_template(messages, tokenize=True, padding=True, target_h=self.renderer.resolution,
                                                 target_w=self.renderer.resolution, return_dict=True,
                                                 return_tensors="pt")
        grid = enc["image_grid_thw"][:2].tolist()
        if [tuple(grid[0][1:]), tuple(grid[1][1:])] != [self.grids.target, self.grids.preview]:
            raise ValueError(f"the processor asks for grids {grid}, the generator was built for {self.grids}")
        return enc["input_ids"].to(self.device), enc["attention_mask"].to(self.device)

    def enable_editing(self, image_tokenizer, edit_template=None) -> None:
        raise ValueError("GLM-Image is loaded for text-to-image only: editing rows are not supported")

    def _conditioning(self, prompt_ids, prompt_mask, tokens) -> torch.Tensor:
        texts = [self.tokenizer.decode(row[m.bool()], skip_special_tokens=True)
                 for row, m in zip(prompt_ids.cpu(), prompt_mask.cpu())]
        return torch.cat([tokens, text_bytes(texts, tokens.device)], dim=1)

    def sample_image_tokens(self, prompt_ids, prompt_mask, sampling: SamplingConfig,
                            generator: torch.Generator | None = None):
        if sampling.guidance_scale not in (None, 1.0):
            raise ValueError("GLM-Image samples its AR prior tokens without classifier-free guidance (the released "
                             "pipeline's guidance is on the DiT: rollout.renderer.guidance_scale); set "
                             "rollout.sampling.guidance_scale to null")
        with self.autocast():
            out = sample_prior_tokens(self.lm, prompt_ids, prompt_mask, grids=self.grids,
                                      num_codes=self.vocab.num_image_tokens, sampling=sampling, generator=generator)
        return SampledImageTokens(out.image_tokens, out.logprobs,
                                  self._conditioning(prompt_ids, prompt_mask, out.image_tokens))

    def token_logprobs(self, lm: nn.Module, prompt_ids, prompt_mask, image_tokens, sampling: SamplingConfig, *,
                       chunk_size: int | None = None, with_entropy: bool = False, with_hidden: bool = False):
        """Log-probs of `image_tokens` under `lm` (the policy, a peft wrap, or the reference copy). The caller sets
        the autocast."""
        if with_hidden:
            raise ValueError("trainer.conditioning_anchor does not apply to GLM-Image: its DiT reads token ids, not "
                             "hidden states, so there is no conditioning to anchor; set it to 0")
        return prior_token_logprobs(lm, prompt_ids, prompt_mask, image_tokens, grids=self.grids,
                                    num_codes=self.vocab.num_image_tokens, sampling=sampling, chunk_size=chunk_size,
                                    with_entropy=with_entropy)

    def image_token_logprobs(self, prompt_ids, prompt_mask, image_tokens, sampling: SamplingConfig, **kw):
        with self.autocast():
            return self.token_logprobs(self.lm, prompt_ids, prompt_mask, image_tokens, sampling, **kw)

    def conditioning_hidden_states(self, prompt_ids, prompt_mask, image_tokens) -> torch.Tensor:
        """What the renderer reads: the token ids and the prompt text (module doc)."""
        return self._conditioning(prompt_ids, prompt_mask, image_tokens)

    def render(self, cond: torch.Tensor, seeds, cfg: RendererConfig) -> torch.Tensor:
        return self.renderer.render(cond, seeds, cfg)

    def doctor_checks(self, sampling: SamplingConfig, texts: list[str], seed: int, tolerances, echo):
        """`nativerl doctor`'s comparisons for GLM-Image: ours vs transformers' generate
        (rollouts/glm_image/upstream_reference.py). → [(name, value, tolerance, unit)]."""
        from rollouts.glm_image.upstream_reference import glm_image_doctor_checks

        return glm_image_doctor_checks(self, sampling, texts, seed, tolerances, echo)

    # ---- files ------------------------------------------------------------------------------------------------
    def save_pretrained(self, directory: str | Path, **_ignored) -> None:
        """The released diffusers layout again (the AR put back into the pipeline for the save)."""
        from rollouts.lm_parts import unwrap_peft

        pipe = self.renderer.pipe
        pipe.register_modules(vision_language_encoder=unwrap_peft(self.lm))
        try:
            pipe.save_pretrained(directory, safe_serialization=True)
        finally:
            pipe.register_modules(vision_language_encoder=None)
