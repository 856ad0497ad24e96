"""OCR engines behind the OCR reward: each reads an RGB uint8 image and returns text lines with confidences.

- "rapidocr" (default): PP-OCR ONNX models that ship in the `rapidocr` wheel (no download). Its own default
  `Global.text_score=0.5` line filter is kept, like PaddleOCR's default `drop_score=0.5` that Flow-GRPO ran with.
- "tesseract": the Debian `tesseract` binary through `pytesseract`, `--psm 11` (sparse text: words anywhere in a
  scene) by default. Word confidences are rescaled from 0..100 to 0..1.
- "paddleocr": the engine Flow-GRPO (PaddleOCR 2.x, `lang="en"`, `use_angle_cls=False`) and BLIP3o-NEXT
  (PaddleOCR 3.x `predict()` with document orientation, unwarping and text-line orientation off) used. Available
  only when `paddleocr` is installed.

Engines are created once per reward and reused; each keeps its own lock because none documents thread safety.
"""

from __future__ import annotations

import importlib.metadata
import shutil
import threading
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np


@dataclass(frozen=True)
class RecognizedLine:
    text: str
    confidence: float


class OCRBackend(Protocol):
    name: str

    def read(self, image: np.ndarray) -> list[RecognizedLine]:
        """image: uint8 [H, W, 3] RGB. Lines in the engine's reading order."""
        ...


def _check_rgb_uint8(image: np.ndarray) -> None:
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        shape = getattr(image, "shape", None)
        dtype = getattr(image, "dtype", type(image).__name__)
        raise ValueError(f"OCR expects a uint8 [H, W, 3] RGB array, got shape {shape} dtype {dtype}")


class RapidOCRBackend:
    name = "rapidocr"

    def __init__(self, params: dict[str, Any] | None = None):
        from rapidocr import RapidOCR

        self.engine = RapidOCR(params=params or {})
        self._lock = threading.Lock()

    def read(self, image: np.ndarray) -> list[RecognizedLine]:
        _check_rgb_uint8(image)
        # RapidOCR treats a numpy array as BGR (OpenCV order).
        bgr = np.ascontiguousarray(image[..., ::-1])
        with self._lock:
            result = self.engine(bgr)
        if result.txts is None:  # nothing detected
            return []
        return [RecognizedLine(str(t), float(s)) for t, s in zip(result.txts, result.scores)]


class TesseractBackend:
    name = "tesseract"

    def __init__(self, lang: str = "eng", psm: int = 11, extra_config: str = ""):
        import pytesseract

        if shutil.which(pytesseract.pytesseract.tesseract_cmd) is None:
            raise RuntimeError("the 'tesseract' binary is not on PATH; install it with "
                               "`apt-get install tesseract-ocr tesseract-ocr-eng`")
        self.pytesseract = pytesseract
        self.lang, self.config = lang, f"--psm {int(psm)} {extra_config}".strip()

    def read(self, image: np.ndarray) -> list[RecognizedLine]:
        _check_rgb_uint8(image)
        data = self.pytesseract.image_to_data(image, lang=self.lang, config=self.config,
                                              output_type=self.pytesseract.Output.DICT)
        lines = []
        for text, conf in zip(data["text"], data["conf"]):
            # Rows with conf -1 are page/block/line structure, not words.
            if text.strip() and float(conf) >= 0:
                lines.append(RecognizedLine(text, float(conf) / 100.0))
        return lines


class PaddleOCRBackend:
    name = "paddleocr"

    def __init__(self, lang: str = "en", **engine_options: Any):
        try:
            version = importlib.metadata.version("paddleocr")
        except importlib.metadata.PackageNotFoundError:
            raise RuntimeError("OCR backend 'paddleocr' needs the `paddleocr` package (and paddlepaddle); "
                               "use backend 'rapidocr' (same PP-OCR models, ONNX) otherwise") from None
        from paddleocr import PaddleOCR

        self.major = int(version.split(".")[0])
        if self.major >= 3:  # BLIP3o-NEXT settings
            options = {"use_doc_orientation_classify": False, "use_doc_unwarping": False,
                       "use_textline_orientation": False}
        else:  # Flow-GRPO settings (PaddleOCR 2.9.1)
            options = {"use_angle_cls": False, "use_gpu": False, "show_log": False}
        options.update(engine_options)
        self.engine = PaddleOCR(lang=lang, **options)
        self._lock = threading.Lock()

    def read(self, image: np.ndarray) -> list[RecognizedLine]:
        _check_rgb_uint8(image)
        bgr = np.ascontiguousarray(image[..., ::-1])
        with self._lock:
            if self.major >= 3:
                results = self.engine.predict(bgr)
                return [RecognizedLine(str(t), float(s)) for res in results
                        for t, s in zip(res["rec_texts"], res["rec_scores"])]
            results = self.engine.ocr(bgr, cls=False)
        page = results[0] if results else None
        return [RecognizedLine(str(text), float(conf)) for _box, (text, conf) in (page or [])]


OCR_BACKENDS: dict[str, type] = {
    "rapidocr": RapidOCRBackend,
    "tesseract": TesseractBackend,
    "paddleocr": PaddleOCRBackend,
}


def build_ocr_backend(name: str, **options: Any) -> OCRBackend:
    if name not in OCR_BACKENDS:
        raise ValueError(f"unknown OCR backend {name!r}; known: {sorted(OCR_BACKENDS)}")
    return OCR_BACKENDS[name](**options)
