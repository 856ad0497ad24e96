"""Loading a CLIP model from a local path and embedding images and texts with it.

Two backends, one interface (`CLIPBackend`): `embed_images(images) -> [B, D]`, `embed_texts(texts) -> [B, D]`
(projected, not normalised) and `logit_scale` (the model's exp(logit_scale), 100 for OpenAI CLIP).

- `HFCLIPBackend` — a transformers `CLIPModel` directory (`save_pretrained` layout) plus a processor
  directory (tokenizer + `preprocessor_config.json`; defaults to the model directory). Used by Flow-GRPO's
  CLIPScore, aesthetic and PickScore scorers. Two image preprocessings, because upstream uses both:
    * `"processor"` — the PIL image processor on uint8 images (resize bicubic, centre crop, rescale,
      normalise): what `CLIPProcessor(images=...)` did in transformers 4.x (Flow-GRPO aesthetic, PickScore).
    * `"tensor"` — Flow-GRPO `clip_scorer.py`: float [0, 1] tensors through torchvision-style
      `Resize(shortest_edge)` (bilinear, antialiased) → `CenterCrop` → `Normalize`, sizes and statistics
      read from the processor config. No rescale: the input is already in [0, 1].
- `OpenCLIPBackend` — an open_clip architecture name plus a state-dict file (`.pt`/`.pth`/`.bin`/
  `.safetensors`; a `{"state_dict": ...}` wrapper and a `module.` prefix are accepted). Preprocessing is the
  model's own validation transform. The name must match the checkpoint: OpenAI weights need the `-quickgelu`
  architectures (e.g. `ViT-L-14-quickgelu`). Needs torchvision (open_clip imports it).

Nothing here downloads: every path is local, transformers is called with `local_files_only=True`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal, Protocol, Sequence

import numpy as np
import torch
import torch.nn.functional as F

ImagePreprocess = Literal["processor", "tensor"]
TextPadding = Literal["max_length", "longest"]

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def torch_dtype(name: str) -> torch.dtype:
    if name not in _DTYPES:
        raise ValueError(f"dtype {name!r} is not one of {sorted(_DTYPES)}")
    return _DTYPES[name]


def require_local_path(path: str | os.PathLike, what: str) -> Path:
    """A clear error before any library gets the chance to treat a missing path as a hub id."""
    p = Path(path).expanduser()
    if not p.exists():
        raise FileNotFoundError(f"{what}: {str(p)!r} does not exist "
                                "(weights are loaded from local paths only)")
    return p


def load_state_dict_file(path: str | os.PathLike, what: str) -> dict[str, torch.Tensor]:
    """Read a state dict saved with torch.save or safetensors. Never unpickles arbitrary objects."""
    p = require_local_path(path, what)
    if p.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(p))
    else:
        state = torch.load(str(p), map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]  # HPSv2 / Lightning-style checkpoints wrap the weights
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{what}: {str(p)!r} does not hold a state dict of tensors")
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}  # saved from DistributedDataParallel
    return state


def l2_normalize(x: torch.Tensor) -> torch.Tensor:
    return x / torch.linalg.vector_norm(x, dim=-1, keepdim=True)


class CLIPBackend(Protocol):
    device: torch.device

    @property
    def logit_scale(self) -> torch.Tensor: ...

    def embed_images(self, images: Sequence[np.ndarray]) -> torch.Tensor: ...

    def embed_texts(self, texts: Sequence[str]) -> torch.Tensor: ...


def _check_images(images: Sequence[np.ndarray]) -> None:
    for i, im in enumerate(images):
        if not isinstance(im, np.ndarray) or im.dtype != np.uint8 or im.ndim != 3 or im.shape[2] != 3:
            desc = f"{type(im).__name__} {getattr(im, 'dtype', '')} {getattr(im, 'shape', '')}"
            raise ValueError(f"image {i}: expected a uint8 HxWx3 numpy array, got {desc}")


def _pil_image_processor(path: Path):
    # transformers 5 splits CLIP's image processor into a torchvision and a PIL backend; the PIL one is the
    # slow processor transformers 4.x used by default, i.e. what the upstream scorers ran.
    try:
        from transformers import CLIPImageProcessorPil as processor_cls
    except ImportError:  # transformers 4.x: CLIPImageProcessor is the PIL/numpy implementation
        from transformers import CLIPImageProcessor as processor_cls
    return processor_cls.from_pretrained(str(path), local_files_only=True)


def _size_pair(size: dict | int, key: str) -> tuple[int, int] | int:
    if isinstance(size, int):
        return size
    if "shortest_edge" in size:
        return int(size["shortest_edge"])
    if "height" in size and "width" in size:
        return int(size["height"]), int(size["width"])
    raise ValueError(f"processor {key} {size!r}: expected shortest_edge or height/width")


def resize_crop_normalize_tensor(image: torch.Tensor, *, resize: int | tuple[int, int] | None,
                                 crop: tuple[int, int] | None, mean: Sequence[float],
                                 std: Sequence[float]) -> torch.Tensor:
    """torchvision `Resize` → `CenterCrop` → `Normalize` on one float [3,H,W] tensor in [0, 1].

    Written with torch ops so the Flow-GRPO CLIPScore path does not need torchvision: the same output-size
    rule (`int(size * long / short)` for the long side), bilinear with antialias (torchvision's tensor
    default) and the same crop offsets (`int(round((H - h) / 2))`).
    """
    _, h, w = image.shape
    if resize is not None:
        if isinstance(resize, int):
            short, long = (w, h) if w <= h else (h, w)
            new_short, new_long = resize, int(resize * long / short)
            new_w, new_h = (new_short, new_long) if w <= h else (new_long, new_short)
        else:
            new_h, new_w = resize
        if (new_h, new_w) != (h, w):
            image = F.interpolate(image[None], size=(new_h, new_w), mode="bilinear", align_corners=False,
                                  antialias=True)[0]
        h, w = new_h, new_w
    if crop is not None:
        ch, cw = crop
        if ch > h or cw > w:
            raise ValueError(f"centre crop {crop} is larger than the resized image {(h, w)}")
        top, left = int(round((h - ch) / 2.0)), int(round((w - cw) / 2.0))
        image = image[:, top:top + ch, left:left + cw]
    m = torch.tensor(mean, dtype=image.dtype)[:, None, None]
    s = torch.tensor(std, dtype=image.dtype)[:, None, None]
    return (image - m) / s


class HFCLIPBackend:
    """A transformers `CLIPModel` + tokenizer + image processor, all from local directories."""

    def __init__(self, path: str | os.PathLike, *, processor_path: str | os.PathLike | None = None,
                 device: str = "cpu", dtype: str = "float32", image_preprocess: ImagePreprocess = "processor",
                 text_padding: TextPadding = "max_length"):
        from transformers import AutoTokenizer, CLIPModel

        model_dir = require_local_path(path, "CLIP model")
        proc_dir = require_local_path(processor_path or path, "CLIP processor")
        self.device = torch.device(device)
        self.dtype = torch_dtype(dtype)
        self.image_preprocess, self.text_padding = image_preprocess, text_padding
        self.model = CLIPModel.from_pretrained(str(model_dir), local_files_only=True)
        self.model = self.model.to(device=self.device, dtype=self.dtype).eval().requires_grad_(False)
        self.tokenizer = AutoTokenizer.from_pretrained(str(proc_dir), local_files_only=True)
        self.image_processor = _pil_image_processor(proc_dir)
        # Both padding modes truncate at the text tower's context (77 for every public CLIP).
        self.max_text_length = min(int(self.tokenizer.model_max_length),
                                   int(self.model.config.text_config.max_position_embeddings))

    @property
    def logit_scale(self) -> torch.Tensor:
        return self.model.logit_scale.exp().float()

    def pixel_values(self, images: Sequence[np.ndarray]) -> torch.Tensor:
        _check_images(images)
        if self.image_preprocess == "processor":
            pixels = self.image_processor(images=list(images), return_tensors="pt")["pixel_values"]
        else:
            proc = self.image_processor
            resize = _size_pair(proc.size, "size") if proc.do_resize else None
            crop = _size_pair(proc.crop_size, "crop_size") if proc.do_center_crop else None
            if isinstance(crop, int):
                crop = (crop, crop)
            mean, std = (proc.image_mean, proc.image_std) if proc.do_normalize else ([0.0] * 3, [1.0] * 3)
            pixels = torch.stack([
                resize_crop_normalize_tensor(torch.tensor(im).permute(2, 0, 1).float() / 255.0,
                                             resize=resize, crop=crop, mean=mean, std=std)
                for im in images])
        return pixels.to(device=self.device, dtype=self.dtype)

    @torch.no_grad()
    def embed_images(self, images: Sequence[np.ndarray]) -> torch.Tensor:
        # = CLIPModel.get_image_features in every transformers version (v5 returns an output object instead).
        out = self.model.vision_model(pixel_values=self.pixel_values(images))
        return self.model.visual_projection(out.pooler_output).float()

    def tokenize(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        enc = self.tokenizer(list(texts), padding=self.text_padding, truncation=True,
                             max_length=self.max_text_length, return_tensors="pt")
        return {k: enc[k].to(self.device) for k in ("input_ids", "attention_mask")}

    @torch.no_grad()
    def embed_texts(self, texts: Sequence[str]) -> torch.Tensor:
        out = self.model.text_model(**self.tokenize(texts))
        return self.model.text_projection(out.pooler_output).float()


class OpenCLIPBackend:
    """An open_clip architecture with its weights read from a local state-dict file."""

    def __init__(self, path: str | os.PathLike, *, model_name: str, device: str = "cpu",
                 dtype: str = "float32"):
        import open_clip
        from PIL import Image

        self._to_pil = Image.fromarray
        state = load_state_dict_file(path, f"open_clip {model_name} weights")
        model, _, preprocess = open_clip.create_model_and_transforms(model_name, pretrained=None)
        missing, unexpected = model.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise ValueError(f"open_clip {model_name}: {str(path)!r} does not match the architecture "
                             f"(missing {missing[:5]}, unexpected {unexpected[:5]}); "
                             "OpenAI weights need the '-quickgelu' model names")
        self.device = torch.device(device)
        self.dtype = torch_dtype(dtype)
        self.model = model.to(device=self.device, dtype=self.dtype).eval().requires_grad_(False)
        self.preprocess = preprocess
        self.tokenizer = open_clip.get_tokenizer(model_name)

    @property
    def logit_scale(self) -> torch.Tensor:
        return self.model.logit_scale.exp().float()

    @torch.no_grad()
    def embed_images(self, images: Sequence[np.ndarray]) -> torch.Tensor:
        _check_images(images)
        pixels = torch.stack([self.preprocess(self._to_pil(im)) for im in images])
        return self.model.encode_image(pixels.to(device=self.device, dtype=self.dtype)).float()

    @torch.no_grad()
    def embed_texts(self, texts: Sequence[str]) -> torch.Tensor:
        return self.model.encode_text(self.tokenizer(list(texts)).to(self.device)).float()


def load_clip_backend(backend: Literal["hf", "open_clip"], path: str | os.PathLike, *,
                      processor_path: str | os.PathLike | None = None, model_name: str | None = None,
                      device: str = "cpu", dtype: str = "float32",
                      image_preprocess: ImagePreprocess = "processor",
                      text_padding: TextPadding = "max_length") -> CLIPBackend:
    """The one entry point the CLIP-based rewards (and GenEval's colour classifier) use."""
    if backend == "hf":
        return HFCLIPBackend(path, processor_path=processor_path, device=device, dtype=dtype,
                             image_preprocess=image_preprocess, text_padding=text_padding)
    if backend == "open_clip":
        if not model_name:
            raise ValueError("backend 'open_clip' needs model_name (an open_clip architecture, "
                         "e.g. 'ViT-L-14')")
        return OpenCLIPBackend(path, model_name=model_name, device=device, dtype=dtype)
    raise ValueError(f"unknown CLIP backend {backend!r}; expected 'hf' or 'open_clip'")


def in_batches(n: int, batch_size: int):
    """Index slices covering range(n) in chunks of batch_size (the reward's memory bound)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    for start in range(0, n, batch_size):
        yield slice(start, min(start + batch_size, n))
