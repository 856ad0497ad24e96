"""Several rewards on one batch: run each, apply the required/optional failure policy, renormalise the weights.

`RewardSuite(specs).score(images, prompts, metadata) -> SuiteScores`. The combination itself (weighted sum of
scores, or per-reward advantage aggregation) is done by `rl/grpo.py` from `SuiteScores`; this module supplies the
scores, the failures and the weights to use.

Policy (per reward, per step):
- Each reward gets the whole batch, sync or `async def`. All rewards run concurrently; a sync reward runs in its own
  daemon thread so that `timeout_s` can be enforced. A timed-out thread cannot be killed: it finishes in the
  background and its result is discarded (backends hold locks, so a later call waits for it).
- A call fails when it raises (`sys.exit` included), exceeds `timeout_s` (default 600 s, `rewards/spec.py`), returns
  the wrong number of scores, returns anything but numbers (a numeric string, bytes, a set: refused), or returns
  NaN/inf. Each reward gets read-only views of the images, so writing into them is that reward's failure.
- A failing optional reward (`required: false`) is excluded: its scores are NaN, `failed[name]` holds the reason,
  and its weight is dropped from `weights`.
- A failing required reward raises `RewardFailure` naming the reward, its tag and the cause (after every reward of
  the step has finished, so the message lists all failures).
- A failure is never turned into a 0 score.

Weights: with no failure, `weights` are the specs' weights as written (so a single reward with weight 1, or
Flow-GRPO's weighted sums, keep their scale). When optional rewards fail, the survivors' weights are scaled by
sum|w_all| / sum|w_survivors|, so the total weight, and with it the scale of the combined reward, is unchanged
(weights 1 and 1, one fails -> the other gets 2). If no reward with a non-zero weight survives, the step fails
with `RewardFailure`: there is nothing left to train on.

Keys: a reward's key is `spec.alias`, else the spec's `name` without `@version`. Two specs with the same key
(the same reward twice, e.g. two GenEval versions) must set `alias`.
"""

from __future__ import annotations

import asyncio
import inspect
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from rewards.base import RewardOutput, numeric_scores, reward_tag
from rewards.registry import build_reward
from rewards.spec import RewardSpec


class RewardFailure(RuntimeError):
    """A required reward failed (or no weighted reward is left); the training step must stop."""

    def __init__(self, reward: str, reason: str, *, tag: str | None = None, others: dict[str, str] | None = None,
                 headline: str | None = None, frames: str = ""):
        self.reward, self.reason, self.tag, self.frames = reward, reason, tag, frames
        label = f"{reward!r} ({tag})" if tag else repr(reward)
        message = headline or f"required reward {label} failed: {reason}"
        if others:
            message += "; other failures: " + "; ".join(f"{k}: {v}" for k, v in others.items())
        if frames:
            message += "\n" + frames
        super().__init__(message)


def _library_dirs() -> tuple[str, ...]:
    """Folders whose frames are not the user's: this package's, the standard library's, site-packages'."""
    import sysconfig
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    dirs = [str(root / name) for name in ("rewards", "rl", "rollouts")]
    for key in ("stdlib", "platstdlib", "purelib", "platlib"):
        if sysconfig.get_paths().get(key):
            dirs.append(sysconfig.get_paths()[key])
    return tuple(str(Path(d).resolve()) + "/" for d in dirs)


def user_frames(exc: BaseException) -> str:
    """The traceback frames of an exception that lie in the user's code (a reward module beside the recipe, say),
    not in nativerl, the standard library or installed packages: where the user has to look."""
    import os
    import traceback

    libs = _library_dirs()
    frames = [f for f in traceback.extract_tb(exc.__traceback__)
              if not os.path.realpath(f.filename).startswith(libs) and not f.filename.startswith("<")]
    if not frames:
        return ""
    return "Traceback (your code):\n" + "".join(traceback.format_list(frames)).rstrip()


@dataclass
class SuiteScores:
    scores: dict[str, np.ndarray]  # key -> float64 [B]; all NaN where the reward failed
    failed: dict[str, str]  # key -> reason
    weights: dict[str, float]  # key -> weight, rewards that did not fail only, renormalised (module docstring)
    tags: dict[str, str]  # key -> "name@version"
    details: list[dict[str, Any]]  # per image: key -> that reward's detail dict
    timings: dict[str, float]  # key -> wall seconds of the call
    frames: dict[str, str] = field(default_factory=dict)  # key -> the failure's frames in the user's code


class RewardExit(Exception):
    """sys.exit() inside an async reward, caught before asyncio's task machinery turns it into the loop's exit."""

    def __init__(self, code: Any):
        super().__init__(code)
        self.code = code


async def _exit_is_an_error(pending: Any) -> Any:
    try:
        return await pending
    except SystemExit as exc:
        raise RewardExit(exc.code) from None


