"""How one rollout step is cut into shards for the Ray engine: whole prompt groups, in order, each with its own seed.

A shard is the unit of dispatch, of retry after a fault, and of reward scoring (a finished shard is scored while
the next shards render). Its rollouts are `generate_rollouts(generator, shard.rows, seed=shard.seed, ...)`, so they
depend only on (step seed, rows, groups_per_shard) and the weights, never on how many actors there are, which actor
ran the shard, or whether it was re-run after a crash.

A step that is a single shard uses the step seed unchanged, so it reproduces the local engine
(`engines/local_engine.py`) exactly. With several shards each gets `seeding.derive_seed(step seed, "shard", index)`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from seeding import derive_seed


@dataclass(frozen=True)
class Shard:
    index: int  # position in the step; batches are concatenated in this order
    first_group: int  # index of its first prompt group within the step
    rows: list[dict[str, Any]]  # its prompt rows (whole groups: each row becomes group_size samples)
    seed: int


def shard_seed(step_seed: int, index: int, num_shards: int) -> int:
    if num_shards == 1:
        return int(step_seed)
    return derive_seed(step_seed, "shard", index)


def plan_shards(rows: list[dict[str, Any]], step_seed: int, groups_per_shard: int) -> list[Shard]:
    if groups_per_shard < 1:
        raise ValueError(f"groups_per_shard must be >= 1, got {groups_per_shard}")
    if not rows:
        raise ValueError("a rollout step needs at least one prompt row")
    starts = list(range(0, len(rows), groups_per_shard))
    return [Shard(index=i, first_group=s, rows=list(rows[s:s + groups_per_shard]),
                  seed=shard_seed(step_seed, i, len(starts))) for i, s in enumerate(starts)]
