"""`remote`: a reward computed by a nativerl reward server (`rewards/server.py`, `nativerl serve-rewards`).

The scores are whatever the served reward computes; images travel as lossless PNG, so they equal the
in-process scores. The tag is `remote@<served tag>` once the server has answered (e.g.
`remote@clipscore@flowgrpo`); before that it is `remote@<reward>`. `expect_tag` makes a mismatch an error.

Several servers: `url` may be a list. Batches go out round-robin, one request per server in flight, and a
failed attempt moves on to the next server (failover). Every server must serve the same tag, since mixed versions
would mix scores; a disagreement is an error naming each server's tag.

Failures: connection errors, timeouts and 5xx answers are retried `max_retries` times, sleeping
`backoff_s · 2^k` (capped at `max_backoff_s`) between attempts; then `RemoteRewardError` names the URL and
the last error, and the suite's required/optional policy applies. A 4xx answer (bad request) is not retried.
Worst-case time per request ≈ (max_retries + 1) · timeout_s + Σ backoffs (`RemoteRewardOptions.bound_s`).
"""

from __future__ import annotations

import json
import math
import time
from typing import Any, ClassVar, Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from rewards.base import RewardOutput
from rewards.server import FILE_KEYS, INLINE_PNG, SCORE_PATH, _json_default, encode_png_base64


class RemoteRewardError(RuntimeError):
    """The remote reward could not be computed (server down, timing out, failing, or refusing the request)."""


class RemoteRewardOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    url: str | list[str] = Field(..., description="Server base URL, e.g. http://127.0.0.1:8765, or a list of "
                                 "servers serving the same reward (round-robin with failover).")
    reward: str = Field(..., description="The served reward name (the server recipe's `name`, e.g. 'ocr').")
    timeout_s: float = Field(120.0, gt=0, description="Per-attempt HTTP timeout (Flow-GRPO uses 120 s).")
    max_retries: int = Field(3, ge=0, description="Extra attempts after the first one fails.")
    backoff_s: float = Field(1.0, ge=0, description="Sleep before retry k (from 0): backoff_s * 2**k.")
    max_backoff_s: float = Field(30.0, ge=0)
    batch_size: int = Field(64, ge=1, description="Images per request (≤ the server's max_batch).")
    png_compress_level: int = Field(1, ge=0, le=9, description="0 = fastest encoding, largest payload.")
    expect_tag: str | None = Field(None, description="Fail unless the served tag is this ('ocr@flowgrpo').")
    version: str | None = Field(None, description="Set by a pinned name 'remote@x'; the server's tag wins.")

    @property
    def urls(self) -> list[str]:
        urls = [self.url] if isinstance(self.url, str) else list(self.url)
        if not urls:
            raise ValueError("remote: url is an empty list")
        return [u.rstrip("/") for u in urls]

    def backoff_schedule(self) -> list[float]:
        return [min(self.backoff_s * 2 ** k, self.max_backoff_s) for k in range(self.max_retries)]

    @property
    def bound_s(self) -> float:
        """Upper bound on the time one request can take before RemoteRewardError (plus encoding time)."""
        return (self.max_retries + 1) * self.timeout_s + sum(self.backoff_schedule())


