"""Prompt priority (`rollout.prompt_priority`): after one epoch that serves every row, rows are drawn by their groups'
running reward spread, rows without spread still come back at about `floor` of the mean rate, the state survives a
checkpoint, and the trainer feeds it each group's spread."""

import json
from collections import Counter

import pytest
import torch
import yaml

from prompts.prompt_priority import PrioritizedPromptStream
from prompts.prompt_sets import PromptStream
from rl.metrics_log import read_metrics
from rl.recipe import RecipeError, load_recipe
from rl.train_loop import group_spreads
from tiny_fixtures import CIRCLE_AND_THREE, tiny_recipe, train_with_one_constant_prompt

ROWS = [{"prompt": str(i)} for i in range(10)]


def _prompts(stream, n):
    return [r["prompt"] for r in stream.next(n)]


def test_first_epoch_serves_every_row_once_then_draws_by_spread():
    stream = PrioritizedPromptStream(ROWS, seed=0, floor=0.25, memory=0.5)
    first = _prompts(stream, 4) + _prompts(stream, 4)
    stream.observe(list(range(10)), [0.0] * 5 + [0.4] * 5)  # rows 0-4 solved or stuck, rows 5-9 teach
    mixed = _prompts(stream, 4)  # the last 2 rows of the first epoch, then 2 drawn by weight
    assert sorted(first + mixed[:2]) == sorted(r["prompt"] for r in ROWS)
    counts = Counter()
    for _ in range(3000):
        stream.next(2)
        assert len(set(stream.served)) == 2  # without replacement within a step
        counts.update(stream.served)
    teach, idle = sum(counts[i] for i in range(5, 10)), sum(counts[i] for i in range(5))
    # weights 0.45 against 0.05 (floor 0.25 x mean 0.2): idle rows still come back, about 1/9 as often per draw
    assert all(counts[i] > 100 for i in range(5)), counts
    assert 6 < teach / idle < 10, counts
    assert stream.metrics() == {"prompts/seen_frac": 1.0, "prompts/spread_mean": pytest.approx(0.2),
                                "prompts/no_spread_frac": 0.5}


def test_spread_is_a_running_mean_and_unusable_groups_are_ignored():
    stream = PrioritizedPromptStream(ROWS, seed=0, floor=0.25, memory=0.5)
    stream.observe([3], [0.4])
    stream.observe([3], [0.0])
    stream.observe([3], [float("nan")])  # a group whose samples were all dropped
    assert stream.spread[3] == pytest.approx(0.2)
    with pytest.raises(IndexError, match="out of range"):
        stream.observe([10], [0.1])
    nothing = PrioritizedPromptStream(ROWS, seed=0, floor=0.25, memory=0.5)
    nothing.observe(list(range(10)), [0.0] * 10)  # nothing teaches: draws stay uniform, never stall
    assert nothing.weights() == [1.0] * 10
    with pytest.raises(ValueError, match="floor"):
        PrioritizedPromptStream(ROWS, seed=0, floor=0.0, memory=0.5)


def test_priority_state_round_trips_and_is_not_mixed_with_plain_streams():
    a = PrioritizedPromptStream(ROWS, seed=3, floor=0.5, memory=0.5)
    a.next(10)
    a.observe(list(range(10)), [0.1 * i for i in range(10)])
    a.next(3)
    state = json.loads(json.dumps(a.state_dict()))  # checkpoints store it as JSON
    ahead = _prompts(a, 12)  # more than the set holds: drawn in rounds
    assert len(ahead) == 12 and len(set(ahead[:10])) == 10
    b = PrioritizedPromptStream(ROWS, seed=3, floor=0.5, memory=0.5)
    b.load_state_dict(state)
    assert _prompts(b, 12) == ahead
    peeked = PrioritizedPromptStream(ROWS, seed=3, floor=0.5, memory=0.5)
    peeked.load_state_dict(state)
    assert [r["prompt"] for r in peeked.peek(5)] == ahead[:5] and peeked.state_dict() == state
    with pytest.raises(ValueError, match="was prioritised"):
        PromptStream(ROWS, seed=3).load_state_dict(state)
    with pytest.raises(ValueError, match="was not prioritised"):
        b.load_state_dict(PromptStream(ROWS, seed=3).state_dict())
    with pytest.raises(ValueError, match="cover 10 rows"):
        PrioritizedPromptStream(ROWS[:4], seed=3, floor=0.5, memory=0.5).load_state_dict(state)
    # checkpoint files are untrusted: a negative or non-finite spread, or a bad counter, is refused
    kept = b.state_dict()
    for bad in ({"spread": [-1.0] * 10}, {"spread": [float("nan")] * 10}, {"spread": ["x"] * 10},
                {"draws": -1}, {"position": 11}, {"position": "2"}):
        with pytest.raises(ValueError, match="checkpoint's prompt"):
            b.load_state_dict({**state, **bad})
    assert b.state_dict() == kept  # a refused state leaves the stream as it was


def test_group_spreads_are_population_stds_over_finite_samples():
    total = torch.tensor([1.0, 1.0, 0.0, 1.0, 0.5, float("nan")])
    groups, spreads = group_spreads(total, torch.tensor([0, 0, 1, 1, 2, 2]))
    assert groups == [0, 1, 2]
    assert spreads[0] == 0.0 and spreads[1] == pytest.approx(0.5)
    assert spreads[2] != spreads[2]  # one finite sample: no spread (NaN)


@pytest.mark.parametrize("extra", [{"max_staleness": 1}, {"rest_solved_at": 1.0}])
def test_priority_refuses_off_policy_rollouts_and_resting(tmp_path, extra):
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(tiny_recipe(rollout={"prompt_priority": {"floor": 0.25}, **extra})))
    with pytest.raises(RecipeError, match="prompt_priority"):
        load_recipe(path)


def test_trainer_serves_the_prompts_that_teach_more_often(tmp_path, monkeypatch):
    prompts = CIRCLE_AND_THREE
    steps = train_with_one_constant_prompt(tmp_path, monkeypatch, name="priority", max_steps=12, other_scale=100,
                                           rollout={"prompt_priority": {"floor": 0.05, "memory": 1.0}})
    counts = Counter(p for step in steps[2:] for p in step)  # after the first epoch (2 steps)
    # 20 draws of 2 of 4 rows: uniform would give the circle 10; with weight ~0.05 of the others' it gets few.
    assert counts["a red circle"] <= 4 and all(counts[p] >= 5 for p in prompts[1:]), counts
    rows = read_metrics(tmp_path / "run")
    assert rows[0]["prompts/seen_frac"] == 0.5 and rows[-1]["prompts/seen_frac"] == 1.0
    assert rows[-1]["prompts/no_spread_frac"] == 0.25
