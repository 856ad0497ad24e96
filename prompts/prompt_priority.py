"""A prompt stream that serves prompts by how much they still teach (`rollout.prompt_priority`).

GRPO learns only from groups whose rewards differ. Late in a run many prompts are solved (every sample right) or
stuck (every sample equally wrong), and their steps carry no advantage. This stream keeps, per row, a running
mean of its groups' reward spread (the standard deviation of the combined reward within the group, which is what
makes an advantage), and draws each step's rows without replacement with probability proportional to

    weight = spread + floor × mean spread over the rows,

so rows that teach come up more often, and a solved or stuck row still comes back (at `floor` of the average rate),
because it may be forgotten or become learnable. The first epoch serves every row once, in a shuffled order, so
every row has a spread before any is preferred. The idea is the learnability sampling of Foster et al.
("Learning to Reason at the Frontier of Learnability", 2025: weight p(1 − p), the variance of a pass/fail reward);
the spread generalises it to partial-credit and user rewards.

A `RowStream` like `PromptStream`, plus `observe`. Its whole state is
(draws, epoch-0 position, spreads), saved in checkpoints, so a resumed run draws the same prompts.
"""

from __future__ import annotations

import math
import random
from typing import Any

from prompts.prompt_sets import RowStream, epoch_order
from seeding import derive_seed


class PrioritizedPromptStream(RowStream):
    def __init__(self, rows: list[dict[str, Any]], seed: int, floor: float, memory: float):
        super().__init__(rows)
        if floor <= 0 or not 0 < memory <= 1:
            raise ValueError(f"prompt priority needs floor > 0 and 0 < memory <= 1, got floor {floor}, "
                             f"memory {memory}")
        self.seed, self.floor, self.memory = seed, floor, memory
        self.draws, self.position = 0, 0
        self.spread: list[float | None] = [None] * len(rows)  # None: not seen yet
        self._first_epoch = epoch_order(len(rows), seed, 0)

    def weights(self) -> list[float]:
        """Each row's draw weight once every row has been seen (rows not seen yet count as the mean spread)."""
        seen = [s for s in self.spread if s is not None]
        mean = sum(seen) / len(seen) if seen else 0.0
        if mean <= 0:  # nothing teaches (or nothing seen): draw uniformly
            return [1.0] * len(self.rows)
        return [(mean if s is None else s) + self.floor * mean for s in self.spread]

    def next(self, n: int) -> list[dict[str, Any]]:
        self.served = []
        while len(self.served) < n and self.position < len(self._first_epoch):
            self.served.append(self._first_epoch[self.position])
            self.position += 1
        while len(self.served) < n:  # more rows than the set holds come in rounds, each without replacement
            self.served += self._draw(min(n - len(self.served), len(self.rows)))
        return [self.rows[i] for i in self.served]

    def _draw(self, k: int) -> list[int]:
        """k distinct rows, weighted: the k largest keys log(u) / w (Efraimidis and Spirakis, 2006)."""
        rng = random.Random(derive_seed(self.seed, "prompt_priority", self.draws))
        self.draws += 1
        keys = [(math.log(1.0 - rng.random()) / w, i) for i, w in enumerate(self.weights())]
        keys.sort(reverse=True)
        return [i for _, i in keys[:k]]

    def observe(self, indices: list[int], spreads: list[float]) -> None:
        """Record each served row's group reward spread (a running mean with weight `memory` on the newest)."""
        for index, value in zip(indices, spreads, strict=True):
            if not 0 <= index < len(self.rows):
                raise IndexError(f"prompt row {index} is out of range (0..{len(self.rows) - 1})")
            if not math.isfinite(value) or value < 0:
                continue  # a group without a usable spread (dropped samples) says nothing about its row
            old = self.spread[index]
            self.spread[index] = value if old is None else (1 - self.memory) * old + self.memory * value

    def metrics(self) -> dict[str, float]:
        seen = [s for s in self.spread if s is not None]
        out = {"prompts/seen_frac": len(seen) / len(self.rows)}
        if seen:
            out["prompts/spread_mean"] = sum(seen) / len(seen)
            out["prompts/no_spread_frac"] = sum(s < 1e-6 for s in seen) / len(seen)
        return out

    def state_dict(self) -> dict[str, Any]:
        return {"kind": "priority", "draws": self.draws, "position": self.position, "spread": list(self.spread)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("kind") != "priority":
            raise ValueError("the checkpoint's prompt stream was not prioritised (rollout.prompt_priority was off "
                             "in that run); resume with the same setting or start a new run")
        spread, draws, position = state.get("spread"), state.get("draws"), state.get("position")
        if not isinstance(spread, list) or len(spread) != len(self.rows):
            size = len(spread) if isinstance(spread, list) else "no"
            raise ValueError(f"checkpoint's prompt priorities cover {size} rows; the prompt set has {len(self.rows)}")
        if any(s is not None and not (isinstance(s, (int, float)) and math.isfinite(s) and s >= 0) for s in spread):
            raise ValueError("checkpoint's prompt priorities hold a value that is not a finite spread >= 0")
        if not (isinstance(draws, int) and draws >= 0 and isinstance(position, int)
                and 0 <= position <= len(self.rows)):
            raise ValueError(f"checkpoint's prompt stream has draws {draws!r} and position {position!r}; expected "
                             f"whole numbers >= 0, position at most {len(self.rows)}")
        self.draws, self.position = draws, position
        self.spread = [None if s is None else float(s) for s in spread]
