"""CLIPScore: how well an image matches its prompt, by the cosine of CLIP image and text embeddings.

Versions (tag `clipscore@<version>`):
- `flowgrpo` (default) — Flow-GRPO `flow_grpo/clip_scorer.py`, copied by many forks. HF CLIP ViT-L/14
  (`openai/clip-vit-large-patch14`). Images as float [0, 1] through the processor's resize / centre crop /
  normalise (torchvision on tensors: `image_preprocess="tensor"`); text `padding="max_length",
  truncation=True`. Score = `logits_per_image.diag() / 30` = exp(logit_scale)·cos / 30 = 100·cos / 30
  ≈ 3.33·cos for OpenAI CLIP.
- `cos` — the raw cosine. DiffusionNFT divides the same logits by 100, i.e. this number for OpenAI CLIP;
  MixGRPO / Pref-GRPO / DanceGRPO use it with open_clip DFN5B ViT-H-14 (`backend="open_clip"`).

Options: `path` (model dir for `hf`, state-dict file for `open_clip`), `processor_path` (hf; defaults to
`path`), `backend` (`hf` | `open_clip`), `model_name` (open_clip architecture), `device`, `dtype`,
`batch_size`, `image_preprocess` (hf; default follows the version), `version`.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal, Sequence

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from rewards.base import RewardOutput
from rewards.clip_backends import in_batches, l2_normalize, load_clip_backend

# What the score is, given the cosine and the model's exp(logit_scale).
SCALES = {
    "flowgrpo": lambda cos, logit_scale: logit_scale * cos / 30.0,
    "cos": lambda cos, logit_scale: cos,
}


class CLIPScoreOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    path: str = Field(..., description="HF CLIPModel directory (backend hf) or state-dict file (open_clip).")
    processor_path: str | None = Field(None, description="HF tokenizer + preprocessor dir; default: path.")
    backend: Literal["hf", "open_clip"] = "hf"
    model_name: str | None = Field(None, description="open_clip architecture, e.g. 'ViT-L-14-quickgelu'.")
    device: str = "cpu"
    dtype: Literal["float32", "float16", "bfloat16"] = "float32"
    batch_size: int = Field(32, ge=1, description="Images per forward pass.")
    image_preprocess: Literal["processor", "tensor"] | None = Field(
        None, description="hf only; default 'tensor' (Flow-GRPO's float-tensor path) for every version.")
    version: Literal["flowgrpo", "cos"] = "flowgrpo"


class CLIPScoreReward:
    name: ClassVar[str] = "clipscore"
    OPTIONS: ClassVar[type] = CLIPScoreOptions  # checked by `nativerl validate` without building the reward
    VERSIONS: ClassVar[tuple[str, ...]] = tuple(SCALES)

    def __init__(self, **options: Any):
        self.options = CLIPScoreOptions(**options)
        o = self.options
        self.version = o.version
        self.backend = load_clip_backend(o.backend, o.path, processor_path=o.processor_path,
                                         model_name=o.model_name, device=o.device, dtype=o.dtype,
                                         image_preprocess=o.image_preprocess or "tensor",
                                         text_padding="max_length")

    @torch.no_grad()
    def cosines(self, images: Sequence[np.ndarray], prompts: Sequence[str]) -> torch.Tensor:
        if len(images) != len(prompts):
            raise ValueError(f"clipscore: {len(images)} images but {len(prompts)} prompts")
        out = []
        for sl in in_batches(len(images), self.options.batch_size):
            img = l2_normalize(self.backend.embed_images(images[sl]))
            txt = l2_normalize(self.backend.embed_texts(prompts[sl]))
            out.append((img * txt).sum(-1))  # the diagonal of the image-text similarity matrix
        return torch.cat(out).cpu() if out else torch.zeros(0)

    def __call__(self, images: Sequence[np.ndarray], prompts: Sequence[str],
                 metadata: Sequence[dict[str, Any]]) -> RewardOutput:
        cos = self.cosines(list(images), list(prompts))
        scores = SCALES[self.version](cos, self.backend.logit_scale.cpu())
        return RewardOutput(scores=scores.tolist(), details=[{"cosine": float(c)} for c in cos])
