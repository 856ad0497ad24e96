"""Image tokenizers: pixels → the discrete codes the AR model reads (editing references, SFT targets).

BLIP3o-NEXT tokenizes images with TA-Tok (`csuhan/TA-Tok`, shared notes §1): a frozen SigLIP2 so400m-patch14-384
encoder, hidden states of layer −2, 384² input → 27×27 = 729 features, each snapped to the nearest entry of a
65,536-entry codebook. Code k is the LM token `<I{k}>` (`rollouts/vocab.py`). For editing, the reference image's
codes go into the AR context between vision markers (`rollouts/reference_image.py`).

One interface, `ImageTokenizer`: `num_codes` (K), `tokens_per_image` (N), `encode(uint8 [B,H,W,3]) -> int64
[B, N]` (raster order). Implementations:

- `TATokTokenizer` — SigLIP / SigLIP2 vision tower from a local folder + a codebook tensor file. Layout:

      <dir>/config.json              {"_class_name": "TATokTokenizer", "select_layer": -2, "pool_scale": 1,
                                      "distance": "cosine", "image_size": 384, "image_mean": [...], ...}
      <dir>/encoder/                 transformers `SiglipVisionModel` (fixed-resolution SigLIP2 checkpoints such as
                                     siglip2-so400m-patch14-384 are this class) or `Siglip2VisionModel` (NaFlex)
      <dir>/quantizer.safetensors    `codebook` [K, D]; optional feature head: `task_layer.weight` [H, H] /
                                     `task_layer.bias` (Linear then tanh) and `projection.weight` [D, H] /
                                     `projection.bias`

  Features: hidden_states[select_layer] → average-pooled `pool_scale`×`pool_scale` (TA-Tok's scale tokens
  `<S0..2>` are pool 1/2/3) → optional tanh(task_layer) → optional projection → nearest code (cosine: both sides
  L2-normalised; or squared L2). That is TA-Tok's encode path: `encode_task_layer` (Linear+Tanh), the bottleneck's
  `in_linear`, and the SimVQ codebook `embedding_proj(embedding)`. The released `ta_tok.pth` loads directly
  (`rollouts/ta_tok_checkpoint.py`, also `nativerl convert-ta-tok` to write this layout); `build_tiny_tatok`
  writes a random tiny model in this layout for tests.
- a world's own tokenizer, registered by class name in its manifest (`image_tokenizers`, worlds/manifest.py), e.g.
  the shapes world's k-means VQ (`worlds/shapes/image_tokenizer.py`, which also decodes).

`load_image_tokenizer(path)` (rollouts/image_tokenizer_loading.py) picks the class from `config.json`'s `_class_name` (built-in, then the worlds'), or
reads a released TA-Tok `.pth` file. Nothing here downloads.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field

CONFIG_NAME = "config.json"
RELEASED_TA_TOK_NAME = "ta_tok.pth"  # the released TA-Tok file, readable as is (rollouts/ta_tok_checkpoint.py)
QUANTIZER_NAME = "quantizer.safetensors"
ENCODER_SUBDIR = "encoder"


@runtime_checkable
class ImageTokenizer(Protocol):
    num_codes: int
    tokens_per_image: int

    def encode(self, images: np.ndarray) -> np.ndarray:
        """uint8 [B, H, W, 3] → int64 [B, N] codes in [0, num_codes), raster order."""
        ...


def check_uint8_images(images: Any, who: str) -> np.ndarray:
    arr = np.asarray(images)
    if arr.dtype != np.uint8 or arr.ndim != 4 or arr.shape[-1] != 3:
        raise ValueError(f"{who}: expected uint8 images [B, H, W, 3], got {arr.dtype} {arr.shape}")
    return arr


# ---- TA-Tok ----------------------------------------------------------------------------------------------------
class TATokConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    select_layer: int = Field(-2, description="hidden_states index; TA-Tok: −2 (penultimate layer).")
    pool_scale: int = Field(1, ge=1, description="Average-pool s×s features; TA-Tok scales 1/2/3, BLIP3o-NEXT uses 1.")
    distance: Literal["cosine", "l2"] = Field("cosine", description="Nearest-code rule.")
    image_size: int = Field(384, ge=1, description="Input side in pixels (SigLIP image processor: bicubic resize). "
                            "TA-Tok: 384.")
    image_mean: tuple[float, float, float] = (0.5, 0.5, 0.5)  # SigLIP normalisation
    image_std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    max_num_patches: int | None = Field(None, description="Siglip2 (NaFlex) only: patches per image; default "
                                        "(image_size / patch)^2.")


class FeatureHead(torch.nn.Module):
    """Encoder features → the space the codebook lives in: optional tanh(task_layer(h)), then optional projection.

    TA-Tok's `encode_task_layer` is Linear+Tanh and its bottleneck's `in_linear` is a Linear; a plain SigLIP-feature
    VQ has neither. Kept as one module so the saved tensor names say which stage each weight belongs to."""

    def __init__(self, task_layer: torch.nn.Linear | None = None, projection: torch.nn.Linear | None = None):
        super().__init__()
        self.task_layer, self.projection = task_layer, projection

    @property
    def out_features(self) -> int | None:
        last = self.projection if self.projection is not None else self.task_layer
        return None if last is None else int(last.out_features)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        if self.task_layer is not None:
            h = torch.tanh(self.task_layer(h))
        if self.projection is not None:
            h = self.projection(h)
        return h

    def tensors(self) -> dict[str, torch.Tensor]:
        return {f"{name}.{k}": v.detach().cpu().contiguous()
                for name in ("task_layer", "projection") if getattr(self, name) is not None
                for k, v in getattr(self, name).state_dict().items()}

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor], source: str) -> FeatureHead:
        layers = {}
        for name in ("task_layer", "projection"):
            if f"{name}.weight" in tensors:
                layers[name] = linear_from_tensors(tensors, name)
            elif f"{name}.bias" in tensors:
                raise ValueError(f"{source}: {name}.bias without {name}.weight")
        return cls(**layers)


def linear_from_tensors(tensors: dict[str, torch.Tensor], prefix: str) -> torch.nn.Linear:
    """The `nn.Linear` whose weights are `<prefix>.weight` (and `<prefix>.bias`, when present) in `tensors`, fp32."""
    w = tensors[f"{prefix}.weight"]
    layer = torch.nn.Linear(w.shape[1], w.shape[0], bias=f"{prefix}.bias" in tensors)
    layer.load_state_dict({k[len(prefix) + 1:]: v.float() for k, v in tensors.items() if k.startswith(prefix + ".")})
    return layer


class TATokTokenizer(torch.nn.Module):
    """SigLIP(2) features → nearest codebook entry. Frozen; `encode` runs under no_grad."""

    def __init__(self, encoder: torch.nn.Module, codebook: torch.Tensor, config: TATokConfig,
                 head: FeatureHead | None = None):
        super().__init__()
        self.encoder, self.config = encoder, config
        self.head = head if head is not None else FeatureHead()
        self.register_buffer("codebook", codebook.float(), persistent=False)
        self.naflex = type(encoder).__name__.startswith("Siglip2")
        self.patch_size = int(encoder.config.patch_size)
        if config.image_size % (self.patch_size * config.pool_scale):
            raise ValueError(f"image_size {config.image_size} is not a multiple of patch_size {self.patch_size} × "
                             f"pool_scale {config.pool_scale}")
        feat_dim = self.head.out_features or int(encoder.config.hidden_size)
        if codebook.ndim != 2 or codebook.shape[1] != feat_dim:
            raise ValueError(f"codebook has shape {tuple(codebook.shape)}; expected [K, {feat_dim}]")
        self.requires_grad_(False)
        self.eval()

    @property
    def num_codes(self) -> int:
        return int(self.codebook.shape[0])

    @property
    def grid(self) -> int:
        return self.config.image_size // self.patch_size // self.config.pool_scale

    @property
    def tokens_per_image(self) -> int:
        return self.grid * self.grid

    def pixel_values(self, images: np.ndarray) -> torch.Tensor:
        """uint8 [B,H,W,3] → normalised float [B,3,S,S] through transformers' `SiglipImageProcessor`, the processor
        BLIP3o-NEXT's TA-Tok tower uses (PIL bicubic resize to `image_size`, rescale, mean/std)."""
        from transformers import SiglipImageProcessor

        s = self.config.image_size
        processor = SiglipImageProcessor(size={"height": s, "width": s}, image_mean=list(self.config.image_mean),
                                         image_std=list(self.config.image_std))
        return processor(images=list(images), return_tensors="pt")["pixel_values"].float()

    def _features(self, pixels: torch.Tensor) -> torch.Tensor:
        """→ [B, g0*g0, H] hidden states of `select_layer` on the unpooled patch grid g0 = S / patch."""
        device = next(self.encoder.parameters()).device
        dtype = next(self.encoder.parameters()).dtype
        if not self.naflex:
            out = self.encoder(pixel_values=pixels.to(device, dtype), output_hidden_states=True)
            return out.hidden_states[self.config.select_layer].float()
        # Siglip2 (NaFlex) takes flattened patches [B, P, p*p*3] in the image processor's order (row-major
        # patches, each (p, p, c)), an attention mask and the (h, w) patch grid.
        b, c, s, _ = pixels.shape
        p = self.patch_size
        g0 = s // p
        patches = pixels.reshape(b, c, g0, p, g0, p).permute(0, 2, 4, 3, 5, 1).reshape(b, g0 * g0, p * p * c)
        max_patches = self.config.max_num_patches or g0 * g0
        if max_patches < g0 * g0:
            raise ValueError(f"max_num_patches {max_patches} < {g0 * g0} patches of a {s}px image")
        mask = torch.zeros((b, max_patches), dtype=torch.int32)
        mask[:, : g0 * g0] = 1
        patches = F.pad(patches, (0, 0, 0, max_patches - g0 * g0))
        shapes = torch.tensor([[g0, g0]] * b, dtype=torch.long)
        out = self.encoder(pixel_values=patches.to(device, dtype), pixel_attention_mask=mask.to(device),
                           spatial_shapes=shapes.to(device), output_hidden_states=True)
        return out.hidden_states[self.config.select_layer][:, : g0 * g0].float()

    @torch.no_grad()
    def features(self, images: np.ndarray) -> torch.Tensor:
        """uint8 [B,H,W,3] → the vectors that get quantised, [B, N, D] (pooled, projected)."""
        images = check_uint8_images(images, "TATokTokenizer.encode")
        h = self._features(self.pixel_values(images))
        b, n, d = h.shape
        g0 = int(round(n ** 0.5))
        if self.config.pool_scale > 1:
            grid = h.transpose(1, 2).reshape(b, d, g0, g0)
            h = F.avg_pool2d(grid, self.config.pool_scale).flatten(2).transpose(1, 2)
        return self.head.to(h.device)(h)

    @torch.no_grad()
    def encode(self, images: np.ndarray) -> np.ndarray:
        h = self.features(images)
        book = self.codebook.to(h.device)
        if self.config.distance == "cosine":
            scores = F.normalize(h, dim=-1) @ F.normalize(book, dim=-1).T
            codes = scores.argmax(-1)
        else:
            dist = (h * h).sum(-1, keepdim=True) - 2 * h @ book.T + (book * book).sum(-1)
            codes = dist.argmin(-1)
        return codes.cpu().numpy().astype(np.int64)

    # ---- files -----------------------------------------------------------------------------------------------
    def save_pretrained(self, directory: str | Path) -> None:
        from safetensors.torch import save_file

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.encoder.save_pretrained(str(directory / ENCODER_SUBDIR))
        tensors = {"codebook": self.codebook.cpu().contiguous(), **self.head.tensors()}
        save_file(tensors, str(directory / QUANTIZER_NAME))
        (directory / CONFIG_NAME).write_text(json.dumps({"_class_name": "TATokTokenizer",
                                                         **self.config.model_dump(mode="json")}, indent=2) + "\n")

    @classmethod
    def from_pretrained(cls, directory: str | Path, device: str = "cpu") -> TATokTokenizer:
        from safetensors.torch import load_file
        from transformers import AutoConfig

        directory = Path(directory)
        raw = read_tokenizer_config(directory)
        raw.pop("_class_name", None)
        try:
            config = TATokConfig(**raw)
        except Exception as exc:  # pydantic names the bad key
            raise ValueError(f"{directory / CONFIG_NAME}: bad TA-Tok config: {exc}") from None
        enc_dir = directory / ENCODER_SUBDIR
        if not (enc_dir / CONFIG_NAME).is_file():
            raise FileNotFoundError(f"TA-Tok encoder folder {enc_dir} has no config.json (a transformers "
                                    "SiglipVisionModel / Siglip2VisionModel save_pretrained folder)")
        enc_type = AutoConfig.from_pretrained(str(enc_dir), local_files_only=True).model_type
        if enc_type in ("siglip_vision_model", "siglip"):
            from transformers import SiglipVisionModel as enc_cls
        elif enc_type in ("siglip2_vision_model", "siglip2"):
            from transformers import Siglip2VisionModel as enc_cls
        else:
            raise ValueError(f"{enc_dir}: model_type {enc_type!r} is not a SigLIP / SigLIP2 vision model")
        encoder = enc_cls.from_pretrained(str(enc_dir), local_files_only=True).to(device)
        qpath = directory / QUANTIZER_NAME
        if not qpath.is_file():
            raise FileNotFoundError(f"TA-Tok codebook file {qpath} not found")
        tensors = load_file(str(qpath))
        if "codebook" not in tensors:
            raise ValueError(f"{qpath} has no 'codebook' tensor (keys: {sorted(tensors)})")
        unknown = sorted(k for k in tensors if k != "codebook" and k.split(".", 1)[0] not in ("task_layer",
                                                                                            "projection"))
        if unknown:
            raise ValueError(f"{qpath}: unexpected tensors {unknown} (expected codebook, task_layer.*, projection.*)")
        return cls(encoder, tensors["codebook"], config, FeatureHead.from_tensors(tensors, str(qpath)))


