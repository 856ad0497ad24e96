"""GenEval-style training prompts and metadata generated from the 80 COCO classes, so a user without Flow-GRPO's
`dataset/geneval/train_metadata.jsonl` can start a GenEval run.

The rows have GenEval's format and phrasing (djghosh13/geneval `generation/prompts/create_prompts.py`, checked
against the released `evaluation_metadata.jsonl`):

| tag | prompt | include (exclude) |
|---|---|---|
| single_object | "a photo of a bench" | [{bench, 1}] |
| two_object | "a photo of a toaster and an oven" | [{toaster, 1}, {oven, 1}] (two different classes) |
| counting | "a photo of three cows" (2 to 4) | [{cow, 3}] (exclude [{cow, 4}]: makes the count exact) |
| colors | "a photo of an orange cow" | [{cow, 1, color: orange}] |
| position | "a photo of a dog right of a teddy bear" | [{teddy bear, 1}, {dog, 1, position: [right of, 0]}] |
| color_attr | "a photo of a purple wine glass and a black apple" | [{wine glass, 1, purple}, {apple, 1, black}] (different classes, different colours) |

GenEval's article and plural rules are kept as they are, ungrammatical cases included ("an umbrella" is right,
but also "a photo of three benchs", "two sheeps"), because a model trained on these prompts is evaluated on
GenEval's own file, which uses exactly these strings.

Generation is deterministic given the seed: every tag's prompts are drawn without replacement from that tag's
whole combination space (indices sampled with `random.Random(seed)`, decoded to classes/colours/counts), so rows
never repeat; prompts listed in `exclude_prompts` (e.g. GenEval's 553 evaluation prompts) are never emitted.
Rows are spread evenly over the requested tags; a tag whose space is smaller than its share (single_object has only
80 prompts) gives its remainder to the others.

Optionally (`text_fraction`), a fraction of rows gets a quoted text appended (`... with a sign that says "OPEN"`),
so the OCR reward has a target on those rows while the GenEval metadata stays valid: the multi-reward recipe uses
this. It is not GenEval phrasing and is off by default.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from prompts.row_files import load_jsonl, resolve_path
from prompts.vocabulary import COLOURS, GENEVAL_CLASSES, GENEVAL_TAGS

COCO_CLASSES: tuple[str, ...] = GENEVAL_CLASSES  # GenEval's object_names.txt: COCO's 80 classes
NUMBERS: dict[int, str] = {2: "two", 3: "three", 4: "four"}  # GenEval counting uses 2..4
RELATIONS: tuple[str, ...] = ("left of", "right of", "above", "below")

# Words for the optional quoted text (our own list; short, common sign words an OCR model reads reliably).
TEXT_WORDS: tuple[str, ...] = (
    "OPEN", "CLOSED", "EXIT", "STOP", "SALE", "CAFE", "HOTEL", "PARKING", "WELCOME", "HELLO", "BAKERY", "PIZZA",
    "TAXI", "BUS STOP", "NO ENTRY", "FRESH", "SUMMER", "LIBRARY", "MUSEUM", "GARDEN", "DANGER", "QUIET", "PUSH",
    "PULL", "FREE WIFI", "BOOKS", "COFFEE", "ONE WAY", "SCHOOL", "MARKET", "THANK YOU", "GOOD LUCK", "HAPPY",
    "SMILE", "RELAX", "PARK", "BEACH", "SNOW", "RAIN", "MOON",
)


def with_article(name: str) -> str:
    """GenEval's rule: "an" before a, e, i, o, u; "a" otherwise."""
    return f"an {name}" if name[0] in "aeiou" else f"a {name}"


def make_plural(name: str) -> str:
    """GenEval's rule: +"es" after a final "s", else +"s" ("buses", "wine glasses", but "benchs", "sheeps")."""
    return f"{name}es" if name.endswith("s") else f"{name}s"


