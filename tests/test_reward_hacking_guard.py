"""A real reward hack and the guard rail that catches it (recipes/shapes_reward_hacking.yaml, shapes world, CPU).

Training on GenEval + JPEG compressibility teaches the policy to draw nothing. Measured on the 2-core VM (current
seed derivation, 2026-12-03): without monitors the training GenEval reward falls from ~0.25 to below 0.05 by step
~34; the edge-density rule alone stops the run at step 27 and rolls back to step 25; with all of the recipe's
monitors the gold monitor fires first, at step 20 (gold fell 0.236 -> 0.189 while the proxy rose), and rolls back
to step 5."""

from pathlib import Path

import numpy as np
import pytest
import torch

from rl.metrics_log import read_metrics
from rl.recipe import load_recipe
from rl.train_loop import train

pytestmark = pytest.mark.slow  # 40-step learning runs

ROOT = Path(__file__).resolve().parents[1]
SIZES = ["eval.before_and_after=false", "logging.sample_every=0", "logging.tensorboard=false",
         f"model.path={ROOT / 'worlds' / 'shapes' / 'pretrained'}"]


def test_the_hack_happens_without_monitors(tmp_path):
    recipe = load_recipe(ROOT / "recipes" / "shapes_reward_hacking.yaml", SIZES + [
        "trainer.max_steps=40", "monitors.rules=[]", "monitors.gold=[]", "monitors.every=0", "checkpoint.every=0"])
    train(recipe, tmp_path / "run", progress=False)
    rows = read_metrics(tmp_path / "run")
    geneval = [r["reward/geneval/mean"] for r in rows]
    edges = [r["images/edge_density"] for r in rows]
    assert np.mean(geneval[:5]) > 0.2 and np.mean(geneval[-5:]) < 0.05  # stopped drawing what was asked
    assert np.mean(edges[-5:]) < 0.1 * np.mean(edges[:5])  # blank images


def test_the_edge_density_rule_stops_and_rolls_back(tmp_path):
    from safetensors.torch import load_file

    # The rule alone (the gold monitor, which also catches this hack, has its own tests): it must fire by itself.
    recipe = load_recipe(ROOT / "recipes" / "shapes_reward_hacking.yaml",
                         SIZES + ["trainer.max_steps=60", "monitors.gold=[]"])
    run = tmp_path / "run"
    result = train(recipe, run, progress=False)
    assert 12 <= result.steps < 30 and result.stopped_by_monitor.startswith(f"[rule] step {result.steps}: images/")
    log = (run / "monitor.log").read_text()
    assert "roll back to the checkpoint before step" in log
    rows = read_metrics(run)
    assert min(r["reward/geneval/mean"] for r in rows[-3:]) > 0.05  # caught before the images went blank
    # The run's final checkpoint holds the weights of the last checkpoint before the streak began.
    ck = run / "checkpoints"
    kept = sorted(p.name for p in ck.iterdir())
    final = load_file(ck / f"step-{result.steps:06d}" / "policy" / "adapter_model.safetensors")
    earlier = [k for k in kept if int(k.split("-")[1]) < result.steps]
    restored = load_file(ck / earlier[-1] / "policy" / "adapter_model.safetensors")
    assert all(torch.equal(final[k], restored[k]) for k in final)
