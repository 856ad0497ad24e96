"""GRPO numerics in the settings users run (issue 13): truncated sampling with a KL term, μ = 1 and 2, LoRA and full
weights, fp32 and bf16. Nothing non-finite reaches the weights or a checkpoint; the ratio is exactly 1 at the first
optimizer step; a non-finite update is refused or skipped; metric rules fire on NaN/inf; inf hyperparameters are
refused at load time."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from rl.finite_guards import NonFiniteUpdateError, NonFiniteWeightsError
from rl.grpo import behaviour_weights, grpo_loss
from rl.monitors.config import MetricRule
from rl.monitors.metric_rules import MetricRules
from rl.metrics_log import read_metrics
from rl.recipe import RecipeError, load_recipe
from rl.train_loop import GRPOTrainer

ROOT = Path(__file__).resolve().parents[1]
SHAPES = ROOT / "recipes" / "shapes_grpo_lm_head.yaml"
# The issue's reproduction: truncated sampling (top-k 24 of 64 codes, top-p 0.9) with a KL term.
TRUNCATED_KL = ["rollout.sampling.top_k=24", "rollout.sampling.top_p=0.9", "trainer.beta=0.001"]
QUIET = ["eval.before_and_after=false", "logging.sample_every=0", "logging.tensorboard=false",
         f"model.path={ROOT / 'worlds' / 'shapes' / 'pretrained'}"]


def shapes_recipe(*overrides: str):
    return load_recipe(SHAPES, [*QUIET, "rollout.prompts_per_step=2", "checkpoint.every=0", *overrides])


def finite(rows, key):
    return all(r.get(key) is not None and math.isfinite(r[key]) for r in rows)


def weights_finite(policy_dir: Path) -> bool:
    from safetensors.torch import load_file

    files = list(policy_dir.glob("*.safetensors"))
    assert files, policy_dir
    return all(bool(torch.isfinite(t).all()) for f in files for t in load_file(str(f)).values())


def test_issue_reproduction_is_finite(tmp_path):
    """The issue's command (4 steps, bias-corrected KL) gave NaN LoRA weights at step 2 and saved them."""
    recipe = shapes_recipe(*TRUNCATED_KL, "trainer.use_bias_correction_kl=true", "trainer.max_steps=4",
                           "rollout.prompts_per_step=8")
    GRPOTrainer(recipe, tmp_path / "run", progress=False).run()
    rows = read_metrics(tmp_path / "run")
    assert len(rows) == 4
    for key in ("loss", "kl", "grad_norm", "sampler_gap/mean", "sampler_gap/max"):
        assert finite(rows, key), (key, [r.get(key) for r in rows])
    assert all(r["nonfinite_updates"] == 0 for r in rows)
    assert rows[-1]["kl"] > 0
    # μ = 1: π_old is the trainer's own π.detach(), so ρ ≡ 1 exactly and nothing clips
    assert all(r["ratio/mean"] == 1.0 and r["clip_ratio"] == 0.0 for r in rows)
    # the truncation shows up as the sampler-vs-trainer gap (log Z of the kept mass), not as inf
    assert rows[0]["sampler_gap/mean"] > 0.01
    assert weights_finite(tmp_path / "run" / "checkpoints" / "step-000004" / "policy")


def test_trained_logprobs_ignore_the_truncation_and_are_finite():
    """A sampled token never scores −inf in the trainer, whatever top-k/top-p sampled it; scoring is the same with
    and without the truncation, so no top-p boundary can flip."""
    from rl.policy import Policy
    from rl.recipe import TrainerConfig
    from rollouts.config import ModelConfig, SamplingConfig
    from rollouts.generator import NativeImageGenerator

    gen = NativeImageGenerator.from_config(ModelConfig(preset="tiny", device="cpu", seed=3))
    ids, mask = gen.encode_prompts(["a red circle", "a cat"])
    truncated = SamplingConfig(top_k=3, top_p=0.5, temperature=0.7)
    sampled = gen.sample_image_tokens(ids, mask, truncated, generator=torch.Generator().manual_seed(0))
    policy = Policy(gen, TrainerConfig(policy="full"))
    other = torch.randint(0, gen.vocab.num_image_tokens, sampled.image_tokens.shape)  # tokens the sampler cut
    for tokens in (sampled.image_tokens, other):
        scored = policy.logprobs(ids, mask, tokens, truncated).detach()
        assert bool(torch.isfinite(scored).all())
        torch.testing.assert_close(scored, policy.logprobs(ids, mask, tokens, SamplingConfig(
            top_k=None, top_p=None, temperature=0.7)).detach(), rtol=0, atol=0)
        assert bool(torch.isfinite(policy.reference_logprobs(ids, mask, tokens, truncated)).all())
    # the behaviour (sampler) log-probs are the truncated ones: larger by log(1 / kept mass)
    gap = sampled.logprobs - policy.logprobs(ids, mask, sampled.image_tokens, truncated).detach()
    assert bool((gap > -1e-5).all()) and float(gap.mean()) > 0.05


