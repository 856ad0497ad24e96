"""HPS v2.1 (Human Preference Score): open_clip ViT-H/14 fine-tuned on HPD v2 human preferences.

Version `v2.1` (tag `hpsv2@v2.1`), matching the `hpsv2` package's `score()` as DanceGRPO calls it: open_clip
`ViT-H-14` with `HPS_v2.1_compressed.pt` loaded over it (its `{"state_dict": ...}` wrapper is accepted); image
through the model's validation transform (resize bicubic 224 + centre crop: identical to HPSv2's
resize-longest-side for the square images generators make); score = cosine of the normalised image and text
features (typical values 0.25–0.33). Needs torchvision (open_clip).

Options: `path` (checkpoint file), `model_name` (default `ViT-H-14`), `device`, `dtype`, `batch_size`.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal, Sequence

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from rewards.base import RewardOutput
from rewards.clip_backends import OpenCLIPBackend, in_batches, l2_normalize


class HPSv2Options(BaseModel):
    model_config = ConfigDict(extra="forbid")

    path: str = Field(..., description="HPS_v2.1_compressed.pt (or any state dict for model_name).")
    model_name: str = "ViT-H-14"
    device: str = "cpu"
    dtype: Literal["float32", "float16", "bfloat16"] = "float32"
    batch_size: int = Field(16, ge=1)
    version: Literal["v2.1"] = "v2.1"


class HPSv2Reward:
    name: ClassVar[str] = "hpsv2"
    OPTIONS: ClassVar[type] = HPSv2Options  # checked by `nativerl validate` without building the reward
    VERSIONS: ClassVar[tuple[str, ...]] = ("v2.1",)

    def __init__(self, **options: Any):
        self.options = o = HPSv2Options(**options)
        self.version = o.version
        self.backend = OpenCLIPBackend(o.path, model_name=o.model_name, device=o.device, dtype=o.dtype)

    @torch.no_grad()
    def __call__(self, images: Sequence[np.ndarray], prompts: Sequence[str],
                 metadata: Sequence[dict[str, Any]]) -> RewardOutput:
        images, prompts = list(images), list(prompts)
        if len(images) != len(prompts):
            raise ValueError(f"hpsv2: {len(images)} images but {len(prompts)} prompts")
        scores = []
        for sl in in_batches(len(images), self.options.batch_size):
            img = l2_normalize(self.backend.embed_images(images[sl]))
            txt = l2_normalize(self.backend.embed_texts(prompts[sl]))
            scores.append((img * txt).sum(-1).cpu())
        return RewardOutput(scores=torch.cat(scores).tolist() if scores else [])
