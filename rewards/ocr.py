"""OCR edit-distance reward: how much of the prompt's quoted text can be read back from the image.

Version tag: `ocr@flowgrpo`. Matches Flow-GRPO `flow_grpo/ocr.py` (the same rule is used by BLIP3o-NEXT,
Flow-Factory, verl-omni `genrm_ocr` and UniRL `ocr_common`).

Definition (per image):
1. target = the text inside the first pair of double quotes of the prompt: `prompt.split('"')[1]`. As in the
   reference, a prompt with a single `"` takes everything after it.
2. recognized = the OCR lines whose confidence is > 0, concatenated with no separator.
3. Both sides are normalised by deleting the `' '` character and lower-casing; nothing else (no punctuation,
   Unicode or other-whitespace normalisation).
4. dist = 0 if target is a substring of recognized, else Levenshtein(recognized, target); dist = min(dist, |target|).
5. reward = 1 - dist / |target|, in [0, 1].
Worked example: target "Step Goal Achieved" (16 chars after normalisation); read "STEP GOAL ACHIEVED 10K" -> 1.0;
"Step Goa1 Achieved" -> 0.9375; "Goal" -> 0.25; nothing read -> 0.

Edge cases, where the reference is undefined or crashes (documented choices):
- No double quote in the prompt: the reference raises IndexError. Here `no_quote_fallback` decides:
  "error" (default: `ValueError` naming the prompt), "whole_prompt" (the whole prompt is the target),
  "single_quotes_then_prompt" (UniRL: the first '...' pair, else the whole prompt), "zero" (the reward is 0.0 for
  that sample: an explicit, configured value, not a failure being hidden).
- Empty target (`""`, or only spaces): the reference divides by zero. Here, following verl-omni, the reward is 1.0
  when the normalised transcription is also empty and 0.0 otherwise.
- OCR engine exception on an image: the reference scores it 0. Here it raises `OCRError` naming the image index, so
  the reward suite applies the recipe's required/optional policy; a failure is never turned into a silent 0.
- Nothing read (blank image): Levenshtein("", t) = |t|, so 0.
"""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from typing import Any, ClassVar, Literal

import numpy as np
from rapidfuzz.distance import Levenshtein

from rewards.base import RewardOutput
from rewards.ocr_backends import OCRBackend, build_ocr_backend

NoQuoteFallback = Literal["error", "whole_prompt", "single_quotes_then_prompt", "zero"]
NO_QUOTE_FALLBACKS: tuple[str, ...] = ("error", "whole_prompt", "single_quotes_then_prompt", "zero")
VERSIONS: tuple[str, ...] = ("flowgrpo",)

_SINGLE_QUOTED = re.compile(r"'([^']*)'")


class OCRError(RuntimeError):
    """The OCR engine failed on one image of the batch."""


def normalize_ocr_text(text: str) -> str:
    # Flow-GRPO deletes only the ASCII space, then lower-cases: tabs, newlines and punctuation are kept on purpose.
    return text.replace(" ", "").lower()


def extract_target(prompt: str, no_quote_fallback: NoQuoteFallback = "error") -> str | None:
    """The text the image should show. None means "no target; score 0" (only with fallback "zero")."""
    if '"' in prompt:
        return prompt.split('"')[1]
    if no_quote_fallback == "error":
        raise ValueError(f"OCR prompt has no double-quoted target text: {prompt!r} "
                         f"(set no_quote_fallback to one of {NO_QUOTE_FALLBACKS[1:]} to score it anyway)")
    if no_quote_fallback == "whole_prompt":
        return prompt
    if no_quote_fallback == "single_quotes_then_prompt":
        match = _SINGLE_QUOTED.search(prompt)
        return match.group(1) if match else prompt
    if no_quote_fallback == "zero":
        return None
    raise ValueError(f"no_quote_fallback={no_quote_fallback!r}; expected one of {NO_QUOTE_FALLBACKS}")


def ocr_reward(prompt: str, recognized: str, version: str = "flowgrpo", *,
               no_quote_fallback: NoQuoteFallback = "error") -> float:
    """The OCR reward of one image whose OCR read `recognized` (lines already joined with no separator)."""
    if version not in VERSIONS:
        raise ValueError(f"unknown ocr version {version!r}; known: {VERSIONS}")
    raw_target = extract_target(prompt, no_quote_fallback)
    if raw_target is None:
        return 0.0
    target, read = normalize_ocr_text(raw_target), normalize_ocr_text(recognized)
    if not target:
        return 1.0 if not read else 0.0
    dist = 0 if target in read else Levenshtein.distance(read, target)
    dist = min(dist, len(target))
    return 1.0 - dist / len(target)


class OCRReward:
    """Batched OCR reward. Options: `backend` ("rapidocr" default, "tesseract", "paddleocr"), `backend_options`
    (keyword arguments of that backend), `no_quote_fallback`, `version`."""

    name: ClassVar[str] = "ocr"
    VERSIONS: ClassVar[tuple[str, ...]] = VERSIONS

    def __init__(self, version: str = "flowgrpo", backend: str = "rapidocr",
                 backend_options: dict[str, Any] | None = None, no_quote_fallback: NoQuoteFallback = "error"):
        if version not in VERSIONS:
            raise ValueError(f"unknown ocr version {version!r}; known: {VERSIONS}")
        if no_quote_fallback not in NO_QUOTE_FALLBACKS:
            raise ValueError(f"no_quote_fallback={no_quote_fallback!r}; expected one of {NO_QUOTE_FALLBACKS}")
        self.version = version
        self.no_quote_fallback: NoQuoteFallback = no_quote_fallback
        self.backend: OCRBackend = build_ocr_backend(backend, **(backend_options or {}))

    def recognize(self, image: np.ndarray) -> str:
        """Lines with confidence > 0 (Flow-GRPO's filter), joined with no separator."""
        lines = self.backend.read(image)
        return "".join(line.text for line in lines if line.confidence > 0)

    def __call__(self, images: Sequence[np.ndarray], prompts: Sequence[str],
                 metadata: Sequence[dict[str, Any]] | None = None) -> RewardOutput:
        if len(images) != len(prompts):
            raise ValueError(f"ocr: {len(images)} images but {len(prompts)} prompts")
        # Resolve every target first: a bad prompt fails before any OCR time is spent.
        for prompt in prompts:
            extract_target(prompt, self.no_quote_fallback)
        scores, details = [], []
        for index, (image, prompt) in enumerate(zip(images, prompts)):
            start = time.perf_counter()
            try:
                recognized = self.recognize(image)
            except Exception as exc:
                raise OCRError(f"ocr backend {self.backend.name!r} failed on image {index} "
                               f"(prompt {prompt!r}): {type(exc).__name__}: {exc}") from exc
            seconds = time.perf_counter() - start
            scores.append(ocr_reward(prompt, recognized, self.version, no_quote_fallback=self.no_quote_fallback))
            details.append({"recognized": recognized, "ocr_seconds": seconds})
        return RewardOutput(scores=scores, details=details)
