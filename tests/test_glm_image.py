"""GLM-Image (rollouts/glm_image/): the tiny random checkpoint in the released diffusers layout loads through
transformers' and diffusers' own classes, broken folders are explained, the AR prior tokens' log-probs of the
sampler equal the trainer's in fp32 and under bf16 autocast (fp32 masters), the frozen DiT paints images from the
token ids through diffusers' GlmImagePipeline, and GRPO runs end to end through the real trainer with every reward
kind the Janus-Pro and BLIP3o-NEXT tests use."""

from __future__ import annotations

import json
import math
import shutil

import pytest
import torch
import yaml
from typer.testing import CliRunner

from rl.cli import app
from rl.metrics_log import read_metrics
from rl.policy import Policy
from rl.recipe import TrainerConfig
from rollouts.blip3o_checkpoint import CheckpointMismatchError
from rollouts.config import ModelConfig, RendererConfig, SamplingConfig
from rollouts.generator import NativeImageGenerator
from rollouts.glm_image.generator import GlmImageGenerator
from rollouts.glm_image.prior_sampler import glm_image_parts, prior_positions
from rollouts.glm_image.tiny_checkpoint import write_tiny_glm_image_checkpoint
from rollouts.rollout import generate_rollouts
from rollouts.sampler import scored_distribution
from test_user_recipes import tiny_clip  # noqa: F401 (a fixture)

pytestmark = pytest.mark.usefixtures("one_torch_thread")
PROMPTS = ["a red apple on a table", "two dogs", 'a shop sign that says "OPEN"']
N = 260  # 16x16 preview + 2x2 target grid at 64 px
runner = CliRunner()


@pytest.fixture(scope="module")
def tiny_glm(tmp_path_factory):
    return write_tiny_glm_image_checkpoint(tmp_path_factory.mktemp("glm_image") / "GLM-Image-tiny")


def load(path, **kw) -> GlmImageGenerator:
    return NativeImageGenerator.from_config(ModelConfig(source="path", path=str(path), device="cpu", **kw))


# ------------------------------------------------------------------------------------------------ loading
def test_tiny_checkpoint_is_the_released_diffusers_layout(tiny_glm):
    from diffusers import GlmImagePipeline

    index = json.loads((tiny_glm / "model_index.json").read_text())
    assert index["_class_name"] == "GlmImagePipeline"
    for sub in ("vision_language_encoder", "processor", "transformer", "vae", "text_encoder", "tokenizer",
                "scheduler"):
        assert (tiny_glm / sub).is_dir(), sub
    # Plain diffusers loads the whole folder as its pipeline.
    pipe = GlmImagePipeline.from_pretrained(str(tiny_glm), local_files_only=True)
    assert type(pipe.vision_language_encoder).__name__ == "GlmImageForConditionalGeneration"

    gen = load(tiny_glm)
    assert isinstance(gen, GlmImageGenerator) and gen.tokens_per_image == N and gen.vocab.num_image_tokens == 64
    assert gen.grids.target == (2, 2) and gen.grids.preview == (16, 16)
    assert gen.renderer.pipe.vision_language_encoder is None  # the renderer never holds the policy
    lm_params = {id(p) for p in gen.lm.parameters()}
    assert not any(id(p) in lm_params for p in gen.renderer.parameters())
    assert not any(p.requires_grad for p in gen.renderer.parameters())
    ids, mask = gen.encode_prompts(PROMPTS[:2])
    assert (ids[:, -1] == gen.grids.image_start).all() and mask[1, 0] == 0  # left-padded, ends at image start
    text = gen.tokenizer.decode(ids[1][mask[1].bool()])
    assert "two dogs" in text and text.endswith("<sop>2 2<eop><sop>16 16<eop><|image_start|>")


