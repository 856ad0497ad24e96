"""Guard rails on logged metrics: the rule arithmetic on hand-made curves, name checking, recipe validation, and the
driver stopping / rolling back on the tiny preset when a rule acts."""

import copy

import pytest
import torch

from rl.monitors.action import strongest
from rl.monitors.config import MetricRule
from rl.monitors.metric_rules import MetricRules
from rl.metrics_log import read_metrics
from rl.monitors.action import MonitorAction
from rl.recipe import Recipe, RecipeError, load_recipe
from rl.train_loop import train
from tiny_fixtures import tiny_recipe


def _feed(rules, series, key="images/dark_frac"):
    return [rules.check(step, {key: v, "reward/mean": 0.0}) for step, v in enumerate(series, start=1)]


def test_absolute_limit_with_window_and_patience(tmp_path):
    rules = MetricRules([MetricRule(metric="diversity/tokens", below=0.1, window=2, patience=2, action="stop")],
                        run_dir=tmp_path)
    acts = _feed(rules, [0.5, 0.3, 0.05, 0.05, 0.02], key="diversity/tokens")
    # windowed means: 0.5, 0.4, 0.175, 0.05 (1st trigger), 0.035 (2nd: acts)
    assert [a.kind for a in acts] == ["continue"] * 4 + ["stop"]
    assert "0.05 < below 0.1" in acts[3].message and "1/2" in acts[3].message
    log = (tmp_path / "monitor.log").read_text().splitlines()
    assert len(log) == 2 and log[1].startswith("[rule] step 5: diversity/tokens (mean of last 2)")


def test_rise_from_baseline_rolls_back_before_the_streak():
    rules = MetricRules([MetricRule(metric="images/dark_frac", rise=0.3, baseline_steps=3, patience=2,
                                    action="rollback")])
    acts = _feed(rules, [0.45, 0.40, 0.50, 0.60, 0.80, 0.93, 0.95])  # baseline 0.45; UniRL#407's 0.45 -> 0.93
    assert [a.kind for a in acts] == ["continue"] * 5 + ["rollback", "rollback"]
    assert acts[5].rollback_step == 4  # the streak began at step 5: the last good step is 4
    assert "rose 0.45 -> 0.93" in acts[5].message
    relative = MetricRules([MetricRule(metric="images/dark_frac", fall=0.5, relative=True, baseline_steps=1)])
    assert [a.kind for a in _feed(relative, [0.4, 0.25, 0.19])] == ["continue"] * 3  # log only (default)
    assert "fell 0.4 -> 0.19 (-0.525 > 0.5 (relative))" in _feed(MetricRules(relative.rules), [0.4, 0.19])[1].message


def test_min_step_missing_values_and_resume():
    rule = MetricRule(metric="eval/accuracy", below=0.5, min_step=3, action="stop")
    rules = MetricRules([rule])
    assert rules.check(1, {"reward/mean": 1.0}).kind == "continue"  # periodic metric absent: skipped, no error
    assert rules.check(2, {"eval/accuracy": 0.1}).kind == "continue"  # triggers, but before min_step: logged
    assert rules.check(3, {"eval/accuracy": 0.1}).kind == "stop"
    resumed = MetricRules([MetricRule(metric="images/dark_frac", above=0.5, patience=2, action="stop")])
    resumed.restore([{"step": 1, "images/dark_frac": 0.9}])
    assert resumed.check(2, {"images/dark_frac": 0.9}).kind == "stop"  # the streak survived the resume


def test_names_limits_and_precedence(tmp_path):
    with pytest.raises(ValueError, match=r"'images/dark_fraction' is not logged \(closest: images/dark_frac"):
        MetricRules([MetricRule(metric="images/dark_fraction", above=1)]).check(1, {"images/dark_frac": 0.1})
    with pytest.raises(ValueError, match="at least one of above, below, rise, fall"):
        MetricRule(metric="kl")
    path = tmp_path / "r.yaml"
    path.write_text("rewards: [{name: ocr}]\nmonitors: {rules: [{metric: kl, above: 1, acton: stop}]}\n")
    with pytest.raises(RecipeError, match="acton"):
        load_recipe(path)
    assert strongest([MonitorAction("stop", message="a"), MonitorAction("rollback", 5, "b"),
                      MonitorAction("rollback", 3, "c")]) == MonitorAction("rollback", 3, "a\nb\nc")
    assert strongest([MonitorAction("continue")]).kind == "continue"


TINY = tiny_recipe(
    name="rules", seed=4,
    rollout={"prompts": {"format": "inline", "prompts": ["a red circle", "a cat"]}, "prompts_per_step": 1},
    trainer={"num_generations": 2, "max_steps": 6, "policy": "lora", "learning_rate": 5e-2},
    checkpoint={"every": 1, "keep_last": None})


def test_driver_rolls_back_when_a_rule_acts(tmp_path):
    from safetensors.torch import load_file

    data = copy.deepcopy(TINY)
    data["monitors"] = {"rules": [{"metric": "policy_version", "above": 2.5, "action": "rollback"}]}
    run = tmp_path / "run"
    result = train(Recipe.model_validate(data), run, progress=False)
    assert result.steps == 3 and (result.stopped_by_monitor or "").startswith("[rule] step 3: policy_version")
    assert [r["step"] for r in read_metrics(run)] == [1, 2, 3]
    ck = run / "checkpoints"
    w2 = load_file(ck / "step-000002" / "policy" / "adapter_model.safetensors")
    w3 = load_file(ck / "step-000003" / "policy" / "adapter_model.safetensors")
    assert all(torch.equal(w2[k], w3[k]) for k in w2)  # step 3's checkpoint holds the step-2 weights


def test_driver_refuses_a_misspelt_rule(tmp_path):
    data = copy.deepcopy(TINY)
    data["monitors"] = {"rules": [{"metric": "reward/jpeg/mean", "below": 0}]}
    closest = r"'reward/jpeg/mean' is not logged \(closest: .*reward/jpeg_compressibility/mean"
    with pytest.raises(ValueError, match=closest):
        train(Recipe.model_validate(data), tmp_path / "run", progress=False)
