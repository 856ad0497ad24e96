"""Janus-Pro (rollouts/janus/): the tiny random checkpoint in the released transformers layout loads through
transformers' own classes, mismatches are explained, the CFG-guided log-probs of the sampler equal the trainer's in
fp32 and under bf16 autocast (fp32 masters), both CFG rows carry gradient, CFG off is plain conditional sampling,
and GRPO runs end to end through the real trainer with every reward kind the BLIP3o-NEXT tests use."""

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
from rollouts.janus.cfg_sampler import janus_parts, unconditional_prompt
from rollouts.janus.generator import JanusImageGenerator
from rollouts.janus.tiny_checkpoint import write_tiny_janus_checkpoint
from rollouts.rollout import generate_rollouts
from rollouts.sampler import scored_distribution
from test_user_recipes import tiny_clip  # noqa: F401 (a fixture)

pytestmark = pytest.mark.usefixtures("one_torch_thread")
PROMPTS = ["a red apple on a table", "two dogs", "a blue bicycle to the left of a yellow car"]
runner = CliRunner()


@pytest.fixture(scope="module")
def tiny_janus(tmp_path_factory):
    return write_tiny_janus_checkpoint(tmp_path_factory.mktemp("janus") / "Janus-Pro-tiny")


def load(path, **kw) -> JanusImageGenerator:
    return NativeImageGenerator.from_config(ModelConfig(source="path", path=str(path), device="cpu", **kw))


# ------------------------------------------------------------------------------------------------ loading
def test_tiny_checkpoint_is_the_released_transformers_layout(tiny_janus):
    from transformers import JanusForConditionalGeneration, JanusProcessor

    names = {p.name for p in tiny_janus.iterdir()}
    assert {"config.json", "model.safetensors", "generation_config.json", "tokenizer.json",
            "processor_config.json", "chat_template.jinja"} <= names
    assert json.loads((tiny_janus / "config.json").read_text())["model_type"] == "janus"
    # Plain transformers loads it with no missing or unexpected weights.
    _, info = JanusForConditionalGeneration.from_pretrained(str(tiny_janus), output_loading_info=True)
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys"))
    JanusProcessor.from_pretrained(str(tiny_janus))

    gen = load(tiny_janus)
    assert isinstance(gen, JanusImageGenerator) and gen.tokens_per_image == 16 and gen.vocab.num_image_tokens == 64
    assert gen.default_guidance == 5.0 and gen.lm.model.vqmodel is None  # the VQ model is the renderer's
    lm_params = {id(p) for p in gen.lm.parameters()}
    assert not any(id(p) in lm_params for p in gen.renderer.parameters())
    ids, mask = gen.encode_prompts(PROMPTS[:2])
    assert (ids[:, -1] == gen.special.boi).all() and mask[1, 0] == 0  # left-padded, ends <begin_of_image>
    text = gen.tokenizer.decode(ids[1][mask[1].bool()])
    assert text.startswith("<｜begin▁of▁sentence｜><|User|>: two dogs") and text.endswith("<|Assistant|>:<begin_of_image>")
    # The unconditional row keeps BOS and <begin_of_image> only.
    uncond = unconditional_prompt(ids, gen.special)
    kept = uncond[mask.bool()]
    assert set(kept.tolist()) == {gen.special.bos, gen.special.boi, gen.special.pad}


def test_mismatches_are_explained(tiny_janus, tmp_path):
    with pytest.raises(ValueError, match="exactly 16 image tokens"):
        load(tiny_janus, tokens_per_image=576)

    no_weights = tmp_path / "no_weights"
    shutil.copytree(tiny_janus, no_weights)
    (no_weights / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match=r"missing weights \(model.safetensors or"):
        load(no_weights)

    original = tmp_path / "original"
    shutil.copytree(tiny_janus, original)
    cfg = json.loads((original / "config.json").read_text())
    (original / "config.json").write_text(json.dumps({**cfg, "model_type": "multi_modality"}))
    with pytest.raises(ValueError, match="DeepSeek's original Janus release.*convert_janus_weights_to_hf"):
        from rollouts.janus.checkpoint import load_janus_checkpoint
        load_janus_checkpoint(original, ModelConfig(device="cpu"))

    grid = tmp_path / "grid"
    shutil.copytree(tiny_janus, grid)
    cfg["vision_config"]["num_image_tokens"] = 25
    (grid / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="num_image_tokens = 25 but the VQ decoder takes 4x4 = 16"):
        load(grid)

    other = write_tiny_janus_checkpoint(tmp_path / "other", num_codes=32)  # another codebook size
    shutil.copy(other / "model.safetensors", grid / "model.safetensors")
    (grid / "config.json").write_text((tiny_janus / "config.json").read_text())
    with pytest.raises(CheckpointMismatchError, match="generation_head"):
        load(grid)


