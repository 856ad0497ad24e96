"""The shipped recipes: every one passes `nativerl validate`, and each BLIP3o-NEXT recipe runs one full GRPO step
with its model swapped to the tiny preset (everything else as written, except sizes: G, steps, renderer steps).

Rewards run for real: GenEval through the offline stand-in (YOLOv3-tiny + HSV colours, since the recipes' Mask2Former
and CLIP weights are user-supplied placeholders), OCR through rapidocr, and CLIPScore / aesthetic on tiny random
CLIP and predictor-head weights saved in the real layouts."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import yaml
from typer.testing import CliRunner

from rl.cli import app
from rl.metrics_log import read_metrics
from tiny_fixtures import save_tiny_hf_clip

ROOT = Path(__file__).resolve().parents[1]
RECIPES = sorted((ROOT / "recipes").glob("*.yaml"))
BLIP3O = sorted(p for p in RECIPES if p.name.startswith("blip3o_next_"))
runner = CliRunner()

# Sizes only: one step of one prompt group of 2, 2 renderer steps, everything logged. The model is the tiny
# checkpoint in the released layout of the recipe's starting point (rollouts/tiny_release.py), 16 tokens an image.
TINY_SET = ["model.tokens_per_image=16", "trainer.num_generations=2",
            "trainer.max_steps=1", "rollout.prompts_per_step=1", "rollout.renderer.num_inference_steps=2",
            "logging.tensorboard=false", "logging.sample_every=1", "logging.archive_every=1", "checkpoint.every=1"]


@pytest.mark.parametrize("recipe", RECIPES, ids=[p.name for p in RECIPES])
def test_every_recipe_passes_validate(recipe):
    # Placeholders for user-supplied weights are errors (train would die on them) unless the user says the weights
    # are still to come; the shapes recipes point at committed files.
    placeholders = recipe.name.startswith(("blip3o_next_", "janus_pro_", "glm_image_"))  # user-supplied weights
    if placeholders:
        refused = runner.invoke(app, ["validate", str(recipe)])
        assert refused.exit_code == 2 and "model.path = checkpoints/" in refused.output
        assert "--allow-missing-weights" in refused.output
        result = runner.invoke(app, ["validate", str(recipe), "--allow-missing-weights"])
    else:
        result = runner.invoke(app, ["validate", str(recipe)])
    assert result.exit_code == 0, result.output
    assert "ok" in result.output
    if placeholders:
        assert "warning: model.path = checkpoints/" in result.output
    if recipe.name.startswith("shapes_") or recipe.name == "tiny_smoke.yaml":
        assert "warning" not in result.output


@pytest.mark.parametrize("recipe", BLIP3O, ids=[p.name for p in BLIP3O])
def test_blip3o_recipe_header_cites_a_source_for_every_hyperparameter(recipe):
    text = recipe.read_text()
    for key in ("num_generations", "beta", "learning_rate", "lr_scheduler_type", "max_steps", "guidance_scale",
                "num_inference_steps", "policy", "loss_type", "prompts_per_step"):
        (line,) = [ln for ln in text.splitlines() if ln.strip().startswith(key + ":")]
        assert "#" in line and any(tag in line for tag in ("[N]", "[P]", "[A]", "[I]", "[R]", "[T]", "[M]", "[O]")), \
            f"{recipe.name}: {key} has no cited source: {line!r}"


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    """A tiny random HF CLIP (768-d projection, like ViT-L/14, so the aesthetic head fits) with a tokenizer from the
    CLIP BPE that ships in open_clip, and a random LAION aesthetic head in its public key layout."""
    root = tmp_path_factory.mktemp("tiny_clip")
    clip_dir = root / "clip"
    save_tiny_hf_clip(clip_dir, projection_dim=768, text_layers=1, vision_layers=1, logit_scale=math.log(100.0))
    head = {}
    for prefix, (out_f, in_f) in {"layers.0": (1024, 768), "layers.2": (128, 1024), "layers.4": (64, 128),
                                  "layers.6": (16, 64), "layers.7": (1, 16)}.items():
        head[f"{prefix}.weight"] = torch.randn(out_f, in_f) / in_f ** 0.5
        head[f"{prefix}.bias"] = torch.zeros(out_f)
    torch.save(head, root / "sac+logos+ava1-l14-linearMSE.pth")
    return clip_dir, root / "sac+logos+ava1-l14-linearMSE.pth"


@pytest.fixture(scope="module")
def editing_backends(tmp_path_factory):
    """For the editing recipe: a fake OpenAI-compatible VLM on loopback (varied scores), a tiny DINOv2 folder and a
    tiny TA-Tok file in the released layout (64 codes, 16 tokens: the tiny preset's image vocabulary)."""
    from test_editing_judge import FakeVLM
    from transformers import Dinov2Config, Dinov2Model, SiglipVisionConfig

    from rollouts.ta_tok_checkpoint import write_tiny_ta_tok_checkpoint

    root = tmp_path_factory.mktemp("editing")
    Dinov2Model(Dinov2Config(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                             patch_size=8, image_size=32)).save_pretrained(root / "dino")
    SiglipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=2,
                       image_size=32, patch_size=8).save_pretrained(root / "teacher")
    write_tiny_ta_tok_checkpoint(root / "ta_tok.pth", teacher=str(root / "teacher"))
    vlm = FakeVLM()
    vlm.replies = ["Score: 3", "Score: 8"] * 50
    yield {"vlm_url": vlm.url, "dino": root / "dino", "ta_tok": root / "ta_tok.pth"}
    vlm.server.shutdown()


