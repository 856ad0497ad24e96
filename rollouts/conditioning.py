"""The conditioning window: which LM hidden states condition the renderer. Defined once, here.

BLIP3o-NEXT (blip3o_qwen_grpo.py L176–195, blip3o_qwen_inference.py): the **last-layer** hidden states (post final
norm, HF `hidden_states[-1]`) of the positions after `<im_start>`: `<S0>` followed by the N image tokens, i.e.
N + 1 vectors. Upstream's SFT code took a different, shifted window (`hidden_states[b, -730:]`, issue #78); every
nativerl path (sampler, SFT loss, eval, tests) goes through `conditioning_window` so they cannot drift apart.

Sequence layout (left-padded prompt of width P, whose last two tokens are `<im_start><S0>`):

    position:  ...  P-2          P-1    P      P+1   ...  P+N-1
    token:     ...  <im_start>   <S0>   I_1    I_2   ...  I_N
    window:                      [------------- N+1 ------------]

The hidden state at position P-1+j also gives the logits of image token j+1 (j = 0..N-1), so the first N window
rows double as the log-prob positions.
"""

from __future__ import annotations

import torch
from torch import nn

from rollouts.lm_parts import decoder_of, positions_from_mask, run_decoder
from rollouts.vocab import ImageVocab


def conditioning_window(prompt_len: int, num_tokens: int) -> slice:
    """Positions of `<S0>` + the N image tokens in a sequence `prompt (P) + image tokens (N)`."""
    return slice(prompt_len - 1, prompt_len + num_tokens)


def teacher_forced_hidden(lm: nn.Module, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor,
                          image_tokens: torch.Tensor, vocab: ImageVocab) -> torch.Tensor:
    """One full forward over prompt + image tokens → last hidden states of the window, [B, N+1, H]."""
    if prompt_ids.shape != prompt_mask.shape or prompt_ids.shape[0] != image_tokens.shape[0]:
        raise ValueError(f"shape mismatch: prompt_ids {tuple(prompt_ids.shape)}, prompt_mask "
                         f"{tuple(prompt_mask.shape)}, image_tokens {tuple(image_tokens.shape)}")
    n = image_tokens.shape[1]
    input_ids = torch.cat([prompt_ids, vocab.to_ids(image_tokens.to(prompt_ids.device))], dim=1)
    mask = torch.cat([prompt_mask, torch.ones_like(image_tokens, device=prompt_mask.device)], dim=1)
    hidden = run_decoder(decoder_of(lm), input_ids, mask, positions_from_mask(mask))
    return hidden[:, conditioning_window(prompt_ids.shape[1], n)]


def conditioning_hidden_states(lm: nn.Module, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor,
                               image_tokens: torch.Tensor, vocab: ImageVocab) -> torch.Tensor:
    """Teacher-forced conditioning for SFT and tests: [B, N+1, H], the same window the sampler returns."""
    return teacher_forced_hidden(lm, prompt_ids, prompt_mask, image_tokens, vocab)