# ------------------------------------------------------------------------------------------------ CFG log-probs
def _independent_guided_logprobs(gen, ids, mask, tokens, sampling):
    """The guided distribution the slow, obvious way: one plain transformers forward per row kind over the full
    sequence (JanusModel embeddings, no cache), HF's own CFG processor and warpers on the head's logits."""
    from transformers.generation.logits_process import ClassifierFreeGuidanceLogitsProcessor

    from rollouts.upstream_reference import hf_warpers

    parts = janus_parts(gen.lm)
    b, p = ids.shape
    n = tokens.shape[1]
    rows = torch.cat([ids, unconditional_prompt(ids, gen.special)])
    embeds = torch.cat([parts.text_embeddings(rows), parts.image_embeddings(tokens[:, :-1].repeat(2, 1))], dim=1)
    full_mask = torch.cat([mask, mask]).long()
    full_mask = torch.cat([full_mask, torch.ones(2 * b, n - 1, dtype=torch.long)], dim=1)
    pos = (full_mask.cumsum(-1) - 1).clamp(min=0)
    hidden = gen.lm.model.language_model(inputs_embeds=embeds, attention_mask=full_mask,
                                         position_ids=pos).last_hidden_state[:, p - 1:]
    logits = gen.lm.model.generation_head(hidden).float()  # [2B, N, K]
    cfg = ClassifierFreeGuidanceLogitsProcessor(sampling.guidance_scale)
    out = []
    for t in range(n):
        guided = cfg(ids, logits[:, t])  # HF: cond rows first, then uncond
        warped = hf_warpers(sampling)(ids, guided)
        out.append(warped.log_softmax(-1).gather(-1, tokens[:, t:t + 1])[:, 0])
    return torch.stack(out, dim=1)


@pytest.mark.parametrize("top_k,top_p", [(None, None), (20, 0.9)])
def test_cfg_logprobs_sampler_equal_trainer_fp32(tiny_janus, top_k, top_p):
    gen = load(tiny_janus, dtype="float32")
    ids, mask = gen.encode_prompts(PROMPTS)
    sampling = SamplingConfig(top_k=top_k, top_p=top_p, temperature=0.9, guidance_scale=5.0)
    out = gen.sample_image_tokens(ids, mask, sampling, torch.Generator().manual_seed(0))
    assert out.image_tokens.shape == (3, 16) and int(out.image_tokens.max()) < 64
    trainer = gen.image_token_logprobs(ids, mask, out.image_tokens, sampling)
    torch.testing.assert_close(trainer, out.logprobs, atol=1e-5, rtol=0)
    torch.testing.assert_close(trainer, _independent_guided_logprobs(gen, ids, mask, out.image_tokens, sampling),
                               atol=1e-5, rtol=0)
    # What the trainer scores (no top-k/top-p) is finite for every code, sampled or not.
    every = torch.arange(64).repeat(3, 1)[:, :16]
    assert torch.isfinite(gen.image_token_logprobs(ids, mask, every, scored_distribution(sampling))).all()
    assert out.logprobs.mean() < -0.3  # a real distribution, not a point mass: the test compares something


def test_cfg_logprobs_sampler_equal_trainer_bf16_with_fp32_masters(tiny_janus):
    gen = load(tiny_janus, dtype="float32")
    policy = Policy(gen, TrainerConfig(policy="full", bf16="on"))  # fp32 masters, bf16 autocast everywhere
    assert gen.compute_dtype == torch.bfloat16 and all(p.dtype == torch.float32 for p in policy.trainable_parameters())
    ids, mask = gen.encode_prompts(PROMPTS)
    sampling = SamplingConfig(top_k=None, top_p=None, guidance_scale=5.0)
    gen.lm.eval()
    out = gen.sample_image_tokens(ids, mask, sampling, torch.Generator().manual_seed(1))
    with policy.autocast():
        trained = policy.logprobs(ids, mask, out.image_tokens, sampling)
    ref = policy.reference_logprobs(ids, mask, out.image_tokens, sampling)
    fp32 = load(tiny_janus, dtype="float32").image_token_logprobs(ids, mask, out.image_tokens, sampling)
    # KV-cached bf16 sampling vs one bf16 teacher-forced forward: bf16 rounding only (tolerance as nativerl
    # doctor's for bf16); both stay close to the fp32 value of the same distribution.
    trained = trained.detach()
    assert float((trained - out.logprobs).abs().max()) < 0.15
    assert float((ref - out.logprobs).abs().max()) < 0.15
    assert float((trained - fp32.detach()).abs().mean()) < 0.05
    assert torch.isfinite(trained).all()