def _run_in_daemon_thread(fn: Callable[[], Any]) -> asyncio.Future:
    """Run fn in a fresh daemon thread; an abandoned (timed-out) call neither blocks the event loop's shutdown
    nor the interpreter's exit, unlike asyncio.to_thread's shared executor."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future = loop.create_future()

    def settle(result: Any, error: BaseException | None) -> None:
        if future.done():  # cancelled by the timeout
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)

    def target() -> None:
        try:
            result, error = fn(), None
        except BaseException as exc:  # noqa: BLE001 - handed to the awaiting coroutine
            result, error = None, exc
        try:
            loop.call_soon_threadsafe(settle, result, error)
        except RuntimeError:  # the loop is closed: nobody waits for this result any more
            pass

    threading.Thread(target=target, daemon=True, name="reward-call").start()
    return future


def _validated_output(out: Any, batch_size: int, allow_nonfinite: bool = False
                      ) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """Scores as float64 [B] plus details; raises ValueError describing what is wrong."""
    if isinstance(out, RewardOutput):
        scores, details = out.scores, out.details  # numbers already (RewardOutput checks them)
    elif isinstance(out, (list, tuple, np.ndarray)) or type(out).__module__.startswith("torch"):
        scores, details = numeric_scores(out), []
    else:
        raise TypeError(f"returned {type(out).__name__}; expected RewardOutput or a list of numbers")
    array = np.asarray(scores, dtype=np.float64).reshape(-1)
    if array.shape[0] != batch_size:
        raise ValueError(f"returned {array.shape[0]} scores for a batch of {batch_size} images")
    bad = np.flatnonzero(~np.isfinite(array))
    if bad.size and not allow_nonfinite:
        shown = ", ".join(f"[{i}]={array[i]}" for i in bad[:5])
        raise ValueError(f"returned non-finite scores at {bad.size} of {batch_size} images: {shown}")
    if details and len(details) != batch_size:
        raise ValueError(f"returned {len(details)} detail dicts for a batch of {batch_size} images")
    return array, list(details)


def read_only_views(images: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Read-only views of the images (no copy): a reward that writes into its input gets "assignment destination is
    read-only", a failure of that reward, instead of silently changing what the other rewards score and what the
    trainer logs (`images/*` statistics, sample grids, the archive)."""
    views = []
    for image in images:
        view = np.asarray(image).view()
        view.flags.writeable = False
        views.append(view)
    return views