def test_tis_weights_and_loss():
    old = torch.log(torch.tensor([[0.5, 0.2, 0.9]]))
    behaviour = torch.log(torch.tensor([[0.5, 0.4, 0.1]]))
    w = behaviour_weights(old, behaviour, cap=3.0)
    torch.testing.assert_close(w, torch.tensor([[1.0, 0.5, 3.0]]))  # 0.9/0.1 = 9 is capped at 3
    logp = old.clone().requires_grad_(True)
    adv = torch.tensor([1.0])
    plain, _ = grpo_loss(logp, old, None, adv, torch.ones_like(old), beta=0.0, epsilon=0.2)
    ones, _ = grpo_loss(logp, old, None, adv, torch.ones_like(old), beta=0.0, epsilon=0.2,
                        behaviour_weights=torch.ones_like(old))
    weighted, _ = grpo_loss(logp, old, None, adv, torch.ones_like(old), beta=0.0, epsilon=0.2, behaviour_weights=w)
    assert ones.item() == plain.item()
    assert weighted.item() == pytest.approx(-(1.0 + 0.5 + 3.0) / 3)


def _poisoned_full_trainer(tmp_path, policy_setting: str, where: str):
    recipe = load_recipe(SHAPES, [*QUIET, *TRUNCATED_KL, "trainer.policy=full", "rollout.prompts_per_step=1",
                                  "trainer.max_steps=2", "checkpoint.every=1", "trainer.learning_rate=1e-5",
                                  f"trainer.nonfinite_update={policy_setting}"])
    trainer = GRPOTrainer(recipe, tmp_path / "run", progress=False)
    with torch.no_grad():
        target = trainer.policy.reference if where == "reference" else trainer.policy.lm
        next(p for n, p in target.named_parameters() if "layers.0.mlp.down_proj" in n)[0, 0] = float("nan")
    return trainer


def test_nonfinite_update_is_refused_by_default(tmp_path):
    trainer = _poisoned_full_trainer(tmp_path, "error", "reference")  # NaN KL → NaN loss and gradient
    before = {n: p.detach().clone() for n, p in trainer.policy.named_trainable_parameters()}
    with pytest.raises(NonFiniteUpdateError, match=r"step 1, iteration 1/1, optimizer step 1/1: non-finite update "
                                                    r"\(loss nan, kl nan, grad_norm nan\).*nonfinite_update: skip"):
        trainer.run()
    assert all(torch.equal(p, before[n]) for n, p in trainer.policy.named_trainable_parameters())


def test_nonfinite_update_skipped_when_asked(tmp_path):
    trainer = _poisoned_full_trainer(tmp_path, "skip", "reference")
    before = {n: p.detach().clone() for n, p in trainer.policy.named_trainable_parameters()}
    trainer.run()
    rows = read_metrics(tmp_path / "run")
    assert [r["nonfinite_updates"] for r in rows] == [1, 1]
    assert rows[0]["loss"] is None  # logged as what it was (null = NaN), so a rule on it fires
    assert not trainer.optimizer.state  # AdamW never stepped: no moments, no step count
    assert all(torch.equal(p, before[n]) for n, p in trainer.policy.named_trainable_parameters())
    assert weights_finite(tmp_path / "run" / "checkpoints" / "step-000002" / "policy")


def test_nonfinite_weights_are_never_checkpointed(tmp_path):
    trainer = _poisoned_full_trainer(tmp_path, "skip", "policy")
    with pytest.raises(NonFiniteWeightsError, match=r"checkpoint of step 1: non-finite \(NaN/inf\) trainable "
                                                    r"weights in model.layers.0.mlp.down_proj.weight"):
        trainer.run()
    assert not (tmp_path / "run" / "checkpoints" / "step-000001").exists()


def test_metric_rule_fires_on_nonfinite_values():
    rules = MetricRules([MetricRule(metric="kl", above=1.0, window=3, action="stop")])
    assert rules.check(1, {"kl": 0.1}).kind == "continue"
    action = rules.check(2, {"kl": float("inf")})
    assert action.kind == "stop" and "non-finite" in action.message
    nan_rule = MetricRules([MetricRule(metric="loss", below=-100.0, patience=2, action="stop")])
    assert nan_rule.check(1, {"loss": float("nan")}).kind == "continue"  # 1/2 triggering readings
    assert nan_rule.check(2, {"loss": None}).kind == "stop"  # null, as read back from metrics.jsonl
    assert nan_rule.states[0].values == []  # non-finite readings stay out of the window and baseline


