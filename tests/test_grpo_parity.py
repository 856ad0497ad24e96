"""rl/grpo.py against TRL 1.16's own GRPOTrainer code (the reference), plus hand-computed cases.

The reference is a real `GRPOTrainer` (real `__init__`, tiny Qwen3, CPU). For the loss we call its
`_compute_loss` with the model's log-prob forward replaced by the fixed tensors under test, so both sides see
identical log-probs, advantages and masks; for advantages we call its `_generate_and_score_completions` with reward
functions that return given per-row values.
"""

from __future__ import annotations

import itertools

import pytest
import torch

from rl.grpo import NonFiniteRewardError, check_finite, combine_rewards, group_advantages, grpo_loss

G = 4  # group size of the TRL reference trainer


@pytest.fixture(scope="module")
def trl_trainer():
    from datasets import Dataset
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast, Qwen3Config, Qwen3ForCausalLM
    from trl import GRPOConfig, GRPOTrainer

    vocab = {"<pad>": 0, "<eos>": 1, **{f"w{i}": i + 2 for i in range(30)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>")
    lm = Qwen3ForCausalLM(Qwen3Config(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                      num_attention_heads=2, num_key_value_heads=1, head_dim=8))

    def reward_a(prompts, completions, reward_a, **kwargs):  # each row carries its reward as a dataset column
        return reward_a

    def reward_b(prompts, completions, reward_b, **kwargs):
        return reward_b

    data = Dataset.from_dict({"prompt": ["w1 w2"] * G, "reward_a": [0.0] * G, "reward_b": [0.0] * G})
    args = GRPOConfig(output_dir="/tmp/nativerl_trl_parity", use_cpu=True, per_device_train_batch_size=G,
                      num_generations=G, max_completion_length=4, max_steps=1, report_to="none",
                      save_strategy="no", reward_weights=[0.3, 0.7])
    trainer = GRPOTrainer(model=lm, reward_funcs=[reward_a, reward_b], args=args, train_dataset=data,
                          processing_class=tokenizer)
    trainer.model.train()
    return trainer


# ------------------------------------------------------------------------------------------------ advantages
def trl_advantages(trainer, reward_a: torch.Tensor, reward_b: torch.Tensor, scale_rewards: str) -> torch.Tensor:
    trainer.scale_rewards = scale_rewards
    rows = [{"prompt": "w1 w2", "reward_a": float(a), "reward_b": float(b)} for a, b in zip(reward_a, reward_b)]
    return trainer._generate_and_score_completions(rows)["advantages"]


@pytest.mark.parametrize("scale_rewards", ["group", "batch", "none"])
def test_weighted_sum_advantages_match_trl(trl_trainer, scale_rewards):
    gen = torch.Generator().manual_seed(1)
    reward_a = torch.rand(3 * G, generator=gen)
    reward_b = torch.randint(0, 3, (3 * G,), generator=gen).float()
    reward_a[G:2 * G], reward_b[G:2 * G] = 0.5, 1.0  # one zero-std group
    group_ids = torch.arange(3).repeat_interleave(G)
    expected = trl_advantages(trl_trainer, reward_a, reward_b, scale_rewards)
    ours, total, zero_std = combine_rewards({"a": reward_a, "b": reward_b}, {"a": 0.3, "b": 0.7}, group_ids,
                                            mode="weighted_sum", scale_rewards=scale_rewards, eps=1e-4)
    torch.testing.assert_close(ours, expected, rtol=0, atol=1e-6)
    torch.testing.assert_close(total, 0.3 * reward_a + 0.7 * reward_b)
    assert zero_std.tolist() == [False] * G + [True] * G + [False] * G


def test_group_advantages_by_hand():
    rewards = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0, 5.0])
    group_ids = torch.tensor([0, 0, 0, 1, 1, 2])
    adv, zero = group_advantages(rewards, group_ids, "group", eps=1e-9)
    # group 0: mean 2, unbiased std 1 → (-1, 0, 1); group 1: mean 4.5, std sqrt(0.5); group 2 (one row): 0
    s = 0.5 ** 0.5
    torch.testing.assert_close(adv, torch.tensor([-1.0, 0.0, 1.0, -0.5 / s, 0.5 / s, 0.0]))
    assert zero.tolist() == [False, False, False, False, False, True]
    # Dr.GRPO: no std division
    adv, _ = group_advantages(rewards, group_ids, "none")
    torch.testing.assert_close(adv, torch.tensor([-1.0, 0.0, 1.0, -0.5, 0.5, 0.0]))
    # batch: group mean, std of all six rewards
    adv, _ = group_advantages(rewards, group_ids, "batch", eps=1e-9)
    torch.testing.assert_close(adv, torch.tensor([-1.0, 0.0, 1.0, -0.5, 0.5, 0.0]) / rewards.std())


def test_group_advantages_noncontiguous_groups_and_zero_std():
    rewards = torch.tensor([1.0, 7.0, 3.0, 7.0])
    group_ids = torch.tensor([0, 1, 0, 1])  # interleaved; group 1 is constant
    adv, zero = group_advantages(rewards, group_ids, "group", eps=1e-4)
    assert zero.tolist() == [False, True, False, True]
    assert adv[1] == 0 and adv[3] == 0
    torch.testing.assert_close(adv[[0, 2]], torch.tensor([-1.0, 1.0]) / (2 ** 0.5 + 1e-4))


