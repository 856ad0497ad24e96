"""Colour of a detected object, for GenEval's colour clauses: one of GenEval's 10 colour names.

Two classifiers, both given the image, the object's box (x1, y1, x2, y2 pixels) and its instance mask when the
detector has one:

- "clip" (the reference, GenEval / reward-server): CLIP zero-shot over COLOURS with GenEval's three templates
  "a photo of a {c} {cls}", "a photo of a {c}-colored {cls}", "a photo of a {c} object". The class embedding is
  the normalised mean of the normalised template embeddings (clip_benchmark's `zero_shot_classifier`). Input: the
  image composited through the mask onto a #999 grey background, then cropped to the box (`geneval_crop`).
  Weights come from a local path only: a transformers CLIP directory (config.json + weights, e.g. a copy of
  `openai/clip-vit-large-patch14`), or an open_clip checkpoint file with `arch` (GenEval: "ViT-L-14", OpenAI).
- "hsv" (offline stand-in, tagged `+hsv`): a pixel-vote heuristic. Pixels are the mask inside the box when there is
  a mask; otherwise the box, with pixels close to the box border's median colour (the background the box also
  covers) dropped and the rest weighted towards the box centre. Each pixel is named by rules on HSV hue/saturation/
  value and CIE Lab lightness/chroma; the weighted majority wins. No CLIP ships offline, hence this heuristic.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from PIL import Image

from prompts.vocabulary import COLOURS

GENEVAL_TEMPLATES: tuple[str, ...] = ("a photo of a {c} {cls}", "a photo of a {c}-colored {cls}",
                                      "a photo of a {c} object")
GENEVAL_BACKGROUND = (153, 153, 153)  # "#999"

Box = Sequence[float]
ObjectRegion = tuple[Box, "np.ndarray | None"]  # (box, mask [H, W] bool or None)


class ColourClassifier(Protocol):
    name: str

    def classify(self, image: np.ndarray, objects: Sequence[ObjectRegion], class_name: str) -> list[str]:
        """One colour name from COLOURS per object."""
        ...


def geneval_crop(image: np.ndarray, box: Box, mask: np.ndarray | None) -> Image.Image:
    """GenEval's colour input: composite through the mask onto #999 grey (when a mask exists), crop to the box.
    PIL rounds the float box to whole pixels, as in the reference."""
    pil = Image.fromarray(image).convert("RGB")
    if mask is not None:
        if mask.shape != image.shape[:2]:
            raise ValueError(f"mask shape {mask.shape} does not match image {image.shape[:2]}")
        blank = Image.new("RGB", pil.size, GENEVAL_BACKGROUND)
        pil = Image.composite(pil, blank, Image.fromarray(mask.astype(bool)))
    return pil.crop(tuple(float(v) for v in box[:4]))


# ---- HSV / Lab heuristic -------------------------------------------------------------------------------------

def _srgb_to_lab_lightness_chroma(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """CIE L* and C*ab (D65) of [N, 3] floats in [0, 1]."""
    linear = np.where(rgb <= 0.04045, rgb / 12.92, ((rgb + 0.055) / 1.055) ** 2.4)
    xyz = linear @ np.array([[0.4124564, 0.2126729, 0.0193339],
                             [0.3575761, 0.7151522, 0.1191920],
                             [0.1804375, 0.0721750, 0.9503041]])
    xyz /= np.array([0.95047, 1.0, 1.08883])
    f = np.where(xyz > (6 / 29) ** 3, np.cbrt(xyz), xyz / (3 * (6 / 29) ** 2) + 4 / 29)
    lightness = 116 * f[:, 1] - 16
    a, b = 500 * (f[:, 0] - f[:, 1]), 200 * (f[:, 1] - f[:, 2])
    return lightness, np.hypot(a, b)


def name_pixel_colours(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Colour index into COLOURS for [N, 3] uint8 pixels, and a vote weight (grey pixels vote at half weight:
    GenEval has no "grey", so they only decide between black and white when nothing chromatic is present)."""
    from matplotlib.colors import rgb_to_hsv

    x = rgb.astype(np.float64) / 255.0
    hsv = rgb_to_hsv(x)
    hue, sat, val = hsv[:, 0] * 360.0, hsv[:, 1], hsv[:, 2]
    lightness, chroma = _srgb_to_lab_lightness_chroma(x)
    index = np.full(len(x), COLOURS.index("white"))
    weight = np.ones(len(x))

    achromatic = (chroma < 12) | (sat < 0.15)
    dark = lightness < 22
    index[achromatic | dark] = np.where(lightness[achromatic | dark] >= 55, COLOURS.index("white"),
                                        COLOURS.index("black"))
    grey = achromatic & ~dark & (lightness < 85)
    weight[grey] = 0.5

    chromatic = ~(achromatic | dark)
    bands = [  # hue upper bounds (degrees) of the main bands
        (15, "red"), (45, "orange"), (70, "yellow"), (170, "green"), (255, "blue"), (290, "purple"),
        (340, "pink"), (360.1, "red"),
    ]
    lower = 0.0
    for upper, colour in bands:
        in_band = chromatic & (hue >= lower) & (hue < upper)
        index[in_band] = COLOURS.index(colour)
        lower = upper
    reddish = chromatic & ((hue < 15) | (hue >= 340))
    orangeish = chromatic & (hue >= 15) & (hue < 45)
    # Light, desaturated red reads as pink; dark red/orange and dull orange read as brown.
    index[reddish & (val > 0.75) & (sat < 0.5)] = COLOURS.index("pink")
    index[reddish & (val < 0.45)] = COLOURS.index("brown")
    index[orangeish & ((val < 0.62) | ((sat < 0.5) & (val < 0.8)))] = COLOURS.index("brown")
    # Dark magenta reads as purple.
    index[chromatic & (hue >= 290) & (hue < 340) & (val < 0.55)] = COLOURS.index("purple")
    return index, weight


