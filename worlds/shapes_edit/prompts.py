"""Train and held-out shapes-editing rows, generated deterministically (no data files).

Each split draws `rows_per_tag` rows per edit tag (`worlds/shapes_edit/edits.py`) from its own seed. The held-out
split keeps only rows whose (reference scene, instruction) pair never occurs in the train split, so every held-out
row is an edit the model was not trained on (the instruction *strings* do recur: there are only 4 "remove the ..."
instructions; held-out accuracy measures generalisation to new scenes). `reference_image` is the rendered
reference (uint8 [64, 64, 3]), so rows go straight to the rollout and the rewards.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from worlds.shapes_edit.edits import EDIT_TAGS, render_objects, sample_edit_row

SPLIT_SEEDS = {"train": 11, "heldout": 12}
ROWS_PER_TAG = {"train": 1000, "heldout": 64}


def _key(row: dict[str, Any]) -> str:
    return json.dumps([row["instruction"], [o[:4] for o in row["reference_scene"]]])


@lru_cache(maxsize=4)
def _rows(split: str, rows_per_tag: int) -> tuple[dict[str, Any], ...]:
    if split not in SPLIT_SEEDS:
        raise ValueError(f"unknown shapes_edit split {split!r}; choose one of {sorted(SPLIT_SEEDS)}")
    rng = np.random.default_rng(SPLIT_SEEDS[split])
    banned = {_key(r) for r in _rows("train", ROWS_PER_TAG["train"])} if split == "heldout" else set()
    out = []
    for tag in EDIT_TAGS:
        n = 0
        while n < rows_per_tag:
            row = sample_edit_row(tag, rng)
            if _key(row) in banned:
                continue
            out.append(row)
            n += 1
    return tuple(out)


def shapes_edit_rows(split: str = "train", rows_per_tag: int | None = None,
                     tags: list[str] | None = None) -> list[dict[str, Any]]:
    """Rows of a split (fresh dicts, each with its rendered `reference_image`), tag by tag."""
    if split not in SPLIT_SEEDS:
        raise ValueError(f"unknown shapes_edit split {split!r}; choose one of {sorted(SPLIT_SEEDS)}")
    rows = _rows(split, rows_per_tag or ROWS_PER_TAG[split])
    if tags is not None:
        unknown = sorted(set(tags) - set(EDIT_TAGS))
        if unknown:
            raise ValueError(f"unknown edit tags {unknown}; tags are {EDIT_TAGS}")
    out = []
    for r in rows:
        if tags is None or r["tag"] in tags:
            row = json.loads(json.dumps(r))  # a deep copy: callers may annotate rows
            row["reference_image"] = render_objects(row["reference_scene"])
            out.append(row)
    return out


def load_shapes_edit_format(source: Any, base_dir: Path | None = None) -> list[dict[str, Any]]:
    """Loader of `rollout.prompts: {format: shapes_edit, split: ...}` (the registry in `prompts/formats.py`)."""
    return shapes_edit_rows(source.split)
