"""Reward-hacking monitors: the gold-versus-proxy rule on synthetic curves, the gold measurement on the tiny
generator, the recipe section, and the per-step image statistics / group diversity."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from rl.monitors.config import MonitorsConfig
from rl.monitors.gold import GoldMonitor, rollback_checkpoint
from rl.rollout_statistics import group_diversity, image_statistics, reward_balance
from rl.recipe import Recipe

GOLD = [{"name": "jpeg_compressibility"}]


def monitor(tmp_path=None, **cfg):
    return GoldMonitor(MonitorsConfig(gold=GOLD, every=10, **cfg), eval_rows=[{"prompt": "x"}],
                       run_dir=tmp_path, gold_suite=object())


def run_curve(m, proxy, gold, every=10):
    """Feed readings at steps every, 2*every, ...; return (step, action) for every reading."""
    return [(every * (i + 1), m.update(every * (i + 1), p, g)) for i, (p, g) in enumerate(zip(proxy, gold))]


def test_stop_when_proxy_rises_while_gold_falls(tmp_path):
    m = monitor(tmp_path, rule="stop", gold_drop=0.05)
    proxy = [0.50, 0.55, 0.60, 0.70, 0.80]
    gold = [0.60, 0.64, 0.63, 0.60, 0.55]  # peak 0.64 at step 20; 0.60 is a drop of 0.04 (not > 0.05), 0.55 is 0.09
    actions = run_curve(m, proxy, gold)
    assert [a.kind for _, a in actions] == ["continue"] * 4 + ["stop"]
    line = actions[-1][1].message
    assert "[gold-monitor] step 50" in line and "since step 20" in line and "action: stop training" in line
    assert (tmp_path / "monitor.log").read_text().strip() == line


def test_no_action_when_both_fall_or_gold_only_wobbles():
    both_fall = monitor(rule="stop", gold_drop=0.05)
    assert all(a.kind == "continue" for _, a in run_curve(both_fall, [0.8, 0.7, 0.6, 0.5], [0.8, 0.7, 0.6, 0.5]))
    wobble = monitor(rule="stop", gold_drop=0.05)
    assert all(a.kind == "continue" for _, a in run_curve(wobble, [0.5, 0.6, 0.7, 0.8, 0.9],
                                                          [0.60, 0.58, 0.61, 0.57, 0.59]))
    # the proxy must rise by more than proxy_rise since the gold peak
    slow = monitor(rule="stop", gold_drop=0.05, proxy_rise=0.2)
    assert all(a.kind == "continue" for _, a in run_curve(slow, [0.5, 0.55, 0.6], [0.7, 0.6, 0.5]))


def test_rollback_points_at_the_gold_peak_and_respects_patience_window_and_min_step():
    m = monitor(rule="rollback", gold_drop=0.05, patience=2)
    actions = run_curve(m, [0.5, 0.6, 0.7, 0.8, 0.9], [0.5, 0.7, 0.6, 0.5, 0.4])
    kinds = [a.kind for _, a in actions]
    assert kinds == ["continue", "continue", "continue", "rollback", "rollback"]
    assert "1/2 triggering" in actions[2][1].message  # the first trigger is logged, not acted on
    assert actions[3][1].rollback_step == 20 and "roll back to the checkpoint at or before step 20" in \
        actions[3][1].message

    # A slow decline: within a window of 2 readings gold never drops by more than 0.05; within 5 it does.
    proxy, gold = [0.5, 0.6, 0.7, 0.8], [0.90, 0.88, 0.86, 0.84]
    short, long = monitor(rule="stop", gold_drop=0.05, window=2), monitor(rule="stop", gold_drop=0.05, window=5)
    assert [a.kind for _, a in run_curve(short, proxy, gold)] == ["continue"] * 4
    assert [a.kind for _, a in run_curve(long, proxy, gold)] == ["continue"] * 3 + ["stop"]
    early = monitor(rule="stop", gold_drop=0.05, min_step=40)
    assert [a.kind for _, a in run_curve(early, [0.5, 0.6, 0.7, 0.8], [0.7, 0.6, 0.5, 0.4])] == \
        ["continue", "continue", "continue", "stop"]


def test_relative_thresholds_and_log_rule(tmp_path):
    rel = monitor(tmp_path, rule="log", gold_drop=0.1, relative=True)
    # gold 10 -> 9.5 is a 5% drop (no trigger); 10 -> 8.5 is 15% (trigger, but the rule only logs)
    actions = run_curve(rel, [1.0, 1.1, 1.2], [10.0, 9.5, 8.5])
    assert [a.kind for _, a in actions] == ["continue"] * 3
    assert actions[1][1].message == "" and "(relative)" in actions[2][1].message
    assert "action: none (logged)" in (tmp_path / "monitor.log").read_text()


def test_config_section_in_the_recipe():
    recipe = Recipe.model_validate({"rewards": [{"name": "ocr"}],
                                    "monitors": {"gold": GOLD, "every": 25, "rule": "rollback"}})
    assert recipe.monitors.enabled and recipe.monitors.rule == "rollback"
    assert not Recipe.model_validate({"rewards": [{"name": "ocr"}]}).monitors.enabled
    with pytest.raises(ValidationError, match="monitors.every is 0"):
        MonitorsConfig(gold=GOLD)
    with pytest.raises(ValidationError, match="listed twice"):
        MonitorsConfig(gold=GOLD * 2, every=5)
    with pytest.raises(ValidationError, match="gold_dorp"):
        MonitorsConfig(gold=GOLD, every=5, gold_dorp=0.1)
    with pytest.raises(ValueError, match="eval.prompts"):
        GoldMonitor(MonitorsConfig(gold=GOLD, every=5), eval_rows=None)


def test_rollback_checkpoint_is_the_latest_at_or_before_the_step(tmp_path):
    for step in (10, 20, 40):
        d = tmp_path / "checkpoints" / f"step-{step:06d}"
        d.mkdir(parents=True)
        (d / "state.json").write_text(json.dumps({"step": step}))
    assert rollback_checkpoint(tmp_path, 30).name == "step-000020"
    assert rollback_checkpoint(tmp_path, 40).name == "step-000040"
    with pytest.raises(FileNotFoundError, match="no checkpoint at or before step 5"):
        rollback_checkpoint(tmp_path, 5)


def brightness_reward(images, prompts, metadata):
    return [float(np.asarray(im, dtype=np.float64).mean() / 255.0) for im in images]


def test_measure_scores_the_same_heldout_images_with_proxy_and_gold(monkeypatch, tmp_path):
    import sys

    from rewards.spec import RewardSpec
    from rewards.suite import RewardSuite
    from rollouts.config import ModelConfig, RendererConfig, SamplingConfig
    from rollouts.generator import NativeImageGenerator

    (tmp_path / "gold_rewards.py").write_text(
        "import numpy as np\n"
        "def brightness(images, prompts, metadata):\n"
        "    return [float(np.asarray(im, dtype=np.float64).mean() / 255.0) for im in images]\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("gold_rewards", None)
    generator = NativeImageGenerator.from_config(ModelConfig(source="preset", preset="tiny"))
    cfg = MonitorsConfig(gold=[{"name": "gold_rewards:brightness", "weight": 2.0}], every=5, seeds=2)
    rows = [{"prompt": "a red circle"}, {"prompt": "a cat"}, {"prompt": "two dogs"}]
    m = GoldMonitor(cfg, eval_rows=rows)
    proxy_suite = RewardSuite([RewardSpec(name="jpeg_compressibility", weight=0.5)])
    kw = dict(sampling=SamplingConfig(top_k=None, top_p=None), renderer_cfg=RendererConfig(num_inference_steps=2))
    reading = m.measure(5, generator, proxy_suite, **kw)
    again = m.measure(5, generator, proxy_suite, **kw)
    assert reading.proxy == again.proxy and reading.gold == again.gold  # fixed seeds: the same held-out images

    # Recompute independently: the same seeds, rows and renderer give the images; gold = 2 * mean brightness.
    from rl.evaluate import EVAL_SEED
    from seeding import derive_seed
    from rollouts.rollout import generate_rollouts

    images = []
    for s in range(2):
        with torch.no_grad():
            batch = generate_rollouts(generator, rows, group_size=1, seed=derive_seed(EVAL_SEED, "gold_eval", s), **kw)
        images += list(batch.images.numpy())
    assert reading.gold == pytest.approx(2.0 * np.mean(brightness_reward(images, None, None)), rel=1e-9)
    assert reading.metrics["gold/gold_rewards:brightness/mean"] == pytest.approx(reading.gold / 2)
    assert reading.metrics["gold/proxy"] == reading.proxy
    assert reading.proxy == pytest.approx(0.5 * reading.metrics["gold/proxy/jpeg_compressibility/mean"])


# ------------------------------------------------------------------ per-step monitors (rl/rollout_statistics.py)

def synthetic_images(seed=0, n=4, size=32):
    rng = np.random.default_rng(seed)
    return torch.from_numpy(rng.integers(40, 216, (n, size, size, 3), dtype=np.uint8))


def test_image_statistics_move_the_right_way():
    base = synthetic_images()
    stats = image_statistics(base)
    darker = image_statistics((base.float() * 0.2).to(torch.uint8))
    assert darker["images/dark_frac"] > stats["images/dark_frac"] + 0.5
    assert darker["images/brightness"] < stats["images/brightness"] * 0.3
    flat = torch.full_like(base, 128)
    assert image_statistics(flat)["images/colour_entropy"] == 0.0
    assert stats["images/colour_entropy"] > 3.0  # random colours fill many of the 64 histogram bins
    assert image_statistics(flat)["images/edge_density"] == 0.0
    checker = torch.zeros_like(base)
    checker[:, ::2, ::2] = 255
    checker[:, 1::2, 1::2] = 255
    assert image_statistics(checker)["images/edge_density"] > 0.9


def test_group_diversity_is_zero_for_collapsed_groups_and_only_compares_within_groups():
    images = synthetic_images(n=4)
    tokens = torch.randint(0, 64, (4, 16), generator=torch.Generator().manual_seed(0))
    groups = torch.tensor([0, 0, 1, 1])
    collapsed_images = images[[0, 0, 2, 2]]
    collapsed_tokens = tokens[[0, 0, 2, 2]]
    d = group_diversity(collapsed_images, collapsed_tokens, groups)
    assert d == {"diversity/image": 0.0, "diversity/tokens": 0.0}  # groups differ from each other, not within
    varied = group_diversity(images, tokens, groups)
    assert varied["diversity/image"] > 0.1 and varied["diversity/tokens"] > 0.8
    half = tokens.clone()
    half[1, :8] = half[0, :8]
    half[1, 8:] = (half[0, 8:] + 1) % 64
    half[3] = half[2]
    assert group_diversity(images, half, groups)["diversity/tokens"] == pytest.approx(0.25)


def test_restore_rebuilds_readings_of_a_resumed_run_from_its_metrics(tmp_path):
    proxy, gold = [0.5, 0.6, 0.7, 0.8], [0.5, 0.7, 0.6, 0.5]
    straight = monitor(rule="stop", gold_drop=0.05, patience=2)
    expected = [a.kind for _, a in run_curve(straight, proxy, gold)]
    # The resumed run's metrics.jsonl up to its checkpoint (step 30); gold is measured every 10 steps only.
    rows = [{"step": s, "reward/mean": 0.0} for s in range(1, 31)]
    for i, s in enumerate((10, 20, 30)):
        rows[s - 1].update({"gold/proxy": proxy[i], "gold/score": gold[i]})
    resumed = monitor(tmp_path, rule="stop", gold_drop=0.05, patience=2)
    resumed.restore(rows)
    assert [(r.step, r.proxy, r.gold) for r in resumed.readings] == [(10, 0.5, 0.5), (20, 0.6, 0.7), (30, 0.7, 0.6)]
    assert not (tmp_path / "monitor.log").exists()  # replaying is silent
    assert resumed.update(40, proxy[3], gold[3]).kind == expected[3] == "stop"  # the streak survived the resume
    assert resumed.check(41, None, None, sampling=None, renderer_cfg=None)[1].kind == "continue"  # not due


def test_reward_balance_shares_and_conflicts():
    groups = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    a = torch.tensor([0.0, 1.0, 0.0, 1.0, 0.2, 0.8, 0.2, 0.8])  # spreads inside both groups
    b = torch.tensor([1.0, 0.0, 1.0, 0.0, 0.5, 0.5, 0.5, 0.5])  # opposite to a in group 0, constant in group 1
    out = reward_balance({"a": a, "b": b}, {"a": 1.0, "b": 2.0}, groups)
    var_a, var_b = 0.25 + 0.09, 4 * 0.25  # population variances of w·r, summed over groups
    assert out["reward_share/a"] == pytest.approx(var_a / (var_a + var_b))
    assert out["reward_share/b"] == pytest.approx(var_b / (var_a + var_b))
    assert out["reward_corr/a~b"] == pytest.approx(-1.0)  # group 1 skipped: b is constant there
    assert reward_balance({"a": a}, {"a": 1.0}, groups) == {}  # one reward: nothing to balance