def test_broken_folders_are_explained(tiny_glm, tmp_path):
    with pytest.raises(ValueError, match="exactly 260 prior tokens"):
        load(tiny_glm, tokens_per_image=16)

    no_dit = tmp_path / "no_dit"
    shutil.copytree(tiny_glm, no_dit)
    (no_dit / "transformer" / "diffusion_pytorch_model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match=r"missing transformer/diffusion_pytorch_model.safetensors"):
        load(no_dit)

    other_class = tmp_path / "other_class"
    shutil.copytree(tiny_glm, other_class)
    index = json.loads((tiny_glm / "model_index.json").read_text())
    (other_class / "model_index.json").write_text(json.dumps({**index, "vae": ["diffusers", "AutoencoderDC"]}))
    from rollouts.glm_image.checkpoint import load_glm_image_checkpoint

    with pytest.raises(ValueError, match="component 'vae' is 'AutoencoderDC', expected 'AutoencoderKL'"):
        load_glm_image_checkpoint(other_class, ModelConfig(device="cpu"))

    # Weights of another codebook size in the AR folder: the mis-shaped head is named.
    other = write_tiny_glm_image_checkpoint(tmp_path / "other", num_codes=32)
    mixed = tmp_path / "mixed"
    shutil.copytree(tiny_glm, mixed)
    shutil.copy(other / "vision_language_encoder" / "model.safetensors",
                mixed / "vision_language_encoder" / "model.safetensors")
    with pytest.raises(CheckpointMismatchError, match="(?s)vision_language_encoder.*lm_head.weight: checkpoint \\(34, 64\\)"):
        load(mixed)

    # A whole AR of another codebook size next to the 64-code DiT.
    shutil.rmtree(mixed / "vision_language_encoder")
    shutil.copytree(other / "vision_language_encoder", mixed / "vision_language_encoder")
    assert json.loads((mixed / "transformer" / "config.json").read_text())["prior_vq_quantizer_codebook_size"] == 64
    with pytest.raises(ValueError, match="34 outputs.*64 codes"):
        load(mixed)


# ------------------------------------------------------------------------------------------------ log-probs
def _independent_logprobs(gen, ids, mask, tokens, sampling):
    """The prior's distribution the slow, obvious way: transformers' GlmImageForConditionalGeneration.forward over
    the whole sequence (its own input embedding and lm_head) at get_rope_index's positions, HF's own warpers on the
    code logits."""
    from rollouts.upstream_reference import hf_warpers

    prompt_pos, gen_pos = prior_positions(gen.lm, ids, mask, gen.grids)
    full = torch.cat([ids, tokens[:, :-1]], dim=1)
    full_mask = torch.cat([mask, torch.ones(ids.shape[0], tokens.shape[1] - 1, dtype=mask.dtype)], dim=1)
    pos = torch.cat([prompt_pos, gen_pos[:, :, :-1]], dim=2)
    logits = gen.lm(input_ids=full, attention_mask=full_mask, position_ids=pos).logits[:, ids.shape[1] - 1:]
    logits = logits[..., :gen.vocab.num_image_tokens].float()
    out = [hf_warpers(sampling)(ids, logits[:, t]).log_softmax(-1).gather(-1, tokens[:, t:t + 1])[:, 0]
           for t in range(tokens.shape[1])]
    return torch.stack(out, dim=1)


@pytest.mark.parametrize("top_k,top_p", [(None, None), (20, 0.9)])
def test_prior_logprobs_sampler_equal_trainer_fp32(tiny_glm, top_k, top_p):
    gen = load(tiny_glm, dtype="float32")
    ids, mask = gen.encode_prompts(PROMPTS)
    sampling = SamplingConfig(top_k=top_k, top_p=top_p, temperature=0.9)
    out = gen.sample_image_tokens(ids, mask, sampling, torch.Generator().manual_seed(0))
    assert out.image_tokens.shape == (3, N) and int(out.image_tokens.max()) < 64
    trainer = gen.image_token_logprobs(ids, mask, out.image_tokens, sampling)
    torch.testing.assert_close(trainer, out.logprobs, atol=1e-5, rtol=0)
    with torch.no_grad():
        torch.testing.assert_close(trainer.detach(), _independent_logprobs(gen, ids, mask, out.image_tokens, sampling),
                                   atol=1e-5, rtol=0)
    # What the trainer scores (no top-k/top-p) is finite for every code, sampled or not.
    every = torch.arange(64).repeat(3, 5)[:, :N]
    assert torch.isfinite(gen.image_token_logprobs(ids, mask, every, scored_distribution(sampling))).all()
    assert out.logprobs.mean() < -0.3  # a real distribution, not a point mass: the test compares something
    # The 3D rope matters: the same tokens at plain 1D positions score differently.
    _, lm, head = glm_image_parts(gen.lm)
    flat = torch.cat([ids, out.image_tokens[:, :-1]], dim=1)
    flat_mask = torch.cat([mask, torch.ones(3, N - 1, dtype=mask.dtype)], dim=1)
    with torch.no_grad():
        h = lm(input_ids=flat, attention_mask=flat_mask).last_hidden_state[:, ids.shape[1] - 1:]
    plain = head(h).detach()[..., :64].float().log_softmax(-1).gather(-1, out.image_tokens[..., None])[..., 0]
    if top_k is None:
        assert float((plain - out.logprobs.detach()).abs().max()) > 1e-3


def test_prior_logprobs_sampler_equal_trainer_bf16_with_fp32_masters(tiny_glm):
    gen = load(tiny_glm, dtype="float32")
    policy = Policy(gen, TrainerConfig(policy="full", bf16="on"))  # fp32 masters, bf16 autocast everywhere
    assert gen.compute_dtype == torch.bfloat16 and all(p.dtype == torch.float32 for p in policy.trainable_parameters())
    ids, mask = gen.encode_prompts(PROMPTS)
    sampling = SamplingConfig(top_k=None, top_p=None)
    gen.lm.eval()
    out = gen.sample_image_tokens(ids, mask, sampling, torch.Generator().manual_seed(1))
    with policy.autocast():
        trained = policy.logprobs(ids, mask, out.image_tokens, sampling)
    ref = policy.reference_logprobs(ids, mask, out.image_tokens, sampling)
    fp32 = load(tiny_glm, dtype="float32").image_token_logprobs(ids, mask, out.image_tokens, sampling)
    # KV-cached bf16 sampling vs one bf16 teacher-forced forward: bf16 rounding only (the Janus test's tolerance);
    # both stay close to the fp32 value of the same distribution.
    trained = trained.detach()
    assert float((trained - out.logprobs).abs().max()) < 0.15
    assert float((ref - out.logprobs).abs().max()) < 0.15
    assert float((trained - fp32.detach()).abs().mean()) < 0.05
    assert torch.isfinite(trained).all() and torch.isfinite(out.logprobs).all()


def test_ar_guidance_and_anchor_are_refused(tiny_glm):
    gen = load(tiny_glm)
    ids, mask = gen.encode_prompts(PROMPTS[:1])
    with pytest.raises(ValueError, match="without classifier-free guidance"):
        gen.sample_image_tokens(ids, mask, SamplingConfig(guidance_scale=5.0))
    tokens = torch.zeros(1, N, dtype=torch.long)
    with pytest.raises(ValueError, match="conditioning_anchor does not apply to GLM-Image"):
        gen.token_logprobs(gen.lm, ids, mask, tokens, SamplingConfig(), with_hidden=True)


# ------------------------------------------------------------------------------------------------ rendering
def test_frozen_dit_paints_the_token_ids_and_cannot_drift(tiny_glm):
    gen = load(tiny_glm, dtype="float32")
    rows = [{"prompt": p} for p in PROMPTS[1:]]
    sampling = SamplingConfig(top_k=None, top_p=None)
    renderer = RendererConfig(num_inference_steps=2, guidance_scale=1.5)
    batch = generate_rollouts(gen, rows, group_size=2, sampling=sampling, renderer_cfg=renderer, seed=3)
    assert batch.images.shape == (4, 64, 64, 3) and batch.images.dtype == torch.uint8
    again = generate_rollouts(gen, rows, group_size=2, sampling=sampling, renderer_cfg=renderer, seed=3)
    assert torch.equal(again.image_tokens, batch.image_tokens) and torch.equal(again.images, batch.images)
    # The conditioning is the ids (and the prompt text for the glyph encoder), nothing the policy computes.
    ids, mask = gen.encode_prompts([PROMPTS[2]])
    cond = gen.conditioning_hidden_states(ids, mask, batch.image_tokens[:1])
    assert cond.dtype == torch.long and torch.equal(cond[:, :N], batch.image_tokens[:1])
    assert not gen.conditioning_tracks_policy
    # diffusers' pipeline on the same prior ids, prompt and seed paints the same pixels.
    dit_ids = gen.renderer.dit_token_ids(batch.image_tokens[:1])
    assert dit_ids.shape == (1, 16)  # the 2x2 target grid upsampled 2x: the DiT's 4x4 patches
    hf = gen.renderer.pipe(prompt=[PROMPTS[2]], prior_token_ids=dit_ids, height=64, width=64, num_inference_steps=2,
                           guidance_scale=1.5, generator=[torch.Generator().manual_seed(11)], output_type="pt").images
    ours = gen.render(cond, [11], renderer)
    torch.testing.assert_close(ours, (hf * 255).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1),
                               atol=1, rtol=0)
    # The DiT reads the ids: other target-grid codes, same noise → another image.
    other = cond.clone()
    other[:, N - 4:N] = (other[:, N - 4:N] + 7) % 64
    assert not torch.equal(gen.render(other, [11], renderer), ours)
    # An update of the policy changes nothing about what stored tokens paint.
    with torch.no_grad():
        for p in gen.lm.parameters():
            p.add_(0.1)
    assert torch.equal(gen.render(cond, [11], renderer), ours)


