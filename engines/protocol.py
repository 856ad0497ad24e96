"""The rollout engine: what the driver (`rl/train_loop.py`) asks of whatever makes its rollouts.

An engine turns prompt rows into a `RolloutBatch` with a given policy version, and learns new versions from
`publish_weights`. Two capabilities are optional and declared, so the driver reads them instead of probing:

- `scores_rollouts`: the engine scores its own rollouts (the Ray engine's reward actors score finished shards
  while later shards render), so the driver calls `generate_and_score` and skips its own reward stage;
  otherwise it calls `generate` and scores with its `RewardSuite`.
- `overlaps_steps`: the engine can `prefetch` the next step's rollouts from the weights before this step's update
  (used only with `rollout.max_staleness > 0`).

`LocalRolloutEngine` (`engines/local_engine.py`, in-process) and `RayRolloutEngine` (`engines/ray_engine.py`,
rollout and reward actors) implement it; a new engine subclasses `RolloutEngine`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, ClassVar

from rollouts.batch import RolloutBatch


class RolloutEngine(ABC):
    scores_rollouts: ClassVar[bool] = False
    overlaps_steps: ClassVar[bool] = False
    # reward key -> tag of the rewards the engine scores with (empty: the driver's suite names them)
    reward_tags: Mapping[str, str] = MappingProxyType({})

    @abstractmethod
    def generate(self, rows: list[dict[str, Any]], *, group_size: int, seed: int,
                 policy_version: int) -> RolloutBatch:
        """`group_size` samples of every row, rows ordered group by group, sampled with `policy_version`."""

    def generate_and_score(self, rows: list[dict[str, Any]], *, group_size: int, seed: int,
                           policy_version: int) -> tuple[RolloutBatch, Any]:
        """As `generate`, plus the rollouts' `rewards.suite.SuiteScores`; only when `scores_rollouts`."""
        raise NotImplementedError(f"{type(self).__name__} does not score its rollouts (scores_rollouts is False): "
                                  "call generate and score them with a RewardSuite")

    def prefetch(self, rows: list[dict[str, Any]], *, group_size: int, seed: int, policy_version: int,
                 score: bool = False) -> None:
        """Start the next step's rollouts now; the next generate(_and_score) with the same rows, group_size, seed
        (and score) collects them. Only when `overlaps_steps`."""
        raise NotImplementedError(f"{type(self).__name__} cannot prefetch (overlaps_steps is False)")

    @abstractmethod
    def publish_weights(self, state: dict[str, Any] | None, version: int) -> None:
        """Make `version` the current policy; `state` is the trainer's sync state (None only for version 0)."""

    def stats(self) -> dict[str, float]:
        """Fault and overlap counters, logged as `faults/<name>` each step."""
        return {}

    def shutdown(self) -> None:
        """Release what the engine holds (actors, placement groups); called once when the run ends."""