def test_both_cfg_rows_carry_gradient_and_cfg_off_is_conditional_only(tiny_janus):
    gen = load(tiny_janus, dtype="float32")
    ids, mask = gen.encode_prompts(PROMPTS[:2])
    guided = SamplingConfig(top_k=None, top_p=None, guidance_scale=5.0)
    tokens = gen.sample_image_tokens(ids, mask, guided, torch.Generator().manual_seed(2)).image_tokens
    grads = {}
    emb = gen.lm.get_input_embeddings()
    def keep_grad(module, inputs, output):
        output.register_hook(lambda g: grads.setdefault("prompt", g))

    hook = emb.register_forward_hook(keep_grad)
    gen.image_token_logprobs(ids, mask, tokens, guided).sum().backward()
    hook.remove()
    g = grads["prompt"]  # [2B, P, H]: conditional rows, then unconditional rows
    assert g.shape[0] == 4 and float(g[:2].abs().sum()) > 0 and float(g[2:].abs().sum()) > 0

    off = SamplingConfig(top_k=None, top_p=None, guidance_scale=1.0)
    lp_off = gen.image_token_logprobs(ids, mask, tokens, off).detach()
    # CFG off = the conditional row alone, as a plain transformers forward computes it.
    parts = janus_parts(gen.lm)
    embeds = torch.cat([parts.text_embeddings(ids), parts.image_embeddings(tokens[:, :-1])], dim=1)
    full = torch.cat([mask, torch.ones(2, 15, dtype=mask.dtype)], dim=1)
    hidden = parts.language_model(inputs_embeds=embeds, attention_mask=full,
                                  position_ids=(full.cumsum(-1) - 1).clamp(min=0)).last_hidden_state
    plain = parts.head(hidden[:, ids.shape[1] - 1:]).float().log_softmax(-1).gather(-1, tokens[..., None])[..., 0]
    torch.testing.assert_close(lp_off, plain.detach(), atol=1e-5, rtol=0)
    lp_on = gen.image_token_logprobs(ids, mask, tokens, guided).detach()
    assert float((lp_on - lp_off).abs().max()) > 0.1  # guidance changes the distribution
    # None = the checkpoint's default (generation_config.json: 5).
    default = SamplingConfig(top_k=None, top_p=None)
    torch.testing.assert_close(gen.image_token_logprobs(ids, mask, tokens, default).detach(), lp_on)


def test_rollouts_decode_through_the_vq_model_and_cannot_drift(tiny_janus):
    gen = load(tiny_janus, dtype="float32")
    rows = [{"prompt": p} for p in PROMPTS[:2]]
    sampling = SamplingConfig(top_k=None, top_p=None)
    batch = generate_rollouts(gen, rows, group_size=2, sampling=sampling, renderer_cfg=RendererConfig(), seed=3)
    assert batch.images.shape == (4, 32, 32, 3) and batch.images.dtype == torch.uint8
    again = generate_rollouts(gen, rows, group_size=2, sampling=sampling, renderer_cfg=RendererConfig(), seed=3)
    assert torch.equal(again.image_tokens, batch.image_tokens) and torch.equal(again.images, batch.images)
    # transformers' decode path gives the same pixels (JanusImageProcessor.postprocess of vqmodel.decode).
    pixels = gen.renderer.vqmodel.decode(batch.image_tokens)
    hf = gen.processor.postprocess(list(pixels.float()), return_tensors="pt")["pixel_values"]
    assert torch.equal(torch.as_tensor(hf).permute(0, 2, 3, 1).to(torch.uint8), batch.images)
    assert not gen.conditioning_tracks_policy


# ------------------------------------------------------------------------------------------------ GRPO end to end
@pytest.fixture(scope="module")
def reward_module(tmp_path_factory):
    folder = tmp_path_factory.mktemp("janus_rewards")
    (folder / "janus_user_reward.py").write_text(
        "import numpy as np\n\n"
        "def redness(images, prompts, metadata):\n"
        "    return [float(np.asarray(im)[..., 0].mean() / 255.0) for im in images]\n")
    return folder