@pytest.mark.parametrize("key,value", [("trainer.learning_rate", ".inf"), ("trainer.beta", ".nan"),
                                       ("trainer.max_grad_norm", ".inf"), ("rollout.sampling.temperature", ".inf")])
def test_nonfinite_hyperparameters_are_refused(key, value):
    with pytest.raises(RecipeError, match=rf"'{key}'.*finite"):
        load_recipe(SHAPES, [f"{key}={value}"])


# ------------------------------------------------------------------------------------------------ the user matrix
# Truncated sampling with β > 0 on the shapes model in every combination a user runs, covered pairwise (each pair of
# values of policy × precision × μ × bias-corrected KL appears in some run), 3 steps each. bf16 = `model.dtype:
# bfloat16` (the LM stored in bf16 as `dtype: auto` does on GPU; trained parameters become fp32 masters).
MATRIX = [  # policy, precision, μ, bias-corrected KL, behaviour correction
    ("lora", "fp32", 1, False, "none"),
    ("lora", "bf16", 1, False, "none"),  # the blip3o_next_*_lora recipes on GPU
    ("lora", "bf16", 2, True, "tis"),
    ("full", "fp32", 2, True, "none"),
    ("full", "bf16", 1, False, "none"),  # the full-weights blip3o_next_* recipes on GPU
    ("full", "bf16", 1, True, "tis"),
    ("full", "bf16", 2, False, "tis"),
    ("full", "fp32", 1, False, "tis"),
]


@pytest.mark.parametrize("path", sorted((ROOT / "recipes").glob("blip3o_next_*.yaml")), ids=lambda p: p.stem)
def test_blip3o_next_recipes_use_tested_settings(path):
    """The released-setting recipes (top-k/top-p sampling, β > 0, bf16 on GPU) are rows of MATRIX."""
    r = load_recipe(path)
    t, s = r.trainer, r.rollout.sampling
    assert s.top_k is not None and s.top_p is not None and t.beta > 0 and t.nonfinite_update == "error"
    assert r.model.dtype == "auto" and t.bf16 == "auto"  # bf16 on GPU
    assert (t.policy, "bf16", t.num_iterations, t.use_bias_correction_kl, t.behaviour_correction) in MATRIX


@pytest.mark.parametrize("policy,precision,mu,bias_kl,correction", MATRIX)
def test_truncated_sampling_with_kl_stays_finite(tmp_path, policy, precision, mu, bias_kl, correction):
    recipe = shapes_recipe(*TRUNCATED_KL, "trainer.beta=0.04", "trainer.max_steps=3", "checkpoint.every=3",
                           f"trainer.policy={policy}", f"trainer.num_iterations={mu}",
                           f"trainer.use_bias_correction_kl={str(bias_kl).lower()}",
                           f"trainer.behaviour_correction={correction}",
                           f"model.dtype={'bfloat16' if precision == 'bf16' else 'float32'}",
                           *(["trainer.learning_rate=1e-4"] if policy == "full" else []))
    trainer = GRPOTrainer(recipe, tmp_path / "run", progress=False)
    assert trainer.policy.compute_dtype == (torch.bfloat16 if precision == "bf16" else torch.float32)
    assert all(p.dtype == torch.float32 for p in trainer.policy.trainable_parameters())  # masters
    trainer.run()
    rows = read_metrics(tmp_path / "run")
    assert len(rows) == 3
    for key in ("loss", "kl", "grad_norm", "ratio/mean", "sampler_gap/mean", "sampler_gap/max"):
        assert finite(rows, key), (key, [r.get(key) for r in rows])
    assert all(r["nonfinite_updates"] == 0 for r in rows)
    assert rows[-1]["kl"] > 0  # the KL term is live
    if mu == 1:  # one optimizer step per rollout batch: π_old = π.detach(), ρ ≡ 1 exactly, in bf16 too
        assert all(r["ratio/mean"] == 1.0 and r["clip_ratio"] == 0.0 for r in rows)
    if correction == "tis":  # under truncation the weight is the kept mass Z_t ≤ 1
        assert all(0 < r["behaviour_weight/mean"] < 1 for r in rows)
    assert weights_finite(tmp_path / "run" / "checkpoints" / "step-000003" / "policy")


def _full_weights_one_step(tmp_path, dtype: str):
    """One GRPO step of full fine-tuning at lr 1e-6 (BLIP3o-NEXT's OCR value): (initial, checkpointed) LM weights."""
    from safetensors.torch import load_file

    recipe = shapes_recipe(*TRUNCATED_KL, "trainer.policy=full", "trainer.learning_rate=1e-6", "trainer.max_steps=1",
                           f"model.dtype={dtype}")
    trainer = GRPOTrainer(recipe, tmp_path / dtype, progress=False)
    initial = {n: p.detach().clone() for n, p in trainer.policy.named_trainable_parameters()}
    trainer.run()
    saved = {}
    for f in (tmp_path / dtype / "checkpoints" / "step-000001" / "policy").glob("*.safetensors"):
        saved.update(load_file(str(f)))
    return initial, saved


