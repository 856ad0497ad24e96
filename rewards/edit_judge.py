"""Edit judge: did the edit follow the instruction? A pluggable judge scores (instruction, reference, edited).

Definition: score = the judge's verdict for each image, normalised to [0, 1]. The judge is chosen by option
`judge`:
- `"vlm"` (optional; needs a running server): a vision-language model behind an OpenAI-compatible
  `POST {url}/chat/completions` endpoint **on loopback** (vLLM / SGLang / llama.cpp serve one). One request per
  image: a user message with the instruction, the reference and the edited image as base64 PNG `image_url` data
  URLs, asking for `Score: <0..10>` (VIEScore / GEdit-Bench style 0–10 semantic-consistency rating, greedy
  decoding). The reply's number is parsed (`parse_score`); a reply without a parsable score, or a score outside
  [0, max_score], is a `JudgeError` (the suite's required/optional policy applies). It is never a silent 0.
- `"pkg.module:Name"`: any class (instantiated with `judge_options`) or function with
  `judge(instruction, reference, edited, row) -> float in [0, 1]` (and optionally `version`), e.g. an exact
  checker for a synthetic world.

Version tag: `edit_judge@<judge version>`; the VLM judge's is `vlm+<model>+<prompt version>`, so a changed model or
prompt changes the tag.
"""

from __future__ import annotations

import base64
import inspect
import io
import ipaddress
import re
from concurrent.futures import ThreadPoolExecutor
from typing import Any, ClassVar, Protocol, Sequence
from urllib.parse import urlparse

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from rewards.base import RewardOutput

PROMPT_VERSION = "p1"
JUDGE_PROMPT = (
    "You are judging an image edit. The first image is the original, the second image is the edited result.\n"
    "Editing instruction: \"{instruction}\"\n"
    "Rate how well the edited image follows the instruction, from 0 (not at all) to {max_score} (perfectly), "
    "ignoring image quality. Answer with one line: Score: <number>"
)
_SCORE_LINE = re.compile(r"score\s*[:=]\s*\**\s*(-?\d+(?:\.\d+)?)\s*(?:/\s*(\d+(?:\.\d+)?))?", re.IGNORECASE)
_BARE_NUMBER = re.compile(r"\s*\**\s*(-?\d+(?:\.\d+)?)\s*(?:/\s*(\d+(?:\.\d+)?))?\s*\**\s*\.?\s*")


class JudgeError(RuntimeError):
    """The judge gave no usable verdict (unparsable reply, out-of-range score, HTTP failure)."""


class Judge(Protocol):
    version: str

    def __call__(self, instruction: str, reference: np.ndarray, edited: np.ndarray,
                 row: dict[str, Any]) -> float: ...


def parse_score(text: str, max_score: float) -> float:
    """`Score: 7`, `score = 7/10`, `**Score:** 7.5` or a reply that is only a number → the number / max_score."""
    m = _SCORE_LINE.search(text)
    if m is None:
        m = _BARE_NUMBER.fullmatch(text)
    if m is None:
        raise JudgeError(f"no score in the judge's reply: {text[:200]!r}")
    value = float(m.group(1))
    scale = float(m.group(2)) if m.group(2) else max_score
    if scale <= 0 or not 0.0 <= value <= scale:
        raise JudgeError(f"judge score {value} is outside [0, {scale}] in reply {text[:200]!r}")
    return value / scale


def png_data_url(image: np.ndarray) -> str:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG", compress_level=1)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def require_loopback(url: str) -> str:
    """The VLM judge only talks to a server on this machine (no data leaves it)."""
    host = urlparse(url).hostname or ""
    ok = host == "localhost"
    if not ok:
        try:
            ok = ipaddress.ip_address(host).is_loopback
        except ValueError:
            ok = False
    if not ok:
        raise ValueError(f"edit_judge: url {url!r} is not on loopback (localhost / 127.0.0.0/8 / ::1)")
    return url.rstrip("/")


class VLMJudgeOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: str = Field(..., description="Base URL of the OpenAI-compatible API, e.g. http://127.0.0.1:8000/v1")
    model: str = Field(..., description="The served model name (the request's `model`).")
    max_score: float = Field(10.0, gt=0, description="Top of the rating scale asked for.")
    timeout_s: float = Field(120.0, gt=0)
    max_tokens: int = Field(64, ge=1)
    concurrency: int = Field(4, ge=1, description="Requests in flight.")
    api_key: str | None = Field(None, description="Sent as a Bearer token when set (local servers rarely need it).")


