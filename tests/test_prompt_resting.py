"""Solved groups. `zero_std_frac/solved` tells equal rewards of a solved group (every sample right) from a stuck one;
resting (`rollout.rest_solved_at`): a prompt whose whole group was solved skips its next turn, the stream's state
(resting rows included) survives a checkpoint, and the trainer rests exactly the solved groups."""

import json
from collections import Counter

import pytest
import torch
import yaml

from prompts.prompt_sets import PromptStream
from rl.metrics_log import read_metrics
from rl.recipe import RecipeError, load_recipe
from rl.train_loop import solved_fraction
from tiny_fixtures import CIRCLE_AND_THREE, tiny_recipe, train_with_one_constant_prompt

ROWS = [{"prompt": str(i)} for i in range(5)]


def _epochs(stream: PromptStream, n: int) -> list[str]:
    return [r["prompt"] for r in stream.next(n)]


def test_a_rested_row_skips_exactly_its_next_turn():
    plain, rested = PromptStream(ROWS, seed=1), PromptStream(ROWS, seed=1)
    first = _epochs(plain, 5)
    assert _epochs(rested, 5) == first and rested.served == [int(p) for p in first]
    rested.rest([int(first[0])])
    second_plain, after_rest = _epochs(plain, 5), _epochs(rested, 4)
    assert after_rest == [p for p in second_plain if p != first[0]]  # skipped once, order otherwise unchanged
    assert not rested.resting
    third = _epochs(plain, 5)
    assert _epochs(rested, 5) == third  # awake again: back in its epoch's order


def test_resting_every_row_still_serves_rows():
    stream = PromptStream(ROWS, seed=2)
    stream.rest(list(range(len(ROWS))))
    assert len(stream.next(3)) == 3  # each skip wakes a row, so the stream never stalls
    with pytest.raises(IndexError, match="out of range"):
        stream.rest([len(ROWS)])


def test_resting_rows_survive_state_round_trip_and_peek():
    a = PromptStream(ROWS, seed=3)
    a.next(2)
    a.rest(a.served)
    state = json.loads(json.dumps(a.state_dict()))  # checkpoints store it as JSON
    ahead = [r["prompt"] for r in a.peek(6)]
    assert a.state_dict() == state  # peek leaves the stream, resting rows included, as it was
    b = PromptStream(ROWS, seed=3)
    b.load_state_dict(state)
    assert [r["prompt"] for r in b.next(6)] == ahead == [r["prompt"] for r in a.next(6)]
    old = PromptStream(ROWS, seed=3)
    old.load_state_dict({"epoch": 0, "position": 2})  # a checkpoint from before resting existed
    assert not old.resting
    with pytest.raises(ValueError, match="outside the prompt set"):
        old.load_state_dict({"epoch": 0, "position": 0, "resting": [99]})


def test_resting_needs_on_policy_rollouts(tmp_path):
    path = tmp_path / "r.yaml"
    data = tiny_recipe(rollout={"rest_solved_at": 1.0, "max_staleness": 1})
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(RecipeError, match="rest_solved_at"):
        load_recipe(path)


def test_trainer_rests_the_groups_that_solved_their_prompt(tmp_path, monkeypatch):
    prompts = CIRCLE_AND_THREE
    # 'a red circle' is always solved (1.0 for every sample); the others vary with the image, below 1.
    steps = train_with_one_constant_prompt(tmp_path, monkeypatch, name="resting", max_steps=10, other_scale=1000,
                                           rollout={"rest_solved_at": 1.0})
    rows = read_metrics(tmp_path / "run")
    counts = Counter(p for step in steps for p in step)
    circle_steps = [i for i, step in enumerate(steps) if "a red circle" in step]
    # 20 draws over 4 prompts = 5 epochs: without resting the circle comes 5 times; rested after every visit it
    # comes every other epoch.
    assert len(circle_steps) == 3 and all(counts[p] >= 5 for p in prompts[1:]), counts
    for i, row in enumerate(rows):
        solved = 1 if i in circle_steps else 0
        assert row["prompts/rested"] == solved, (i, row)
        assert "zero_std_frac/solved" not in row  # a plain function reports no GenEval correctness


def test_solved_fraction_separates_solved_groups_from_stuck_ones():
    # Three groups of two, all with equal rewards: one solved (both right), one stuck (both wrong), one mixed
    # verdict with equal partial-credit rewards (not solved), plus a group with an advantage.
    zero_std = torch.tensor([True, True, True, True, True, True, False, False])
    groups = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    verdicts = [True, True, False, False, True, False, True, True]
    details = [{"geneval": {"correct": c, "tag": "color_attr"}} for c in verdicts]
    assert solved_fraction(zero_std, groups, details) == pytest.approx(2 / 8)
    assert solved_fraction(zero_std, groups, [{"ocr": {"text": "x"}}] * 8) is None
