"""GenEval-style prompts of the shapes world, with GenEval-format metadata, split into train and held-out sets.

Every prompt of the six GenEval tags that the world can express is enumerated, using GenEval's own templates
(GenEval `prompts/create_prompts.py`, the metadata format of Flow-GRPO `dataset/geneval/*_metadata.jsonl`):

| tag | template | metadata |
|---|---|---|
| single_object | a photo of a circle | include [{circle, 1}] |
| two_object | a photo of a circle and a square | include [{circle, 1}, {square, 1}] |
| counting | a photo of three circles | include [{circle, 3}], exclude [{circle, 4}] |
| colors | a photo of a red circle | include [{circle, 1, red}] |
| position | a photo of a circle left of a square | include [{square, 1}, {circle, 1, position: [left of, 0]}] |
| color_attr | a photo of a red circle and a blue square | include [{circle, 1, red}, {square, 1, blue}] |

Split: **disjoint prompt strings**. Within each tag the prompts are shuffled with a fixed seed and a quarter (at
least two) is held out. SFT data and GRPO train only on the train split; the demo evaluates on the held-out split,
so every held-out number is on prompts the model never saw (their words and sub-phrases it did see: held-out
accuracy measures compositional generalisation). The split is committed in `worlds/shapes/data/` and
`shapes_prompt_rows` reads it; `tests/test_shapes_world.py` checks the files equal `make_split()`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from worlds.shapes.world import COLOR_NAMES, SHAPES

TAGS: tuple[str, ...] = ("single_object", "two_object", "counting", "colors", "position", "color_attr")
NUMBER_WORDS = {2: "two", 3: "three", 4: "four"}
RELATIONS: tuple[str, ...] = ("left of", "right of", "above", "below")
DATA_DIR = Path(__file__).parent / "data"
SPLIT_FILES = {"train": DATA_DIR / "train_metadata.jsonl", "heldout": DATA_DIR / "heldout_metadata.jsonl"}
SPLIT_SEED = 0
HELDOUT_FRACTION = 0.25


def _a(word: str) -> str:
    return ("an " if word[0] in "aeiou" else "a ") + word


def _plural(shape: str) -> str:
    return shape + "s"


def all_prompt_rows() -> list[dict[str, Any]]:
    """Every GenEval-style row the world can express, in a fixed order (tag, then lexicographic)."""
    rows: list[dict[str, Any]] = []
    for s in SHAPES:
        rows.append({"tag": "single_object", "include": [{"class": s, "count": 1}], "prompt": f"a photo of {_a(s)}"})
    for a in SHAPES:
        for b in SHAPES:
            if a != b:
                rows.append({"tag": "two_object", "include": [{"class": a, "count": 1}, {"class": b, "count": 1}],
                             "prompt": f"a photo of {_a(a)} and {_a(b)}"})
    for s in SHAPES:
        for n, word in NUMBER_WORDS.items():
            rows.append({"tag": "counting", "include": [{"class": s, "count": n}],
                         "exclude": [{"class": s, "count": n + 1}], "prompt": f"a photo of {word} {_plural(s)}"})
    for s in SHAPES:
        for c in COLOR_NAMES:
            rows.append({"tag": "colors", "include": [{"class": s, "count": 1, "color": c}],
                         "prompt": f"a photo of {_a(c)} {s}"})
    for a in SHAPES:
        for b in SHAPES:
            if a == b:
                continue
            for rel in RELATIONS:
                rows.append({"tag": "position",
                             "include": [{"class": b, "count": 1}, {"class": a, "count": 1, "position": [rel, 0]}],
                             "prompt": f"a photo of {_a(a)} {rel} {_a(b)}"})
    for a in SHAPES:
        for b in SHAPES:
            if a == b:
                continue
            for ca in COLOR_NAMES:
                for cb in COLOR_NAMES:
                    if ca != cb:
                        rows.append({"tag": "color_attr",
                                     "include": [{"class": a, "count": 1, "color": ca},
                                                 {"class": b, "count": 1, "color": cb}],
                                     "prompt": f"a photo of {_a(ca)} {a} and {_a(cb)} {b}"})
    return rows


def make_split(seed: int = SPLIT_SEED, heldout_fraction: float = HELDOUT_FRACTION
               ) -> dict[str, list[dict[str, Any]]]:
    """Per tag: shuffle with `seed`, hold out max(2, round(fraction * n)) prompts. Disjoint prompt strings."""
    rng = np.random.default_rng(seed)
    rows = all_prompt_rows()
    split: dict[str, list[dict[str, Any]]] = {"train": [], "heldout": []}
    for tag in TAGS:
        tag_rows = [r for r in rows if r["tag"] == tag]
        order = rng.permutation(len(tag_rows))
        n_heldout = max(2, int(round(heldout_fraction * len(tag_rows))))
        split["heldout"] += [tag_rows[i] for i in sorted(order[:n_heldout])]
        split["train"] += [tag_rows[i] for i in sorted(order[n_heldout:])]
    return split


def write_split(split: dict[str, list[dict[str, Any]]] | None = None) -> None:
    split = split or make_split()
    DATA_DIR.mkdir(parents=True, exist_ok=True)
    for name, path in SPLIT_FILES.items():
        path.write_text("".join(json.dumps(r) + "\n" for r in split[name]))


def shapes_prompt_rows(split: str = "train", tags: list[str] | None = None) -> list[dict[str, Any]]:
    """The committed GenEval-format rows of a split ('train' or 'heldout'), optionally only some tags."""
    if split not in SPLIT_FILES:
        raise ValueError(f"unknown shapes split {split!r}; choose one of {sorted(SPLIT_FILES)}")
    path = SPLIT_FILES[split]
    rows = []
    for i, line in enumerate(path.read_text().splitlines(), 1):
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}:{i}: not valid JSON: {exc}") from exc
    if tags is not None:
        unknown = sorted(set(tags) - set(TAGS))
        if unknown:
            raise ValueError(f"unknown GenEval tags {unknown}; tags are {TAGS}")
        rows = [r for r in rows if r["tag"] in tags]
    return rows


def world_vocabulary() -> list[str]:
    """Every word any prompt of the world uses (for the word-level text tokenizer), sorted."""
    words: set[str] = set()
    for r in all_prompt_rows():
        words.update(r["prompt"].split())
    return sorted(words)


if __name__ == "__main__":  # regenerate the committed split files
    write_split()
    for name, path in SPLIT_FILES.items():
        print(name, sum(1 for _ in path.open()), "rows ->", path)


def load_shapes_format(source: Any, base_dir: Path | None = None) -> list[dict[str, Any]]:
    """Loader of `rollout.prompts: {format: shapes, split: ...}` (the registry in `prompts/formats.py`)."""
    return shapes_prompt_rows(source.split)
