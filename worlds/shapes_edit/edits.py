"""Shapes editing: instructions on a reference scene whose result an exact checker can verify.

Three edit kinds (the row's `tag`), on a reference scene of 1–3 shapes of *distinct* classes (so "the circle" names
one object), built from the shapes world (`worlds/shapes/world.py`):

| tag | instruction | expected result |
|---|---|---|
| `recolor` | "make the circle blue" | the circle, same cell, now blue; everything else unchanged |
| `add` | "add a red square left of the triangle" | the reference plus a red square in a cell left of the triangle (*) |
| `remove` | "remove the diamond" | the reference without the diamond |

(*) that axis strictly dominant, which GenEval's position rule reads as exactly that relation; nothing else changed.

`check_edit(row, cells)` compares what the detector read, cell by cell (one shape per 16 px cell), with the
expected result:
- `edit_ok`: the asked-for change is there (the recoloured object has the new colour; the removed cell is empty;
  exactly one new object of the asked class and colour stands in a valid cell);
- `cell_accuracy`: the fraction of the 16 cells whose content (empty, or shape + colour) is as expected (for `add`
  the new object's cell counts as expected when `edit_ok`);
- `correct` = `edit_ok` and every cell as expected (the exact, GenEval-style pass/fail);
- `score` = 0.5·`edit_ok` + 0.5·`cell_accuracy` (partial credit, reward version `exact`);
- `shaped_score` = 0.5·`edit_credit` + 0.5·`untouched_accuracy` (reward version `shaped`): `edit_credit` is
  `edit_ok`, except that an `add` whose object (right class and colour, one new cell) stands on the wrong side of
  the anchor earns 0.5; `untouched_accuracy` is the fraction of the cells the edit does not touch (all but the
  recoloured / removed cell, or the added object's cell) that still hold the reference's content. Under `exact`
  an unchanged image scores 0.5 on `add`, more than a misplaced add (about 0.47), so GRPO groups can settle on
  doing nothing; under `shaped` the misplaced add earns 0.75 and doing nothing stays at 0.5.

Rows are plain dicts: `{tag, instruction, prompt, reference_scene: [[shape, colour, row, col, half_size], ...],
edit: {...}}`; `reference_image` (the rendered reference, uint8) is added by `worlds/shapes_edit/prompts.py`.
Pure numpy, like the world.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from worlds.shapes.world import (COLOR_NAMES, GRID, MAX_HALF_SIZE, MIN_HALF_SIZE, SHAPES, Scene, ShapeObject,
                                   render_scene)

EDIT_TAGS: tuple[str, ...] = ("recolor", "add", "remove")
RELATIONS: tuple[str, ...] = ("left of", "right of", "above", "below")
_AXIS = {"left of": (0, -1), "right of": (0, 1), "above": (-1, 0), "below": (1, 0)}  # (drow, dcol)
# Every word an instruction can use (for the word-level text tokenizer).
EDIT_WORDS: tuple[str, ...] = ("make", "the", "add", "a", "an", "remove", "left", "right", "of", "above",
                               "below") + SHAPES + COLOR_NAMES

Cell = tuple[int, int]
Content = tuple[str, str]  # (shape, colour)


def _a(word: str) -> str:
    return ("an " if word[0] in "aeiou" else "a ") + word


def relation_holds(relation: str, cell: Cell, anchor: Cell) -> bool:
    """`cell` is `relation` of `anchor`, with that axis strictly dominant (one relation only)."""
    drow, dcol = _AXIS[relation]
    main = (cell[0] - anchor[0]) * drow + (cell[1] - anchor[1]) * dcol
    cross = abs((cell[0] - anchor[0]) * dcol) + abs((cell[1] - anchor[1]) * drow)
    return main > 0 and main > cross


def scene_cells(objects: list[list[Any]]) -> dict[Cell, Content]:
    return {(int(o[2]), int(o[3])): (str(o[0]), str(o[1])) for o in objects}


def scene_from_objects(objects: list[list[Any]]) -> Scene:
    return Scene([ShapeObject(shape=o[0], color=o[1], row=int(o[2]), col=int(o[3]), half_size=float(o[4]))
                  for o in objects])


def render_objects(objects: list[list[Any]]) -> np.ndarray:
    return render_scene(scene_from_objects(objects))


def _half_size(rng: np.random.Generator) -> float:
    return float(rng.uniform(MIN_HALF_SIZE, MAX_HALF_SIZE))


def sample_reference(rng: np.random.Generator, max_objects: int = 3) -> list[list[Any]]:
    """1..max_objects shapes of distinct classes in random cells, random colours."""
    n = int(rng.integers(1, max_objects + 1))
    shapes = rng.choice(len(SHAPES), size=n, replace=False)
    cells = rng.choice(GRID * GRID, size=n, replace=False)
    return [[SHAPES[int(s)], COLOR_NAMES[int(rng.integers(len(COLOR_NAMES)))], int(c) // GRID, int(c) % GRID,
             _half_size(rng)] for s, c in zip(shapes, cells)]


def free_cells(objects: list[list[Any]]) -> list[Cell]:
    taken = set(scene_cells(objects))
    return [(r, c) for r in range(GRID) for c in range(GRID) if (r, c) not in taken]


def sample_edit_row(tag: str, rng: np.random.Generator, max_tries: int = 100) -> dict[str, Any]:
    """A random reference scene and an instruction of kind `tag` that applies to it."""
    if tag not in EDIT_TAGS:
        raise ValueError(f"unknown edit tag {tag!r}; choose one of {EDIT_TAGS}")
    for _ in range(max_tries):
        ref = sample_reference(rng)
        if tag == "recolor":
            obj = ref[int(rng.integers(len(ref)))]
            colours = [c for c in COLOR_NAMES if c != obj[1]]
            colour = colours[int(rng.integers(len(colours)))]
            edit = {"shape": obj[0], "color": colour}
            instruction = f"make the {obj[0]} {colour}"
        elif tag == "remove":
            obj = ref[int(rng.integers(len(ref)))]
            edit = {"shape": obj[0]}
            instruction = f"remove the {obj[0]}"
        else:
            if len(ref) >= len(SHAPES):
                continue
            anchor = ref[int(rng.integers(len(ref)))]
            relation = RELATIONS[int(rng.integers(len(RELATIONS)))]
            valid = [c for c in free_cells(ref) if relation_holds(relation, c, (anchor[2], anchor[3]))]
            if not valid:
                continue
            present = {o[0] for o in ref}
            new_shapes = [s for s in SHAPES if s not in present]  # keep classes distinct in the result too
            shape = new_shapes[int(rng.integers(len(new_shapes)))]
            colour = COLOR_NAMES[int(rng.integers(len(COLOR_NAMES)))]
            edit = {"shape": shape, "color": colour, "relation": relation, "anchor": anchor[0]}
            instruction = f"add {_a(colour)} {shape} {relation} the {anchor[0]}"
        return {"tag": tag, "instruction": instruction, "prompt": instruction, "reference_scene": ref, "edit": edit}
    raise RuntimeError(f"could not sample a {tag!r} edit in {max_tries} tries")


def _find(objects: list[list[Any]], shape: str) -> list[Any]:
    for o in objects:
        if o[0] == shape:
            return o
    raise ValueError(f"the reference scene has no {shape!r}: {objects}")


def apply_edit(row: dict[str, Any], rng: np.random.Generator) -> list[list[Any]]:
    """One correct result scene (for `add`, a random valid cell): the SFT target."""
    ref = [list(o) for o in row["reference_scene"]]
    edit = row["edit"]
    if row["tag"] == "recolor":
        _find(ref, edit["shape"])[1] = edit["color"]
        return ref
    if row["tag"] == "remove":
        target = _find(ref, edit["shape"])
        return [o for o in ref if o is not target]
    anchor = _find(ref, edit["anchor"])
    valid = [c for c in free_cells(ref) if relation_holds(edit["relation"], c, (anchor[2], anchor[3]))]
    r, c = valid[int(rng.integers(len(valid)))]
    return ref + [[edit["shape"], edit["color"], r, c, _half_size(rng)]]


def detected_cells(detections: list[Any], cell_size: int = 16) -> dict[Cell, list[Content]]:
    """Detector output → cell → what stands there (a list: a broken render may put several blobs in one cell)."""
    out: dict[Cell, list[Content]] = {}
    for d in detections:
        x1, y1, x2, y2 = d.box
        cell = (int((y1 + y2) / 2 // cell_size), int((x1 + x2) / 2 // cell_size))
        out.setdefault(cell, []).append((d.class_name, d.color))
    return out


def check_edit(row: dict[str, Any], found: dict[Cell, list[Content]]) -> dict[str, Any]:
    """Exact check of an edited image (as cells read by the detector) against the row's instruction."""
    ref = scene_cells(row["reference_scene"])
    edit, tag = row["edit"], row["tag"]
    expected: dict[Cell, Content] = dict(ref)
    touched: Cell | None = None  # the cell the edit is about, left out of `untouched_accuracy`
    if tag == "recolor":
        touched = next(c for c, (s, _) in ref.items() if s == edit["shape"])
        expected[touched] = (edit["shape"], edit["color"])
        edit_ok = found.get(touched) == [expected[touched]]
        edit_credit = float(edit_ok)
    elif tag == "remove":
        touched = next(c for c, (s, _) in ref.items() if s == edit["shape"])
        del expected[touched]
        edit_ok = touched not in found
        edit_credit = float(edit_ok)
    elif tag == "add":
        anchor = next(c for c, (s, _) in ref.items() if s == edit["anchor"])
        want = (edit["shape"], edit["color"])
        new = [c for c, items in found.items() if c not in ref and items == [want]]
        edit_ok = len(new) == 1 and relation_holds(edit["relation"], new[0], anchor)
        edit_credit = 1.0 if edit_ok else 0.5 if len(new) == 1 else 0.0
        if len(new) == 1:
            touched = new[0]
        if edit_ok:
            expected[touched] = want
    else:
        raise ValueError(f"unknown edit tag {tag!r}")
    right = untouched_right = 0
    for r in range(GRID):
        for c in range(GRID):
            got = found.get((r, c), [])
            right += got == ([expected[(r, c)]] if (r, c) in expected else [])
            if (r, c) != touched:
                untouched_right += got == ([ref[(r, c)]] if (r, c) in ref else [])
    cell_accuracy = right / (GRID * GRID)
    untouched_accuracy = untouched_right / (GRID * GRID - (touched is not None))
    correct = bool(edit_ok and right == GRID * GRID)
    return {"tag": tag, "correct": correct, "edit_ok": bool(edit_ok), "cell_accuracy": cell_accuracy,
            "edit_credit": edit_credit, "untouched_accuracy": untouched_accuracy,
            "score": 0.5 * float(edit_ok) + 0.5 * cell_accuracy,
            "shaped_score": 0.5 * edit_credit + 0.5 * untouched_accuracy}