# ------------------------------------------------------------------------------------------------ GRPO end to end
@pytest.fixture(scope="module")
def reward_module(tmp_path_factory):
    folder = tmp_path_factory.mktemp("glm_rewards")
    (folder / "glm_user_reward.py").write_text(
        "import numpy as np\n\n"
        "def redness(images, prompts, metadata):\n"
        "    return [float(np.asarray(im)[..., 0].mean() / 255.0) for im in images]\n")
    return folder


def _glm_recipe(folder, checkpoint, rewards, **trainer):
    data = {
        "name": "glm_e2e", "seed": 0,
        "model": {"source": "path", "path": str(checkpoint), "device": "cpu"},
        "rollout": {"prompts": {"format": "coco_generated", "coco": {"num_prompts": 20, "text_fraction": 0.5}},
                    "prompts_per_step": 2, "sampling": {"top_k": None, "top_p": None},
                    "renderer": {"num_inference_steps": 2}},
        "rewards": rewards,
        "trainer": {"num_generations": 2, "max_steps": 1, "learning_rate": 1e-3, "beta": 0.01, **trainer},
        "logging": {"sample_every": 1, "tensorboard": False, "archive_every": 1},
        "checkpoint": {"every": 1},
        "monitors": {"drift": {"every": 1}},
    }
    path = folder / "glm_e2e.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _assert_run(run_dir, rewards):
    rows = read_metrics(run_dir)
    assert [r["step"] for r in rows] == [1]
    for m in rows:
        for spec in rewards:
            key = spec.get("alias") or spec["name"].split("@")[0]
            assert math.isfinite(m[f"reward/{key}/mean"]) and f"reward_failed/{key}" not in m, key
        for key in ("loss", "kl", "grad_norm", "sampler_gap/mean", "sampler_gap/max"):
            assert math.isfinite(m[key]), key
        assert m["nonfinite_updates"] == 0 and m["drift/not_applicable"] == 1.0
        assert not any(k.startswith("drift/") and k != "drift/not_applicable" for k in m)
    return rows


