"""HTTP reward server: serve a recipe's rewards so trainers (or other machines) score images remotely.

Why: reward models often need other dependencies or devices than the trainer (Flow-GRPO runs GenEval / DeQA /
UnifiedReward as separate servers). Unlike those servers (pickled dicts of JPEG bytes), this one speaks JSON
with lossless PNG images, so a remote score equals the in-process score and nothing is unpickled.

Endpoints
- `GET /health` → `{"status": "ok"}`
- `GET /version` → `{"nativerl": "<package version>", "rewards": {"<served name>": "<name@version>"}}`
- `POST /score` with body `ScoreRequest` → `ScoreResponse`:
    request  `{"images": [<base64 PNG, RGB 8-bit>...], "prompts": [...], "metadata": [{...}...] (optional),
               "rewards": ["<served name>"...] (optional: default all)}`
    response `{"scores": {name: [float | null]}, "details": {name: [{...}]}, "tags": {name: tag},
               "elapsed_s": float}` (null = a non-finite score; JSON has no NaN)
  Served names are the recipe's `name` strings (e.g. `clipscore@cos`), so two variants can be served at once.

Limits (`ServerLimits`, each error names its limit): request bytes (413), images per request (413), decoded
pixels per image and per request (413; read from the PNG header before anything is decoded, since a 58 kB PNG can
inflate to 50 MB), JSON nesting depth (400), prompt length (413), a per-request timeout (504; a timed-out
computation finishes in its thread, but its result is dropped), and optional micro-batching (a request's batch is
scored in chunks of `micro_batch`, one reward call per chunk). Parsing, decoding and scoring run in worker threads,
so `/health` answers while a large request is being decoded.
A malformed payload is a 400 whose `error` says what is wrong. A reward that raises gives a 500 naming it.
Each reward is called by one request at a time (a model on one device is not re-entrant).

Files: requests are untrusted, and the server reads no file a request names unless it was started with a
reference root (`reference_root`, `nativerl serve-rewards --reference-root DIR`; off by default). Then
`metadata[i].reference_image` may be a path inside that root (relative to it, symlinks resolved); anything else
(a path outside it, one that does not exist, one that is not an image) gets the same 400, which does not say
which. Without a root, a reference travels inline as `data:image/png;base64,...` (the `remote` client encodes an
in-memory reference that way) or names a photo bundled with scikit-image (`skimage:<name>`).

Binds 127.0.0.1 by default. There is no authentication: do not bind a public interface on an untrusted
network.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import io
import json
import logging
import math
import os
import socket
import threading
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from rewards.base import RewardOutput, reward_tag
from rewards.spec import RewardSpec

log = logging.getLogger(__name__)

SCORE_PATH, HEALTH_PATH, VERSION_PATH = "/score", "/health", "/version"


class ServerLimits(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    max_request_bytes: int = Field(256 * 2**20, ge=1, description="Larger bodies get 413.")
    request_timeout_s: float = Field(600.0, gt=0, description="Scoring slower than this gets 504.")
    max_batch: int = Field(512, ge=1, description="More images in one request gets 413.")
    micro_batch: int | None = Field(None, ge=1, description="Score a request in chunks of this many images.")
    max_image_pixels: int = Field(4096 * 4096, ge=1, description="Bigger decoded images get 413.")
    max_request_pixels: int = Field(64 * 2**20, ge=1, description="More decoded pixels in one request (images and "
                                    "inline references together; 3 bytes each) get 413.")
    max_json_depth: int = Field(32, ge=2, description="Deeper JSON nesting gets 400.")
    max_prompt_chars: int = Field(4096, ge=1, description="A longer prompt gets 413.")


class ScoreRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    images: list[str]
    prompts: list[str]
    metadata: list[dict[str, Any]] | None = None
    rewards: list[str] | None = None


class RewardCallError(RuntimeError):
    """A served reward raised while scoring (HTTP 500)."""


class PayloadError(ValueError):
    """A request the server refuses; `status` is the HTTP code (400 or 413)."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


