"""Image consistency: how much of the reference image an edit kept. Higher = closer to the reference.

Each row's metadata is an editing row (`prompts/edit_prompts.py`) whose `reference_image` is a path or a uint8
array; the edited image is compared with it. The reference is resized (bicubic) to the edited image's size first.

Versions (tag `image_consistency@<version>`), one per measure:
- `ssim` (default, offline): scikit-image `structural_similarity` on RGB (`channel_axis=-1`, `data_range=255`,
  7×7 uniform window: the library defaults, i.e. Wang et al. 2004 with the skimage implementation). In [−1, 1].
- `pixel` (offline): 1 − mean |edited − reference| / 255 over all pixels and channels. In [0, 1].
- `clip`: cosine of CLIP image embeddings (ImagenHub / GEdit-style "CLIP-I"), weights from a local path through
  `rewards.clip_backends` (HF `CLIPModel` directory or open_clip state dict). In [−1, 1].
- `dino`: cosine of DINOv2 CLS embeddings (`transformers.Dinov2Model` from a local directory; DreamBooth's
  "DINO" subject-fidelity score uses the same cosine with DINO ViT-S/16). Images resized to `dino_image_size`
  (bicubic) and normalised with ImageNet statistics (or the directory's `preprocessor_config.json` mean/std).
  In [−1, 1].

Consistency alone rewards doing nothing; combine it with an instruction-following reward (`edit_judge`,
`shapes_edit`) through the multi-reward suite (`rewards/suite.py`), e.g. weights 1.0 / 0.3.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, ClassVar, Literal, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, model_validator

from rewards.base import RewardOutput
from rewards.clip_backends import in_batches, l2_normalize, load_clip_backend, require_local_path

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
MEASURES = ("ssim", "pixel", "clip", "dino")


class ImageConsistencyOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: Literal["ssim", "pixel", "clip", "dino"] = Field("ssim", description="The measure (see the module).")
    path: str | None = Field(None, description="clip: HF CLIPModel dir or open_clip state dict; dino: Dinov2Model "
                             "dir. Unused by ssim / pixel.")
    processor_path: str | None = Field(None, description="clip (hf): processor dir; default: path.")
    backend: Literal["hf", "open_clip"] = Field("hf", description="clip only.")
    model_name: str | None = Field(None, description="clip with open_clip: the architecture name.")
    dino_image_size: int = Field(224, ge=14, description="dino: input side in pixels.")
    device: str = "cpu"
    dtype: Literal["float32", "float16", "bfloat16"] = "float32"
    batch_size: int = Field(32, ge=1)

    @model_validator(mode="after")
    def _needs_path(self) -> ImageConsistencyOptions:
        if self.version in ("clip", "dino") and not self.path:
            raise ValueError(f"image_consistency@{self.version} needs 'path' (local weights)")
        return self


def resize_to(image: np.ndarray, height: int, width: int) -> np.ndarray:
    if image.shape[:2] == (height, width):
        return image
    from PIL import Image

    return np.asarray(Image.fromarray(image).resize((width, height), Image.BICUBIC))


def ssim(a: np.ndarray, b: np.ndarray) -> float:
    from skimage.metrics import structural_similarity

    return float(structural_similarity(a, b, channel_axis=-1, data_range=255))


def pixel_similarity(a: np.ndarray, b: np.ndarray) -> float:
    return float(1.0 - np.abs(a.astype(np.float64) - b.astype(np.float64)).mean() / 255.0)


class DinoEmbedder:
    """DINOv2 CLS embeddings from a local `Dinov2Model` directory."""

    def __init__(self, path: str, *, image_size: int, device: str, dtype: torch.dtype):
        from transformers import Dinov2Model

        model_dir = require_local_path(path, "DINOv2 model")
        self.model = Dinov2Model.from_pretrained(str(model_dir), local_files_only=True)
        self.device = torch.device(device)
        self.dtype = dtype
        self.model = self.model.to(self.device, dtype).eval().requires_grad_(False)
        self.image_size = image_size
        mean, std = IMAGENET_MEAN, IMAGENET_STD
        proc = Path(model_dir) / "preprocessor_config.json"
        if proc.is_file():  # use the checkpoint's own statistics when it ships them
            cfg = json.loads(proc.read_text())
            mean, std = tuple(cfg.get("image_mean", mean)), tuple(cfg.get("image_std", std))
        self.mean = torch.tensor(mean)[:, None, None]
        self.std = torch.tensor(std)[:, None, None]

    @torch.no_grad()
    def embed_images(self, images: Sequence[np.ndarray]) -> torch.Tensor:
        x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 255.0
        s = self.image_size
        x = F.interpolate(x, size=(s, s), mode="bicubic", align_corners=False, antialias=True).clamp(0, 1)
        x = (x - self.mean) / self.std
        out = self.model(pixel_values=x.to(self.device, self.dtype))
        return out.last_hidden_state[:, 0].float()  # CLS token (after the final layer norm)


class ImageConsistencyReward:
    name: ClassVar[str] = "image_consistency"
    OPTIONS: ClassVar[type] = ImageConsistencyOptions  # checked by `nativerl validate` without building the reward
    VERSIONS: ClassVar[tuple[str, ...]] = MEASURES

    def __init__(self, **options: Any):
        self.options = ImageConsistencyOptions(**options)
        o = self.options
        self.version = o.version
        self.embedder = None
        if o.version == "clip":
            self.embedder = load_clip_backend(o.backend, o.path, processor_path=o.processor_path,
                                              model_name=o.model_name, device=o.device, dtype=o.dtype)
        elif o.version == "dino":
            from rewards.clip_backends import torch_dtype

            self.embedder = DinoEmbedder(o.path, image_size=o.dino_image_size, device=o.device,
                                         dtype=torch_dtype(o.dtype))

    def pairs(self, images: Sequence[np.ndarray], metadata: Sequence[dict[str, Any]]
              ) -> tuple[list[np.ndarray], list[np.ndarray]]:
        from prompts.edit_prompts import reference_pixels

        if len(images) != len(metadata):
            raise ValueError(f"image_consistency: {len(images)} images but {len(metadata)} metadata rows")
        edited, refs = [], []
        for i, (im, row) in enumerate(zip(images, metadata)):
            if not isinstance(im, np.ndarray) or im.dtype != np.uint8 or im.ndim != 3 or im.shape[-1] != 3:
                raise ValueError(f"image_consistency: image {i} is not uint8 [H, W, 3]")
            edited.append(im)
            refs.append(resize_to(reference_pixels(row), im.shape[0], im.shape[1]))
        return edited, refs

    @torch.no_grad()
    def _embedding_cosines(self, edited: list[np.ndarray], refs: list[np.ndarray]) -> list[float]:
        out = []
        for sl in in_batches(len(edited), self.options.batch_size):
            a = l2_normalize(self.embedder.embed_images(edited[sl]))
            b = l2_normalize(self.embedder.embed_images(refs[sl]))
            out += (a * b).sum(-1).cpu().tolist()
        return out

    def __call__(self, images: Sequence[np.ndarray], prompts: Sequence[str],
                 metadata: Sequence[dict[str, Any]]) -> RewardOutput:
        edited, refs = self.pairs(list(images), list(metadata))
        if self.version == "ssim":
            scores = [ssim(a, b) for a, b in zip(edited, refs)]
        elif self.version == "pixel":
            scores = [pixel_similarity(a, b) for a, b in zip(edited, refs)]
        else:
            scores = self._embedding_cosines(edited, refs)
        return RewardOutput(scores=scores, details=[{self.version: s} for s in scores])