def test_grpo_full_weights_with_every_reward_kind(tiny_glm, tiny_clip, reward_module, tmp_path):
    clip_dir, head = tiny_clip
    rewards = [
        {"name": "geneval", "options": {"detector": "yolov3tiny", "colour": "hsv"}},
        {"name": "ocr", "weight": 0.5, "options": {"backend": "rapidocr", "no_quote_fallback": "zero"}},
        {"name": "clipscore", "weight": 0.5, "options": {"path": str(clip_dir)}},
        {"name": "aesthetic", "weight": 0.25, "options": {"path": str(head), "clip_path": str(clip_dir)}},
        {"name": "jpeg_compressibility", "weight": 0.1},
        {"name": "glm_user_reward:redness", "alias": "redness", "weight": 0.5},
    ]
    recipe = _glm_recipe(reward_module, tiny_glm, rewards, policy="full", reward_aggregation="advantage_sum")
    run_dir = tmp_path / "run"
    result = runner.invoke(app, ["train", str(recipe), "--run-dir", str(run_dir), "--no-progress"])
    assert result.exit_code == 0, result.output
    rows = _assert_run(run_dir, rewards)
    assert rows[0]["reward_tag/geneval"] == "geneval@flowgrpo+yolov3tiny+hsv" and "geneval/accuracy" in rows[0]
    assert rows[0]["sampler_gap/max"] < 1e-4  # fp32: the trainer scores exactly what was sampled
    assert any(r["grad_norm"] > 0 for r in rows)
    # The checkpointed policy is the trained AR only (no DiT / VAE / glyph-encoder weights in it).
    from safetensors.torch import load_file

    saved = {}
    for f in (run_dir / "checkpoints" / "step-000001" / "policy").glob("*.safetensors"):
        saved.update(load_file(str(f)))
    assert saved and not any(k.startswith(("transformer.", "vae.", "text_encoder.")) for k in saved)
    fresh = load(tiny_glm).lm.state_dict()
    assert any(not torch.equal(fresh[k], v) for k, v in saved.items() if k in fresh)
    assert (run_dir / "samples" / "step-000001.png").is_file()


