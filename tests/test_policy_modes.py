"""Policy modes on the tiny generator: what trains, what the reference is, what is saved, what never moves."""

from __future__ import annotations

import pytest
import torch

from rl.grpo import grpo_loss
from rl.optim import build_optimizer, build_scheduler
from rl.policy import Policy, apply_sync_state
from rl.recipe import TrainerConfig
from rollouts.config import ModelConfig, SamplingConfig
from rollouts.generator import NativeImageGenerator
from rollouts.sampler import image_token_logprobs

SAMPLING = SamplingConfig(top_k=None, top_p=None)  # full image-token softmax: no token can fall out of the set
PROMPTS = ["a red circle", "two blue squares", "a green triangle", "a yellow star"]


def make_generator() -> NativeImageGenerator:
    return NativeImageGenerator.from_config(ModelConfig(preset="tiny", device="cpu", seed=3))


@pytest.fixture(scope="module")
def rollout():
    gen = make_generator()
    ids, mask = gen.encode_prompts(PROMPTS)
    sampled = gen.sample_image_tokens(ids, mask, SAMPLING, generator=torch.Generator().manual_seed(0))
    return ids, mask, sampled.image_tokens, sampled.logprobs


def cfg(policy: str, **kw) -> TrainerConfig:
    return TrainerConfig(policy=policy, learning_rate=1e-2, lr_scheduler_type="constant", beta=0.04, **kw)


def one_update(policy: Policy, rollout, steps: int = 2) -> None:
    ids, mask, tokens, old = rollout
    opt = build_optimizer(policy.trainable_parameters(), policy.cfg)
    sched = build_scheduler(opt, policy.cfg, total_steps=steps)
    advantages = torch.tensor([1.0, -1.0, 0.5, -0.5])
    ref = policy.reference_logprobs(ids, mask, tokens, SAMPLING)
    for _ in range(steps):
        opt.zero_grad()
        with policy.autocast():
            logp = policy.logprobs(ids, mask, tokens, SAMPLING)
            loss, _ = grpo_loss(logp, old, ref, advantages, torch.ones_like(logp), beta=0.04, epsilon=0.2)
        loss.backward()
        opt.step()
        sched.step()


def renderer_state(gen) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in gen.renderer.state_dict().items()}


def assert_same_state(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k, v in a.items():
        assert torch.equal(v, b[k]), k


def test_lora_trains_only_adapters_and_reference_is_the_base_model(rollout):
    ids, mask, tokens, old = rollout
    base = make_generator()
    base_logp = image_token_logprobs(base.lm, ids, mask, tokens, vocab=base.vocab, sampling=SAMPLING)
    torch.testing.assert_close(base_logp, old, atol=1e-5, rtol=0)  # sampler and scorer agree (ratio 1 at start)

    gen = make_generator()
    before_renderer = renderer_state(gen)
    base_weights = {k: v.clone() for k, v in gen.lm.state_dict().items()}
    policy = Policy(gen, cfg("lora", lora={"r": 4, "lora_alpha": 8}))
    named = policy.named_trainable_parameters()
    assert named and all("lora_" in n for n, _ in named)
    renderer_ids = {id(p) for p in gen.renderer.parameters()}
    assert not any(id(p) in renderer_ids for p in policy.trainable_parameters())

    one_update(policy, rollout)

    # base weights untouched, adapters moved the policy, reference (adapters off) is exactly the base model
    after = {k.removeprefix("base_model.model.").replace(".base_layer", ""): v
             for k, v in gen.lm.state_dict().items() if "lora_" not in k}
    assert after.keys() == base_weights.keys()
    for k, v in base_weights.items():
        assert torch.equal(after[k], v), k
    assert_same_state(renderer_state(gen), before_renderer)
    policy_logp = policy.logprobs(ids, mask, tokens, SAMPLING).detach()
    assert (policy_logp - base_logp).abs().max() > 1e-3
    torch.testing.assert_close(policy.reference_logprobs(ids, mask, tokens, SAMPLING), base_logp,
                               atol=1e-6, rtol=0)
    assert sum(p.numel() for p in policy.lm.parameters()) < 2 * sum(p.numel() for p in base.lm.parameters())


def test_lora_adapter_loads_with_plain_peft_and_merges(rollout, tmp_path):
    from peft import PeftModel

    ids, mask, tokens, _ = rollout
    gen = make_generator()
    policy = Policy(gen, cfg("lora"))
    one_update(policy, rollout, steps=1)
    expected = policy.logprobs(ids, mask, tokens, SAMPLING).detach()

    policy.save(tmp_path / "adapter")
    assert (tmp_path / "adapter" / "adapter_config.json").is_file()
    plain = PeftModel.from_pretrained(make_generator().lm, str(tmp_path / "adapter"))
    got = image_token_logprobs(plain, ids, mask, tokens, vocab=gen.vocab, sampling=SAMPLING)
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=0)

    merged = policy.merged_lm()
    assert not hasattr(merged, "peft_config")
    torch.testing.assert_close(image_token_logprobs(merged, ids, mask, tokens, vocab=gen.vocab, sampling=SAMPLING),
                               expected, atol=1e-5, rtol=0)

    # a fresh LoRA policy picks the update up through load() and through the sync state
    for restore in ("load", "sync"):
        fresh = Policy(make_generator(), cfg("lora"))
        assert (fresh.logprobs(ids, mask, tokens, SAMPLING) - expected).abs().max() > 1e-3
        if restore == "load":
            fresh.load(tmp_path / "adapter")
        else:
            state = policy.state_for_sync()
            assert state and all("lora_" in k for k in state)
            fresh.load_sync_state(state)
        torch.testing.assert_close(fresh.logprobs(ids, mask, tokens, SAMPLING).detach(), expected, atol=1e-6, rtol=0)


