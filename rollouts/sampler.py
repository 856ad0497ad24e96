"""Sample N image tokens in one KV-cached pass, keeping log-probs and conditioning hidden states.

Upstream (BLIP3o-NEXT) calls HF `generate` for the tokens, then runs a second full forward for the hidden states,
and the trainer recomputes log-probs over the full ~217k vocabulary without the top-k/top-p the sampler used
(shared notes §4, pitfalls 1–2). Here:

- `sample_image_tokens` prefills the left-padded prompt, then decodes N tokens with a KV cache. Each step's last
  hidden state is both the next token's logit input and one row of the conditioning window, so tokens, log-probs
  and `cond_hidden` come from the same pass. One extra decode step feeds the N-th token to get its hidden state.
- The distribution sampled from is defined once, by `processed_logits`: logits / temperature, restricted to the
  image-token slice (default), then top-k, then top-p. `image_token_logprobs` applies the same function to a
  teacher-forced forward, so sampler and trainer see the same policy (tested to 1e-5 in fp32).
- Tokens outside the top-k/top-p set have log-prob −inf under that distribution. The sampler never produces them,
  and the *trainer never scores it*: training scores `scored_distribution(sampling)` (temperature and image-token
  restriction, no top-k/top-p), which gives every token a finite log-prob, so no recomputed kept set can differ from
  the sampler's (rl/grpo.py, "Which distribution is trained"). The truncated log-probs the sampler returns are the
  behaviour policy's, kept in the RolloutBatch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from rollouts.conditioning import teacher_forced_hidden
from rollouts.config import SamplingConfig
from rollouts.decode_step import DecodeStep
from rollouts.lm_parts import LogitHead, decoder_of, positions_from_mask, run_decoder
from rollouts.vocab import ImageVocab


@dataclass
class SampledImageTokens:
    image_tokens: torch.Tensor  # [B, N] long, codebook indices (id − image_token_offset)
    logprobs: torch.Tensor  # [B, N] float32, under the processed distribution
    cond_hidden: torch.Tensor  # [B, N+1, H], last-layer hidden states of <S0> + N image tokens


def truncated_logits(logits: torch.Tensor, sampling: SamplingConfig) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The sampling distribution in compact form: (values [.., V'], ids [.., V'] or None = identity).

    Order as HF's warpers: temperature, top-k, top-p. Top-k keeps exactly k entries (`torch.topk`); top-p keeps
    the smallest prefix of the sorted distribution whose mass reaches top_p (always at least the most likely
    token); dropped entries are −inf. Working on the k kept values avoids sorting the whole vocabulary.
    """
    x = logits.float() / sampling.temperature
    vocab = x.shape[-1]
    ids = None
    if sampling.top_k is not None and sampling.top_k < vocab:
        x, ids = torch.topk(x, sampling.top_k, dim=-1)  # sorted, descending
    if sampling.top_p is not None and sampling.top_p < 1.0:
        if ids is None:
            x, ids = torch.sort(x, dim=-1, descending=True)
        probs = x.softmax(-1)
        mass_before = probs.cumsum(-1) - probs  # mass of strictly more likely tokens
        x = x.masked_fill(mass_before > sampling.top_p, float("-inf"))
    return x, ids


def scored_distribution(sampling: SamplingConfig) -> SamplingConfig:
    """The distribution the trainer scores (policy, old policy and reference alike): the sampling distribution
    without its top-k/top-p truncation, i.e. logits / temperature over the same (image-token) slice. Its log-probs
    are finite for every token, as TRL's and upstream BLIP3o-NEXT's (which score the temperature-scaled softmax)."""
    return sampling.model_copy(update={"top_k": None, "top_p": None})


def processed_logits(logits: torch.Tensor, sampling: SamplingConfig) -> torch.Tensor:
    """The sampling distribution's logits over the full last dim (float32, −inf outside the kept set)."""
    values, ids = truncated_logits(logits, sampling)
    if ids is None:
        return values
    return torch.full_like(logits, float("-inf"), dtype=torch.float32).scatter(-1, ids, values)