def test_grpo_lora_bf16(tiny_glm, reward_module, tmp_path):
    rewards = [{"name": "glm_user_reward:redness", "alias": "redness"}, {"name": "jpeg_compressibility"}]
    recipe = _glm_recipe(reward_module, tiny_glm, rewards, policy="lora", bf16="on",
                         lora={"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"]})
    run_dir = tmp_path / "run"
    result = runner.invoke(app, ["train", str(recipe), "--run-dir", str(run_dir), "--no-progress"])
    assert result.exit_code == 0, result.output
    rows = _assert_run(run_dir, rewards)
    assert rows[0]["sampler_gap/max"] < 0.15  # bf16 autocast: KV-cached vs teacher-forced rounding only
    assert (run_dir / "checkpoints" / "step-000001" / "policy" / "adapter_config.json").is_file()
    out = tmp_path / "export"
    result = runner.invoke(app, ["export", str(run_dir), "--out", str(out)])
    assert result.exit_code == 0, result.output
    exported = load(out)  # the released diffusers layout again, DiT / VAE / glyph encoder included, LoRA merged
    assert isinstance(exported, GlmImageGenerator)
    assert json.loads((out / "model_index.json").read_text())["_class_name"] == "GlmImagePipeline"
    original = load(tiny_glm)
    assert torch.equal(exported.renderer.transformer.prior_token_embedding.weight,
                       original.renderer.transformer.prior_token_embedding.weight)
    assert not any("lora" in k for k in exported.lm.state_dict())


def test_glm_image_preset_builds_the_tiny_generator():
    gen = NativeImageGenerator.from_config(ModelConfig(source="preset", preset="glm-image-tiny", device="cpu"))
    assert isinstance(gen, GlmImageGenerator) and gen.tokens_per_image == N
    assert gen.load_report["source"].startswith("preset:glm-image-tiny")