# ---- wire format: base64 PNG (shared with rewards.remote) ----

def encode_png_base64(image: np.ndarray, compress_level: int = 1) -> str:
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected a uint8 HxWx3 image, got {getattr(image, 'dtype', type(image))} "
                         f"{getattr(image, 'shape', '')}")
    buf = io.BytesIO()
    # Lossless at any level; 1 is ~3x faster than PIL's default 6 for ~10% more bytes (60 vs 160 ms
    # per 512² on the 2-core machine).
    Image.fromarray(image).save(buf, format="PNG", compress_level=compress_level)
    return base64.b64encode(buf.getvalue()).decode("ascii")


class PixelBudget:
    """Decoded pixels left for one request (`max_request_pixels`), charged from image headers before decoding."""

    def __init__(self, limits: ServerLimits):
        self.limits, self.left = limits, limits.max_request_pixels

    def charge(self, where: str, width: int, height: int) -> None:
        if width * height > self.limits.max_image_pixels:  # checked before decoding: a small PNG can inflate hugely
            raise PayloadError(f"{where}: {width}x{height} exceeds max_image_pixels={self.limits.max_image_pixels}",
                               status=413)
        self.left -= width * height
        if self.left < 0:
            raise PayloadError(f"{where}: the request's images decode to more than max_request_pixels="
                               f"{self.limits.max_request_pixels} pixels", status=413)


def open_png_base64(data: str, where: str) -> Image.Image:
    """The PNG's header only (nothing decoded yet)."""
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise PayloadError(f"{where}: not valid base64 ({exc})") from None
    try:
        img = Image.open(io.BytesIO(raw))
    except Exception as exc:  # PIL raises many types for corrupt data
        raise PayloadError(f"{where}: not a readable PNG ({type(exc).__name__}: {exc})") from None
    if img.format != "PNG":
        raise PayloadError(f"{where}: {img.format} image; only PNG is accepted (lossless)")
    if img.mode != "RGB":
        raise PayloadError(f"{where}: PNG mode {img.mode!r}; expected 8-bit 'RGB'")
    return img


def decode_image(img: Image.Image, where: str) -> np.ndarray:
    try:
        array = np.asarray(img.convert("RGB"), dtype=np.uint8).copy()
    except Exception as exc:  # PIL raises many types for corrupt data
        raise PayloadError(f"{where}: not a readable PNG ({type(exc).__name__}: {exc})") from None
    array.flags.writeable = False  # several rewards score the same pixels: none may change them
    return array


def decode_png_base64(data: str, index: int, max_pixels: int) -> np.ndarray:
    img = open_png_base64(data, f"images[{index}]")
    if img.width * img.height > max_pixels:
        raise PayloadError(f"images[{index}]: {img.width}x{img.height} exceeds max_image_pixels={max_pixels}",
                           status=413)
    return decode_image(img, f"images[{index}]")


# Metadata keys whose string values rewards read as image files (prompts/edit_prompts.py: reference_pixels).
FILE_KEYS = ("reference_image",)
INLINE_PNG = "data:image/png;base64,"
BUNDLED = "skimage:"


def _reference(value: Any, where: str, root: Path | None, budget: PixelBudget) -> Any:
    """A request's reference image → pixels the rewards can use, without reading files outside `root`."""
    if isinstance(value, str) and value.startswith(INLINE_PNG):
        img = open_png_base64(value[len(INLINE_PNG):], where)
        budget.charge(where, img.width, img.height)
        return decode_image(img, where)
    if isinstance(value, str) and value.startswith(BUNDLED):
        return value  # a photo shipped inside scikit-image, by name: no file of this server's
    if not isinstance(value, str):
        raise PayloadError(f"{where}: expected an inline '{INLINE_PNG}...' image, a bundled '{BUNDLED}<name>' or a "
                           f"path under the server's reference root, got {type(value).__name__}")
    if root is None:
        raise PayloadError(f"{where}: this server reads no files (file references are off); send the image "
                           f"inline as '{INLINE_PNG}...', or start the server with --reference-root DIR")
    refused = PayloadError(f"{where}: not an image this server may read (only images under its reference root)")
    try:
        real = Path(os.path.realpath(root / value))  # an absolute value replaces root; symlinks are resolved
        if not real.is_relative_to(root) or not real.is_file():
            raise refused
        with Image.open(real) as img:
            budget.charge(where, img.width, img.height)
            array = np.asarray(img.convert("RGB"), dtype=np.uint8).copy()
    except PayloadError as exc:
        if exc.status == 413:
            raise
        raise refused from None
    except Exception:  # noqa: BLE001 - missing, unreadable or not an image: one answer for all
        raise refused from None
    array.flags.writeable = False
    return array


