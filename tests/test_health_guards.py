"""Learning-health guards (rl/monitors/health.py), on by default: each one fires on a run built to die, and says so in
stderr, RUN_DIR/monitor.log, the metrics and the run's summary. Tiny preset or the shapes world on CPU, a few
steps each."""

from pathlib import Path

import yaml

from prompts.prompt_swap import swap_partners, swapped_rows
from rl.monitors.config import HealthConfig
from rl.monitors.health import health_rules
from rl.metrics_log import read_metrics
from rl.recipe import Recipe
from rl.train_loop import train
from tiny_fixtures import tiny_recipe

ROOT = Path(__file__).resolve().parents[1]
TINY = tiny_recipe(
    name="health", seed=3, torch_threads=1,
    rollout={"prompts": {"format": "inline", "prompts": ["a red circle", "a cat", "a tree", "a boat"]},
             "prompts_per_step": 2},
    trainer={"num_generations": 2, "max_steps": 4, "policy": "lora", "learning_rate": 1e-2},
    checkpoint={"every": 0})


def _recipe(health=None, **sections):
    data = yaml.safe_load(yaml.safe_dump(TINY))
    for key, value in sections.items():
        data[key] = {**data.get(key, {}), **value} if isinstance(value, dict) else value
    data["monitors"] = {"health": health or {}}
    return Recipe.model_validate(data)


def _reward_module(tmp_path, monkeypatch):
    (tmp_path / "dying_rewards.py").write_text(
        "import random\n"
        "def constant(images, prompts, metadata):\n"
        "    return [0.5] * len(images)\n"
        "def noisy(images, prompts, metadata):\n"  # not a function of (image, prompt): a broken reward path
        "    return [float(im.mean()) / 255 + random.random() for im in images]\n")
    monkeypatch.syspath_prepend(str(tmp_path))


def test_guards_are_on_by_default_in_every_recipe():
    rules = health_rules(HealthConfig())
    assert {r.metric for r in rules} == {"zero_std_frac", "grad_norm", "entropy", "health/prompt_dependence",
                                         "health/reward_recheck_diff"}
    for path in sorted((ROOT / "recipes").glob("*.yaml")):
        data = yaml.safe_load(path.read_text())
        if data.get("kind"):  # pre-training recipes have no GRPO monitors
            continue
        from rl.recipe import load_recipe
        recipe = load_recipe(path)
        assert recipe.monitors.health.enabled, path.name
        assert len(health_rules(recipe.monitors.health)) == 5, path.name


def test_constant_reward_fires_zero_advantage_and_zero_gradient_and_stops(tmp_path, monkeypatch):
    _reward_module(tmp_path, monkeypatch)
    recipe = _recipe({"action": "log", "all_advantages_zero": {"above": 0.9, "window": 2, "patience": 2},
                      "grad_norm_zero": {"below": 1e-12, "patience": 3, "action": "stop"}},
                     rewards=[{"name": "dying_rewards:constant"}], trainer={"max_steps": 8, "beta": 0.0})
    result = train(recipe, tmp_path / "run", progress=False)
    err = (tmp_path / "run" / "monitor.log").read_text()  # the same lines go to stderr / the nativerl logger
    rows = read_metrics(tmp_path / "run")
    assert all(r["zero_std_frac"] == 1.0 and r["grad_norm"] == 0.0 for r in rows)
    assert "[health: all advantages zero" in err and "[health: gradient norm 0" in err
    assert result.steps == 3 and result.stopped_by_monitor and "stop training" in result.stopped_by_monitor
    assert any("all advantages zero" in w for w in result.warnings)


def test_exploding_update_fires_entropy_collapse(tmp_path):
    # Full weights with Adam at lr 1: every weight moves by ~1 per step and the logits blow up.
    recipe = _recipe({"entropy_collapse": {"fall": 0.5, "baseline_steps": 1, "patience": 1}},
                     trainer={"policy": "full", "learning_rate": 1.0, "max_steps": 4, "max_grad_norm": 1e9})
    result = train(recipe, tmp_path / "run", progress=False)
    entropy = [r["entropy"] for r in read_metrics(tmp_path / "run")]
    assert entropy[-1] < 0.5 * entropy[0], entropy
    assert "[health: policy entropy collapsed" in (tmp_path / "run" / "monitor.log").read_text()
    assert any("entropy collapsed" in w for w in result.warnings)


def test_reward_that_is_not_a_function_of_the_image_fires_the_recheck(tmp_path, monkeypatch):
    _reward_module(tmp_path, monkeypatch)
    recipe = _recipe({"reward_recheck": {"every": 1, "samples": 2, "above": 1e-4}},
                     rewards=[{"name": "dying_rewards:noisy"}], trainer={"max_steps": 2})
    result = train(recipe, tmp_path / "run", progress=False)
    rows = read_metrics(tmp_path / "run")
    assert all(r["health/reward_recheck_diff"] > 1e-4 for r in rows)
    assert "[health: the trainer's reward differs" in (tmp_path / "run" / "monitor.log").read_text()
    assert result.warnings


def test_a_reward_that_reads_no_prompt_turns_the_prompt_check_off(tmp_path):
    recipe = _recipe({"prompt_dependence": {"every": 1, "below": 0.1}}, trainer={"max_steps": 2})
    result = train(recipe, tmp_path / "run", progress=False)  # JPEG size: prompt-blind by definition
    assert "prompt-dependence check is off" in (tmp_path / "run" / "monitor.log").read_text()
    assert not any("health/prompt_dependence" in r for r in read_metrics(tmp_path / "run"))
    assert not result.warnings


