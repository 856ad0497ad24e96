"""GLM-Image's AR prior tokens: our sampler and the trainer's scorer, over transformers' own modules.

For a text-to-image prompt, GLM-Image's AR (`GlmImageForConditionalGeneration`) emits, after the prompt's final
image-start token, a small *preview* grid of codes (16x16 for a square image), then the *target* grid (H/32 x W/32),
then an image-end token; the diffusers pipeline keeps only the target grid, upsamples it 2x (nearest) and gives
those ids to the DiT. Positions are GLM's 3D rope: `GlmImageModel.get_rope_index` computes the prompt's
[3, B, P] positions and, for the grids to be generated, each generated token's (temporal, height, width)
position (`_cached_decode_position_ids`); transformers' `generate` reads them step by step. We call the same
function and use its positions in both passes, so the sampler and the trainer place every token identically.

What is sampled: each of the N = preview + target codes from the generation head's logits restricted to the K
image codes (ids [0, K); the head's other outputs, image start/end and unused ids, are left out: a fixed-size
grid has no place for them), then temperature / top-k / top-p through `rollouts/sampler.py`, the same functions
as the BLIP3o-NEXT and Janus paths. transformers' `generate` samples over all `vision_vocab_size` outputs; the
two agree whenever it emits a code, which a trained model does at every grid position.

The trainer scores that distribution with one teacher-forced forward (prompt + the first N-1 codes) and the head in
checkpointed chunks; the trainer passes `scored_distribution(sampling)` (no top-k/top-p), so every code has a
finite log-prob. Tested equal to the sampler's log-probs in fp32 and under bf16 autocast (tests/test_glm_image.py).
GRPO trains all N tokens: the preview grid is sampled by the policy and conditions the target grid.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from rollouts.config import SamplingConfig
from rollouts.lm_parts import _cache_kwarg_name
from rollouts.sampler import SampledImageTokens, picked_logprobs, processed_logits, sample_from_logits


@dataclass(frozen=True)
class GlmImageGrids:
    """The grids a text-to-image prompt asks for (GlmImageProcessor: target first, then the preview)."""

    target: tuple[int, int]  # (h, w) in 32-pixel tokens: what the DiT paints (upsampled 2x)
    preview: tuple[int, int]  # the small grid the AR emits first
    image_start: int  # the token every generation prompt ends with

    @property
    def num_tokens(self) -> int:
        return self.target[0] * self.target[1] + self.preview[0] * self.preview[1]

    def grid_thw(self, batch: int, device) -> tuple[torch.Tensor, torch.Tensor]:
        """(image_grid_thw [2B, 3], images_per_sample [B]) as the processor returns them."""
        one = torch.tensor([[1, *self.target], [1, *self.preview]], dtype=torch.long, device=device)
        return one.repeat(batch, 1), torch.full((batch,), 2, dtype=torch.long, device=device)


def glm_image_parts(model: nn.Module):
    """(GlmImageModel, its GlmImageTextModel, the generation head) of a GlmImageForConditionalGeneration or a peft
    wrap of one."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    return inner.model, inner.model.language_model, inner.lm_head


def prior_positions(model: nn.Module, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor,
                    grids: GlmImageGrids) -> tuple[torch.Tensor, torch.Tensor]:
    """→ (prompt positions [3, B, P], generated-token positions [3, B, N]) from transformers' get_rope_index."""
    body, _, _ = glm_image_parts(model)
    grid_thw, per_sample = grids.grid_thw(prompt_ids.shape[0], prompt_ids.device)
    prompt_pos, _ = body.get_rope_index(prompt_ids, image_grid_thw=grid_thw, images_per_sample=per_sample,
                                        attention_mask=prompt_mask)
    decode = body._cached_decode_position_ids  # [B, 3, N + 1]: the preview grid, the target grid, the end marker
    body._cached_decode_position_ids = None  # do not leave our batch's positions for a later generate call
    return prompt_pos, decode[:, :, :grids.num_tokens].permute(1, 0, 2)


def _check_prompts(prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, grids: GlmImageGrids) -> None:
    if prompt_ids.ndim != 2 or prompt_ids.shape != prompt_mask.shape:
        raise ValueError(f"prompt_ids {tuple(prompt_ids.shape)} / prompt_mask {tuple(prompt_mask.shape)} "
                         "must both be [B, P]")
    if not bool((prompt_ids[:, -1] == grids.image_start).all()):
        raise ValueError("every GLM-Image prompt must end with the image-start token (use the generator's "
                         "encode_prompts)")


