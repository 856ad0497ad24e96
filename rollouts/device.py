"""Where and in which dtype a generator lives: the recipe's `model.device` / `model.dtype` ("auto" included)."""

from __future__ import annotations

import contextlib

import torch
from torch import nn


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]


def lm_autocast(lm: nn.Module, compute_dtype: torch.dtype | None):
    """The one autocast policy of a generator's LM: bf16/fp16 autocast when `compute_dtype` (or, if None, the LM's
    storage dtype) is lower than fp32, else a no-op. Sampling, scoring and the reference all run under it, so they
    compute the same policy in the same precision."""
    param = next(lm.parameters())
    dtype = compute_dtype or param.dtype
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=param.device.type, dtype=dtype)