class VLMJudge:
    def __init__(self, **options: Any):
        self.options = VLMJudgeOptions(**options)
        self.url = require_loopback(self.options.url) + "/chat/completions"
        self.version = f"vlm+{self.options.model}+{PROMPT_VERSION}"
        import httpx

        headers = {"Authorization": f"Bearer {self.options.api_key}"} if self.options.api_key else {}
        self.client = httpx.Client(timeout=self.options.timeout_s, headers=headers, trust_env=False)

    def request(self, instruction: str, reference: np.ndarray, edited: np.ndarray) -> dict[str, Any]:
        text = JUDGE_PROMPT.format(instruction=instruction, max_score=f"{self.options.max_score:g}")
        return {
            "model": self.options.model,
            "temperature": 0.0,
            "max_tokens": self.options.max_tokens,
            "messages": [{"role": "user", "content": [
                {"type": "image_url", "image_url": {"url": png_data_url(reference)}},
                {"type": "image_url", "image_url": {"url": png_data_url(edited)}},
                {"type": "text", "text": text},
            ]}],
        }

    def __call__(self, instruction: str, reference: np.ndarray, edited: np.ndarray, row: dict[str, Any]) -> float:
        import httpx

        try:
            resp = self.client.post(self.url, json=self.request(instruction, reference, edited))
        except httpx.HTTPError as exc:
            raise JudgeError(f"VLM judge at {self.url} failed: {type(exc).__name__}: {exc}") from None
        if resp.status_code != 200:
            raise JudgeError(f"VLM judge at {self.url} answered HTTP {resp.status_code}: {resp.text[:200]!r}")
        try:
            content = resp.json()["choices"][0]["message"]["content"]
        except (ValueError, KeyError, IndexError, TypeError):
            raise JudgeError(f"VLM judge at {self.url}: not a chat-completions answer: {resp.text[:200]!r}") \
                from None
        if isinstance(content, list):  # some servers return content parts
            content = " ".join(p.get("text", "") for p in content if isinstance(p, dict))
        if not isinstance(content, str):
            raise JudgeError(f"VLM judge at {self.url}: message content is {type(content).__name__}, not text")
        return parse_score(content, self.options.max_score)


class EditJudgeOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    judge: str = Field("vlm", description="'vlm' or a dotted path 'pkg.module:Name' to a judge class/function.")
    judge_options: dict[str, Any] = Field(default_factory=dict, description="Keyword arguments for the judge.")
    version: str | None = Field(None, description="Pinned by 'edit_judge@<version>'; must equal the judge's.")


def _build_judge(spec: str, options: dict[str, Any]) -> Judge:
    if spec == "vlm":
        return VLMJudge(**options)
    from rewards.registry import import_target

    target = import_target(spec)
    if inspect.isclass(target):
        return target(**options)
    if options:
        raise ValueError(f"edit_judge: judge {spec!r} is a function; judge_options are for classes")
    return target


class EditJudgeReward:
    name: ClassVar[str] = "edit_judge"
    OPTIONS: ClassVar[type] = EditJudgeOptions  # checked by `nativerl validate` without building the reward

    def __init__(self, **options: Any):
        self.options = EditJudgeOptions(**options)
        self.judge = _build_judge(self.options.judge, self.options.judge_options)
        self.version = str(getattr(self.judge, "version", "user"))
        if self.options.version is not None and self.options.version != self.version:
            raise ValueError(f"edit_judge: pinned version {self.options.version!r} but the judge is "
                             f"{self.version!r}")
        self.concurrency = getattr(getattr(self.judge, "options", None), "concurrency", 1)

    def __call__(self, images: Sequence[np.ndarray], prompts: Sequence[str],
                 metadata: Sequence[dict[str, Any]]) -> RewardOutput:
        from prompts.edit_prompts import INSTRUCTION, reference_pixels

        if len(images) != len(metadata):
            raise ValueError(f"edit_judge: {len(images)} images but {len(metadata)} metadata rows")

        def one(i: int) -> float:
            row = metadata[i]
            instruction = row.get(INSTRUCTION, prompts[i])
            score = float(self.judge(instruction, reference_pixels(row), images[i], row))
            if not 0.0 <= score <= 1.0:
                raise JudgeError(f"judge {self.version!r} returned {score} for image {i}; expected [0, 1]")
            return score

        if self.concurrency > 1 and len(images) > 1:
            with ThreadPoolExecutor(self.concurrency) as pool:
                scores = list(pool.map(one, range(len(images))))
        else:
            scores = [one(i) for i in range(len(images))]
        return RewardOutput(scores=scores, details=[{"judge": s} for s in scores])