def test_full_mode_reference_is_a_frozen_copy_of_the_lm_only(rollout, tmp_path):
    ids, mask, tokens, old = rollout
    gen = make_generator()
    before_renderer = renderer_state(gen)
    policy = Policy(gen, cfg("full"))
    assert policy.reference is not gen.lm
    assert sum(p.numel() for p in policy.reference.parameters()) == sum(p.numel() for p in gen.lm.parameters())
    assert {id(p) for p in policy.trainable_parameters()} == {id(p) for p in gen.lm.parameters()}
    ref_before = {k: v.clone() for k, v in policy.reference.state_dict().items()}

    one_update(policy, rollout)

    assert_same_state(policy.reference.state_dict(), ref_before)
    assert_same_state(renderer_state(gen), before_renderer)
    torch.testing.assert_close(policy.reference_logprobs(ids, mask, tokens, SAMPLING), old, atol=1e-5, rtol=0)
    expected = policy.logprobs(ids, mask, tokens, SAMPLING).detach()
    assert (expected - old).abs().max() > 1e-3

    policy.save(tmp_path / "full")
    for restore in ("load", "sync"):
        fresh = Policy(make_generator(), cfg("full"))
        if restore == "load":
            fresh.load(tmp_path / "full")
        else:
            fresh.load_sync_state(policy.state_for_sync())
        torch.testing.assert_close(fresh.logprobs(ids, mask, tokens, SAMPLING).detach(), expected, atol=1e-6, rtol=0)


def test_full_mode_refuses_an_lm_that_holds_the_renderer():
    gen = make_generator()
    gen.lm.renderer_ref = gen.renderer  # the BLIP3o-NEXT model class keeps SANA inside the LM
    with pytest.raises(AssertionError, match="would duplicate the renderer"):
        Policy(gen, cfg("full"))


def test_sync_state_mismatch_is_refused():
    lm = make_generator().lm
    state = {k: v.clone() for k, v in lm.state_dict().items()}
    state.pop("model.norm.weight")
    with pytest.raises(KeyError, match="model.norm.weight"):
        apply_sync_state(lm, state)


def test_gradient_checkpointing_gives_the_same_gradients(rollout):
    ids, mask, tokens, old = rollout
    grads = []
    for ckpt in (False, True):
        policy = Policy(make_generator(), cfg("full", gradient_checkpointing=ckpt))
        logp = policy.logprobs(ids, mask, tokens, SAMPLING)
        loss, _ = grpo_loss(logp, old, None, torch.tensor([1.0, -1.0, 0.5, -0.5]), torch.ones_like(logp),
                            beta=0.0, epsilon=0.2)
        loss.backward()
        grads.append(torch.cat([p.grad.flatten() for p in policy.trainable_parameters()]))
    assert grads[0].abs().max() > 0
    torch.testing.assert_close(grads[1], grads[0], atol=1e-6, rtol=1e-5)


def test_autocast_is_a_noop_on_cpu_and_lora_targets_are_checked():
    policy = Policy(make_generator(), cfg("full"))
    with policy.autocast():
        assert not torch.is_autocast_enabled("cpu")
    with pytest.raises(ValueError, match="no_such_proj"):
        Policy(make_generator(), cfg("lora", lora={"target_modules": ["q_proj", "no_such_proj"]}))


def test_scheduler_warmup_then_cosine_to_zero():
    param = torch.nn.Parameter(torch.zeros(1))
    c = TrainerConfig(learning_rate=1.0, lr_scheduler_type="cosine", warmup_steps=2)
    opt = build_optimizer([param], c)
    sched = build_scheduler(opt, c, total_steps=6)
    lrs = []
    for _ in range(6):
        lrs.append(sched.get_last_lr()[0])
        opt.step()
        sched.step()
    assert lrs[:3] == pytest.approx([0.0, 0.5, 1.0])
    assert lrs[3] == pytest.approx(0.5 * (1 + torch.cos(torch.tensor(torch.pi / 4)).item()))
    assert sched.get_last_lr()[0] == pytest.approx(0.0)
    c2 = TrainerConfig(learning_rate=0.3, lr_scheduler_type="constant")
    opt2 = build_optimizer([param], c2)
    sched2 = build_scheduler(opt2, c2, total_steps=5)
    assert sched2.get_last_lr()[0] == pytest.approx(0.3)
    assert opt2.defaults["betas"] == (0.9, 0.999) and opt2.defaults["weight_decay"] == 0.0