def test_bf16_full_weights_keep_every_update(tmp_path):
    """Plain AdamW on bf16 weights changed 2% of them at lr 1e-6 (issue 13); with fp32 masters a bf16 run moves its
    weights as much as the fp32 run, its checkpoint holds the fp32 masters, and export writes bf16."""
    from rl.export import export_checkpoint

    moved = {}
    for dtype in ("float32", "bfloat16"):
        initial, saved = _full_weights_one_step(tmp_path, dtype)
        assert all(saved[n].dtype == torch.float32 for n in initial if n in saved)  # masters in the checkpoint
        names = [n for n in initial if n in saved]
        changed = sum(int((saved[n] != initial[n]).sum()) for n in names) / sum(initial[n].numel() for n in names)
        delta = torch.cat([(saved[n] - initial[n]).flatten() for n in names])
        moved[dtype] = changed, float(delta.abs().mean())
    (fp32_changed, fp32_delta), (bf16_changed, bf16_delta) = moved["float32"], moved["bfloat16"]
    assert fp32_changed > 0.9 and bf16_changed > 0.9 and abs(bf16_changed - fp32_changed) < 0.02, moved
    assert 0.9 < bf16_delta / fp32_delta < 1.1, moved  # AdamW's first step: ~lr per weight in both
    out = export_checkpoint(tmp_path / "bfloat16", tmp_path / "export")
    from safetensors.torch import load_file

    exported = {k: v for f in out.glob("*.safetensors") for k, v in load_file(str(f)).items()}
    lm_weights = [v for k, v in exported.items() if "layers.0.mlp.down_proj" in k]
    assert lm_weights and all(v.dtype == torch.bfloat16 for v in lm_weights)  # the model's dtype


@pytest.mark.slow
def test_reward_rises_with_truncated_sampling_and_bias_corrected_kl(tmp_path):
    """300 steps in the users' setting (top-k/top-p sampling, β > 0, bias-corrected KL) on the cheapest model
    (shapes, LoRA on the head, fp32): every loss and KL finite, reward rising as in test_shapes_grpo_learning.py.
    Measured on the 2-core CPU VM under load: 0.44 (steps 1-30) → 0.91 (steps 271-300), final KL 1.17, ~190 s."""
    import json

    import numpy as np

    from rl.train_loop import train
    from worlds.shapes.prompts import shapes_prompt_rows

    rows = shapes_prompt_rows("train", tags=["single_object", "two_object"])
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps(r) + "\n" for r in rows))
    recipe = shapes_recipe(*TRUNCATED_KL, "trainer.beta=0.01", "trainer.use_bias_correction_kl=true",
                           "trainer.max_steps=300", "rollout.prompts_per_step=4",
                           "rollout.prompts.format=geneval_jsonl", f"rollout.prompts.path={prompts}")
    train(recipe, tmp_path / "run", progress=False)
    metrics = read_metrics(tmp_path / "run")
    assert len(metrics) == 300
    for key in ("loss", "kl", "grad_norm"):
        assert finite(metrics, key), key
    assert all(r["nonfinite_updates"] == 0 for r in metrics)
    rewards = [r["reward/mean"] for r in metrics]
    first, last = float(np.mean(rewards[:30])), float(np.mean(rewards[-30:]))
    assert last > first + 0.25 and last > 0.7, (first, last)


def test_bf16_full_weights_resume_exactly(tmp_path):
    """The checkpoint holds what an exact resume needs in bf16 too (fp32 masters, fp32 AdamW state): 2 steps + resume
    to 3 logs the same step 3 as 3 steps straight."""
    settings = [*TRUNCATED_KL, "trainer.policy=full", "model.dtype=bfloat16", "trainer.learning_rate=1e-4",
                "trainer.num_iterations=2", "checkpoint.every=1"]
    GRPOTrainer(shapes_recipe(*settings, "trainer.max_steps=3"), tmp_path / "straight", progress=False).run()
    GRPOTrainer(shapes_recipe(*settings, "trainer.max_steps=2"), tmp_path / "resumed", progress=False).run()
    GRPOTrainer(shapes_recipe(*settings, "trainer.max_steps=3"), tmp_path / "resumed", resume=True,
                progress=False).run()
    straight, resumed = (read_metrics(tmp_path / name)[-1] for name in ("straight", "resumed"))
    assert straight["step"] == resumed["step"] == 3
    for key in ("loss", "kl", "ratio/mean", "grad_norm", "reward/mean", "sampler_gap/mean"):
        assert straight[key] == resumed[key], (key, straight[key], resumed[key])
