"""The conditioning anchor (rl/grpo.py §4): the loss term that keeps the hidden states the frozen renderer reads
near the reference's, for the same prompt and tokens.

What must hold: the term is the relative squared drift and only pulls the policy (the reference is a constant); the
hidden states the trainer anchors are exactly the ones the renderer is given; and in a real full-weight training
run through the driver, the anchor keeps the conditioning much closer to the reference than the same run without
it, while the run still trains (the weights move)."""

from __future__ import annotations

import json

import pytest
import torch

from rl.grpo import conditioning_anchor
from rl.policy import Policy
from rl.recipe import Recipe, TrainerConfig
from rl.train_loop import GRPOTrainer
from rollouts.config import ModelConfig, SamplingConfig
from rollouts.generator import NativeImageGenerator

PROMPTS = ["a red circle", "two blue squares", "a cat"]


def test_anchor_is_the_relative_squared_drift_and_pulls_only_the_policy():
    ref = torch.randn(2, 5, 8)
    assert torch.equal(conditioning_anchor(ref.clone(), ref), torch.zeros(2))
    moved = ref.clone()
    moved[0] += 0.5
    want = (moved - ref).pow(2).sum(dim=(1, 2)) / ref.pow(2).sum(dim=(1, 2))
    torch.testing.assert_close(conditioning_anchor(moved, ref), want)
    hidden = moved.clone().requires_grad_(True)
    ref_leaf = ref.clone().requires_grad_(True)
    conditioning_anchor(hidden, ref_leaf).sum().backward()
    assert ref_leaf.grad is None  # the reference is a target, never trained
    assert float(hidden.grad[0].abs().sum()) > 0 and float(hidden.grad[1].abs().sum()) == 0.0
    with pytest.raises(ValueError, match="same"):
        conditioning_anchor(torch.zeros(2, 5, 8), torch.zeros(2, 4, 8))


def test_the_anchored_hidden_states_are_what_the_renderer_reads():
    gen = NativeImageGenerator.from_config(ModelConfig(preset="tiny", device="cpu", seed=3))
    policy = Policy(gen, TrainerConfig(policy="full", beta=0.04))
    sampling = SamplingConfig(top_k=8, top_p=0.9)
    ids, mask = gen.encode_prompts(PROMPTS)
    sampled = gen.sample_image_tokens(ids, mask, sampling, generator=torch.Generator().manual_seed(0))
    logp, entropy, hidden = policy.logprobs(ids, mask, sampled.image_tokens, sampling, with_entropy=True,
                                            with_hidden=True)
    rendered_from = gen.conditioning_hidden_states(ids, mask, sampled.image_tokens)
    torch.testing.assert_close(hidden.detach(), rendered_from, atol=1e-5, rtol=0)
    torch.testing.assert_close(sampled.cond_hidden.float(), rendered_from, atol=1e-4, rtol=0)  # the sampler's own
    ref_logp, ref_hidden = policy.reference_logprobs(ids, mask, sampled.image_tokens, sampling, with_hidden=True)
    torch.testing.assert_close(ref_hidden, rendered_from, atol=1e-5, rtol=0)  # untrained: policy = reference
    torch.testing.assert_close(ref_logp, logp.detach(), atol=1e-5, rtol=0)
    assert hidden.requires_grad and not ref_hidden.requires_grad


def _full_weight_recipe(anchor: float) -> Recipe:
    return Recipe.model_validate({
        "name": "anchor", "seed": 3,
        "model": {"source": "preset", "preset": "tiny"},
        "rollout": {"prompts": {"format": "inline", "prompts": PROMPTS}, "prompts_per_step": 2,
                    "sampling": {"top_k": 16, "top_p": 0.95}, "renderer": {"num_inference_steps": 2}},
        "rewards": [{"name": "jpeg_compressibility"}],
        "trainer": {"num_generations": 4, "max_steps": 6, "learning_rate": 3e-3, "lr_scheduler_type": "constant",
                    "policy": "full", "beta": 0.04, "conditioning_anchor": anchor, "micro_batch_size": 4},
        "logging": {"sample_every": 0, "tensorboard": False},
        "checkpoint": {"every": 0},
        "monitors": {"health": {"enabled": False}},
    })


def _drift_after_training(tmp_path, anchor: float) -> tuple[float, float, list[dict]]:
    """(conditioning drift of the trained LM from the initial one on fixed tokens, relative weight change, rows)."""
    trainer = GRPOTrainer(_full_weight_recipe(anchor), tmp_path / f"run-{anchor}", progress=False)
    before = {k: v.detach().clone() for k, v in trainer.generator.lm.state_dict().items()}
    fresh = NativeImageGenerator.from_config(trainer.recipe.model)
    trainer.run()
    ids, mask = fresh.encode_prompts(PROMPTS)
    tokens = torch.randint(0, fresh.vocab.num_image_tokens, (len(PROMPTS), fresh.tokens_per_image),
                           generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        h_ref = fresh.conditioning_hidden_states(ids, mask, tokens)
        h = trainer.generator.conditioning_hidden_states(ids, mask, tokens)
    after = trainer.generator.lm.state_dict()
    moved = sum(float((after[k].float() - v.float()).norm()) for k, v in before.items())
    size = sum(float(v.float().norm()) for v in before.values())
    rows = [json.loads(line) for line in (tmp_path / f"run-{anchor}" / "metrics.jsonl").read_text().splitlines()]
    return float((h - h_ref).norm() / h_ref.norm()), moved / size, rows


def test_anchor_keeps_the_conditioning_near_the_reference_in_full_weight_training(tmp_path):
    free_drift, free_moved, free_rows = _drift_after_training(tmp_path, 0.0)
    drift, moved, rows = _drift_after_training(tmp_path, 30.0)
    assert all("anchor/hidden_rel" not in r for r in free_rows)
    logged = [r["anchor/hidden_rel"] for r in rows if "anchor/hidden_rel" in r]
    assert len(logged) == 6 and logged[0] < 1e-6  # step 1: the policy is the reference
    assert all(torch.isfinite(torch.tensor(logged)))
    assert free_drift > 0.05  # without the anchor this lr visibly repaints the same tokens
    assert drift < 0.5 * free_drift, (drift, free_drift)
    assert moved > 0.1 * free_moved  # the anchored run still trains: its weights move