class RewardSuite:
    def __init__(self, specs: Sequence[RewardSpec | dict[str, Any]], rewards: Sequence[Any] | None = None, *,
                 allow_nonfinite: bool = False):
        """specs: the recipe's reward list. rewards: already-built reward objects, one per spec (default: built
        from the specs with `rewards.registry.build_reward`). allow_nonfinite: pass NaN/inf scores through
        per row instead of failing the whole reward (the trainer's `nonfinite_rewards: drop` then drops exactly
        those samples)."""
        self.allow_nonfinite = allow_nonfinite
        self.specs = [s if isinstance(s, RewardSpec) else RewardSpec.model_validate(s) for s in specs]
        if not self.specs:
            raise ValueError("RewardSuite needs at least one reward spec")
        keys = [s.key for s in self.specs]
        duplicates = sorted({k for k in keys if keys.count(k) > 1})
        if duplicates:
            raise ValueError(f"rewards {duplicates} appear more than once; give each an 'alias'")
        if rewards is not None and len(rewards) != len(self.specs):
            raise ValueError(f"{len(rewards)} reward objects for {len(self.specs)} specs")
        self.rewards = list(rewards) if rewards is not None else [build_reward(s) for s in self.specs]
        self.keys = keys
        self.tags = {k: reward_tag(r) for k, r in zip(keys, self.rewards)}

    async def _call(self, spec: RewardSpec, reward: Any, images: Sequence[np.ndarray], prompts: Sequence[str],
                    metadata: Sequence[dict[str, Any]]) -> tuple[np.ndarray | None, list, str | None, float, str]:
        """(scores, details, failure reason, seconds, the failure's frames in the user's code)."""
        start = time.perf_counter()
        frames = ""
        images = read_only_views(images)  # per reward: one reward editing pixels in place cannot change the next's
        try:
            if inspect.iscoroutinefunction(reward) or inspect.iscoroutinefunction(type(reward).__call__):
                pending = _exit_is_an_error(reward(images, prompts, metadata))
            else:
                pending = _run_in_daemon_thread(lambda: reward(images, prompts, metadata))
            out = await asyncio.wait_for(pending, timeout=spec.timeout_s)
            if inspect.isawaitable(out):  # a sync callable that returned a coroutine
                out = await asyncio.wait_for(_exit_is_an_error(out), timeout=spec.timeout_s)
            scores, details = _validated_output(out, len(images), self.allow_nonfinite)
            return scores, details, None, time.perf_counter() - start, ""
        except asyncio.TimeoutError:
            reason = f"timed out after timeout_s={spec.timeout_s}"
        except (SystemExit, RewardExit) as exc:  # sys.exit() in reward code ends that reward's call, not the run
            reason = f"SystemExit({exc.code!r}): the reward called sys.exit"
        except Exception as exc:  # noqa: BLE001 - every failure is reported by name, never swallowed
            reason = f"{type(exc).__name__}: {exc}"
            frames = user_frames(exc)
        return None, [], reason, time.perf_counter() - start, frames

    async def ascore(self, images: Sequence[np.ndarray], prompts: Sequence[str],
                     metadata: Sequence[dict[str, Any]]) -> SuiteScores:
        batch_size = len(images)
        if not (batch_size == len(prompts) == len(metadata)):
            raise ValueError(f"{batch_size} images, {len(prompts)} prompts and {len(metadata)} metadata rows")
        results = await asyncio.gather(*(self._call(spec, reward, images, prompts, metadata)
                                         for spec, reward in zip(self.specs, self.rewards)))
        scores: dict[str, np.ndarray] = {}
        failed: dict[str, str] = {}
        timings: dict[str, float] = {}
        details: list[dict[str, Any]] = [{} for _ in range(batch_size)]
        frames: dict[str, str] = {}
        for key, (array, reward_details, reason, seconds, where) in zip(self.keys, results):
            timings[key] = seconds
            if reason is not None:
                failed[key], frames[key] = reason, where
                scores[key] = np.full(batch_size, np.nan)
                continue
            scores[key] = array
            for i, detail in enumerate(reward_details):
                details[i][key] = detail
        for spec in self.specs:
            if spec.required and spec.key in failed:
                others = {k: v for k, v in failed.items() if k != spec.key}
                raise RewardFailure(spec.key, failed[spec.key], tag=self.tags[spec.key], others=others,
                                    frames=frames[spec.key])
        weights = self._weights(failed)
        return SuiteScores(scores=scores, failed=failed, weights=weights, tags=dict(self.tags), details=details,
                           timings=timings, frames=frames)

    def _weights(self, failed: dict[str, str]) -> dict[str, float]:
        all_weights = {s.key: float(s.weight) for s in self.specs}
        if not failed:
            return all_weights
        survivors = {k: w for k, w in all_weights.items() if k not in failed}
        total, surviving_total = sum(map(abs, all_weights.values())), sum(map(abs, survivors.values()))
        if surviving_total == 0:
            first = next(iter(failed))
            raise RewardFailure(first, failed[first], tag=self.tags[first], others=failed,
                                headline="no reward with a non-zero weight is left after optional rewards failed")
        return {k: w * total / surviving_total for k, w in survivors.items()}

    def score_rollouts(self, batch: Any) -> SuiteScores:
        """Score a `rollouts.batch.RolloutBatch`. With renders_per_sample M > 1, all M renders of every row go in
        one call and each row gets the mean of its renders (`average_over_renders`)."""
        m = batch.renders_per_sample
        if m == 1:
            return self.score(list(batch.images.numpy()), batch.prompts, batch.metadata)
        flat = list(batch.all_renders().flatten(0, 1).numpy())
        return average_over_renders(self.score(flat, [p for p in batch.prompts for _ in range(m)],
                                               [r for r in batch.metadata for _ in range(m)]), m)

    def score(self, images: Sequence[np.ndarray], prompts: Sequence[str],
              metadata: Sequence[dict[str, Any]]) -> SuiteScores:
        """Synchronous entry point. Inside a running event loop, use `await suite.ascore(...)` instead."""
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return asyncio.run(self.ascore(images, prompts, metadata))
        raise RuntimeError("RewardSuite.score() was called inside a running event loop; "
                           "use `await suite.ascore(...)`")


def average_over_renders(scores: SuiteScores, renders: int) -> SuiteScores:
    """Scores of B·M images, M consecutive renders per row → per-row means. A NaN render makes its row NaN, so the
    trainer's non-finite policy (refuse the step, or drop the row) applies to the row. Each row keeps its first
    render's details (so `correct` / accuracy read the first render, as with M = 1), and every reward's detail gains
    `render_scores`, that reward's score for each of the M renders."""
    n = len(scores.details)
    if renders < 1 or n % renders:
        raise ValueError(f"average_over_renders: {n} images do not split into rows of {renders} renders")
    b = n // renders
    grouped = {k: np.asarray(v, dtype=np.float64).reshape(b, renders) for k, v in scores.scores.items()}
    details = []
    for i in range(b):
        first = scores.details[i * renders]
        details.append({k: ({**d, "render_scores": [float(x) for x in grouped[k][i]]}
                            if isinstance(d, dict) and k in grouped else d) for k, d in first.items()})
    return SuiteScores(scores={k: v.mean(axis=1) for k, v in grouped.items()}, failed=dict(scores.failed),
                       weights=dict(scores.weights), tags=dict(scores.tags), details=details,
                       timings=dict(scores.timings), frames=dict(scores.frames))
