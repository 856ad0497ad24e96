"""The connector: LM hidden states → the renderer's caption width.

BLIP3o-NEXT (blip3o_arch.py): `nn.Sequential(Linear(hidden, 2304), GELU(tanh), Linear(2304, 2304),
RMSNorm(2304, eps=1e-5))` with the RMSNorm weight initialised to sqrt(5.5); 2304 is SANA's caption width (its
Gemma-2-2B text encoder). Kept an `nn.Sequential` so the state-dict keys are upstream's:
`model.diffusion_connector.{0,2}.{weight,bias}` and `model.diffusion_connector.3.weight`.
"""

from __future__ import annotations

import math

import torch
from diffusers.models.normalization import RMSNorm
from torch import nn

RMSNORM_INIT = math.sqrt(5.5)


def build_connector(hidden_size: int, caption_width: int) -> nn.Sequential:
    norm = RMSNorm(caption_width, eps=1e-5, elementwise_affine=True)
    with torch.no_grad():
        norm.weight.fill_(RMSNORM_INIT)
    return nn.Sequential(
        nn.Linear(hidden_size, caption_width),
        nn.GELU(approximate="tanh"),
        nn.Linear(caption_width, caption_width),
        norm,
    )