def test_advantage_sum_normalises_each_reward_in_its_group():
    group_ids = torch.tensor([0, 0, 0, 1, 1, 1])
    big = torch.tensor([100.0, 200.0, 300.0, 5.0, 5.0, 5.0])
    small = torch.tensor([0.3, 0.2, 0.1, 1.0, 1.0, 1.0])
    adv, total, zero = combine_rewards({"big": big, "small": small}, {"big": 0.5, "small": 0.5}, group_ids,
                                       mode="advantage_sum", eps=1e-9)
    # group 0: the two rewards are exactly anti-correlated and equally weighted once normalised → 0
    torch.testing.assert_close(adv, torch.zeros(6), atol=1e-6, rtol=0)
    assert zero.tolist() == [False] * 3 + [True] * 3
    # whereas the weighted sum is dominated by the large-scale reward
    adv_ws, _, _ = combine_rewards({"big": big, "small": small}, {"big": 0.5, "small": 0.5}, group_ids,
                                   mode="weighted_sum", eps=1e-9)
    assert adv_ws[0] < 0 < adv_ws[2]
    torch.testing.assert_close(total, 0.5 * big + 0.5 * small)


def test_combine_rewards_names_mismatched_weights():
    with pytest.raises(ValueError, match=r"no weight for \['b'\]"):
        combine_rewards({"a": torch.ones(2), "b": torch.ones(2)}, {"a": 1.0}, torch.zeros(2, dtype=torch.long))


def test_check_finite_refuses_or_drops():
    scores = {"ocr": torch.tensor([0.1, float("nan"), 0.3, 0.4]), "clip": torch.tensor([1.0, 2.0, float("inf"), 4.0])}
    with pytest.raises(NonFiniteRewardError, match=r"'ocr' is NaN/inf at rows \[1\].*'clip' is NaN/inf at rows \[2\]"):
        check_finite(scores, on_nonfinite="error")
    assert check_finite(scores, on_nonfinite="drop").tolist() == [True, False, False, True]
    assert check_finite({"ocr": torch.ones(3)}).all()
    with pytest.raises(NonFiniteRewardError, match=r"'advantages' is NaN/inf at rows \[0\]"):
        check_finite(torch.tensor([float("nan"), 1.0]), "advantages")
    with pytest.raises(NonFiniteRewardError, match="Every row"):
        check_finite({"ocr": torch.full((2,), float("nan"))}, on_nonfinite="drop")


