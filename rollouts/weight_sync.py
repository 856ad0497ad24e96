"""Rollout-side weight loading: make a rollout worker's LM match the trained policy's mode, then load the weights the
driver publishes after each update.

The driver publishes `Policy.state_for_sync()` (rl/policy.py): for a LoRA policy the adapter tensors only (peft's
`get_peft_model_state_dict` keys), for a full policy the LM's whole state dict. A worker therefore has to hold the
same structure: `prepare_policy_lm` peft-wraps its LM with the same LoRA settings (LoRA) or leaves it as is (full),
and `apply_sync_state` loads a published state into it, failing loudly on any mismatch so that a worker never samples
from half-loaded weights.

`rollouts/` never imports `rl/`: everything here takes plain arguments (the LoRA settings as keyword values), so
`rl/policy.py` can reuse these functions and both sides wrap the LM the same way by construction.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn


def lora_config(*, r: int, lora_alpha: int, lora_dropout: float, target_modules: Sequence[str]):
    from peft import LoraConfig

    return LoraConfig(r=r, lora_alpha=lora_alpha, lora_dropout=lora_dropout, target_modules=list(target_modules),
                      bias="none", task_type="CAUSAL_LM")


def wrap_lora(lm: nn.Module, *, r: int, lora_alpha: int, lora_dropout: float = 0.0,
              target_modules: Sequence[str]) -> nn.Module:
    """peft-wrap `lm` with LoRA adapters on `target_modules` (each must match a module name or its suffix)."""
    from peft import get_peft_model

    missing = [t for t in target_modules
               if not any(name == t or name.endswith("." + t) for name, _ in lm.named_modules())]
    if missing:
        raise ValueError(f"lora target_modules {missing} match no module of {type(lm).__name__}")
    import warnings

    with warnings.catch_warnings():
        # peft 0.21 reads transformers' deprecated `is_gradient_checkpointing` property; nothing to do on our side.
        warnings.filterwarnings("ignore", message=r"`is_gradient_checkpointing` is deprecated", category=FutureWarning)
        return get_peft_model(lm, lora_config(r=r, lora_alpha=lora_alpha, lora_dropout=lora_dropout,
                                              target_modules=target_modules))


def is_peft(lm: nn.Module) -> bool:
    return hasattr(lm, "peft_config") and hasattr(lm, "disable_adapter")


def prepare_policy_lm(generator: Any, policy_mode: str, lora: dict[str, Any] | None) -> None:
    """Give `generator.lm` the structure the trainer's policy has, so published states load into it.

    policy_mode: "lora" (wrap with `lora`: keyword values r, lora_alpha, lora_dropout, target_modules) or "full".
    The rollout LM never trains: gradients are off and it stays in eval mode.
    """
    if policy_mode == "lora":
        if not lora:
            raise ValueError("policy_mode='lora' needs the LoRA settings (r, lora_alpha, target_modules, ...)")
        generator.lm = wrap_lora(generator.lm, **lora)
    elif policy_mode != "full":
        raise ValueError(f"policy_mode must be 'lora' or 'full', got {policy_mode!r}")
    generator.lm.requires_grad_(False)
    generator.lm.eval()


def apply_sync_state(lm: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load a published state (LoRA adapters into a peft LM; a full state dict into a plain LM). Raises KeyError
    naming the offending keys when the state does not fit the LM."""
    if is_peft(lm):
        from peft import set_peft_model_state_dict

        lora_keys = [k for k in state if "lora_" in k]
        if not lora_keys:
            raise KeyError(f"LoRA sync state holds no lora_ tensors (got {list(state)[:5]}): "
                           "was it published by a full-weights policy?")
        result = set_peft_model_state_dict(lm, state)
        unexpected = list(getattr(result, "unexpected_keys", []) or [])
        if unexpected:
            raise KeyError(f"LoRA sync state has keys the model lacks: {unexpected[:5]}")
        return
    result = lm.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys if not _is_tied_key(lm, k)]
    if missing or result.unexpected_keys:
        raise KeyError(f"LM sync state does not match: missing {missing[:5]}, unexpected {result.unexpected_keys[:5]}")


def _is_tied_key(lm: nn.Module, key: str) -> bool:
    # transformers drops the tied lm_head from saved weights when word embeddings are tied.
    cfg = getattr(lm, "config", None)
    return key == "lm_head.weight" and bool(getattr(cfg, "tie_word_embeddings", False))
