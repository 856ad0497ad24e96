"""Reference-image conditioning for editing: the reference reaches the AR context and, optionally, the renderer.

BLIP3o-NEXT edit branch (`BLIP3o-NEXT-edit`; shared notes blip3o-next.md §1 "Editing"):

1. **AR context.** User text `Please edit this image according to the following instruction: {instruction}.\\n
   <image>`; `<image>` becomes `<|vision_start|>` + the reference's N image-token ids (TA-Tok codes as `<I k>`) +
   `<|vision_end|>`; then, as for text-to-image, `<im_start><S0>` and N generated tokens. `encode_edit_prompts`
   builds exactly this (left-padded), so the sampler, the conditioning window and the trainer's log-prob
   recomputation work unchanged: the prompt still ends `<im_start><S0>`.
2. **Reference VAE latents → renderer** (both optional, as upstream):
   - `use_und_image_vae` (`latent_tokens=True`): every latent pixel of the reference (DC-AE: 32×32×32) goes through
     its own connector, Linear(C → caption width) → GELU(tanh) → Linear → RMSNorm (the same shape as the hidden-state
     connector, `rollouts/connector.py`), and the h·w tokens are appended after the N+1 AR tokens in the
     cross-attention states. CFG's unconditional branch and SFT's condition dropout zero these tokens *after*
     their connector, as upstream does (the edit branch multiplies the connected condition by the drop mask; an
     RMSNorm'd connector(0) is not 0). The AR hidden states are still zeroed before theirs, as in text-to-image.
   - `use_und_image_vae_as_noise` (`concat_noise=True`): the clean reference latent is concatenated to the noisy
     latent along the width (h × 2w) at every step, and the transformer's output is sliced back to the first w
     columns. It is kept in both CFG branches (the guidance is on the instruction, not on the image being edited).
   `ReferenceConditionedRenderer` adds both to `Renderer`; with both off it is exactly `Renderer`.

Checkpoints (`rollouts/blip3o_checkpoint.py`): the latent connector's keys are `model.und_image_vae_connector.*`
and `config.json` carries `use_und_image_vae` / `use_und_image_vae_as_noise`, as upstream names them (the unused
`model.und_image_vae_as_noise_connector.*` upstream also saves is skipped).

Reference pixels are prepared as upstream's edit inference does (`Resize(1024)` then `CenterCrop(1024)` in
torchvision terms): the shorter side is scaled to the output size, then the centre square is cut, so the aspect
ratio is kept (`fit_reference`).

The vision markers are Qwen's `<|vision_start|>` / `<|vision_end|>`. Tokenizers without them (the offline preset
tokenizers) get them appended with `add_reference_markers`, after the image vocabulary, so the image-token ids
and `ImageVocab` do not move; new embedding rows start at the mean embedding (as BLIP3o-NEXT's added tokens).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, field_validator
from torch import nn

from rollouts.config import RendererConfig
from rollouts.connector import build_connector
from rollouts.renderer import Renderer, render_images, seeded_noise
from rollouts.vocab import ImageVocab

VISION_START = "<|vision_start|>"
VISION_END = "<|vision_end|>"
IMAGE_PLACEHOLDER = "<image>"


class EditTemplateConfig(BaseModel):
    """How an instruction + reference become the AR prompt (BLIP3o-NEXT-edit's user message)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    use_chat_template: bool = Field(True, description="Wrap the user message in the tokenizer's chat template.")
    system_message: str | None = Field("You are a helpful assistant.", description="System turn; None = none.")
    instruction_template: str = Field(
        "Please edit this image according to the following instruction: {instruction}.\n" + IMAGE_PLACEHOLDER,
        description="User message; must contain '{instruction}' and exactly one '<image>' (the reference).")

    @field_validator("instruction_template")
    @classmethod
    def _has_slots(cls, value: str) -> str:
        if "{instruction}" not in value:
            raise ValueError(f"instruction_template must contain '{{instruction}}', got {value!r}")
        if value.count(IMAGE_PLACEHOLDER) != 1:
            raise ValueError(f"instruction_template must contain '{IMAGE_PLACEHOLDER}' exactly once, got {value!r}")
        return value


@dataclass(frozen=True)
class ReferenceMarkers:
    vision_start_id: int
    vision_end_id: int

    @staticmethod
    def from_tokenizer(tokenizer) -> ReferenceMarkers:
        ids = []
        for tok in (VISION_START, VISION_END):
            i = tokenizer.convert_tokens_to_ids(tok)
            if i is None or i == tokenizer.unk_token_id:
                raise ValueError(f"tokenizer has no {tok!r} token; call rollouts.reference_image."
                                 "add_reference_markers(tokenizer, lm) first")
            ids.append(int(i))
        return ReferenceMarkers(*ids)


def add_reference_markers(tokenizer, lm: nn.Module | None = None) -> ReferenceMarkers:
    """Append `<|vision_start|>` / `<|vision_end|>` when missing; grow the LM's embeddings (mean init) to match."""
    missing = [t for t in (VISION_START, VISION_END)
               if tokenizer.convert_tokens_to_ids(t) in (None, tokenizer.unk_token_id)]
    if missing:
        tokenizer.add_special_tokens({"additional_special_tokens": missing}, replace_extra_special_tokens=False)
    if lm is not None and lm.get_input_embeddings().weight.shape[0] < len(tokenizer):
        lm.resize_token_embeddings(len(tokenizer), mean_resizing=True)
    return ReferenceMarkers.from_tokenizer(tokenizer)


def edit_prompt_text(instruction: str, template: EditTemplateConfig, tokenizer) -> tuple[str, str]:
    """(text before the reference, text after it), chat template applied."""
    user = template.instruction_template.replace("{instruction}", instruction)
    if template.use_chat_template:
        messages = []
        if template.system_message is not None:
            messages.append({"role": "system", "content": template.system_message})
        messages.append({"role": "user", "content": user})
        user = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    before, sep, after = user.partition(IMAGE_PLACEHOLDER)
    if not sep or IMAGE_PLACEHOLDER in after:
        raise ValueError(f"the edit prompt must contain {IMAGE_PLACEHOLDER!r} exactly once (the instruction "
                         f"{instruction!r} may not contain it)")
    return before, after


def encode_edit_prompts(instructions: Sequence[str], reference_codes: torch.Tensor, tokenizer, vocab: ImageVocab,
                        markers: ReferenceMarkers, template: EditTemplateConfig,
                        pad_token_id: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """→ (prompt_ids [B,P], prompt_mask [B,P]) long, left-padded. Row i:

    text-before, `<|vision_start|>`, `<I c>` for each of the reference's codes c, `<|vision_end|>`, text-after,
    `<im_start>`, `<S0>`.
    """
    if len(instructions) == 0:
        raise ValueError("encode_edit_prompts got no instructions")
    codes = torch.as_tensor(reference_codes, dtype=torch.long).cpu()
    if codes.ndim != 2 or codes.shape[0] != len(instructions):
        raise ValueError(f"reference_codes must be [B={len(instructions)}, N], got {tuple(codes.shape)}")
    if codes.numel() and (codes.min() < 0 or codes.max() >= vocab.num_image_tokens):
        raise ValueError(f"reference codes must lie in [0, {vocab.num_image_tokens})")
    tail = [vocab.im_start_id, vocab.scale_ids[0]]
    rows = []
    for text, ref in zip(instructions, codes):
        before, after = edit_prompt_text(text, template, tokenizer)
        ids = list(tokenizer(before, add_special_tokens=False)["input_ids"]) if before else []
        ids += [markers.vision_start_id] + vocab.to_ids(ref).tolist() + [markers.vision_end_id]
        ids += list(tokenizer(after, add_special_tokens=False)["input_ids"]) if after else []
        rows.append(ids + tail)
    pad = pad_token_id if pad_token_id is not None else (tokenizer.pad_token_id or 0)
    width = max(len(r) for r in rows)
    ids_t = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids_t[i, width - len(r):] = torch.tensor(r, dtype=torch.long)
        mask[i, width - len(r):] = 1
    return ids_t, mask


def reference_span(prompt_ids: torch.Tensor, markers: ReferenceMarkers) -> list[tuple[int, int]]:
    """Per row, [start, stop) of the reference's image tokens (between the markers) in an encoded prompt."""
    spans = []
    for i, row in enumerate(prompt_ids.tolist()):
        if row.count(markers.vision_start_id) != 1 or row.count(markers.vision_end_id) != 1:
            raise ValueError(f"prompt row {i} does not hold exactly one vision_start / vision_end pair")
        spans.append((row.index(markers.vision_start_id) + 1, row.index(markers.vision_end_id)))
    return spans


# ---- renderer side ---------------------------------------------------------------------------------------------
def build_latent_connector(latent_channels: int, caption_width: int) -> nn.Sequential:
    """BLIP3o-NEXT-edit `use_und_image_vae`: Linear(C → width) → GELU(tanh) → Linear → RMSNorm, per latent pixel."""
    return build_connector(latent_channels, caption_width)


class ReferenceConditionedRenderer(Renderer):
    """`Renderer` + the reference's clean latents as extra cross-attention tokens and/or width-concatenated input."""

    def __init__(self, connector: nn.Module, transformer: nn.Module, vae: nn.Module, scheduler, *,
                 latent_connector: nn.Module | None = None, concat_noise: bool = False):
        super().__init__(connector, transformer, vae, scheduler)
        self.latent_connector = latent_connector
        self.concat_noise = bool(concat_noise)

    @classmethod
    def from_renderer(cls, renderer: Renderer, *, latent_tokens: bool, concat_noise: bool,
                      seed: int = 0) -> ReferenceConditionedRenderer:
        """Add the options to an existing renderer (shares its modules); a new latent connector is random."""
        latent_connector = None
        if latent_tokens:
            with torch.random.fork_rng():
                torch.manual_seed(seed)
                latent_connector = build_latent_connector(
                    renderer.latent_channels, int(renderer.transformer.config.caption_channels))
            latent_connector.to(device=renderer.device, dtype=renderer.dtype)
        out = cls(renderer.connector, renderer.transformer, renderer.vae, renderer.scheduler,
                  latent_connector=latent_connector, concat_noise=concat_noise)
        out.requires_grad_(False)
        return out

    @property
    def uses_reference(self) -> bool:
        return self.latent_connector is not None or self.concat_noise

    def reference_states(self, reference_latents: torch.Tensor) -> torch.Tensor:
        """[B, C, h, w] clean reference latents → [B, h*w, caption_width] cross-attention tokens (raster order)."""
        tokens = reference_latents.to(self.device, self.dtype).flatten(2).transpose(1, 2)
        return self.latent_connector(tokens)

    def conditioning(self, cond_hidden: torch.Tensor, reference_latents: torch.Tensor | None,
                     keep: torch.Tensor | None = None) -> torch.Tensor:
        """Cross-attention states: connector(AR window) [+ latent_connector(reference)]; `keep` [B] drops rows
        (condition dropout / the CFG unconditional branch): the AR window is zeroed before its connector, the
        reference tokens after theirs (both as upstream)."""
        if keep is not None:
            cond_hidden = cond_hidden * keep.to(cond_hidden.dtype)[:, None, None]
        states = self.encoder_states(cond_hidden)
        if self.latent_connector is None:
            return states
        if reference_latents is None:
            raise ValueError("this renderer appends reference latent tokens: pass reference_latents")
        ref_states = self.reference_states(reference_latents)
        if keep is not None:  # after the connector, as upstream (connector(0) = its biases through RMSNorm, not 0)
            ref_states = ref_states * keep.to(ref_states.dtype)[:, None, None]
        return torch.cat([states, ref_states], dim=1)

    def velocity_with_reference(self, latents: torch.Tensor, states: torch.Tensor, timestep: torch.Tensor,
                                reference_latents: torch.Tensor | None) -> torch.Tensor:
        if not self.concat_noise:
            return self.velocity(latents, states, timestep)
        if reference_latents is None:
            raise ValueError("this renderer concatenates the reference latent to the noise: pass reference_latents")
        ref = reference_latents.to(latents.device, latents.dtype)
        if ref.shape != latents.shape:
            raise ValueError(f"reference latents {tuple(ref.shape)} must match the latents {tuple(latents.shape)}")
        w = latents.shape[-1]
        return self.velocity(torch.cat([latents, ref], dim=-1), states, timestep)[..., :w]

    @torch.no_grad()
    def sample_latents(self, cond_hidden: torch.Tensor, noise: torch.Tensor, cfg: RendererConfig,
                       reference_latents: torch.Tensor | None = None) -> torch.Tensor:
        if not self.uses_reference:
            return super().sample_latents(cond_hidden, noise, cfg)
        b = cond_hidden.shape[0]
        ref = reference_latents.to(self.device, torch.float32) if reference_latents is not None else None
        cond = self.conditioning(cond_hidden, ref)
        guided = cfg.guidance_scale != 1.0
        uncond = self.conditioning(cond_hidden, ref, keep=torch.zeros(b, device=cond_hidden.device)) if guided \
            else None
        sigmas, timesteps = self.sigmas_and_timesteps(cfg.num_inference_steps)
        x = noise.to(self.device, torch.float32)
        for i, t in enumerate(timesteps):
            t = t.to(self.device)
            if uncond is None:
                v = self.velocity_with_reference(x, cond, t, ref)
            else:
                both = self.velocity_with_reference(torch.cat([x, x]), torch.cat([uncond, cond]), t,
                                                    torch.cat([ref, ref]) if ref is not None else None)
                v_u, v_c = both.chunk(2)
                v = v_u + cfg.guidance_scale * (v_c - v_u)
            x = x + (sigmas[i + 1] - sigmas[i]).item() * v
        return x

    def training_loss(self, cond_hidden: torch.Tensor, clean_latents: torch.Tensor,
                      generator: torch.Generator | None = None, drop_prob: float = 0.1,
                      reference_latents: torch.Tensor | None = None) -> torch.Tensor:
        """`Renderer.training_loss` (σ ~ U(0,1), target ε − x) with the reference: its tokens are dropped with the
        AR condition; the noise-space concatenation is always present."""
        if not self.uses_reference:
            return super().training_loss(cond_hidden, clean_latents, generator, drop_prob)
        b = clean_latents.shape[0]
        device = clean_latents.device
        keep = (torch.rand(b, generator=generator) >= drop_prob).to(device)
        sigma = torch.rand(b, generator=generator).to(device)
        noise = torch.randn(clean_latents.shape, generator=generator).to(device)
        x = clean_latents.float()
        s = sigma[:, None, None, None]
        noisy = (1 - s) * x + s * noise
        states = self.conditioning(cond_hidden, reference_latents, keep=keep)
        num_train = float(self.scheduler.config.num_train_timesteps)
        pred = self.velocity_with_reference(noisy, states, sigma * num_train, reference_latents)
        return F.mse_loss(pred, noise - x)


def fit_reference(image: np.ndarray, size: int) -> np.ndarray:
    """uint8 [H,W,3] → [size,size,3]: shorter side scaled to `size` (bicubic, PIL), then the centre square cut
    (upstream: torchvision Resize(size) + CenterCrop(size)); unchanged when already that size."""
    h, w = image.shape[:2]
    if (h, w) == (size, size):
        return image
    from PIL import Image

    scale = size / min(h, w)
    nh, nw = max(size, round(h * scale)), max(size, round(w * scale))
    resized = np.asarray(Image.fromarray(image).resize((nw, nh), Image.BICUBIC))
    top, left = (nh - size) // 2, (nw - size) // 2
    return resized[top:top + size, left:left + size]


def resize_images(images: np.ndarray, size: int) -> np.ndarray:
    """uint8 [B,H,W,3] → [B,size,size,3] with `fit_reference` (aspect kept: scale, then centre crop)."""
    if images.shape[1:3] == (size, size):
        return images
    return np.stack([fit_reference(im, size) for im in images])


@torch.no_grad()
def reference_latents_for(renderer: Renderer, reference_images: np.ndarray, resolution: int | None) -> torch.Tensor:
    """Reference pixels → scaled clean latents at the output resolution (what the renderer concatenates/attends)."""
    size = resolution or renderer.native_resolution
    pixels = torch.from_numpy(np.ascontiguousarray(resize_images(np.asarray(reference_images), size)))
    return renderer.encode_images(pixels)


@torch.no_grad()
def render_edited_images(renderer: Renderer, cond_hidden: torch.Tensor, reference_latents: torch.Tensor | None,
                         seeds: Sequence[int] | torch.Tensor, cfg: RendererConfig) -> torch.Tensor:
    """`render_images` with the reference latents (ignored by a renderer without reference options)."""
    if not isinstance(renderer, ReferenceConditionedRenderer) or not renderer.uses_reference:
        return render_images(renderer, cond_hidden, seeds, cfg)
    seeds = [int(s) for s in (seeds.tolist() if isinstance(seeds, torch.Tensor) else seeds)]
    if len(seeds) != cond_hidden.shape[0] or reference_latents is None or len(reference_latents) != len(seeds):
        raise ValueError(f"render_edited_images needs one seed and one reference latent per row "
                         f"({cond_hidden.shape[0]} rows)")
    size = renderer.latent_size(cfg.resolution)
    out = []
    for s in range(0, len(seeds), cfg.decode_chunk_size):
        chunk_seeds = seeds[s:s + cfg.decode_chunk_size]
        noise = seeded_noise(chunk_seeds, (renderer.latent_channels, size, size))
        rows = slice(s, s + len(chunk_seeds))
        latents = renderer.sample_latents(cond_hidden[rows].to(renderer.device), noise, cfg,
                                          reference_latents=reference_latents[rows])
        out.append(renderer.decode(latents))
    return torch.cat(out)