# ------------------------------------------------------------------------------------------------ loss
def make_inputs(seed: int, batch: int = 6, length: int = 5):
    gen = torch.Generator().manual_seed(seed)
    old = -torch.rand(batch, length, generator=gen) * 3 - 0.1
    # new log-probs: far enough from old that both clip sides fire
    new = (old + torch.randn(batch, length, generator=gen) * 0.5).clamp(max=-1e-3)
    ref = old + torch.randn(batch, length, generator=gen) * 0.2
    signs = torch.tensor([1.0, -1.0]).repeat(batch // 2)  # both signs, so both clip sides can fire
    advantages = (torch.rand(batch, generator=gen) + 0.1) * signs
    new[0, 0] = old[0, 0] + 0.5  # ρ = 1.65 with A > 0: clipped high
    new[1, 0] = old[1, 0] - 0.7  # ρ = 0.50 with A < 0: clipped low
    mask = torch.ones(batch, length, dtype=torch.long)
    mask[0, 3:] = 0  # ragged lengths, as TRL's completion_mask
    mask[2, 1:] = 0
    entropy = torch.rand(batch, length, generator=gen)
    return new, old, ref, advantages, mask, entropy


def trl_loss(trainer, new, old, ref, advantages, mask, entropy, *, beta, epsilon, epsilon_high, loss_type,
             level, grad_accum, num_items, bias_correction):
    trainer.args.use_bias_correction_kl = bias_correction
    trainer.beta, trainer.loss_type, trainer.importance_sampling_level = beta, loss_type, level
    trainer.epsilon_low, trainer.epsilon_high = epsilon, epsilon_high
    trainer.max_completion_length = new.shape[1]
    trainer.current_gradient_accumulation_steps = grad_accum
    trainer.args.steps_per_generation = grad_accum  # one optimizer step per generation batch
    trainer._metrics["train"].clear()
    # Only the model forward is replaced: TRL's loss code then runs on the exact tensors ours gets.
    trainer._get_per_token_logps_and_entropies = lambda *a, **k: (new, entropy, None)
    inputs = {"prompt_ids": torch.zeros(new.shape[0], 1, dtype=torch.long),
              "prompt_mask": torch.ones(new.shape[0], 1, dtype=torch.long),
              "completion_ids": torch.zeros_like(mask), "completion_mask": mask, "advantages": advantages,
              "old_per_token_logps": old, "ref_per_token_logps": ref,
              "num_items_in_batch": torch.tensor(float(num_items))}
    loss = trainer._compute_loss(trainer.model, inputs)
    metrics = {k: v[-1] for k, v in trainer._metrics["train"].items()}
    return loss, metrics


# beta 0, beta > 0 with plain k3 (BLIP3o-NEXT / TRL < 1.x), beta > 0 with TRL 1.16's default ratio-corrected KL
KL_SETTINGS = [(0.0, False), (0.04, False), (0.04, True)]
CASES = [(loss, level, beta, corr) for loss, level, (beta, corr) in
         itertools.product(["grpo", "bnpo", "dr_grpo", "dapo"], ["token", "sequence"], KL_SETTINGS)]


@pytest.mark.parametrize("loss_type,level,beta,bias_correction", CASES)
def test_loss_and_gradient_match_trl(trl_trainer, loss_type, level, beta, bias_correction):
    new, old, ref, advantages, mask, entropy = make_inputs(seed=len(CASES) + CASES.index(
        (loss_type, level, beta, bias_correction)))
    epsilon, epsilon_high, grad_accum = 0.2, 0.28, 2
    num_items = int(mask.sum()) * grad_accum + 3  # dapo: tokens of the whole step (other micro-batches too)

    new_trl = new.clone().requires_grad_(True)
    expected, trl_metrics = trl_loss(trl_trainer, new_trl, old, ref, advantages, mask, entropy, beta=beta,
                                     epsilon=epsilon, epsilon_high=epsilon_high, loss_type=loss_type, level=level,
                                     grad_accum=grad_accum, num_items=num_items, bias_correction=bias_correction)
    expected.backward()

    new_ours = new.clone().requires_grad_(True)
    ours, metrics = grpo_loss(new_ours, old, ref if beta else None, advantages, mask, beta=beta, epsilon=epsilon,
                              epsilon_high=epsilon_high, loss_type=loss_type, importance_sampling_level=level,
                              max_completion_length=new.shape[1], num_items_in_batch=num_items,
                              accumulation_steps=grad_accum, use_bias_correction_kl=bias_correction,
                              entropy=entropy)
    ours.backward()

    assert abs(ours.item() - expected.item()) <= 1e-6, (ours.item(), expected.item())
    torch.testing.assert_close(new_ours.grad, new_trl.grad, rtol=0, atol=1e-6)
    # The clip metrics must also mean what TRL's mean, and must not be vacuous in this test.
    assert metrics["clip_ratio/low"] == pytest.approx(trl_metrics["clip_ratio/low_mean"], abs=1e-6)
    assert metrics["clip_ratio/high"] == pytest.approx(trl_metrics["clip_ratio/high_mean"], abs=1e-6)
    assert metrics["clip_ratio"] == pytest.approx(trl_metrics["clip_ratio/region_mean"], abs=1e-6)
    assert metrics["entropy"] == pytest.approx(trl_metrics["entropy"], abs=1e-6)
    if level == "token":
        assert metrics["clip_ratio/low"] > 0 and metrics["clip_ratio/high"] > 0
    if beta:
        assert metrics["kl"] == pytest.approx(trl_metrics["kl"], abs=1e-6) and metrics["kl"] > 0


def test_on_policy_ratio_is_one_and_loss_is_minus_mean_advantage():
    """μ=1, on-policy (BLIP3o-NEXT): ρ ≡ 1, nothing is clipped, and the bnpo loss is −token-weighted mean A."""
    logprobs = -torch.rand(4, 7)
    advantages = torch.tensor([1.0, -1.0, 0.5, 2.0])
    loss, metrics = grpo_loss(logprobs, logprobs.detach(), None, advantages, torch.ones(4, 7), beta=0.0,
                              epsilon=0.2, loss_type="bnpo")
    assert loss.item() == pytest.approx(-advantages.mean().item(), abs=1e-7)
    assert metrics["ratio/mean"] == 1.0 and metrics["clip_ratio"] == 0.0


def test_dapo_world_size_gives_global_token_mean():
    """Two DDP ranks each normalise by num_items/world; the averaged gradient is Σ all tokens / num_items."""
    new, old, _, advantages, mask, _ = make_inputs(seed=3)
    full, _ = grpo_loss(new, old, None, advantages, mask, beta=0.0, epsilon=0.2, loss_type="dapo")
    items = mask.sum()
    halves = [grpo_loss(new[s], old[s], None, advantages[s], mask[s], beta=0.0, epsilon=0.2, loss_type="dapo",
                        num_items_in_batch=items, world_size=2)[0] for s in (slice(0, 3), slice(3, 6))]
    assert ((halves[0] + halves[1]) / 2).item() == pytest.approx(full.item(), abs=1e-6)


def test_loss_rejects_bad_shapes_and_missing_reference():
    x = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="advantages must be"):
        grpo_loss(x, x, None, torch.zeros(3), x, beta=0.0, epsilon=0.2)
    with pytest.raises(ValueError, match="needs ref_logprobs"):
        grpo_loss(x, x, None, torch.zeros(2), x, beta=0.1, epsilon=0.2)
