"""renders_per_sample: each token sequence rendered M times (its own seeds), rewarded with the mean over its renders.
Tiny preset on CPU; the reward is the image brightness, so every expected number can be computed by hand."""

import copy

import numpy as np
import pytest
import torch

from rewards.base import RewardOutput
from rewards.reward_actor import RewardWorker
from rewards.spec import RewardSpec
from rewards.suite import RewardSuite, average_over_renders
from rl.metrics_log import read_metrics
from rl.recipe import Recipe
from rl.train_loop import train
from rollouts.batch import RolloutBatch
from rollouts.config import ModelConfig, RendererConfig, SamplingConfig
from rollouts.generator import NativeImageGenerator
from rollouts.renderer import render_images
from rollouts.rollout import generate_rollouts

SAMPLING = SamplingConfig(top_k=None, top_p=None)
ROWS = [{"prompt": "a red circle"}, {"prompt": "two blue squares"}]


def brightness(images, prompts, metadata):
    return RewardOutput(scores=[float(im.mean()) / 255 for im in images],
                        details=[{"mean": float(im.mean())} for im in images])


brightness.version = "test"


@pytest.fixture(scope="module")
def gen():
    return NativeImageGenerator.from_config(ModelConfig(preset="tiny", device="cpu", dtype="float32", seed=0))


def _batch(gen, renders, policy="shared_per_group"):
    cfg = RendererConfig(num_inference_steps=2, renders_per_sample=renders, seed_policy=policy)
    return generate_rollouts(gen, ROWS, group_size=3, sampling=SAMPLING, renderer_cfg=cfg, seed=7), cfg


def test_extra_renders_use_their_own_seeds_and_keep_the_first(gen):
    one, _ = _batch(gen, 1)
    three, cfg = _batch(gen, 3)
    assert one.extra_images is None and one.renders_per_sample == 1
    assert three.renders_per_sample == 3 and three.extra_images.shape == (6, 2, *one.images.shape[1:])
    # Sampling and the first render are what renders_per_sample=1 gives for the same seed.
    assert torch.equal(three.image_tokens, one.image_tokens) and torch.equal(three.images, one.images)
    assert torch.equal(three.render_seeds, one.render_seeds)
    seeds = three.extra_render_seeds
    assert seeds.shape == (6, 2)
    assert (seeds[:3] == seeds[0]).all() and (seeds[3:] == seeds[3]).all()  # shared within a group, per render
    assert len({*seeds.flatten().tolist(), *three.render_seeds.tolist()}) == 6  # 2 groups × 3 renders, all new
    assert not torch.equal(three.extra_images[:, 0], three.images)  # another noise, another image
    # Each extra render is the renderer run on the same hidden states with that render's seeds.
    hidden = gen.conditioning_hidden_states(three.prompt_ids, three.prompt_mask, three.image_tokens)
    again = render_images(gen.renderer, hidden, seeds[:, 1], cfg)
    assert (again.float() - three.extra_images[:, 1].float()).abs().max() <= 1
    independent, _ = _batch(gen, 2, policy="independent")
    assert len(set(independent.extra_render_seeds[:, 0].tolist())) == 6


def test_reward_is_the_mean_over_renders(gen):
    batch, _ = _batch(gen, 3)
    suite = RewardSuite([RewardSpec(name="test_renders_per_sample:brightness", alias="b")])
    out = suite.score_rollouts(batch)
    by_hand = batch.all_renders().float().mean(dim=(2, 3, 4)) / 255  # [B, M]
    np.testing.assert_allclose(out.scores["b"], by_hand.mean(1).numpy(), rtol=1e-5)
    assert len(out.details) == 6
    np.testing.assert_allclose(out.details[4]["b"]["render_scores"], by_hand[4].numpy(), rtol=1e-5)
    assert out.details[4]["b"]["mean"] == pytest.approx(float(batch.images[4].float().mean()))  # first render's
    # The reward actor (a plain class under ray.remote) scores a shard the same way.
    worker = RewardWorker([{"name": "test_renders_per_sample:brightness", "alias": "b"}], num_threads=None)
    np.testing.assert_allclose(worker.score(batch).scores["b"], out.scores["b"])


def test_a_nan_render_makes_its_row_nan():
    from rewards.suite import SuiteScores

    raw = SuiteScores(scores={"r": np.array([1.0, 3.0, np.nan, 2.0])}, failed={}, weights={"r": 1.0},
                      tags={"r": "r@x"}, details=[{"r": {"i": i}} for i in range(4)], timings={})
    out = average_over_renders(raw, 2)
    assert out.scores["r"][0] == 2.0 and np.isnan(out.scores["r"][1])
    assert out.details[1]["r"] == {"i": 2, "render_scores": [pytest.approx(np.nan, nan_ok=True), 2.0]}
    with pytest.raises(ValueError, match="rows of 3 renders"):
        average_over_renders(raw, 3)


def test_batch_keeps_extra_renders_through_select_concat_and_save(gen, tmp_path):
    batch, _ = _batch(gen, 2)
    part = batch.select([5, 1])
    assert torch.equal(part.extra_images, batch.extra_images[[5, 1]])
    both = RolloutBatch.concat([batch, part])
    assert both.extra_images.shape[0] == 8 and torch.equal(both.extra_render_seeds[6:], part.extra_render_seeds)
    batch.save(tmp_path / "b.pt")
    assert torch.equal(RolloutBatch.load(tmp_path / "b.pt").extra_images, batch.extra_images)
    one, _ = _batch(gen, 1)
    with pytest.raises(ValueError, match="renders_per_sample"):
        RolloutBatch.concat([batch, one])
    with pytest.raises(ValueError, match="extra_images"):
        RolloutBatch(**{**{f: getattr(batch, f) for f in batch.__dataclass_fields__},
                        "extra_images": batch.extra_images[:, :, :4]})


def test_training_with_two_renders_per_sample(tmp_path):
    raw = {
        "name": "m2", "seed": 2, "model": {"source": "preset", "preset": "tiny"},
        "rollout": {"prompts": {"format": "inline", "prompts": ["a red circle", "a cat"]}, "prompts_per_step": 2,
                    "sampling": {"top_k": None, "top_p": None},
                    "renderer": {"num_inference_steps": 2, "renders_per_sample": 2}},
        "rewards": [{"name": "test_renders_per_sample:brightness", "alias": "b"}],
        "trainer": {"num_generations": 2, "max_steps": 2, "policy": "lora", "learning_rate": 1e-3},
        "logging": {"sample_every": 0, "tensorboard": False, "archive_every": 1}, "checkpoint": {"every": 0},
    }
    train(Recipe.model_validate(copy.deepcopy(raw)), tmp_path / "run", progress=False)
    rows = read_metrics(tmp_path / "run")
    assert [r["step"] for r in rows] == [1, 2]
    archived = RolloutBatch.load(sorted((tmp_path / "run" / "archive").glob("step-*/rollouts.pt"))[-1])
    assert archived.renders_per_sample == 2
    mean_of_renders = float((archived.all_renders().float().mean(dim=(2, 3, 4)) / 255).mean())
    assert rows[-1]["reward/b/mean"] == pytest.approx(mean_of_renders, rel=1e-5)
