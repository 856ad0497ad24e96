"""Spatial credit: per-token advantage weights from the boxes a structured reward judged (rl/grpo.py §2b), the
loss with per-token advantages, GenEval's boxes on the shapes world, and the driver using them."""

import copy
from pathlib import Path

import pytest
import torch

from rewards.geneval import GenEvalReward
from rl import grpo
from rl.metrics_log import read_metrics
from rl.recipe import Recipe, load_recipe
from rl.train_loop import train
from rollouts.shapes.world import CELL, ShapeObject, Scene, render_scene

ROOT = Path(__file__).resolve().parents[1]


def test_weights_by_hand():
    w = grpo.spatial_credit_weights([[(0, 0, 16, 16)], [], [(8, 0, 24, 16)], [(0, 0, 64, 64)]], [(64, 64)] * 4,
                                    grid=4, strength=0.5).view(4, 4, 4)
    # One box filling cell (0,0): coverage mean 1/16, so w = 0.5 + 0.5 * 16 there and 0.5 elsewhere.
    assert w[0, 0, 0] == 8.5 and (w[0].flatten()[1:] == 0.5).all()
    assert (w[1] == 1).all()  # no box: plain GRPO for that sample
    assert w[2, 0, 0] == w[2, 0, 1] == 4.5 and w[2, 1, 0] == 0.5  # half of two cells each
    assert (w[3] == 1).all()  # a box over the whole image changes nothing
    assert torch.allclose(w.flatten(1).mean(1), torch.ones(4))  # each sample keeps its total advantage
    assert (grpo.spatial_credit_weights([[(0, 0, 16, 16)]], [(64, 64)], 4, 0.0) == 1).all()
    with pytest.raises(ValueError, match="strength"):
        grpo.spatial_credit_weights([[]], [(64, 64)], 4, 1.5)


def test_loss_takes_per_token_advantages():
    torch.manual_seed(0)
    logp = torch.randn(3, 16, requires_grad=True)
    old = logp.detach() + 0.01 * torch.randn(3, 16)
    mask = torch.ones(3, 16)
    adv = torch.tensor([1.0, -0.5, 2.0])
    flat, _ = grpo.grpo_loss(logp, old, None, adv, mask, beta=0.0, epsilon=0.2)
    per_token, _ = grpo.grpo_loss(logp, old, None, adv[:, None].expand(3, 16), mask, beta=0.0, epsilon=0.2)
    assert torch.equal(flat, per_token)  # uniform weights = plain GRPO
    w = grpo.spatial_credit_weights([[(0, 0, 16, 16)], [], []], [(64, 64)] * 3, 4, 0.5)
    loss, _ = grpo.grpo_loss(logp, old, None, adv[:, None] * w, mask, beta=0.0, epsilon=0.2)
    loss.backward()
    g = logp.grad
    # Unclipped tokens: d loss / d logp_t = -A_t * ratio_t / (B*N), so sample 0's token 0 pulls 17x token 1's.
    ratio = torch.exp(logp.detach() - old)
    assert torch.allclose(g[0, :2], -(adv[0] * w[0, :2]) * ratio[0, :2] / 48, atol=1e-6)
    with pytest.raises(ValueError, match=r"\[B\]=3 or \[B,N\]"):
        grpo.grpo_loss(logp, old, None, torch.ones(3, 4), mask, beta=0.0, epsilon=0.2)


def test_geneval_reports_the_boxes_it_judged():
    reward = GenEvalReward(detector="shapes")
    row = {"tag": "colors", "include": [{"class": "circle", "count": 1, "color": "red"}],
           "prompt": "a photo of a red circle"}
    out = reward([render_scene(Scene([ShapeObject("circle", "blue", 1, 2)]))], [row["prompt"]], [row])
    (box,) = out.details[0]["credit_boxes"]
    assert out.details[0]["image_size"] == [64, 64]
    assert 2 * CELL <= (box[0] + box[2]) / 2 < 3 * CELL and CELL <= (box[1] + box[3]) / 2 < 2 * CELL  # cell (1, 2)


def test_driver_trains_with_spatial_credit(tmp_path):
    recipe = load_recipe(ROOT / "recipes" / "shapes_grpo_lm_head.yaml", [
        "trainer.max_steps=2", "trainer.spatial_credit=0.5", "eval.before_and_after=false",
        "logging.sample_every=0", "logging.tensorboard=false", f"model.path={ROOT / 'rollouts/shapes/pretrained'}"])
    train(recipe, tmp_path / "run", progress=False)
    rows = read_metrics(tmp_path / "run")
    assert [r["step"] for r in rows] == [1, 2] and rows[-1]["policy_version"] == 2
    assert 0 < rows[-1]["spatial_credit/with_boxes"] <= 1 and rows[-1]["spatial_credit/max_weight"] > 1
    bad = copy.deepcopy(recipe.model_dump())
    bad["rewards"] = [{"name": "jpeg_compressibility"}]
    with pytest.raises(ValueError, match="no reward reports `credit_boxes`"):
        train(Recipe.model_validate(bad), tmp_path / "bad", progress=False)
