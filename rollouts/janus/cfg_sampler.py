"""Janus-Pro's image tokens with classifier-free guidance on the logits: the sampler and the trainer's scorer.

Janus samples each image token from the *guided* logits

    l_cfg = l_u + w · (l_c − l_u)

where l_c is the generation head's output on the conditional row (the prompt) and l_u on the unconditional row (the
same prompt with every token except BOS and `<begin_of_image>` replaced by the pad token, as transformers'
`JanusForConditionalGeneration.generate` and DeepSeek's reference code build it), both rows continued with the
*same* image tokens. w = `sampling.guidance_scale` (Janus-Pro: 5; 1 or None-with-no-default = off: the
unconditional row is not computed at all). Temperature, top-k and top-p then apply to l_cfg, in HF's order
(`ClassifierFreeGuidanceLogitsProcessor` runs before the warpers), through the same `rollouts/sampler.py` functions
the BLIP3o-NEXT path uses, so "the distribution sampled" is defined once.

The trainer scores exactly that distribution: `janus_image_token_logprobs` runs one teacher-forced forward over
*both* rows (a [2B, P+N−1] batch), combines their logits with the same w and applies
`processed_logits(·, sampling)`; the trainer passes `scored_distribution(sampling)` (top-k/top-p removed, as for
BLIP3o-NEXT), so every token has a finite log-prob and no kept set can differ between sampler and trainer. Tested
equal to the sampler's log-probs in fp32 and under bf16 autocast (tests/test_janus.py).

Which branches carry gradient: **both**. log π_cfg(a) = log softmax((l_u + w(l_c − l_u)) / T)[a] depends on the
weights through l_c (coefficient w) and through l_u (coefficient 1 − w, negative for w > 1), and the two rows share
every weight. The GRPO ratio and KL are functions of log π_cfg; their gradient is only the gradient of that
function if l_u is differentiated too. Detaching the unconditional row would train a different objective from the
one whose values the loss reports, and the update would move π_cfg in a direction nobody computed. The cost is a
second row per sample in the backward (2x the LM activations); the memory for it is bounded by chunking the
head as in `rollouts/sampler.py`. (Whether T2I-R1's or STAGE's trainers detach one row we have not checked.)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from rollouts.config import SamplingConfig
from rollouts.lm_parts import _cache_kwarg_name, positions_from_mask
from rollouts.sampler import SampledImageTokens, picked_logprobs, processed_logits, sample_from_logits


@dataclass(frozen=True)
class JanusSpecialIds:
    """The token ids CFG needs: those kept in the unconditional row (BOS, `<begin_of_image>`) and the pad."""

    bos: int
    boi: int
    pad: int


@dataclass
class JanusParts:
    """The modules of a `JanusForConditionalGeneration` (or a peft wrap of one) that text-to-image touches."""

    language_model: nn.Module  # LlamaModel: inputs_embeds → last_hidden_state (post final norm)
    text_embeddings: nn.Module  # prompt token ids → embeddings
    image_embeddings: nn.Module  # image codes → embeddings (generation_embeddings + generation_aligner)
    head: nn.Module  # generation_head: hidden → K logits


class _ImageEmbedding(nn.Module):
    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        return self.model.prepare_embeddings_for_image_generation(codes)


def janus_parts(model: nn.Module) -> JanusParts:
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model  # peft → the Janus model
    body = inner.model
    return JanusParts(body.language_model, inner.get_input_embeddings(), _ImageEmbedding(inner),
                      body.generation_head)


def guidance_weight(sampling: SamplingConfig) -> float:
    return 1.0 if sampling.guidance_scale is None else float(sampling.guidance_scale)


def guided_logits(logits: torch.Tensor, batch: int, weight: float) -> torch.Tensor:
    """[2B, .., K] (conditional rows first) → float32 l_u + w (l_c − l_u); [B, .., K] as is when w == 1."""
    logits = logits.float()
    if weight == 1.0:
        return logits
    cond, uncond = logits[:batch], logits[batch:]
    return uncond + weight * (cond - uncond)


def unconditional_prompt(prompt_ids: torch.Tensor, special: JanusSpecialIds) -> torch.Tensor:
    """The unconditional row: every token but BOS and `<begin_of_image>` becomes the pad token (left padding
    already is). The attention mask stays the prompt's, as in transformers' Janus generate."""
    keep = (prompt_ids == special.bos) | (prompt_ids == special.boi)
    return prompt_ids.masked_fill(~keep, special.pad)


def _rows(prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, special: JanusSpecialIds, guided: bool):
    if not guided:
        return prompt_ids, prompt_mask
    return (torch.cat([prompt_ids, unconditional_prompt(prompt_ids, special)]),
            torch.cat([prompt_mask, prompt_mask]))


def _check_prompts(prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, special: JanusSpecialIds) -> None:
    if prompt_ids.ndim != 2 or prompt_ids.shape != prompt_mask.shape:
        raise ValueError(f"prompt_ids {tuple(prompt_ids.shape)} / prompt_mask {tuple(prompt_mask.shape)} "
                         "must both be [B, P]")
    if not bool((prompt_ids[:, -1] == special.boi).all()):
        raise ValueError("every Janus prompt must end with <begin_of_image> (use the generator's encode_prompts)")


@torch.no_grad()
def sample_janus_image_tokens(model: nn.Module, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, *,
                              num_tokens: int, num_codes: int, sampling: SamplingConfig, special: JanusSpecialIds,
                              generator: torch.Generator | None = None) -> SampledImageTokens:
    """`num_tokens` codes per row of a left-padded batch ending in `<begin_of_image>`, in one KV-cached pass
    over the conditional and (with guidance) unconditional rows. `cond_hidden` of the result holds the codes
    themselves: Janus's VQ decoder reads token ids, not hidden states."""
    _check_prompts(prompt_ids, prompt_mask, special)
    from transformers import StaticCache

    parts = janus_parts(model)
    w = guidance_weight(sampling)
    b, p = prompt_ids.shape
    ids, mask = _rows(prompt_ids, prompt_mask, special, w != 1.0)
    lm = parts.language_model
    cache = StaticCache(config=lm.config, max_cache_len=p + num_tokens)
    cache_kw = _cache_kwarg_name(type(lm))
    positions = positions_from_mask(mask)
    embeds = parts.text_embeddings(ids)
    out = lm(inputs_embeds=embeds, attention_mask=mask, position_ids=positions, use_cache=True, **{cache_kw: cache})
    hidden = out.last_hidden_state[:, -1]
    next_pos = positions[:, -1:] + 1
    tokens = torch.empty((b, num_tokens), dtype=torch.long, device=prompt_ids.device)
    logprobs = torch.empty((b, num_tokens), dtype=torch.float32, device=prompt_ids.device)
    for t in range(num_tokens):
        logits = guided_logits(parts.head(hidden), b, w)
        if logits.shape[-1] != num_codes:
            raise ValueError(f"the generation head gives {logits.shape[-1]} logits, the codebook has {num_codes}")
        tokens[:, t], logprobs[:, t] = sample_from_logits(logits, sampling, generator)
        if t == num_tokens - 1:
            break  # the last token's hidden state is not needed: the decoder reads ids
        step_codes = tokens[:, t:t + 1].repeat(ids.shape[0] // b, 1)
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
        # In the prompt's dtype: under autocast the aligner's Linear gives bf16, the embedding table fp32, and the
        # cache keeps the dtype of its first write (the trainer's forward concatenates in the same dtype).
        step = parts.image_embeddings(step_codes).to(embeds.dtype)
        out = lm(inputs_embeds=step, attention_mask=mask, position_ids=next_pos, use_cache=True, **{cache_kw: cache})
        hidden = out.last_hidden_state[:, -1]
        next_pos = next_pos + 1
    return SampledImageTokens(tokens, logprobs, tokens)


def _chunk_logprobs(hidden: torch.Tensor, targets: torch.Tensor, head: nn.Module, batch: int, weight: float,
                    sampling: SamplingConfig, with_entropy: bool) -> torch.Tensor:
    logp = processed_logits(guided_logits(head(hidden), batch, weight), sampling).log_softmax(-1)
    return picked_logprobs(logp, targets, with_entropy)


def janus_image_token_logprobs(model: nn.Module, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor,
                               image_tokens: torch.Tensor, *, sampling: SamplingConfig, special: JanusSpecialIds,
                               chunk_size: int | None = None, with_entropy: bool = False):
    """Log-probs [B, N] (differentiable through both CFG rows, see the module doc) of given codes under the
    guided, processed distribution; `(logprobs, entropy)` with `with_entropy`. One teacher-forced forward over
    [cond; uncond] rows, then the head + CFG + logit processing in checkpointed chunks of positions."""
    _check_prompts(prompt_ids, prompt_mask, special)
    parts = janus_parts(model)
    w = guidance_weight(sampling)
    b, p = prompt_ids.shape
    n = image_tokens.shape[1]
    image_tokens = image_tokens.to(prompt_ids.device)
    ids, mask = _rows(prompt_ids, prompt_mask, special, w != 1.0)
    copies = ids.shape[0] // b
    embeds = parts.text_embeddings(ids)
    if n > 1:  # the image tokens fed back: all but the last (its logits are never needed)
        fed = parts.image_embeddings(image_tokens[:, :-1].repeat(copies, 1)).to(embeds.dtype)
        embeds = torch.cat([embeds, fed], dim=1)
        mask = torch.cat([mask, torch.ones((mask.shape[0], n - 1), dtype=mask.dtype, device=mask.device)], dim=1)
    hidden = parts.language_model(inputs_embeds=embeds, attention_mask=mask,
                                  position_ids=positions_from_mask(mask)).last_hidden_state[:, p - 1:]
    chunk = chunk_size or sampling.logprob_chunk_size
    pieces = []
    for s in range(0, n, chunk):
        # Rows of one chunk: the B conditional then the B unconditional rows of the same positions.
        h, tgt = hidden[:, s:s + chunk], image_tokens[:, s:s + chunk]
        if torch.is_grad_enabled() and h.requires_grad:
            pieces.append(checkpoint(_chunk_logprobs, h, tgt, parts.head, b, w, sampling, with_entropy,
                                     use_reentrant=False))
        else:
            pieces.append(_chunk_logprobs(h, tgt, parts.head, b, w, sampling, with_entropy))
    out = torch.cat(pieces, dim=1)
    if with_entropy:
        return out[..., 0], out[..., 1]
    return out
