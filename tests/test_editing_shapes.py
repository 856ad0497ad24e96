"""Shapes editing: the exact checker passes every ground-truth edit and fails unedited references, the VQ tokens
carry an edit losslessly, the splits are deterministic and disjoint, and the rows reach the trainer through the
recipe's prompt source and the reward registry."""

import json

import numpy as np
import pytest

from rewards.registry import build_reward
from rewards.spec import RewardSpec
from rewards.suite import RewardSuite
from rl.evaluate import geneval_correctness
from prompts.prompt_sets import load_prompt_rows
from prompts.row_files import PromptSetError
from rl.recipe import PromptSource
from worlds.shapes_edit.edits import (EDIT_TAGS, apply_edit, relation_holds,
                                        render_objects)
from worlds.shapes_edit.prompts import shapes_edit_rows


@pytest.fixture(scope="module")
def heldout():
    return shapes_edit_rows("heldout")


@pytest.fixture(scope="module")
def reward():
    return build_reward(RewardSpec(name="shapes_edit"))


def test_checker_passes_ground_truth_edits_and_fails_unedited_references(heldout, reward):
    rng = np.random.default_rng(0)
    edited = [render_objects(apply_edit(r, rng)) for r in heldout]
    out = reward(edited, [r["prompt"] for r in heldout], heldout)
    assert all(d["correct"] for d in out.details) and out.scores == [1.0] * len(heldout)
    unedited = reward([r["reference_image"] for r in heldout], [r["prompt"] for r in heldout], heldout)
    assert not any(d["correct"] or d["edit_ok"] for d in unedited.details)
    assert max(unedited.scores) <= 0.5  # the cells are right, the edit is not
    assert {d["tag"] for d in out.details} == set(EDIT_TAGS)


def test_checker_catches_wrong_edits(heldout, reward):
    from worlds.shapes.world import COLOR_NAMES

    rng = np.random.default_rng(1)
    recolor = next(r for r in heldout if r["tag"] == "recolor")
    wrong_colour = apply_edit(recolor, rng)
    for o in wrong_colour:
        if o[0] == recolor["edit"]["shape"]:
            o[1] = next(c for c in COLOR_NAMES if c not in (recolor["edit"]["color"], o[1]))
    add = next(r for r in heldout if r["tag"] == "add")
    result = apply_edit(add, rng)
    anchor = next(o for o in add["reference_scene"] if o[0] == add["edit"]["anchor"])
    wrong_place = [o for o in result[:-1]]
    bad_cells = [(r, c) for r in range(4) for c in range(4)
                 if (r, c) not in {(o[2], o[3]) for o in result[:-1]}
                 and not relation_holds(add["edit"]["relation"], (r, c), (anchor[2], anchor[3]))]
    wrong_place.append([result[-1][0], result[-1][1], *bad_cells[0], 6.0])
    extra = apply_edit(recolor, rng)
    free = [(r, c) for r in range(4) for c in range(4) if (r, c) not in {(o[2], o[3]) for o in extra}]
    extra.append(["square" if recolor["edit"]["shape"] != "square" else "circle", "red", *free[0], 6.0])
    out = reward([render_objects(s) for s in (wrong_colour, wrong_place, extra)], ["p"] * 3,
                 [recolor, add, recolor])
    assert [d["correct"] for d in out.details] == [False, False, False]
    assert [d["edit_ok"] for d in out.details] == [False, False, True]
    assert out.details[2]["cell_accuracy"] == 15 / 16  # the edit is right, one cell is not
    # `shaped` (default): a wrong colour = doing nothing (0.5); a misplaced add earns half the edit (0.75); the
    # extra object costs one of the 15 untouched cells.
    assert out.scores == pytest.approx([0.5, 0.75, 0.5 + 0.5 * 14 / 15])
    unchanged = render_objects([list(o) for o in add["reference_scene"]])
    shaped = reward([unchanged, render_objects(result), render_objects(wrong_place)], ["p"] * 3, [add] * 3)
    assert shaped.scores == pytest.approx([0.5, 1.0, 0.75])  # nothing < misplaced add < the asked-for add
    # `exact` keeps the older definition, under which doing nothing beats a misplaced add.
    exact = build_reward(RewardSpec(name="shapes_edit@exact"))(
        [unchanged, render_objects(wrong_place)], ["p"] * 2, [add] * 2)
    assert exact.scores == pytest.approx([0.5, 0.5 * 15 / 16])
    assert [d["correct"] for d in exact.details] == [d["correct"] for d in shaped.details[::2]] == [False, False]


def test_vq_tokens_carry_the_edit(heldout, reward):
    from worlds.shapes.vq_tokenizer import ShapesVQTokenizer, VQTokenizerConfig

    vq = ShapesVQTokenizer.fit(VQTokenizerConfig(num_fit_scenes=300))
    rng = np.random.default_rng(2)
    rows = heldout[::8]
    edited = np.stack([render_objects(apply_edit(r, rng)) for r in rows])
    out = reward(list(vq.decode(vq.encode(edited))), ["p"] * len(rows), rows)
    assert all(d["correct"] for d in out.details)


def test_splits_are_deterministic_and_disjoint(heldout):
    train = shapes_edit_rows("train")
    assert len(train) == 3000 and len(heldout) == 192
    assert [r["instruction"] for r in shapes_edit_rows("heldout")] == [r["instruction"] for r in heldout]
    key = lambda r: json.dumps([r["instruction"], [o[:4] for o in r["reference_scene"]]])  # noqa: E731
    assert not {key(r) for r in heldout} & {key(r) for r in train}
    assert heldout[0]["reference_image"].shape == (64, 64, 3) and heldout[0]["prompt"] == heldout[0]["instruction"]
    with pytest.raises(ValueError, match="unknown shapes_edit split"):
        shapes_edit_rows("test")
    with pytest.raises(ValueError, match="unknown edit tags"):
        shapes_edit_rows("train", tags=["move"])


def test_every_instruction_word_is_in_the_tokenizer():
    from worlds.shapes_edit.model import shapes_edit_tokenizer

    tok = shapes_edit_tokenizer()
    words = {w for r in shapes_edit_rows("train") + shapes_edit_rows("heldout") for w in r["instruction"].split()}
    ids = tok(" ".join(sorted(words)), add_special_tokens=False)["input_ids"]
    assert tok.unk_token_id not in ids


def test_rows_reach_the_trainer_and_accuracy_is_read_from_details(tmp_path, reward):
    rows = load_prompt_rows(PromptSource(format="shapes_edit", split="heldout"))
    assert len(rows) == 192 and "reference_image" in rows[0]
    suite = RewardSuite([RewardSpec(name="shapes_edit")])
    rng = np.random.default_rng(3)
    scores = suite.score([render_objects(apply_edit(rows[0], rng)), rows[1]["reference_image"]], ["a", "b"],
                         rows[:2])
    assert scores.tags == {"shapes_edit": "shapes_edit@shaped"}
    assert geneval_correctness(scores.details[0]) == (rows[0]["tag"], True)
    assert geneval_correctness(scores.details[1]) == (rows[1]["tag"], False)
    # edit_jsonl through the recipe's prompt source: errors keep the line number.
    (tmp_path / "bad.jsonl").write_text('{"instruction": "x", "reference_image": "missing.png"}\n')
    with pytest.raises(PromptSetError, match="bad.jsonl:1: reference image file not found"):
        load_prompt_rows(PromptSource(format="edit_jsonl", path=str(tmp_path / "bad.jsonl")))
