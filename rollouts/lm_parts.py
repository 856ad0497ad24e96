"""The two pieces of the AR policy that sampling and log-prob code call directly: the decoder and the output head.

We run the decoder (`Qwen3Model`) ourselves and multiply its last hidden state by the image-token slice of the
lm_head weight, so full-vocabulary logits (~217k for BLIP3o-NEXT) are never materialised. The LM may be a plain
`Qwen3ForCausalLM` or a peft `PeftModel` wrapping one (the trainer uses LoRA): the helpers below find the base
model's pieces through `get_decoder()` / `get_output_embeddings()`, which peft forwards to the wrapped model, and
LoRA layers injected inside the decoder stay active because we call that same decoder module.
"""

from __future__ import annotations

import inspect
from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import nn


def unwrap_peft(lm: nn.Module) -> nn.Module:
    # PeftModel.base_model is a LoraModel whose .model is the wrapped transformers model.
    base = getattr(lm, "base_model", None)
    if base is not None and base is not lm and hasattr(base, "model") and hasattr(base.model, "get_decoder"):
        return base.model
    return lm


def decoder_of(lm: nn.Module) -> nn.Module:
    """The transformer body returning `last_hidden_state` (post final norm, = HF `hidden_states[-1]`)."""
    inner = unwrap_peft(lm)
    dec = inner.get_decoder() if hasattr(inner, "get_decoder") else getattr(inner, "model", None)
    if dec is None or dec is inner:
        raise TypeError(f"cannot find the decoder of {type(lm).__name__}: expected a causal LM with .model")
    return dec


def output_head_of(lm: nn.Module) -> nn.Module:
    head = unwrap_peft(lm).get_output_embeddings()
    if head is None:
        raise TypeError(f"{type(lm).__name__} has no output embeddings (lm_head)")
    return head


@lru_cache(maxsize=8)
def _cache_kwarg_name(forward_cls: type) -> str:
    # transformers 5 renamed `past_key_values` to `cache` (the old name is deprecated, not removed).
    params = inspect.signature(forward_cls.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def run_decoder(decoder: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                position_ids: torch.Tensor, cache=None) -> torch.Tensor:
    """→ last hidden states [B, L, H]. With `cache` (a transformers Cache) the call appends to it."""
    kwargs = {"input_ids": input_ids, "attention_mask": attention_mask, "position_ids": position_ids,
              "use_cache": cache is not None}
    if cache is not None:
        kwargs[_cache_kwarg_name(type(decoder))] = cache
    return decoder(**kwargs).last_hidden_state


def positions_from_mask(mask: torch.Tensor) -> torch.Tensor:
    """Left padding: real tokens get positions 0, 1, ...; pads get 0 (they are masked anyway)."""
    return (mask.long().cumsum(-1) - 1).clamp(min=0)


class LogitHead:
    """hidden [.., H] → float32 logits over either the image-token slice [start, stop) or the full vocabulary."""

    def __init__(self, lm: nn.Module, id_range: tuple[int, int] | None):
        self.head = output_head_of(lm)
        self.id_range = id_range
        # A plain Linear lets us slice the weight; anything else (e.g. a LoRA-wrapped lm_head) is called whole.
        self._sliceable = type(self.head) is nn.Linear

    def __call__(self, hidden: torch.Tensor) -> torch.Tensor:
        if self.id_range is None:
            return self.head(hidden).float()
        start, stop = self.id_range
        if self._sliceable:
            bias = self.head.bias[start:stop] if self.head.bias is not None else None
            return F.linear(hidden, self.head.weight[start:stop], bias).float()
        return self.head(hidden)[..., start:stop].float()