def offline_rewards(rewards, clip_dir, head, editing=None):
    """The recipe's rewards, with user-supplied weights swapped for offline ones (names, versions, weights and
    every other option kept)."""
    out = []
    for spec in rewards:
        spec = json.loads(json.dumps(spec))
        opts = spec.setdefault("options", {})
        if spec["name"].startswith("geneval"):
            opts.pop("detector_options", None)
            opts.pop("clip_path", None)
            opts.update(detector="yolov3tiny", colour="hsv")
        elif spec["name"].startswith("clipscore"):
            opts["path"] = str(clip_dir)
        elif spec["name"].startswith("aesthetic"):
            opts.update(path=str(head), clip_path=str(clip_dir))
        elif spec["name"].startswith("edit_judge"):
            opts["judge_options"]["url"] = editing["vlm_url"]
        elif spec["name"].startswith("image_consistency") and opts.get("version") in ("dino", "clip"):
            opts.update(path=str(editing["dino"]), dino_image_size=32)
        out.append(spec)
    return out


@pytest.fixture(scope="module")
def tiny_releases(tmp_path_factory):
    from rollouts.tiny_release import write_tiny_release

    root = tmp_path_factory.mktemp("released")
    return {v: write_tiny_release(root, v) for v in ("sft", "edit")}