# ------------------------------------------------------------------------------------------------ doctor
def _doctor_lines(output):
    return [line for line in output.splitlines() if line.startswith(("ok ", "DIFFERS "))]


def test_doctor_compares_with_transformers_generate(tiny_glm):
    res = runner.invoke(app, ["doctor", str(tiny_glm), "--device", "cpu", "--dtype", "float32"])
    assert res.exit_code == 0, res.output
    lines = _doctor_lines(res.output)
    assert len(lines) == 4 and all(line.startswith("ok ") for line in lines), res.output
    assert "conditioning drift: not applicable" in res.output
    assert f"identical for the first {N} of {N} positions" in res.output


def test_doctor_reports_wrong_rope_positions(tiny_glm, monkeypatch):
    import rollouts.glm_image.prior_sampler as prior_sampler

    real = prior_sampler.prior_positions

    def one_d(model, ids, mask, grids):  # plain 1D positions instead of GLM's 3D rope: what generate would not do
        prompt_pos, gen_pos = real(model, ids, mask, grids)
        flat = torch.arange(gen_pos.shape[-1]).view(1, 1, -1) + prompt_pos[:, :, -1:] + 1
        return prompt_pos, flat.expand_as(gen_pos)

    monkeypatch.setattr(prior_sampler, "prior_positions", one_d)
    res = runner.invoke(app, ["doctor", str(tiny_glm), "--device", "cpu", "--dtype", "float32"])
    assert res.exit_code == 1, res.output
    differs = [line for line in _doctor_lines(res.output) if line.startswith("DIFFERS ")]
    assert any("log-probs on transformers generate's tokens" in line for line in differs), res.output


def test_glm_image_recipe_runs_one_step_on_the_tiny_checkpoint(tiny_glm, tiny_clip, tmp_path):
    """recipes/glm_image_t2i.yaml as written (sizes aside), with its placeholder weights swapped for offline ones."""
    from test_user_recipes import ROOT, TINY_SET, offline_rewards

    recipe = ROOT / "recipes" / "glm_image_t2i.yaml"
    written = yaml.safe_load(recipe.read_text())
    data = json.loads(json.dumps(written))
    data["rewards"] = offline_rewards(data["rewards"], *tiny_clip)
    copy = tmp_path / recipe.name
    copy.write_text(yaml.safe_dump(data))
    run_dir = tmp_path / "run"
    args = ["train", str(copy), "--run-dir", str(run_dir), "--no-progress", "--set", f"model.path={tiny_glm}",
            "--set", "rollout.prompts.coco.num_prompts=60", "--set", "model.device=cpu"]
    for item in TINY_SET:
        if not item.startswith("model.tokens_per_image"):  # GLM-Image's N is fixed by its grids
            args += ["--set", item]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    (m,) = read_metrics(run_dir)
    assert m["step"] == 1 and math.isfinite(m["reward/geneval/mean"]) and math.isfinite(m["reward/clipscore/mean"])
    used = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert used["rollout"]["sampling"]["top_k"] == 50  # the tiny generation_config.json names none: HF's default
    assert used["rollout"]["renderer"]["guidance_scale"] == written["rollout"]["renderer"]["guidance_scale"] == 1.5
    for key in ("beta", "learning_rate", "policy", "loss_type"):
        assert used["trainer"][key] == written["trainer"][key], key
    text = recipe.read_text()
    assert "RL code and its RL hyperparameters were never released" in text
    for key in ("num_generations", "beta", "learning_rate", "max_steps", "guidance_scale", "num_inference_steps",
                "temperature", "policy", "prompts_per_step"):
        for line in [ln for ln in text.splitlines() if ln.strip().startswith(key + ":")]:
            assert any(tag in line for tag in ("[G]", "[B]", "[T]", "[R]", "[O]")), f"{key}: no cited source: {line!r}"
