"""The Ray reward actor: a `RewardSuite` (some of the recipe's reward models) in its own process, on CPU or a GPU.

The Ray rollout engine (`engines/ray_engine.py`) starts one reward actor per reward of the recipe (each with its
own CPU/GPU share, so one model's crash or hang touches only that reward) and hands every actor each finished shard
of a step, so scoring overlaps with the rendering of the next shards. `merge_shard_scores` then builds the step's
`SuiteScores` from the per-shard, per-actor results.

Failure policy (the suite's, rewards/suite.py): inside the actor the suite applies it per reward (an optional reward
that raises or times out is NaN + `failed`; a required one raises `RewardFailure`). When the *actor itself* dies or
hangs, every reward it holds failed on that shard: `actor_failure_scores` applies the same policy to that (required
→ `RewardFailure` naming the reward; optional → NaN, listed in `failed`, weights renormalised at the merge).
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
        try:
            return self.suite.score_rollouts(batch)
        except RewardFailure as exc:
            if any(s.required for s in self.suite.specs if s.key == exc.reward):
                raise
            # Every reward of this actor is optional and all failed. That is not this actor's call to make: the
            # rewards held by other actors may survive, so report the failures and let the merge renormalise.
            n = len(batch)
            return SuiteScores(scores={k: np.full(n, np.nan) for k in self.suite.keys},
                               failed={k: exc.reason if k == exc.reward else str(exc) for k in self.suite.keys},
                               weights={}, tags=dict(self.suite.tags), details=[{} for _ in range(n)], timings={})


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


def merge_shard_scores(grid: Sequence[Sequence[SuiteScores]], specs: Sequence[RewardSpec]) -> SuiteScores:
    """One step's SuiteScores from `grid[shard][actor]`: shards in row order, each scored by one or more reward
    actors (each holding some of the rewards). A reward that failed on any shard is failed for the step (its scores
    are NaN only where it failed) and the weights are renormalised exactly as the suite does."""
    if not grid or not all(grid):
        raise ValueError("merge_shard_scores needs at least one shard, each scored by at least one actor")
    keys = [s.key for s in specs]
    tags: dict[str, str] = {}
    failed: dict[str, str] = {}
    for part in (p for row in grid for p in row):
        tags.update(part.tags)
        for k, reason in part.failed.items():
            failed.setdefault(k, reason)
    scores, details, timings = {}, [], {k: 0.0 for k in keys}
    for k in keys:
        columns = []
        for row in grid:
            holder = [p for p in row if k in p.scores]
            if len(holder) != 1:
                raise ValueError(f"reward {k!r} is scored by {len(holder)} actors on a shard (expected 1)")
            columns.append(holder[0].scores[k])
            timings[k] += float(holder[0].timings.get(k, 0.0))
        scores[k] = np.concatenate(columns)
    for row in grid:
        n = len(next(iter(row[0].scores.values())))
        for i in range(n):
            merged: dict[str, Any] = {}
            for p in row:
                if p.details:
                    merged.update(p.details[i])
            details.append(merged)
    weights = _renormalised_weights(specs, tags, failed)
    return SuiteScores(scores=scores, failed=failed, weights=weights, tags=tags, details=details, timings=timings)
