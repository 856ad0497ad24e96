"""The reward interface every built-in and user reward follows.

A reward scores a batch: images (uint8 [H,W,3] numpy arrays), each row's prompt and metadata row.
It returns one float per image plus optional per-image details for logging. `__call__` may be sync or
`async def`; the reward stage awaits coroutines. User functions with the same signature returning a list of
floats (or a `RewardOutput`) are wrapped by `rewards.registry`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol, Sequence, runtime_checkable

import numpy as np


@dataclass
class RewardOutput:
    scores: list[float]
    details: list[dict[str, Any]] = field(default_factory=list)  # empty or one dict per image

    def __post_init__(self) -> None:
        self.scores = [float(s) for s in self.scores]
        if self.details and len(self.details) != len(self.scores):
            raise ValueError(f"RewardOutput has {len(self.scores)} scores but {len(self.details)} details")


@runtime_checkable
class Reward(Protocol):
    name: ClassVar[str]  # e.g. "ocr"
    version: str  # e.g. "flowgrpo": the reference whose numbers this matches; full tag is f"{name}@{version}"

    def __call__(self, images: Sequence[np.ndarray], prompts: Sequence[str],
                 metadata: Sequence[dict[str, Any]]) -> RewardOutput: ...


def reward_tag(reward: Any) -> str:
    return f"{reward.name}@{reward.version}"
