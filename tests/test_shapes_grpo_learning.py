"""The shapes world learns under GRPO: real learning tests, not smoke tests.

1. The demo's recipe shape (recipes/shapes_grpo.yaml: full weights, beta > 0, top-k/top-p, the conditioning anchor,
   from the prompt-conditioned checkpoint) learns to *follow prompts*: trained on the position prompts of the train
   split, the held-out position prompts' accuracy rises against their own metadata, stays at most half of that
   against a deranged prompt's metadata (the same images scored against another prompt of the tag), and the strict
   (exact-scene) accuracy rises too. The lr is pinned at 1e-3: on this short 4-prompt run it learned more than the
   demo's 1.25e-3 (2026-12-04, one 2-core CPU VM: 53.1% → 85.4% own at 1e-3, 70.8% at 1.25e-3), so the bar keeps
   its margin on VMs whose runs take another path. At 1e-3, temperature 1.2 and spatial credit 0.1: 53.1% → 93.8%
   own, 3.1% → 0.0% swapped, strict 50.0% → 88.5% on one VM, 85.4% / 0.0% / 85.4% on another, ~45-70 s a core.
2. The head-only baseline (recipes/shapes_grpo_lm_head.yaml, the committed under-trained checkpoint) lifts the mean
   GenEval partial-credit reward on single- and two-object prompts by a wide margin: 0.42 (steps 1-30) → 0.94
   (steps 271-300) in ~35 s idle.
"""

import json
from pathlib import Path

import numpy as np
import pytest

from rl.metrics_log import read_metrics
from rl.recipe import load_recipe
from rl.train_loop import train
from worlds.shapes.prompts import shapes_prompt_rows

ROOT = Path(__file__).resolve().parents[1]


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.mark.slow
def test_demo_recipe_learns_to_follow_position_prompts(tmp_path):
    train_rows = _jsonl(tmp_path / "train.jsonl", shapes_prompt_rows("train", tags=["position"]))
    heldout_rows = _jsonl(tmp_path / "heldout.jsonl", shapes_prompt_rows("heldout", tags=["position"]))
    recipe = load_recipe(ROOT / "recipes" / "shapes_grpo.yaml", [
        "trainer.max_steps=150", "rollout.prompts_per_step=4", "trainer.learning_rate=1e-3",
        "rollout.prompts.format=geneval_jsonl",
        f"rollout.prompts.path={train_rows}", "eval.prompts.format=geneval_jsonl",
        f"eval.prompts.path={heldout_rows}", "logging.sample_every=0", "logging.tensorboard=false"])
    assert recipe.trainer.policy == "full" and recipe.trainer.beta > 0 and recipe.rollout.sampling.top_k
    result = train(recipe, tmp_path / "run", progress=False)
    before, after = result.eval_before, result.eval_after
    assert before["accuracy"] >= 3 * before["swapped_accuracy"]  # the checkpoint already reads the prompt
    assert after["accuracy"] >= before["accuracy"] + 0.10, (before["accuracy"], after["accuracy"])
    assert after["swapped_accuracy"] <= 0.5 * after["accuracy"], after
    assert after["strict_accuracy"] > before["strict_accuracy"], (before, after)
    rows = read_metrics(tmp_path / "run")
    # The renderer's input stayed near the reference's (measured max 0.42; LoRA on every projection without the
    # anchor reached 1.03 at this lr).
    assert max(r["anchor/hidden_rel"] for r in rows) < 0.6


@pytest.mark.slow
def test_grpo_raises_geneval_reward_on_shapes(tmp_path):
    rows = shapes_prompt_rows("train", tags=["single_object", "two_object"])
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps(r) + "\n" for r in rows))
    recipe = load_recipe(ROOT / "recipes" / "shapes_grpo_lm_head.yaml", [
        "trainer.max_steps=300", "rollout.prompts_per_step=4", "rollout.prompts.format=geneval_jsonl",
        f"rollout.prompts.path={prompts}", "eval.before_and_after=false", "logging.sample_every=0",
        "logging.tensorboard=false", f"model.path={ROOT / 'worlds' / 'shapes' / 'pretrained'}"])
    train(recipe, tmp_path / "run", progress=False)
    rewards = [r["reward/mean"] for r in read_metrics(tmp_path / "run")]
    first, last = float(np.mean(rewards[:30])), float(np.mean(rewards[-30:]))
    assert len(rewards) == 300
    assert last > first + 0.25, (first, last)
    assert last > 0.7, (first, last)