def _code_logits(head: nn.Module, hidden: torch.Tensor, num_codes: int) -> torch.Tensor:
    return head(hidden)[..., :num_codes].float()


@torch.no_grad()
def sample_prior_tokens(model: nn.Module, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, *,
                        grids: GlmImageGrids, num_codes: int, sampling: SamplingConfig,
                        generator: torch.Generator | None = None) -> SampledImageTokens:
    """N = preview + target codes per row of a left-padded batch, one KV-cached pass. `cond_hidden` of the result
    is the codes themselves: the DiT reads token ids."""
    from transformers import DynamicCache

    _check_prompts(prompt_ids, prompt_mask, grids)
    _, lm, head = glm_image_parts(model)
    n = grids.num_tokens
    b = prompt_ids.shape[0]
    prompt_pos, gen_pos = prior_positions(model, prompt_ids, prompt_mask, grids)
    cache = DynamicCache(config=lm.config)
    cache_kw = {_cache_kwarg_name(type(lm)): cache}
    embed = lm.get_input_embeddings()
    out = lm(inputs_embeds=embed(prompt_ids), attention_mask=prompt_mask, position_ids=prompt_pos, use_cache=True,
             **cache_kw)
    hidden = out.last_hidden_state[:, -1]
    mask = prompt_mask
    tokens = torch.empty((b, n), dtype=torch.long, device=prompt_ids.device)
    logprobs = torch.empty((b, n), dtype=torch.float32, device=prompt_ids.device)
    for t in range(n):
        tokens[:, t], logprobs[:, t] = sample_from_logits(_code_logits(head, hidden, num_codes), sampling, generator)
        if t == n - 1:
            break
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
        out = lm(inputs_embeds=embed(tokens[:, t:t + 1]), attention_mask=mask, position_ids=gen_pos[:, :, t:t + 1],
                 use_cache=True, **cache_kw)
        hidden = out.last_hidden_state[:, -1]
    return SampledImageTokens(tokens, logprobs, tokens)


def _chunk_logprobs(hidden, targets, head, num_codes, sampling, with_entropy):
    logp = processed_logits(_code_logits(head, hidden, num_codes), sampling).log_softmax(-1)
    return picked_logprobs(logp, targets, with_entropy)


def prior_token_logprobs(model: nn.Module, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor,
                         image_tokens: torch.Tensor, *, grids: GlmImageGrids, num_codes: int,
                         sampling: SamplingConfig, chunk_size: int | None = None, with_entropy: bool = False):
    """Log-probs [B, N] (differentiable) of given codes under the processed distribution; `(logprobs, entropy)`
    with `with_entropy`. One teacher-forced forward at the sampler's positions, then the head in chunks."""
    _check_prompts(prompt_ids, prompt_mask, grids)
    _, lm, head = glm_image_parts(model)
    b, p = prompt_ids.shape
    n = image_tokens.shape[1]
    if n != grids.num_tokens:
        raise ValueError(f"{n} image tokens given, GLM-Image's grids take {grids.num_tokens}")
    image_tokens = image_tokens.to(prompt_ids.device)
    prompt_pos, gen_pos = prior_positions(model, prompt_ids, prompt_mask, grids)
    ids = torch.cat([prompt_ids, image_tokens[:, :-1]], dim=1)
    mask = torch.cat([prompt_mask, torch.ones((b, n - 1), dtype=prompt_mask.dtype, device=prompt_mask.device)], 1)
    positions = torch.cat([prompt_pos, gen_pos[:, :, :n - 1]], dim=2)
    hidden = lm(inputs_embeds=lm.get_input_embeddings()(ids), attention_mask=mask,
                position_ids=positions).last_hidden_state[:, p - 1:]
    chunk = chunk_size or sampling.logprob_chunk_size
    pieces = []
    for s in range(0, n, chunk):
        h, tgt = hidden[:, s:s + chunk], image_tokens[:, s:s + chunk]
        if torch.is_grad_enabled() and h.requires_grad:
            pieces.append(checkpoint(_chunk_logprobs, h, tgt, head, num_codes, sampling, with_entropy,
                                     use_reentrant=False))
        else:
            pieces.append(_chunk_logprobs(h, tgt, head, num_codes, sampling, with_entropy))
    out = torch.cat(pieces, dim=1)
    if with_entropy:
        return out[..., 0], out[..., 1]
    return out
