"""The Ray reward actor: a `RewardSuite` (the recipe's reward models) in its own process, on CPU or a GPU.

The Ray rollout engine (`rollouts/ray_engine.py`) hands it each finished shard of a step, so scoring overlaps with
the rendering of the next shards, then merges the per-shard `SuiteScores` with `merge_shard_scores`.

Failure policy (the suite's, rewards/suite.py): inside the actor the suite already applies it per reward (an optional
reward that raises or times out is NaN + `failed`; a required one raises `RewardFailure`). When the *actor itself*
dies or hangs, every reward it holds failed on that shard: `actor_failure_scores` applies the same policy to that
(required → `RewardFailure` naming the reward; optional → NaN, listed in `failed`).
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from types import SimpleNamespace
from typing import Any

import numpy as np
import ray

from rewards.spec import RewardSpec
from rewards.suite import RewardFailure, RewardSuite, SuiteScores


class RewardWorker:
    def __init__(self, specs: Sequence[dict[str, Any]], num_threads: int | None = 1):
        if num_threads:
            import torch

            torch.set_num_threads(num_threads)
        self.suite = RewardSuite([RewardSpec.model_validate(s) for s in specs])
        self._stall_next_s = 0.0

    def ready(self) -> dict[str, Any]:
        return {"pid": os.getpid(), "tags": dict(self.suite.tags)}

    def stall_next(self, seconds: float) -> None:
        """Fault injection (tests, drills): the next `score` sleeps `seconds` first."""
        self._stall_next_s = float(seconds)

    def score(self, batch: Any) -> SuiteScores:
        """Score one `RolloutBatch` (a shard)."""
        if self._stall_next_s:
            stall, self._stall_next_s = self._stall_next_s, 0.0
            time.sleep(stall)
        images = [img for img in batch.images.numpy()]
        return self.suite.score(images, batch.prompts, batch.metadata)


RewardActor = ray.remote(RewardWorker)


def _renormalised_weights(specs: Sequence[RewardSpec], tags: dict[str, str], failed: dict[str, str]) -> dict:
    # The one definition of the renormalisation rule is RewardSuite._weights (it reads only .specs and .tags);
    # calling it here keeps a merged step's weights identical to what a single suite call would give.
    return RewardSuite._weights(SimpleNamespace(specs=list(specs), tags=tags), failed)


def actor_failure_scores(specs: Sequence[RewardSpec], tags: dict[str, str], batch_size: int,
                         reason: str) -> SuiteScores:
    """Scores of a shard whose reward actor died or hung: every reward failed with `reason`."""
    failed = {s.key: reason for s in specs}
    for spec in specs:
        if spec.required:
            others = {k: v for k, v in failed.items() if k != spec.key}
            raise RewardFailure(spec.key, reason, tag=tags.get(spec.key), others=others)
    # Only optional rewards: NaN scores, listed in `failed`. If no weighted reward is left for the step,
    # merge_shard_scores raises RewardFailure, as the suite itself would.
    return SuiteScores(scores={s.key: np.full(batch_size, np.nan) for s in specs}, failed=failed, weights={},
                       tags=dict(tags), details=[{} for _ in range(batch_size)], timings={})


def merge_shard_scores(parts: Sequence[SuiteScores], specs: Sequence[RewardSpec]) -> SuiteScores:
    """One step's SuiteScores from its shards' (in row order). A reward that failed on any shard is failed for the
    step (its scores stay NaN only where it failed) and the weights are renormalised as the suite does."""
    if not parts:
        raise ValueError("merge_shard_scores needs at least one shard")
    keys = [s.key for s in specs]
    tags: dict[str, str] = {}
    for p in parts:
        tags.update(p.tags)
    failed: dict[str, str] = {}
    for p in parts:
        for k, reason in p.failed.items():
            failed.setdefault(k, reason)
    scores = {k: np.concatenate([p.scores[k] for p in parts]) for k in keys}
    details = [d for p in parts for d in p.details]
    timings = {k: float(sum(p.timings.get(k, 0.0) for p in parts)) for k in keys}
    weights = _renormalised_weights(specs, tags, failed)
    return SuiteScores(scores=scores, failed=failed, weights=weights, tags=tags, details=details, timings=timings)
