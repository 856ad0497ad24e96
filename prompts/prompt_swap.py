"""Swapped metadata: does an image depend on its prompt? Score it against *another* prompt's metadata.

A generator that ignores the prompt (draws the same scene for every prompt, or a scene that satisfies many prompts
at once, which GenEval's lenient rule accepts: an image with every shape passes "a photo of a circle") scores
about as well against a random other prompt's metadata as against its own. A prompt-following one scores much
worse. So accuracy against swapped metadata, reported beside the normal accuracy, tells the two apart.

The swap is a seeded **derangement** of the distinct prompts: every prompt is scored against the metadata of a
different prompt, never its own. Prompts are deranged within their GenEval tag where the tag has at least two
distinct prompts (so "a photo of three circles" is checked against another counting prompt, same difficulty); a tag
with a single prompt is deranged together with the other such prompts. A random order of each pool, each prompt
mapped onto the next one in that order (a cycle), is a derangement for any pool of two or more. Rows that repeat a
prompt (several seeds) share its swapped partner. With a single prompt in all, nothing can be swapped (None).
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import numpy as np

SWAP_SEED = 0


def _key(row: dict[str, Any]) -> str:
    return str(row.get("prompt", ""))


def swap_partners(rows: list[dict[str, Any]], seed: int = SWAP_SEED) -> dict[str, str] | None:
    """prompt text -> the prompt text whose metadata it is scored against (never itself); None if < 2 prompts."""
    first: dict[str, dict[str, Any]] = {}
    for row in rows:
        first.setdefault(_key(row), row)
    if len(first) < 2:
        return None
    by_tag: dict[str, list[str]] = defaultdict(list)
    for text, row in first.items():
        by_tag[str(row.get("tag", ""))].append(text)
    pools = [texts for texts in by_tag.values() if len(texts) >= 2]
    lonely = [texts[0] for texts in by_tag.values() if len(texts) == 1]
    if len(lonely) == 1:  # one prompt alone in its tag and no other lonely one: join the largest pool
        max(pools, key=len).append(lonely[0])
    elif lonely:
        pools.append(lonely)
    rng = np.random.default_rng(seed)
    partner: dict[str, str] = {}
    for pool in pools:
        order = [pool[i] for i in rng.permutation(len(pool))]
        for i, text in enumerate(order):
            partner[text] = order[(i + 1) % len(order)]
    return partner


def swapped_rows(rows: list[dict[str, Any]], seed: int = SWAP_SEED) -> list[dict[str, Any]] | None:
    """For each row, the metadata row of its swap partner (same order as `rows`); None if nothing can be swapped."""
    partner = swap_partners(rows, seed)
    if partner is None:
        return None
    first: dict[str, dict[str, Any]] = {}
    for row in rows:
        first.setdefault(_key(row), row)
    return [first[partner[_key(row)]] for row in rows]


def is_geneval_row(row: dict[str, Any]) -> bool:
    return isinstance(row.get("include"), list) and "tag" in row


__all__ = ["SWAP_SEED", "swap_partners", "swapped_rows", "is_geneval_row"]