def build_tiny_tatok(directory: str | Path | None = None, *, num_codes: int = 64, image_size: int = 32,
                     patch_size: int = 8, hidden_size: int = 32, code_dim: int = 16, naflex: bool = False,
                     seed: int = 0) -> TATokTokenizer:
    """A random TA-Tok-shaped tokenizer (2-layer SigLIP, `num_codes` codes) for tests; saved when `directory`."""
    from transformers import Siglip2VisionConfig, Siglip2VisionModel, SiglipVisionConfig, SiglipVisionModel

    common = dict(hidden_size=hidden_size, intermediate_size=2 * hidden_size, num_hidden_layers=2,
                  num_attention_heads=2, patch_size=patch_size)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        if naflex:
            encoder = Siglip2VisionModel(Siglip2VisionConfig(num_patches=(image_size // patch_size) ** 2, **common))
        else:
            encoder = SiglipVisionModel(SiglipVisionConfig(image_size=image_size, **common))
        projection = torch.nn.Linear(hidden_size, code_dim)
        codebook = torch.randn(num_codes, code_dim)
    tok = TATokTokenizer(encoder, codebook, TATokConfig(image_size=image_size), FeatureHead(projection=projection))
    if directory is not None:
        tok.save_pretrained(directory)
    return tok


def as_image_tokenizer(obj: Any) -> ImageTokenizer:
    """`obj` itself when it implements the interface (num_codes, tokens_per_image, encode), else a TypeError."""
    if not isinstance(obj, ImageTokenizer):
        raise TypeError(f"{type(obj).__name__} is not an image tokenizer (needs num_codes, tokens_per_image, "
                        "encode)")
    return obj


# ---- loading by class name -------------------------------------------------------------------------------------
# `_class_name` → class with `from_pretrained(directory)`. Worlds add their own (a world's `image_tokenizers`,
# worlds/manifest.py), found when a checkpoint names a class not listed here.
TOKENIZER_CLASSES: dict[str, Any] = {"TATokTokenizer": TATokTokenizer}


def tokenizer_class(name: Any) -> Any:
    """The image tokenizer class a config's `_class_name` names: built-in, else a world's; None when unknown."""
    if name in TOKENIZER_CLASSES:
        return TOKENIZER_CLASSES[name]
    import worlds

    target = worlds.lookup("image_tokenizers", name) if isinstance(name, str) else None
    return worlds.load_object(target) if target is not None else None


def known_tokenizer_classes() -> list[str]:
    import worlds

    return sorted(set(TOKENIZER_CLASSES) | set(worlds.contributions("image_tokenizers")))


def read_tokenizer_config(directory: Path) -> dict[str, Any]:
    path = directory / CONFIG_NAME
    if not path.is_file():
        raise FileNotFoundError(f"no image tokenizer config at {path}")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path} is not valid JSON: {exc}") from None