class RemoteReward:
    name: ClassVar[str] = "remote"
    OPTIONS: ClassVar[type] = RemoteRewardOptions  # checked by `nativerl validate` without building the reward

    def __init__(self, **options: Any):
        import httpx

        self.options = RemoteRewardOptions(**options)
        self.version = self.options.version or self.options.reward
        self._httpx = httpx
        self._client = httpx.Client(timeout=self.options.timeout_s)  # thread-safe: shared by the request threads
        self.urls = self.options.urls

    def close(self) -> None:
        self._client.close()

    def _post_with_retries(self, body: bytes, first_server: int = 0) -> tuple[str, dict[str, Any]]:
        """(the URL that answered, its JSON). Attempt k goes to server (first_server + k) mod the number of servers."""
        o, httpx = self.options, self._httpx
        backoffs = o.backoff_schedule()
        last = ""
        for attempt in range(o.max_retries + 1):
            url = self.urls[(first_server + attempt) % len(self.urls)]
            try:
                resp = self._client.post(url + SCORE_PATH, content=body,
                                         headers={"content-type": "application/json"})
            except httpx.HTTPError as exc:  # connection refused, timeouts, protocol errors: retry
                last = f"{url}: {type(exc).__name__}: {exc}"
            else:
                if resp.status_code == 200:
                    return url, resp.json()
                message = _error_message(resp)
                if resp.status_code < 500:  # the request itself is wrong: retrying cannot help
                    raise RemoteRewardError(f"remote reward {o.reward!r} at {url}: "
                                            f"HTTP {resp.status_code}: {message}")
                last = f"{url}: HTTP {resp.status_code}: {message}"
            if attempt < o.max_retries:
                time.sleep(backoffs[attempt])
        where = self.urls[0] if len(self.urls) == 1 else f"{len(self.urls)} servers"
        raise RemoteRewardError(f"remote reward {o.reward!r} at {where}: failed after {o.max_retries + 1} "
                                f"attempt(s) (timeout {o.timeout_s} s each); last error: {last}")

    def _wire_row(self, row: dict[str, Any]) -> dict[str, Any]:
        """An in-memory reference image travels inline as a PNG data URL (the server reads no client paths)."""
        if any(isinstance(row.get(k), np.ndarray) for k in FILE_KEYS):
            row = {k: (_inline_png(v, self.options.png_compress_level)
                       if k in FILE_KEYS and isinstance(v, np.ndarray) else v) for k, v in row.items()}
        return row

    def __call__(self, images: Sequence[np.ndarray], prompts: Sequence[str],
                 metadata: Sequence[dict[str, Any]]) -> RewardOutput:
        o = self.options
        images, prompts, metadata = list(images), list(prompts), list(metadata)
        if not (len(images) == len(prompts) == len(metadata)):
            raise ValueError(f"remote: {len(images)} images, {len(prompts)} prompts, "
                             f"{len(metadata)} metadata rows")
        bodies = []
        for start in range(0, len(images), o.batch_size):
            sl = slice(start, start + o.batch_size)
            payload = {"images": [encode_png_base64(im, o.png_compress_level) for im in images[sl]],
                       "prompts": prompts[sl], "metadata": [self._wire_row(m) for m in metadata[sl]],
                       "rewards": [o.reward]}
            bodies.append((sl, json.dumps(payload, default=_json_default).encode()))
        if len(self.urls) == 1 or len(bodies) == 1:
            answers = [self._post_with_retries(body) for _, body in bodies]
        else:
            from concurrent.futures import ThreadPoolExecutor

            with ThreadPoolExecutor(max_workers=len(self.urls)) as pool:
                answers = list(pool.map(lambda ib: self._post_with_retries(ib[1][1], first_server=ib[0]),
                                        enumerate(bodies)))
        scores: list[float] = []
        details: list[dict[str, Any]] = []
        tags: dict[str, str] = {}
        for (sl, _), (url, result) in zip(bodies, answers):
            try:
                got = result["scores"][o.reward]
                tags[url] = result["tags"][o.reward]
            except (KeyError, TypeError):
                keys = list(result) if isinstance(result, dict) else type(result).__name__
                raise RemoteRewardError(f"remote reward {o.reward!r} at {url}: malformed response "
                                        f"({keys})") from None
            if o.expect_tag is not None and tags[url] != o.expect_tag:
                raise RemoteRewardError(f"remote reward {o.reward!r} at {url} is {tags[url]!r}, expected "
                                        f"{o.expect_tag!r}")
            if len(got) != len(images[sl]):
                raise RemoteRewardError(f"remote reward {o.reward!r} at {url}: {len(got)} scores for "
                                        f"{len(images[sl])} images")
            scores += [math.nan if s is None else float(s) for s in got]
            details += result.get("details", {}).get(o.reward) or [{} for _ in got]
        if len(set(tags.values())) > 1:
            raise RemoteRewardError(f"remote reward {o.reward!r}: the servers serve different versions {tags}; "
                                    "scores of different versions must not be mixed")
        if tags:
            self.version = next(iter(tags.values()))
        return RewardOutput(scores=scores, details=details)


def _inline_png(image: np.ndarray, level: int) -> str:
    return INLINE_PNG + encode_png_base64(np.ascontiguousarray(image), level)


def _error_message(resp: Any) -> str:
    try:
        return str(resp.json().get("error", resp.text))
    except Exception:
        return resp.text[:500]
