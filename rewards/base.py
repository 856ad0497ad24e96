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
        self.scores = numeric_scores(self.scores)
        if self.details and len(self.details) != len(self.scores):
            raise ValueError(f"RewardOutput has {len(self.scores)} scores but {len(self.details)} details")


def as_number(value: Any, index: int) -> float:
    """One score as a float. Numbers only: Python bool/int/float and numpy or torch numbers (0-d or one element).
    A numeric string ("0.5"), bytes, None or a container is refused: float("0.5") would accept it and hide a bug
    in the reward (a score read from a file or a model's text answer that was never parsed)."""
    if isinstance(value, (bool, int, float, np.bool_, np.integer, np.floating)):
        return float(value)
    if hasattr(value, "dtype") and hasattr(value, "item") and getattr(value, "ndim", 1) <= 1:
        try:
            item = value.item()  # numpy / torch: a Python number for numeric dtypes, str/bytes/objects otherwise
        except (ValueError, RuntimeError):  # more than one element
            item = None
        if isinstance(item, (bool, int, float)):
            return float(item)
    shown = repr(value)
    shown = shown if len(shown) <= 40 else shown[:37] + "..."
    raise TypeError(f"score [{index}] is {type(value).__name__} {shown}: a reward returns numbers (float, int, bool, "
                    "or numpy / torch numbers), not strings, bytes, None or containers")


def numeric_scores(scores: Any) -> list[float]:
    """A reward's scores as floats: a list, tuple, 1-d numpy array or torch tensor of numbers (`as_number`). A set
    (no order), a dict, a string or bytes is refused with a TypeError that says what was returned."""
    if isinstance(scores, (str, bytes, bytearray, set, frozenset, dict)) or not hasattr(scores, "__iter__"):
        raise TypeError(f"returned {type(scores).__name__} as scores; expected a list (or 1-d array) of numbers, "
                        "one per image")
    if getattr(scores, "ndim", 1) != 1:
        raise TypeError(f"returned scores of shape {tuple(scores.shape)}; expected one number per image (1-d)")
    if hasattr(scores, "tolist") and hasattr(scores, "dtype"):  # numpy / torch: refuse str, bytes, complex dtypes
        kind = getattr(scores.dtype, "kind", None)
        is_complex = getattr(scores.dtype, "is_complex", False)
        if (kind is not None and kind not in "biufO") or is_complex:
            raise TypeError(f"returned scores of dtype {scores.dtype}; expected numbers")
        scores = scores.tolist()
    return [as_number(v, i) for i, v in enumerate(scores)]


@runtime_checkable
class Reward(Protocol):
    name: ClassVar[str]  # e.g. "ocr"
    version: str  # e.g. "flowgrpo": the reference whose numbers this matches; full tag is f"{name}@{version}"

    def __call__(self, images: Sequence[np.ndarray], prompts: Sequence[str],
                 metadata: Sequence[dict[str, Any]]) -> RewardOutput: ...


def reward_tag(reward: Any) -> str:
    return f"{reward.name}@{reward.version}"