def _shapes_recipe(rows, tmp_path, checkpoint, **health):
    import json

    path = tmp_path / "prompts.jsonl"
    tmp_path.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return Recipe.model_validate({
        "name": "shapes-health", "seed": 0, "torch_threads": 1,
        "model": {"source": "path", "path": str(ROOT / "worlds" / "shapes" / checkpoint)},
        "rollout": {"prompts": {"format": "geneval_jsonl", "path": str(path), "shuffle": False},
                    "prompts_per_step": 4, "sampling": {"top_k": None, "top_p": None},
                    "renderer": {"guidance_scale": 1.0, "num_inference_steps": 8}},
        "rewards": [{"name": "geneval@flowgrpo", "options": {"detector": "shapes"}}],
        "trainer": {"num_generations": 8, "max_steps": 3, "learning_rate": 1e-9, "policy": "lora",
                    "lora": {"r": 4, "lora_alpha": 8, "target_modules": ["lm_head"]}},
        "logging": {"sample_every": 0, "tensorboard": False}, "checkpoint": {"every": 0},
        "monitors": {"health": {"prompt_dependence": {"every": 1, "below": 0.2, "window": 3, "patience": 1},
                                **health}}})


def test_prompt_dependence_tells_a_prompt_following_model_from_a_blind_one(tmp_path):
    """Two real shapes generators: the committed `pretrained` one (300 AR steps) barely reads the prompt; the
    `pretrained_conditioned` one (recipes/shapes_sft_conditioned.yaml) follows it. Object prompts, 3 steps."""
    from worlds.shapes.prompts import shapes_prompt_rows

    rows = shapes_prompt_rows("train", tags=["single_object"])[:2] + shapes_prompt_rows("train",
                                                                                   tags=["two_object"])[:2]
    following = train(_shapes_recipe(rows, tmp_path / "a", "pretrained_conditioned"), tmp_path / "a" / "run",
                      progress=False)
    metrics = read_metrics(tmp_path / "a" / "run")
    assert min(r["health/prompt_dependence"] for r in metrics) > 0.3, metrics
    assert all(r["health/accuracy"] > r["health/swapped_accuracy"] for r in metrics)
    assert not following.warnings
    blind = train(_shapes_recipe(rows, tmp_path / "b", "pretrained"), tmp_path / "b" / "run", progress=False)
    dependence = [r["health/prompt_dependence"] for r in read_metrics(tmp_path / "b" / "run")]
    assert sum(dependence) / len(dependence) < 0.2, dependence  # 32 images a step: noisy, so a mean of 3
    assert "[health: images no longer depend on the prompt" in (tmp_path / "b" / "run" / "monitor.log").read_text()
    assert any("no longer depend on the prompt" in w for w in blind.warnings)


def test_swap_is_a_seeded_derangement_within_tags():
    rows = [{"prompt": f"p{i}", "tag": "a" if i < 5 else "b"} for i in range(8)] + [{"prompt": "lone", "tag": "c"}]
    partner = swap_partners(rows, seed=1)
    assert partner == swap_partners(rows, seed=1) and partner != swap_partners(rows, seed=2)
    assert all(partner[k] != k for k in partner)
    assert all(partner[f"p{i}"].startswith("p") and (int(partner[f"p{i}"][1:]) < 5) == (i < 5) for i in range(8)
               if partner[f"p{i}"] != "lone")
    assert sorted(partner.values()) == sorted(partner)  # a permutation
    repeated = rows[:2] * 3
    swapped = swapped_rows(repeated)
    assert [s["prompt"] for s in swapped] == ["p1", "p0"] * 3
    assert swapped_rows(rows[:1]) is None


def test_eval_reports_swapped_and_exact_scene_accuracy_and_compare_pairs_them():
    """`nativerl eval`'s measurement (rl/evaluate.py) on the prompt-conditioned checkpoint: swapped metadata
    scores far below its own; the paired table carries both numbers with intervals and events."""
    from rewards.suite import RewardSuite
    from rl.evaluate import evaluate_prompts
    from rl.paired_eval import paired_differences
    from rollouts.config import ModelConfig, RendererConfig, SamplingConfig
    from rollouts.generator import NativeImageGenerator
    from worlds.shapes.prompts import shapes_prompt_rows

    gen = NativeImageGenerator.from_config(ModelConfig(source="path", path=str(
        ROOT / "worlds" / "shapes" / "pretrained_conditioned")))
    rows = shapes_prompt_rows("heldout", tags=["single_object", "two_object", "position"])
    suite = RewardSuite([{"name": "geneval@flowgrpo", "options": {"detector": "shapes"}}])
    kwargs = dict(seeds=2, sampling=SamplingConfig(top_k=None, top_p=None),
                  renderer_cfg=RendererConfig(num_inference_steps=8, guidance_scale=1.0))
    result = evaluate_prompts(gen, rows, suite, **kwargs)
    assert result["swapped_accuracy"] < 0.5 * result["accuracy"], result
    assert 0 < result["strict_accuracy"] <= result["accuracy"]
    assert all("swapped_correct" in r and "strict" in r for r in result["per_image"])
    table = {r["metric"]: r for r in paired_differences(result, result)}
    assert table["swapped_accuracy"]["a"] == result["swapped_accuracy"] and table["swapped_accuracy"]["diff"] == 0
    assert table["strict_accuracy"]["up"] == table["strict_accuracy"]["down"] == 0