def json_depth(value: Any) -> int:
    """Nesting depth of parsed JSON (iterative: a deep document must not exhaust the stack here)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        node, depth = stack.pop()
        deepest = max(deepest, depth)
        if isinstance(node, dict):
            stack.extend((v, depth + 1) for v in node.values())
        elif isinstance(node, list):
            stack.extend((v, depth + 1) for v in node)
    return deepest


def _json_default(x: Any) -> Any:
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, np.ndarray):
        return x.tolist()
    return str(x)


def finite_or_none(x: float) -> float | None:
    return x if math.isfinite(x) else None


def parse_score_request(body: bytes, served: Sequence[str], limits: ServerLimits,
                        reference_root: str | Path | None = None):
    """Body → (reward names, images, prompts, metadata), or PayloadError saying what is wrong."""
    try:
        raw = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PayloadError(f"body is not JSON: {exc}") from None
    except RecursionError:
        raise PayloadError(f"body nests deeper than max_json_depth={limits.max_json_depth}") from None
    if json_depth(raw) > limits.max_json_depth:
        raise PayloadError(f"body nests deeper than max_json_depth={limits.max_json_depth}")
    try:
        req = ScoreRequest.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}"
                             for e in exc.errors())
        raise PayloadError(f"bad score request: {problems}") from None
    n = len(req.images)
    if n > limits.max_batch:
        raise PayloadError(f"{n} images in one request; max_batch is {limits.max_batch}", status=413)
    metadata = req.metadata if req.metadata is not None else [{} for _ in range(n)]
    if len(req.prompts) != n or len(metadata) != n:
        raise PayloadError(f"{n} images, {len(req.prompts)} prompts and {len(metadata)} metadata rows: "
                           "they must have the same length")
    names = req.rewards if req.rewards is not None else list(served)
    unknown = [r for r in names if r not in served]
    if unknown or not names:
        raise PayloadError(f"unknown reward(s) {unknown}; this server serves {list(served)}")
    for i, prompt in enumerate(req.prompts):
        if len(prompt) > limits.max_prompt_chars:
            raise PayloadError(f"prompts[{i}] has {len(prompt)} characters; max_prompt_chars is "
                               f"{limits.max_prompt_chars}", status=413)
    budget = PixelBudget(limits)
    headers = [open_png_base64(s, f"images[{i}]") for i, s in enumerate(req.images)]
    for i, img in enumerate(headers):  # every header is charged before any image is decoded
        budget.charge(f"images[{i}]", img.width, img.height)
    root = Path(os.path.realpath(reference_root)) if reference_root is not None else None
    metadata = [dict(row) for row in metadata]
    for i, row in enumerate(metadata):
        for key in FILE_KEYS:
            if key in row:
                row[key] = _reference(row[key], f"metadata[{i}].{key}", root, budget)
    images = [decode_image(img, f"images[{i}]") for i, img in enumerate(headers)]
    return names, images, req.prompts, metadata


def score_in_micro_batches(reward: Any, images: list[np.ndarray], prompts: list[str],
                           metadata: list[dict[str, Any]], micro_batch: int | None) -> RewardOutput:
    step = micro_batch or max(len(images), 1)
    scores: list[float] = []
    details: list[dict[str, Any]] = []
    for start in range(0, len(images), step):
        sl = slice(start, start + step)
        out = reward(images[sl], prompts[sl], metadata[sl])
        if not isinstance(out, RewardOutput):  # a plain list of numbers is allowed for user rewards
            out = RewardOutput(scores=out)  # numbers only (rewards/base.py: numeric_scores)
        if len(out.scores) != len(images[sl]):
            raise ValueError(f"returned {len(out.scores)} scores for {len(images[sl])} images")
        scores += out.scores
        details += out.details or [{} for _ in out.scores]
    return RewardOutput(scores=scores, details=details)


def nativerl_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("nativerl")
    except PackageNotFoundError:
        return "unknown"


def build_app(rewards: dict[str, Any], limits: ServerLimits | None = None,
              reference_root: str | Path | None = None):
    """A Starlette app serving `rewards` (served name → reward object). reference_root: the one folder whose
    images requests may name (module docstring); None = no file access."""
    from starlette.applications import Starlette
    from starlette.requests import ClientDisconnect, Request
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route

    limits = limits or ServerLimits()
    served = list(rewards)
    tags = {name: reward_tag(r) for name, r in rewards.items()}
    locks = {name: threading.Lock() for name in rewards}

    def error(status: int, message: str) -> Response:
        return JSONResponse({"error": message}, status_code=status)

    async def read_body(request: Request) -> bytes:
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limits.max_request_bytes:
            raise PayloadError(f"request body is {declared} bytes; max_request_bytes is "
                               f"{limits.max_request_bytes}", status=413)
        chunks, total = [], 0
        async for chunk in request.stream():  # also bounds bodies sent without a Content-Length
            total += len(chunk)
            if total > limits.max_request_bytes:
                raise PayloadError(f"request body exceeds max_request_bytes={limits.max_request_bytes}",
                                   status=413)
            chunks.append(chunk)
        return b"".join(chunks)

    def run_rewards(names, images, prompts, metadata) -> dict[str, Any]:
        result: dict[str, Any] = {"scores": {}, "details": {}, "tags": {}}
        for name in names:
            with locks[name]:
                try:
                    out = score_in_micro_batches(rewards[name], images, prompts, metadata, limits.micro_batch)
                except Exception as exc:
                    raise RewardCallError(f"reward {name!r} ({tags[name]}) failed: {type(exc).__name__}: "
                                          f"{exc}") from exc
            result["scores"][name] = [finite_or_none(s) for s in out.scores]
            result["details"][name] = out.details
            result["tags"][name] = tags[name]
        return result

    async def health(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def version(request: Request) -> Response:
        return JSONResponse({"nativerl": nativerl_version(), "rewards": tags})

    async def score(request: Request) -> Response:
        started = time.perf_counter()
        try:
            body = await read_body(request)
            # JSON parsing and PNG decoding take seconds on large bodies: off the event loop, like the scoring.
            names, images, prompts, metadata = await asyncio.to_thread(parse_score_request, body, served, limits,
                                                                       reference_root)
        except PayloadError as exc:
            return error(exc.status, str(exc))
        except ClientDisconnect:
            return error(400, "client disconnected while sending the body")
        try:
            result = await asyncio.wait_for(asyncio.to_thread(run_rewards, names, images, prompts, metadata),
                                            timeout=limits.request_timeout_s)
        except asyncio.TimeoutError:
            return error(504, f"scoring {len(images)} images with {names} took longer than "
                              f"request_timeout_s={limits.request_timeout_s}")
        except RewardCallError as exc:
            log.exception("reward failed")
            return error(500, str(exc))
        result["elapsed_s"] = time.perf_counter() - started
        return Response(json.dumps(result, default=_json_default), media_type="application/json")

    return Starlette(routes=[Route(HEALTH_PATH, health, methods=["GET"]),
                             Route(VERSION_PATH, version, methods=["GET"]),
                             Route(SCORE_PATH, score, methods=["POST"])])


def build_served_rewards(specs: Sequence[RewardSpec | dict[str, Any]]) -> dict[str, Any]:
    """Served name (the spec's `name`) → reward built from the spec. A `remote` spec is refused: a server
    forwarding to another server is almost certainly a recipe mistake."""
    from rewards.registry import build_reward

    rewards: dict[str, Any] = {}
    for raw in specs:
        spec = raw if isinstance(raw, RewardSpec) else RewardSpec.model_validate(raw)
        if spec.base_name == "remote":
            raise ValueError(f"reward {spec.name!r}: a reward server cannot serve a 'remote' reward")
        if spec.name in rewards:
            raise ValueError(f"reward {spec.name!r} is listed twice; served names must be unique")
        rewards[spec.name] = build_reward(spec)
    if not rewards:
        raise ValueError("no rewards to serve")
    return rewards


class BackgroundRewardServer:
    """The server in a daemon thread on a free loopback port (tests, benchmarks, notebooks).

    `with BackgroundRewardServer(rewards) as srv: ... srv.url ...` — stops when the block exits.
    """

    def __init__(self, rewards: dict[str, Any], *, host: str = "127.0.0.1", port: int = 0,
                 limits: ServerLimits | None = None, start_timeout_s: float = 20.0,
                 reference_root: str | Path | None = None):
        self.rewards, self.host, self.port = rewards, host, port
        self.limits = limits or ServerLimits()
        self.reference_root = reference_root
        self.start_timeout_s = start_timeout_s
        self._server = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> "BackgroundRewardServer":
        import uvicorn

        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, self.port))
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(build_app(self.rewards, self.limits, self.reference_root), log_level="warning",
                                lifespan="off")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [sock]}, daemon=True,
                                        name=f"reward-server-{self.port}")
        self._thread.start()
        deadline = time.monotonic() + self.start_timeout_s
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"reward server on {self.url} did not start within "
                                   f"{self.start_timeout_s} s")
            time.sleep(0.02)
        return self

    def stop(self, timeout_s: float = 10.0) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout_s)
        self._server = self._thread = None

    def __enter__(self) -> "BackgroundRewardServer":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def serve(specs: Sequence[RewardSpec | dict[str, Any]], host: str = "127.0.0.1", port: int = 8765, *,
          max_request_bytes: int = 256 * 2**20, request_timeout_s: float = 600.0, max_batch: int = 512,
          micro_batch: int | None = None, max_image_pixels: int = 4096 * 4096,
          log_level: str = "info", reference_root: str | Path | None = None, **more_limits: Any) -> None:
    """Build the rewards the specs name and serve them over HTTP until interrupted (blocks)."""
    import uvicorn

    limits = ServerLimits(max_request_bytes=max_request_bytes, request_timeout_s=request_timeout_s,
                          max_batch=max_batch, micro_batch=micro_batch, max_image_pixels=max_image_pixels,
                          **more_limits)
    if reference_root is not None and not Path(reference_root).is_dir():
        raise ValueError(f"reference_root {reference_root}: not a directory")
    rewards = build_served_rewards(specs)
    if host not in ("127.0.0.1", "localhost", "::1"):
        log.warning("reward server binds %s: it has no authentication; expose it only on a trusted network",
                    host)
    log.info("serving %s on http://%s:%d", {n: reward_tag(r) for n, r in rewards.items()}, host, port)
    uvicorn.run(build_app(rewards, limits, reference_root), host=host, port=port, log_level=log_level,
                lifespan="off")


def serve_from_recipe_rewards(specs: Sequence[RewardSpec | dict[str, Any]], host: str = "127.0.0.1",
                              port: int = 8765, **limits: Any) -> None:
    """What `nativerl serve-rewards RECIPE --port P` calls with the recipe's `rewards` list.

    `limits`: any field of ServerLimits, log_level, reference_root.
    """
    extra = {"log_level", "reference_root"}
    unknown = set(limits) - set(ServerLimits.model_fields) - extra
    if unknown:
        raise ValueError(f"serve-rewards: unknown option(s) {sorted(unknown)}; expected "
                         f"{sorted(ServerLimits.model_fields) + sorted(extra)}")
    serve(specs, host=host, port=port, **limits)