def _janus_recipe(folder, checkpoint, rewards, **trainer):
    data = {
        "name": "janus_e2e", "seed": 0,
        "model": {"source": "path", "path": str(checkpoint), "device": "cpu"},
        # GenEval-style rows (tag, include); half also ask for a quoted sign text, for the OCR reward.
        "rollout": {"prompts": {"format": "coco_generated", "coco": {"num_prompts": 20, "text_fraction": 0.5}},
                    "prompts_per_step": 2, "sampling": {"top_k": None, "top_p": None, "guidance_scale": 5.0}},
        "rewards": rewards,
        "trainer": {"num_generations": 2, "max_steps": 1, "learning_rate": 1e-3, "beta": 0.01, **trainer},
        "logging": {"sample_every": 1, "tensorboard": False, "archive_every": 1},
        "checkpoint": {"every": 1},
        "monitors": {"drift": {"every": 1}},
    }
    path = folder / "janus_e2e.yaml"
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


def test_grpo_full_weights_with_every_reward_kind(tiny_janus, tiny_clip, reward_module, tmp_path):
    clip_dir, head = tiny_clip
    rewards = [
        {"name": "geneval", "options": {"detector": "yolov3tiny", "colour": "hsv"}},
        {"name": "ocr", "weight": 0.5, "options": {"backend": "rapidocr", "no_quote_fallback": "zero"}},
        {"name": "clipscore", "weight": 0.5, "options": {"path": str(clip_dir)}},
        {"name": "aesthetic", "weight": 0.25, "options": {"path": str(head), "clip_path": str(clip_dir)}},
        {"name": "jpeg_compressibility", "weight": 0.1},
        {"name": "janus_user_reward:redness", "alias": "redness", "weight": 0.5},
    ]
    recipe = _janus_recipe(reward_module, tiny_janus, rewards, policy="full", reward_aggregation="advantage_sum")
    run_dir = tmp_path / "run"
    result = runner.invoke(app, ["train", str(recipe), "--run-dir", str(run_dir), "--no-progress"])
    assert result.exit_code == 0, result.output
    rows = _assert_run(run_dir, rewards)
    assert rows[0]["reward_tag/geneval"] == "geneval@flowgrpo+yolov3tiny+hsv" and "geneval/accuracy" in rows[0]
    assert rows[0]["sampler_gap/max"] < 1e-4  # fp32: the trainer scores exactly what was sampled
    assert any(r["grad_norm"] > 0 for r in rows)  # CLIPScore / aesthetic / redness vary within a group
    # The checkpointed policy is the trained LM (no VQ weights in it), and eval loads it back.
    policy = run_dir / "checkpoints" / "step-000001" / "policy"
    from safetensors.torch import load_file

    saved = {}
    for f in policy.glob("*.safetensors"):
        saved.update(load_file(str(f)))
    assert saved and not any("vqmodel" in k for k in saved)
    fresh = load(tiny_janus).lm.state_dict()
    assert any(not torch.equal(fresh[k], v) for k, v in saved.items() if k in fresh)
    assert (run_dir / "archive" / "step-000001" / "rollouts.pt").is_file()
    assert (run_dir / "samples" / "step-000001.png").is_file()


def test_grpo_lora_bf16_and_export_round_trip(tiny_janus, reward_module, tmp_path):
    rewards = [{"name": "janus_user_reward:redness", "alias": "redness"}, {"name": "jpeg_compressibility"}]
    recipe = _janus_recipe(reward_module, tiny_janus, rewards, policy="lora", bf16="on",
                           lora={"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj", "proj_out"]})
    run_dir = tmp_path / "run"
    result = runner.invoke(app, ["train", str(recipe), "--run-dir", str(run_dir), "--no-progress"])
    assert result.exit_code == 0, result.output
    rows = _assert_run(run_dir, rewards)
    assert rows[0]["sampler_gap/max"] < 0.15  # bf16 autocast: KV-cached vs teacher-forced rounding only
    assert (run_dir / "checkpoints" / "step-000001" / "policy" / "adapter_config.json").is_file()
    out = tmp_path / "export"
    result = runner.invoke(app, ["export", str(run_dir), "--out", str(out)])
    assert result.exit_code == 0, result.output
    exported = load(out)  # the released layout again, VQ model included, LoRA merged
    assert isinstance(exported, JanusImageGenerator)
    assert torch.equal(exported.renderer.vqmodel.quantize.embedding.weight,
                       load(tiny_janus).renderer.vqmodel.quantize.embedding.weight)