def sample_from_logits(logits: torch.Tensor, sampling: SamplingConfig,
                       generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """One draw per row of [B, V] logits → (index [B] long, log-prob [B] float32) under `processed_logits`.

    Inverse-CDF sampling with one uniform per row (cheaper than multinomial's exponential draw over V)."""
    values, ids = truncated_logits(logits, sampling)
    logp = values.log_softmax(-1)
    cdf = logp.exp().cumsum(-1)
    u = 1.0 - torch.rand((logits.shape[0], 1), generator=generator, device=logits.device)  # (0, 1]
    choice = torch.searchsorted(cdf, u * cdf[:, -1:]).clamp_(max=values.shape[-1] - 1)
    picked_logp = logp.gather(-1, choice)[:, 0]
    index = ids.gather(-1, choice)[:, 0] if ids is not None else choice[:, 0]
    return index, picked_logp


def _logit_head(lm: nn.Module, vocab: ImageVocab, sampling: SamplingConfig) -> LogitHead:
    return LogitHead(lm, vocab.image_id_range if sampling.restrict_to_image_tokens else None)


def _to_codes(sampled: torch.Tensor, vocab: ImageVocab, sampling: SamplingConfig) -> torch.Tensor:
    # Restricted: indices into the slice are the codes. Unrestricted: full-vocab ids, shifted (a non-image id
    # gives a code outside [0, K); it still round-trips through image_token_logprobs).
    return sampled if sampling.restrict_to_image_tokens else sampled - vocab.image_token_offset


@torch.no_grad()
def sample_image_tokens(lm: nn.Module, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, *,
                        vocab: ImageVocab, num_tokens: int, sampling: SamplingConfig,
                        generator: torch.Generator | None = None,
                        decode_mode: str = "auto") -> SampledImageTokens:
    """Sample `num_tokens` image tokens per row of a left-padded batch ending in `<im_start><S0>`.

    `decode_mode` (see `rollouts/decode_step.py`): auto = CUDA graphs on GPU, static buffers on CPU."""
    if prompt_ids.ndim != 2 or prompt_ids.shape != prompt_mask.shape:
        raise ValueError(f"prompt_ids {tuple(prompt_ids.shape)} / prompt_mask {tuple(prompt_mask.shape)} "
                         "must both be [B, P]")
    if not bool((prompt_ids[:, -1] == vocab.scale_ids[0]).all()):
        raise ValueError("every prompt must end with <im_start><S0> (use NativeImageGenerator.encode_prompts)")
    from transformers import StaticCache

    decoder = decoder_of(lm)
    head = _logit_head(lm, vocab, sampling)
    b = prompt_ids.shape[0]
    device = prompt_ids.device
    # A preallocated cache: a DynamicCache re-concatenates every layer's K/V at each step (O(L²) copies).
    cache = StaticCache(config=decoder.config, max_cache_len=prompt_ids.shape[1] + num_tokens)

    positions = positions_from_mask(prompt_mask)
    hidden = run_decoder(decoder, prompt_ids, prompt_mask, positions, cache)[:, -1]  # <S0>
    stepper = DecodeStep(decoder, cache, prompt_mask, prompt_ids.shape[1] + num_tokens, decode_mode)
    next_pos = positions[:, -1:] + 1

    cond = torch.empty((b, num_tokens + 1, hidden.shape[-1]), dtype=hidden.dtype, device=device)
    tokens = torch.empty((b, num_tokens), dtype=torch.long, device=device)
    logprobs = torch.empty((b, num_tokens), dtype=torch.float32, device=device)
    cond[:, 0] = hidden
    for t in range(num_tokens):
        picked, logprobs[:, t] = sample_from_logits(head(hidden), sampling, generator)
        tokens[:, t] = picked
        ids = picked[:, None] + (vocab.image_token_offset if sampling.restrict_to_image_tokens else 0)
        # The step after the last token only collects its hidden state (the window's last row).
        hidden = stepper.step(ids, next_pos, t)
        cond[:, t + 1] = hidden
        next_pos = next_pos + 1
    return SampledImageTokens(_to_codes(tokens, vocab, sampling), logprobs, cond)


def _chunk_logprobs(hidden: torch.Tensor, targets: torch.Tensor, head: LogitHead, sampling: SamplingConfig,
                    with_entropy: bool) -> torch.Tensor:
    return picked_logprobs(processed_logits(head(hidden), sampling).log_softmax(-1), targets, with_entropy)


def picked_logprobs(logp: torch.Tensor, targets: torch.Tensor, with_entropy: bool) -> torch.Tensor:
    """The log-probs [B, c] of `targets` under log-distributions `logp` [B, c, V'], or [B, c, 2] with the entropy
    (0 · log 0 counted as 0, so masked-out codes add nothing)."""
    picked = logp.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    if not with_entropy:
        return picked
    p = logp.exp()
    entropy = -(p * torch.where(p > 0, logp, torch.zeros_like(logp))).sum(-1)
    return torch.stack([picked, entropy], dim=-1)


def image_token_logprobs(lm: nn.Module, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor,
                         image_tokens: torch.Tensor, *, vocab: ImageVocab, sampling: SamplingConfig,
                         chunk_size: int | None = None, with_entropy: bool = False, with_hidden: bool = False):
    """Log-probs [B, N] (differentiable) of given image tokens under the sampler's distribution.

    One teacher-forced forward, then the head + logit processing in chunks of `chunk_size` positions
    (default `sampling.logprob_chunk_size`). Under autograd each chunk is checkpointed, so only one chunk's
    [B, chunk, K] logits are alive at a time, in forward and in backward. Returns `(logprobs, entropy)` with
    `with_entropy` (entropy of the processed distribution, per position). `with_hidden` appends the conditioning
    hidden states [B, N+1, H] of the same forward (what the renderer reads; the trainer's conditioning anchor).
    """
    n = image_tokens.shape[1]
    chunk = chunk_size or sampling.logprob_chunk_size
    window = teacher_forced_hidden(lm, prompt_ids, prompt_mask, image_tokens, vocab)  # [B, N+1, H]
    hidden = window[:, :n]  # logit positions
    head = _logit_head(lm, vocab, sampling)
    image_tokens = image_tokens.to(hidden.device)
    targets = image_tokens if sampling.restrict_to_image_tokens else vocab.to_ids(image_tokens)
    pieces = []
    for s in range(0, n, chunk):
        h, tgt = hidden[:, s:s + chunk], targets[:, s:s + chunk]
        if torch.is_grad_enabled() and h.requires_grad:
            pieces.append(checkpoint(_chunk_logprobs, h, tgt, head, sampling, with_entropy, use_reentrant=False))
        else:
            pieces.append(_chunk_logprobs(h, tgt, head, sampling, with_entropy))
    out = torch.cat(pieces, dim=1)
    result = (out[..., 0], out[..., 1]) if with_entropy else (out,)
    if with_hidden:
        result = (*result, window)
    return result if len(result) > 1 else result[0]