@pytest.mark.parametrize("recipe", BLIP3O, ids=[p.name for p in BLIP3O])
def test_blip3o_recipe_runs_one_full_step_on_a_tiny_released_checkpoint(recipe, tiny_clip, editing_backends,
                                                                        tiny_releases, tmp_path):
    written = yaml.safe_load(recipe.read_text())
    data = json.loads(json.dumps(written))
    data["rewards"] = offline_rewards(data["rewards"], *tiny_clip, editing=editing_backends)
    rel = tiny_releases["edit" if "edit" in recipe.name else "sft"]
    extra = [f"model.path={rel.checkpoint}", f"model.diffusion_path={rel.diffusion}"]
    if data["model"].get("image_tokenizer"):
        extra.append(f"model.image_tokenizer={rel.image_tokenizer}")
    prompts = data["rollout"]["prompts"]
    if prompts.get("path"):
        extra.append(f"rollout.prompts.path={(recipe.parent / prompts['path']).resolve()}")
    if prompts["format"] == "coco_generated":
        extra.append("rollout.prompts.coco.num_prompts=60")
    copy = tmp_path / recipe.name
    copy.write_text(yaml.safe_dump(data))
    run_dir = tmp_path / "run"
    args = ["train", str(copy), "--run-dir", str(run_dir), "--no-progress"]
    for item in TINY_SET + extra:
        args += ["--set", item]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output

    (m,) = read_metrics(run_dir)
    assert m["step"] == 1 and m["policy_version"] == 1
    for spec in data["rewards"]:
        key = spec.get("alias") or spec["name"].split("@")[0]
        assert math.isfinite(m[f"reward/{key}/mean"]), key
        assert f"reward_failed/{key}" not in m
    if any(s["name"] == "geneval" for s in data["rewards"]):
        assert m["reward_tag/geneval"] == "geneval@flowgrpo+yolov3tiny+hsv" and "geneval/accuracy" in m
    if any(s["name"] == "ocr" for s in data["rewards"]):
        assert m["reward_tag/ocr"] == "ocr@flowgrpo"
    if any(s["name"] == "edit_judge" for s in data["rewards"]):  # the fake judge answered 3/10 and 8/10
        assert 0.3 <= m["reward/edit_judge/mean"] <= 0.8 and m["reward_tag/image_consistency"].endswith("dino")
    if written["trainer"]["beta"] > 0:
        assert "kl" in m
    if len(data["rewards"]) > 1:  # which reward drives the advantage: shares sum to 1 where any reward varied
        shares = [v for k, v in m.items() if k.startswith("reward_share/")]
        assert len(shares) == len(data["rewards"]) and (math.isnan(sum(shares)) or abs(sum(shares) - 1) < 1e-9)

    # Only the sizes changed: the run used the recipe's hyperparameters.
    used = yaml.safe_load((run_dir / "config.yaml").read_text())
    for section, key in (("trainer", "beta"), ("trainer", "learning_rate"), ("trainer", "loss_type"),
                         ("trainer", "policy"), ("trainer", "lr_scheduler_type"), ("trainer", "reward_aggregation")):
        if key in written[section]:
            assert used[section][key] == written[section][key], key
    assert used["rollout"]["renderer"]["guidance_scale"] == written["rollout"]["renderer"]["guidance_scale"] == 2.0
    assert used["rollout"]["sampling"] == {**used["rollout"]["sampling"], **written["rollout"]["sampling"]}
    policy_dir = run_dir / "checkpoints" / "step-000001" / "policy"
    if written["trainer"]["policy"] == "lora":
        assert (policy_dir / "adapter_config.json").is_file()
        assert json.loads((policy_dir / "adapter_config.json").read_text())["r"] == written["trainer"]["lora"]["r"]
    else:
        # GenEval and OCR score the tiny model's noise images 0 everywhere (zero advantages, no update); CLIPScore
        # and the aesthetic head give varied scores, so the multi-reward step must move the weights.
        if recipe.name == "blip3o_next_multireward.yaml":
            assert m["grad_norm"] > 0
        check_eval_loads_the_trained_full_weights(run_dir, policy_dir, changed=m["grad_norm"] > 0)
    assert (run_dir / "archive" / "step-000001" / "rollouts.pt").is_file()


def check_eval_loads_the_trained_full_weights(run_dir, policy_dir, changed):
    """`nativerl eval RUN_DIR` of a full-weight run puts the checkpoint's LM weights into the generator."""
    from safetensors.torch import load_file

    from rl.eval_command import load_generator, resolve_target
    from rl.recipe import load_recipe
    from rollouts.generator import NativeImageGenerator

    recipe = load_recipe(run_dir / "config.yaml")
    loaded = load_generator(resolve_target(run_dir), recipe).lm.state_dict()
    saved = {}
    for f in sorted(policy_dir.glob("*.safetensors")):
        saved.update(load_file(str(f)))
    assert saved and all(torch.equal(loaded[k], v) for k, v in saved.items())
    fresh = NativeImageGenerator.from_config(recipe.model).lm.state_dict()
    if changed:  # then the loaded weights are the trained ones, not the initial ones
        assert any(not torch.equal(fresh[k], v) for k, v in saved.items())
