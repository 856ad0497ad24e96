"""PickScore: a CLIP ViT-H/14 fine-tuned on Pick-a-Pic human preferences; scores prompt-image agreement.

Model: `yuvalkirstain/PickScore_v1` (HF `CLIPModel`) with the processor of
`laion/CLIP-ViT-H-14-laion2B-s32B-b79K`, both from local directories. Images are uint8 through the processor
(resize bicubic 224, centre crop, normalise); text `padding=True, truncation=True, max_length=77`.
Versions (tag `pickscore@<version>`):
- `flowgrpo` (default) — Flow-GRPO `pickscore_scorer.py`: exp(logit_scale)·cos / 26
  (≈ 0.8–0.9 on SD3.5 images).
- `dancegrpo` — DanceGRPO: the raw cosine, no logit scale.

Options: `path` (model dir), `processor_path` (processor dir; default `path`), `device`, `dtype`,
`batch_size`, `version`.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal, Sequence

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from rewards.base import RewardOutput
from rewards.clip_backends import HFCLIPBackend, in_batches, l2_normalize

SCALES = {
    "flowgrpo": lambda cos, logit_scale: logit_scale * cos / 26.0,
    "dancegrpo": lambda cos, logit_scale: cos,
}


class PickScoreOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    path: str = Field(..., description="Local PickScore_v1 CLIPModel directory.")
    processor_path: str | None = Field(None, description="CLIP-ViT-H-14 processor directory; default: path.")
    device: str = "cpu"
    dtype: Literal["float32", "float16", "bfloat16"] = "float32"
    batch_size: int = Field(32, ge=1)
    version: Literal["flowgrpo", "dancegrpo"] = "flowgrpo"


class PickScoreReward:
    name: ClassVar[str] = "pickscore"
    OPTIONS: ClassVar[type] = PickScoreOptions  # checked by `nativerl validate` without building the reward
    VERSIONS: ClassVar[tuple[str, ...]] = tuple(SCALES)

    def __init__(self, **options: Any):
        self.options = o = PickScoreOptions(**options)
        self.version = o.version
        self.backend = HFCLIPBackend(o.path, processor_path=o.processor_path, device=o.device, dtype=o.dtype,
                                     image_preprocess="processor", text_padding="longest")

    @torch.no_grad()
    def __call__(self, images: Sequence[np.ndarray], prompts: Sequence[str],
                 metadata: Sequence[dict[str, Any]]) -> RewardOutput:
        images, prompts = list(images), list(prompts)
        if len(images) != len(prompts):
            raise ValueError(f"pickscore: {len(images)} images but {len(prompts)} prompts")
        cos = []
        for sl in in_batches(len(images), self.options.batch_size):
            img = l2_normalize(self.backend.embed_images(images[sl]))
            txt = l2_normalize(self.backend.embed_texts(prompts[sl]))
            cos.append((img * txt).sum(-1).cpu())
        cos_t = torch.cat(cos) if cos else torch.zeros(0)
        scores = SCALES[self.version](cos_t, self.backend.logit_scale.cpu())
        return RewardOutput(scores=scores.tolist(), details=[{"cosine": float(c)} for c in cos_t])