class CocoPromptOptions(BaseModel):
    """`rollout.prompts.coco` when `format: coco_generated`."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    num_prompts: int = Field(5000, ge=1, description="Rows to generate (Flow-GRPO's train set has ~50k).")
    seed: int = Field(0, description="Generator seed (the run seed only shuffles the order of the stream).")
    tags: list[str] = Field(default_factory=lambda: list(GENEVAL_TAGS), description="Tags to cover, evenly.")
    exclude_path: str | None = Field(None, description="GenEval / Flow-GRPO jsonl whose prompts are held out "
                                     "(e.g. GenEval's evaluation_metadata.jsonl); relative to the recipe folder.")
    text_fraction: float = Field(0.0, ge=0, le=1, description="Fraction of rows given a quoted sign text "
                                 "(for an OCR reward next to GenEval); 0 = pure GenEval phrasing.")


class _Space:
    """The combination space of one tag: `size` items, decoded from an index without enumerating them."""

    def __init__(self, tag: str, classes: Sequence[str], colours: Sequence[str]):
        self.tag, self.classes, self.colours = tag, list(classes), list(colours)
        n, c = len(self.classes), len(self.colours)
        pairs = n * (n - 1)  # ordered pairs of different classes
        self.size = {"single_object": n, "two_object": pairs, "counting": n * len(NUMBERS), "colors": n * c,
                     "position": pairs * len(RELATIONS), "color_attr": pairs * c * (c - 1)}[tag]

    def _pair(self, index: int) -> tuple[str, str]:
        n = len(self.classes)
        first, second = divmod(index, n - 1)
        if second >= first:  # skip the diagonal: the two classes always differ
            second += 1
        return self.classes[first], self.classes[second]

    def _colour_pair(self, index: int) -> tuple[str, str]:
        c = len(self.colours)
        first, second = divmod(index, c - 1)
        if second >= first:
            second += 1
        return self.colours[first], self.colours[second]

    def row(self, index: int) -> dict[str, Any]:
        tag = self.tag
        if tag == "single_object":
            name = self.classes[index]
            return {"tag": tag, "include": [{"class": name, "count": 1}], "prompt": f"a photo of {with_article(name)}"}
        if tag == "two_object":
            a, b = self._pair(index)
            return {"tag": tag, "include": [{"class": a, "count": 1}, {"class": b, "count": 1}],
                    "prompt": f"a photo of {with_article(a)} and {with_article(b)}"}
        if tag == "counting":
            cls_index, number_index = divmod(index, len(NUMBERS))
            name, count = self.classes[cls_index], list(NUMBERS)[number_index]
            return {"tag": tag, "include": [{"class": name, "count": count}],
                    "exclude": [{"class": name, "count": count + 1}],
                    "prompt": f"a photo of {NUMBERS[count]} {make_plural(name)}"}
        if tag == "colors":
            cls_index, colour_index = divmod(index, len(self.colours))
            name, colour = self.classes[cls_index], self.colours[colour_index]
            return {"tag": tag, "include": [{"class": name, "count": 1, "color": colour}],
                    "prompt": f"a photo of {with_article(f'{colour} {name}')}"}
        if tag == "position":
            pair_index, relation_index = divmod(index, len(RELATIONS))
            target, subject = self._pair(pair_index)  # "a photo of <subject> <relation> <target>"
            relation = RELATIONS[relation_index]
            return {"tag": tag,
                    "include": [{"class": target, "count": 1},
                                {"class": subject, "count": 1, "position": [relation, 0]}],
                    "prompt": f"a photo of {with_article(subject)} {relation} {with_article(target)}"}
        if tag == "color_attr":
            c = len(self.colours)
            pair_index, colour_index = divmod(index, c * (c - 1))
            a, b = self._pair(pair_index)
            ca, cb = self._colour_pair(colour_index)
            return {"tag": tag,
                    "include": [{"class": a, "count": 1, "color": ca}, {"class": b, "count": 1, "color": cb}],
                    "prompt": f"a photo of {with_article(f'{ca} {a}')} and {with_article(f'{cb} {b}')}"}
        raise ValueError(f"unknown GenEval tag {tag!r}; known: {GENEVAL_TAGS}")


def _shares(n: int, sizes: dict[str, int]) -> dict[str, int]:
    """n rows spread evenly over the tags, none above its space; leftovers go to tags with room (in tag order)."""
    shares = {t: 0 for t in sizes}
    remaining = n
    while remaining:
        open_tags = [t for t in sizes if shares[t] < sizes[t]]
        if not open_tags:
            break
        base, extra = divmod(remaining, len(open_tags))
        for i, t in enumerate(open_tags):
            take = min(base + (1 if i < extra else 0), sizes[t] - shares[t])
            shares[t] += take
            remaining -= take
    return shares


def generate_geneval_prompts(num_prompts: int, *, seed: int = 0, tags: Iterable[str] = GENEVAL_TAGS,
                             exclude_prompts: Iterable[str] = (), text_fraction: float = 0.0,
                             classes: Sequence[str] = COCO_CLASSES,
                             colours: Sequence[str] = COLOURS) -> list[dict[str, Any]]:
    """`num_prompts` distinct GenEval metadata rows (module docstring), shuffled, deterministic given `seed`."""
    tags = list(dict.fromkeys(tags))
    bad = [t for t in tags if t not in GENEVAL_TAGS]
    if bad or not tags:
        raise ValueError(f"tags {bad or tags!r}: each must be one of {GENEVAL_TAGS}")
    if num_prompts < 1:
        raise ValueError(f"num_prompts must be >= 1, got {num_prompts}")
    excluded = {p.strip() for p in exclude_prompts}
    rng = random.Random(seed)
    candidates: dict[str, list[dict[str, Any]]] = {}
    for t in tags:
        space = _Space(t, classes, colours)
        # Enough distinct indices for any share this tag could get, even if every excluded prompt is in it.
        k = min(space.size, num_prompts + len(excluded))
        rows_t = (space.row(i) for i in rng.sample(range(space.size), k))
        candidates[t] = [r for r in rows_t if r["prompt"] not in excluded]
    shares = _shares(num_prompts, {t: len(c) for t, c in candidates.items()})
    rows = [r for t in tags for r in candidates[t][:shares[t]]]
    if len(rows) < num_prompts:
        raise ValueError(f"only {len(rows)} distinct prompts exist for tags {tags} after exclusions; "
                         f"asked for {num_prompts}")
    rng.shuffle(rows)
    if text_fraction > 0:
        for row in rows:
            if rng.random() < text_fraction:
                row["prompt"] = f'{row["prompt"]} with a sign that says "{rng.choice(TEXT_WORDS)}"'
    return rows


def coco_prompt_rows(options: CocoPromptOptions, base_dir: Path | None = None) -> list[dict[str, Any]]:
    """Rows for `rollout.prompts: {format: coco_generated, coco: {...}}`."""
    excluded: list[str] = []
    if options.exclude_path:
        excluded = [r["prompt"] for r in load_jsonl(resolve_path(options.exclude_path, base_dir))]
    return generate_geneval_prompts(options.num_prompts, seed=options.seed, tags=options.tags,
                                    exclude_prompts=excluded, text_fraction=options.text_fraction)


def write_jsonl(rows: list[dict[str, Any]], path: str | Path) -> Path:
    import json

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    tmp.replace(path)
    return path
