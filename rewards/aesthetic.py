"""Aesthetic score: the LAION improved aesthetic predictor on CLIP ViT-L/14 image embeddings.

Version `flowgrpo` (= ddpo-pytorch; tag `aesthetic@flowgrpo`), matching Flow-GRPO `aesthetic_scorer.py`:
- Image embedding: HF CLIP ViT-L/14 (`openai/clip-vit-large-patch14`) `get_image_features` on uint8 images
  through the CLIP processor (resize bicubic 224 + centre crop 224 + normalise), then **L2-normalised**.
- Head: `sac+logos+ava1-l14-linearMSE.pth`, an MLP 768→1024→128→64→16→1 with dropouts 0.2/0.2/0.1
  (inactive in eval). Its state-dict keys are `layers.{0,2,4,6,7}.{weight,bias}` (the Sequential's Linear
  positions).
- Score: the raw MLP output, on LAION's ~1–10 scale. No rescaling.

Options: `path` (the .pth head), `clip_path` (HF CLIP directory, or open_clip state-dict file with
`backend="open_clip"` + `model_name`), `processor_path`, `device`, `dtype`, `batch_size`, `version`.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal, Sequence

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from rewards.base import RewardOutput
from rewards.clip_backends import in_batches, l2_normalize, load_clip_backend, load_state_dict_file


class AestheticMLP(nn.Module):
    """The LAION improved-aesthetic-predictor head, in its public key layout (`layers.N.*`)."""

    def __init__(self, input_size: int = 768):
        super().__init__()
        self.layers = nn.Sequential(
            nn.Linear(input_size, 1024), nn.Dropout(0.2),
            nn.Linear(1024, 128), nn.Dropout(0.2),
            nn.Linear(128, 64), nn.Dropout(0.1),
            nn.Linear(64, 16),
            nn.Linear(16, 1),
        )

    def forward(self, embeds: torch.Tensor) -> torch.Tensor:
        return self.layers(embeds)


class AestheticOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    path: str = Field(..., description="The predictor head, e.g. sac+logos+ava1-l14-linearMSE.pth.")
    clip_path: str = Field(..., description="CLIP ViT-L/14: HF CLIPModel directory, or open_clip state dict.")
    processor_path: str | None = Field(None, description="HF preprocessor directory; default: clip_path.")
    backend: Literal["hf", "open_clip"] = "hf"
    model_name: str | None = Field(None, description="open_clip architecture, e.g. 'ViT-L-14-quickgelu'.")
    device: str = "cpu"
    dtype: Literal["float32", "float16", "bfloat16"] = "float32"
    batch_size: int = Field(32, ge=1)
    version: Literal["flowgrpo"] = "flowgrpo"


class AestheticReward:
    name: ClassVar[str] = "aesthetic"
    OPTIONS: ClassVar[type] = AestheticOptions  # checked by `nativerl validate` without building the reward
    VERSIONS: ClassVar[tuple[str, ...]] = ("flowgrpo",)

    def __init__(self, **options: Any):
        self.options = o = AestheticOptions(**options)
        self.version = o.version
        self.backend = load_clip_backend(o.backend, o.clip_path, processor_path=o.processor_path,
                                         model_name=o.model_name, device=o.device, dtype=o.dtype,
                                         image_preprocess="processor")
        state = load_state_dict_file(o.path, "aesthetic predictor head")
        if "layers.0.weight" not in state:
            raise ValueError(f"aesthetic predictor head {o.path!r}: no 'layers.0.weight' key; expected "
                             f"the LAION layout layers.{{0,2,4,6,7}}.*, got {sorted(state)[:6]}")
        self.mlp = AestheticMLP(input_size=state["layers.0.weight"].shape[1])
        self.mlp.load_state_dict(state, strict=True)
        self.mlp = self.mlp.to(self.backend.device).eval().requires_grad_(False)

    @torch.no_grad()
    def __call__(self, images: Sequence[np.ndarray], prompts: Sequence[str],
                 metadata: Sequence[dict[str, Any]]) -> RewardOutput:
        images = list(images)
        scores = []
        for sl in in_batches(len(images), self.options.batch_size):
            embeds = l2_normalize(self.backend.embed_images(images[sl]))
            scores.append(self.mlp(embeds.to(self.backend.device)).squeeze(1).float().cpu())
        return RewardOutput(scores=torch.cat(scores).tolist() if scores else [])