def test_janus_recipe_runs_one_step_on_the_tiny_checkpoint(tiny_janus, tiny_clip, tmp_path):
    """recipes/janus_pro_t2i.yaml as written (sizes aside), with its placeholder weights swapped for offline ones."""
    from test_user_recipes import ROOT, TINY_SET, offline_rewards

    recipe = ROOT / "recipes" / "janus_pro_t2i.yaml"
    written = yaml.safe_load(recipe.read_text())
    data = json.loads(json.dumps(written))
    data["rewards"] = offline_rewards(data["rewards"], *tiny_clip)
    copy = tmp_path / recipe.name
    copy.write_text(yaml.safe_dump(data))
    run_dir = tmp_path / "run"
    args = ["train", str(copy), "--run-dir", str(run_dir), "--no-progress", "--set", f"model.path={tiny_janus}",
            "--set", "rollout.prompts.coco.num_prompts=60", "--set", "model.device=cpu"]
    for item in TINY_SET:
        args += ["--set", item]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    (m,) = read_metrics(run_dir)
    assert m["step"] == 1 and math.isfinite(m["reward/geneval/mean"]) and math.isfinite(m["reward/clipscore/mean"])
    used = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert used["rollout"]["sampling"]["guidance_scale"] == written["rollout"]["sampling"]["guidance_scale"] == 5.0
    for key in ("beta", "learning_rate", "policy", "loss_type"):
        assert used["trainer"][key] == written["trainer"][key], key
    text = recipe.read_text()
    for key in ("num_generations", "beta", "learning_rate", "max_steps", "guidance_scale", "temperature", "policy"):
        (line,) = [ln for ln in text.splitlines() if ln.strip().startswith(key + ":")]
        assert any(tag in line for tag in ("[J]", "[T]", "[S]", "[O]")), f"{key} has no cited source: {line!r}"


def test_janus_preset_builds_the_tiny_generator():
    gen = NativeImageGenerator.from_config(ModelConfig(source="preset", preset="janus-pro-tiny", device="cpu"))
    assert isinstance(gen, JanusImageGenerator) and gen.tokens_per_image == 16
    assert gen.load_report["source"].startswith("preset:janus-pro-tiny")
    ids, mask = gen.encode_prompts(["a cat"])
    out = gen.sample_image_tokens(ids, mask, SamplingConfig(top_k=None, top_p=None), torch.Generator().manual_seed(0))
    assert out.image_tokens.shape == (1, 16)


def test_blip3o_refuses_ar_guidance():
    gen = NativeImageGenerator.from_config(ModelConfig(preset="tiny", device="cpu"))
    ids, mask = gen.encode_prompts(["a cat"])
    with pytest.raises(ValueError, match="BLIP3o-NEXT samples its AR tokens without classifier-free guidance"):
        gen.sample_image_tokens(ids, mask, SamplingConfig(guidance_scale=5.0))


# ------------------------------------------------------------------------------------------------ doctor
def _doctor_lines(output):
    return [line for line in output.splitlines() if line.startswith(("ok ", "DIFFERS "))]


def test_doctor_compares_with_transformers_generate_with_cfg(tiny_janus):
    res = runner.invoke(app, ["doctor", str(tiny_janus), "--device", "cpu", "--dtype", "float32"])
    assert res.exit_code == 0, res.output
    lines = _doctor_lines(res.output)
    assert len(lines) == 5 and all(line.startswith("ok ") for line in lines), res.output
    assert "guidance 5.0 (conditional + unconditional rows)" in res.output and "transformers:" in res.output
    assert "identical for the first 16 of 16 positions" in res.output


def test_doctor_reports_a_wrong_unconditional_row(tiny_janus, monkeypatch):
    import rollouts.janus.cfg_sampler as cfg_sampler

    monkeypatch.setattr(cfg_sampler, "unconditional_prompt", lambda ids, special: ids.clone())  # no CFG contrast
    res = runner.invoke(app, ["doctor", str(tiny_janus), "--device", "cpu", "--dtype", "float32"])
    assert res.exit_code == 1, res.output
    differs = [line for line in _doctor_lines(res.output) if line.startswith("DIFFERS ")]
    assert any("log-probs on transformers generate's tokens" in line for line in differs), res.output
    assert "checks differ" in res.output
