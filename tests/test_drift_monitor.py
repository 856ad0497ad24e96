"""Conditioning drift: stored tokens re-rendered with unchanged weights reproduce their images; the driver's drift
monitor reads exactly 0 for a LoRA on lm_head (the hidden states sit before it) and moves when the layers that
compute the hidden states are trained. Tiny preset, CPU."""

import copy

import numpy as np
import pytest
import torch

from rl.monitors.drift import drift_rows
from rl.metrics_log import read_metrics
from rl.recipe import Recipe, RecipeError, load_recipe
from rl.train_loop import train
from rollouts.config import ModelConfig, RendererConfig, SamplingConfig
from rollouts.generator import NativeImageGenerator
from rollouts.image_tokenizer import build_tiny_tatok
from rollouts.reference_image import ReferenceConditionedRenderer
from rollouts.rerender import rerender_rollouts
from rollouts.rollout import generate_rollouts
from tiny_fixtures import tiny_recipe

SAMPLING = SamplingConfig(top_k=None, top_p=None)
RENDER = RendererConfig(num_inference_steps=2, guidance_scale=2.0, seed_policy="independent")

TINY = tiny_recipe(
    name="drift", seed=5,
    rollout={"prompts": {"format": "inline", "prompts": ["a red circle", "two blue squares", "a cat"]},
             "prompts_per_step": 2},
    trainer={"num_generations": 4, "max_steps": 2, "learning_rate": 5e-2, "policy": "lora",
             "lora": {"r": 4, "lora_alpha": 8, "target_modules": ["lm_head"]}},
    checkpoint={"every": 0}, monitors={"drift": {"every": 1, "samples": 4}})


def _pixel_gap(a, b):
    return (a.float() - b.float()).abs().max().item()


def test_rerender_reproduces_rollout_images():
    gen = NativeImageGenerator.from_config(ModelConfig(preset="tiny", device="cpu", dtype="float32", seed=0))
    rows = [{"prompt": "a red circle"}, {"prompt": "two blue squares"}]
    batch = generate_rollouts(gen, rows, group_size=2, sampling=SAMPLING, renderer_cfg=RENDER, seed=11)
    again = rerender_rollouts(gen, batch, [3, 0, 2], RENDER)
    assert again.shape == (3, *batch.images.shape[1:]) and again.dtype == torch.uint8
    assert _pixel_gap(again, batch.images[[3, 0, 2]]) <= 1  # float rounding of KV-cache vs full forward at most
    assert _pixel_gap(batch.images[0], batch.images[1]) > 10  # ...far below a real difference between samples


def test_rerender_reproduces_edited_images():
    gen = NativeImageGenerator.from_config(ModelConfig(preset="tiny", device="cpu", dtype="float32", seed=0))
    gen.enable_editing(build_tiny_tatok(num_codes=64, image_size=32, patch_size=8))
    gen.renderer = ReferenceConditionedRenderer.from_renderer(gen.renderer, latent_tokens=True, concat_noise=True,
                                                              seed=2)
    refs = np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    rows = [{"instruction": "make it red", "reference_image": refs[0]},
            {"instruction": "remove the square", "reference_image": refs[1]}]
    batch = generate_rollouts(gen, rows, group_size=2, sampling=SAMPLING, renderer_cfg=RENDER, seed=4)
    assert _pixel_gap(rerender_rollouts(gen, batch, range(4), RENDER), batch.images) <= 1


def _drift_metrics(tmp_path, **trainer):
    raw = copy.deepcopy(TINY)
    raw["trainer"].update(trainer)
    train(Recipe.model_validate(raw), tmp_path, progress=False)
    return read_metrics(tmp_path)


def test_drift_is_zero_for_lm_head_lora(tmp_path):
    metrics = _drift_metrics(tmp_path)
    assert len(metrics) == 2
    for m in metrics:
        assert m["drift/hidden_rel"] == 0.0  # lm_head comes after the hidden states the renderer reads
        assert m["drift/pixel_rms"] < 1e-3  # measured: exactly 0 (re-rendering reproduces the rollout images)
        assert m["drift/jpeg_compressibility/abs_delta"] < 1e-3
        assert m["timing/drift_s"] > 0


def test_drift_moves_when_the_layers_train(tmp_path):
    metrics = _drift_metrics(tmp_path, lora={"r": 4, "lora_alpha": 8,
                                             "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"]})
    assert metrics[-1]["policy_version"] == 2
    assert all(m["drift/hidden_rel"] > 1e-3 for m in metrics)
    assert max(m["drift/pixel_rms"] for m in metrics) > 0.01
    assert "drift/jpeg_compressibility/delta" in metrics[-1]


def test_drift_config(tmp_path):
    assert drift_rows(16, 4) == [0, 5, 10, 15] and drift_rows(3, 8) == [0, 1, 2]
    assert not Recipe.model_validate({"rewards": [{"name": "ocr"}]}).monitors.drift.enabled
    path = tmp_path / "r.yaml"
    path.write_text("rewards: [{name: ocr}]\nmonitors: {drift: {every: 5, sample: 3}}\n")
    with pytest.raises(RecipeError, match="monitors.drift.sample"):
        load_recipe(path)
    path.write_text("rewards: [{name: ocr}]\nmonitors: {drift: {every: -1}}\n")
    with pytest.raises(RecipeError, match="monitors.drift.every"):
        load_recipe(path)