class HSVColourClassifier:
    name = "hsv"

    def __init__(self, background_distance: float = 30.0, min_foreground_fraction: float = 0.1):
        self.background_distance = float(background_distance)
        self.min_foreground_fraction = float(min_foreground_fraction)

    def _pixels_and_weights(self, image: np.ndarray, box: Box,
                            mask: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        height, width = image.shape[:2]
        # Whole pixels, at least 1x1 inside the image (a sliver of a box at the border still gets a colour).
        x1 = min(max(round(float(box[0])), 0), width - 1)
        y1 = min(max(round(float(box[1])), 0), height - 1)
        x2 = min(max(round(float(box[2])), x1 + 1), width)
        y2 = min(max(round(float(box[3])), y1 + 1), height)
        crop = image[y1:y2, x1:x2].reshape(-1, 3)
        if mask is not None:
            inside = mask[y1:y2, x1:x2].reshape(-1).astype(bool)
            if inside.any():
                return crop[inside], np.ones(int(inside.sum()))
        h, w = y2 - y1, x2 - x1
        # Centre weighting: the object is in the middle of its box, background at the edges.
        yy, xx = np.mgrid[0:h, 0:w]
        centre = np.exp(-(((xx - (w - 1) / 2) / (w / 3)) ** 2 + ((yy - (h - 1) / 2) / (h / 3)) ** 2) / 2)
        weights = centre.reshape(-1)
        ring = np.concatenate([image[y1:y2, x1].reshape(-1, 3), image[y1:y2, x2 - 1].reshape(-1, 3),
                               image[y1, x1:x2].reshape(-1, 3), image[y2 - 1, x1:x2].reshape(-1, 3)])
        background = np.median(ring.astype(np.float64), axis=0)
        foreground = np.linalg.norm(crop.astype(np.float64) - background, axis=1) > self.background_distance
        if foreground.mean() >= self.min_foreground_fraction:
            return crop[foreground], weights[foreground]
        return crop, weights

    def classify(self, image: np.ndarray, objects: Sequence[ObjectRegion], class_name: str = "object") -> list[str]:
        colours = []
        for box, mask in objects:
            pixels, weights = self._pixels_and_weights(image, box, mask)
            index, pixel_weight = name_pixel_colours(pixels)
            votes = np.bincount(index, weights=weights * pixel_weight, minlength=len(COLOURS))
            colours.append(COLOURS[int(votes.argmax())])
        return colours


# ---- CLIP zero-shot (GenEval) -----------------------------------------------------------------------------------

class CLIPColourClassifier:
    name = "clip"

    def __init__(self, clip_path: str | Path, arch: str = "ViT-L-14", device: str = "cpu", batch_size: int = 16):
        import torch

        path = Path(clip_path)
        if not path.exists():
            raise FileNotFoundError(f"CLIP weights not found at {path}")
        self.torch, self.device, self.batch_size = torch, device, int(batch_size)
        if path.is_dir() and (path / "config.json").is_file():
            from transformers import AutoTokenizer, CLIPImageProcessor, CLIPModel

            self.backend = "transformers"
            self.model = CLIPModel.from_pretrained(path).to(device).eval()
            self.processor = CLIPImageProcessor.from_pretrained(path)
            self.tokenizer = AutoTokenizer.from_pretrained(path)
        else:
            import open_clip

            self.backend = "open_clip"
            self.model, _, self.transform = open_clip.create_model_and_transforms(arch, pretrained=str(path),
                                                                                   device=device)
            self.model.eval()
            self.tokenizer = open_clip.get_tokenizer(arch)
        self._classifiers: dict[str, Any] = {}
        self._lock = threading.Lock()

    def _encode_text(self, texts: list[str]):
        if self.backend == "transformers":
            tokens = self.tokenizer(texts, padding=True, truncation=True, return_tensors="pt").to(self.device)
            features = self.model.get_text_features(**tokens)
        else:
            features = self.model.encode_text(self.tokenizer(texts).to(self.device))
        features = getattr(features, "pooler_output", features)
        return features / features.norm(dim=-1, keepdim=True)

    def _encode_images(self, crops: list[Image.Image]):
        if self.backend == "transformers":
            pixels = self.processor(images=crops, return_tensors="pt")["pixel_values"].to(self.device)
            features = self.model.get_image_features(pixel_values=pixels)
        else:
            pixels = self.torch.stack([self.transform(c) for c in crops]).to(self.device)
            features = self.model.encode_image(pixels)
        features = getattr(features, "pooler_output", features)
        return features / features.norm(dim=-1, keepdim=True)

    def text_classifier(self, class_name: str):
        """[10, D]: per colour, the normalised mean of its normalised template embeddings."""
        if class_name not in self._classifiers:
            rows = []
            with self.torch.no_grad():
                for colour in COLOURS:
                    texts = [t.format(c=colour, cls=class_name) for t in GENEVAL_TEMPLATES]
                    mean = self._encode_text(texts).mean(dim=0)
                    rows.append(mean / mean.norm())
            self._classifiers[class_name] = self.torch.stack(rows)
        return self._classifiers[class_name]

    def classify(self, image: np.ndarray, objects: Sequence[ObjectRegion], class_name: str) -> list[str]:
        if not objects:
            return []
        crops = [geneval_crop(image, box, mask) for box, mask in objects]
        with self._lock, self.torch.no_grad():
            classifier = self.text_classifier(class_name)
            colours = []
            for start in range(0, len(crops), self.batch_size):
                features = self._encode_images(crops[start:start + self.batch_size])
                logits = 100.0 * features @ classifier.T
                colours.extend(COLOURS[int(i)] for i in logits.argmax(dim=1))
        return colours


def build_colour_classifier(kind: str, clip_path: str | Path | None = None, **options: Any) -> ColourClassifier:
    if kind == "hsv":
        if clip_path:
            raise ValueError("colour='hsv' was chosen but clip_path is set; use colour='clip' (or 'auto')")
        return HSVColourClassifier(**options)
    if kind == "clip":
        if not clip_path:
            raise ValueError("colour='clip' needs clip_path (a local transformers CLIP folder or open_clip "
                             "checkpoint); no weights are downloaded")
        return CLIPColourClassifier(clip_path, **options)
    raise ValueError(f"unknown colour classifier {kind!r}; expected 'auto', 'hsv' or 'clip'")
