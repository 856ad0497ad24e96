"""The shapes world's generator: its VAE, the committed pre-trained checkpoint, the held-out evaluation, SFT."""

import json

import numpy as np
import pytest
import torch

from rollouts.config import ModelConfig
from rollouts.generator import NativeImageGenerator
from worlds.shapes.model import PRETRAINED_DIR, load_shapes_model
from worlds.shapes.patch_autoencoder import PatchAutoencoder
from worlds.shapes.world import GRID, render_scene, sample_random_scene

CHECKPOINT_MAX_BYTES = 8 * 1024 * 1024


def _scenes(n, seed):
    rng = np.random.default_rng(seed)
    scenes = [sample_random_scene(rng, max_objects=GRID * GRID) for _ in range(n)]
    return scenes, np.stack([render_scene(s) for s in scenes])


def test_patch_autoencoder_reconstructs_the_world_and_roundtrips(tmp_path):
    from rewards.detectors import build_detector

    _, fit_images = _scenes(400, 0)
    vae = PatchAutoencoder.fit(fit_images, latent_channels=16)
    scenes, images = _scenes(100, 1)
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1
    z = vae.encode(x).latent
    assert z.shape == (100, 16, GRID, GRID)
    assert abs(float((z * vae.config.scaling_factor).std()) - 1.0) < 0.15  # scaled latents ~ unit variance
    recon = ((vae.decode(z).sample + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()
    assert np.abs(recon.astype(float) - images).mean() < 4.0
    detector = build_detector("shapes")
    for scene, img in zip(scenes, recon):  # the exact detector reads every reconstruction correctly
        got = sorted((d.class_name, d.color) for d in detector.detect(img))
        assert got == sorted((o.shape, o.color) for o in scene.objects)
    vae.save_pretrained(tmp_path / "vae")
    again = PatchAutoencoder.from_pretrained(tmp_path / "vae")
    assert torch.equal(again.decode(z).sample, vae.decode(z).sample)


@pytest.fixture(scope="module")
def pretrained():
    if not (PRETRAINED_DIR / "config.json").exists():
        pytest.fail(f"the committed shapes checkpoint is missing from {PRETRAINED_DIR}")
    return load_shapes_model(PRETRAINED_DIR)


def test_committed_checkpoint_is_small_and_loads_with_the_normal_loader():
    size = sum(p.stat().st_size for p in PRETRAINED_DIR.rglob("*") if p.is_file())
    assert size < CHECKPOINT_MAX_BYTES, f"{size} bytes"
    gen = NativeImageGenerator.from_config(ModelConfig(source="path", path=str(PRETRAINED_DIR), device="cpu"))
    assert gen.tokens_per_image == GRID * GRID and gen.vocab.num_image_tokens == 64
    assert type(gen.renderer.vae).__name__ == "PatchAutoencoder"
    ids, _ = gen.encode_prompts(["a photo of a red circle left of a blue square"])
    assert gen.tokenizer.unk_token_id not in ids[0].tolist()


def test_renderer_draws_ground_truth_tokens_correctly(pretrained):
    from worlds.shapes.evaluate import evaluate_ground_truth_rendering

    gen, vq = pretrained
    result = evaluate_ground_truth_rendering(gen, vq, num_images=48, seed=7)
    assert result["vq_decode_accuracy"] == 1.0
    assert result["accuracy"] >= 0.9, result


def test_heldout_evaluation_is_deterministic_and_reports_every_tag(pretrained):
    from worlds.shapes.evaluate import evaluate_heldout

    gen, _ = pretrained
    a = evaluate_heldout(gen, images_per_tag=4, seed=3)
    b = evaluate_heldout(gen, images_per_tag=4, seed=3)
    assert torch.equal(a.images, b.images)
    assert set(a.accuracy) == {"single_object", "two_object", "counting", "colors", "position", "color_attr"}
    assert a.accuracy == b.accuracy and 0.0 <= a.overall <= 1.0
    summary = json.loads((PRETRAINED_DIR / "sft_summary.json").read_text())
    assert 0.0 < summary["heldout"]["overall"] < 0.75  # pre-trained, deliberately short of perfect


def test_sft_lowers_both_losses(tmp_path):
    from worlds.shapes.sft import SFTConfig, run_sft

    cfg = SFTConfig(output_dir=str(tmp_path / "run"), data={"num_examples": 512, "codec_fit_scenes": 200},
                    batch_size=16, ar_steps=40, renderer_steps=10, warmup_steps=5, log_every=5,
                    eval={"images_per_tag": 2, "ground_truth_images": 0})
    result = run_sft(cfg, progress=False)
    records = [json.loads(line) for line in result.metrics_path.read_text().splitlines()]
    steps = [r for r in records if "step" in r]
    assert steps[-1]["ce"] < 0.5 * steps[0]["ce"]
    assert steps[-1]["fm"] < steps[0]["fm"]
    again = NativeImageGenerator.from_pretrained(result.checkpoint_dir, device="cpu")
    assert again.tokens_per_image == 16


def test_sft_releases_an_earlier_ar_with_a_renderer_trained_on_drift(tmp_path):
    """release_ar_step saves the AR of that phase-1 step (not the last one); the renderer's phase 2 conditions on
    AR snapshots and noisy hidden states (worlds/shapes/sft.py), so the run differs from a plain one only where it
    should."""
    from safetensors.torch import load_file

    from worlds.shapes.sft import SFTConfig, perturb_condition, run_sft

    x = torch.randn(4, 17, 128)
    assert perturb_condition(x, 0.0, torch.Generator().manual_seed(0)) is x
    noisy = perturb_condition(x, 0.3, torch.Generator().manual_seed(0))
    rel = ((noisy - x).pow(2).mean(-1).sqrt() / x.pow(2).mean(-1).sqrt()).max()
    assert 0 < rel < 0.3 * 1.5  # std at most 0.3 x the row RMS (sampled: some slack)

    def run(name, **extra):
        cfg = SFTConfig(output_dir=str(tmp_path / name), data={"num_examples": 256, "codec_fit_scenes": 200},
                        batch_size=8, ar_steps=6, renderer_steps=4, warmup_steps=1, log_every=5,
                        eval={"images_per_tag": 1, "ground_truth_images": 0}, **extra)
        result = run_sft(cfg, progress=False)
        return result, load_file(str(result.checkpoint_dir / "model.safetensors"))

    plain, lm_plain = run("plain")
    early, lm_early = run("early", release_ar_step=3, renderer_ar_snapshots=2, renderer_condition_noise=0.3)
    assert early.summary["released_ar_step"] == 3 and plain.summary["released_ar_step"] == 6
    # Phase 1 is the same in both runs, so the released AR is the plain run's AR of an earlier step: different.
    assert any(not torch.equal(lm_plain[k], lm_early[k]) for k in lm_plain)
    with pytest.raises(ValueError, match="release_ar_step 6 must be below ar_steps 6"):
        run("bad", release_ar_step=6)
