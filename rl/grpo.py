"""All of the GRPO math, top to bottom: bad-input guard → group advantages → multi-reward combination → the
clipped surrogate with KL, its loss aggregations and its metrics → the conditioning anchor (§4).

Notation (DeepSeekMath GRPO, arXiv 2402.03300 §4.1; TRL's `GRPOTrainer` names in brackets):
  r_i        reward of sample i;  groups g = the G samples of one prompt  [num_generations]
  A_i        advantage, broadcast to every image token of sample i (or A_i · w_i,t with spatial credit, §2b)
  π, π_old, π_ref   per-token log-probs of the policy being trained, of the policy that sampled the rollout
             (stored in the RolloutBatch), and of the frozen reference
  ρ_t        importance ratio π/π_old per token, or one ratio per sequence (GSPO)

Which distribution is trained (the ratio and the KL). Rollouts are *sampled* from the truncated distribution
(logits / T, then top-k, then top-p: BLIP3o-NEXT samples with top-k 1200 / top-p 0.95). π, π_old and π_ref are all
*scored* on the temperature-scaled distribution over the same token slice WITHOUT the truncation
(`rollouts.sampler.scored_distribution`), as TRL and upstream BLIP3o-NEXT score it. Why:
  - every token has a finite log-prob under it, so ρ and the k3 KL are finite by construction. Scored with the
    truncation, a sampled token outside one model's kept set has log-prob −inf: π_ref outside → KL = +inf; π
    outside (μ > 1, or a bf16 recompute) → NaN loss and gradient; and a top-p boundary token (mass before it
    0.95000011) is kept by the sampler and dropped by the recompute, since the kept set depends on the last bit.
  - a truncated formulation whose kept set is frozen at sampling time would also be finite, but it must store the
    kept set per token (1200 ids × 729 tokens per image), and its KL compares two truncated distributions, which
    is not the divergence a user who sets β expects.
The sampler's own truncated log-probs are the *behaviour* policy π_b (RolloutBatch.logprobs). For a kept token
log π_b = log π_old − log Z_t (Z_t = kept mass at position t, plus any precision/engine difference), so the
samples come from π_b, not π_old. The trainer logs the gap (`sampler_gap/mean`, `sampler_gap/max`: |log π_b −
log π_old| over tokens, TRL's sampling_logp_difference) and can correct for it with truncated importance sampling
(`behaviour_correction: tis`; Yao et al. 2025, "Your efficient RL framework secretly brings you off-policy RL
training"): each token's surrogate is weighted by w = min(π_old / π_b, C), TRL's vllm_importance_sampling_correction
(token_truncate). Under pure truncation w = Z_t ≤ 1: positions where the truncation cut much mass count less. It is
off by default, as upstream ran without it.
π_old is the trainer's own no-grad forward before the step's first update (TRL: old_per_token_logps), and on the
first optimizer step of a rollout batch simply π.detach(), so ρ is exactly 1 there in every precision.

The loss reproduces TRL 1.16's `GRPOTrainer._compute_loss` for loss_type grpo/bnpo/dr_grpo/dapo and both
importance-sampling levels; `tests/test_grpo_parity.py` checks that against TRL's own code to 1e-6. Nothing here
knows about models: inputs are plain tensors, so the math is testable on its own.
"""

from __future__ import annotations

from typing import Literal

import torch

ScaleRewards = Literal["group", "batch", "none"]
LossType = Literal["grpo", "bnpo", "dr_grpo", "dapo"]
ISLevel = Literal["token", "sequence"]


# ---------------------------------------------------------------------------------------------------------------
# 0. Bad input: NaN / inf rewards are never trained on silently (issue: "Bad input").
# ---------------------------------------------------------------------------------------------------------------
class NonFiniteRewardError(ValueError):
    """A reward or advantage was NaN/inf and the recipe says `nonfinite_rewards: error`."""


def check_finite(values: torch.Tensor | dict[str, torch.Tensor], name: str = "reward", *,
                 on_nonfinite: Literal["error", "drop"] = "error") -> torch.Tensor:
    """Rows [B] (bool) whose values are finite: `values` is one tensor [B] (called `name` in errors) or
    {reward name: [B]} (finite in every one).

    on_nonfinite="error": raise NonFiniteRewardError naming each bad tensor and its rows.
    on_nonfinite="drop": return the keep-mask; raise if it would drop every row (an empty step is an error too).
    The caller drops the rows *before* computing advantages, so the dropped samples do not shift group statistics.
    """
    if isinstance(values, torch.Tensor):
        values = {name: values}
    if not values:
        raise ValueError("check_finite: no tensors given")
    sizes = {key: t.shape for key, t in values.items()}
    if len({tuple(s) for s in sizes.values()}) != 1 or any(len(s) != 1 for s in sizes.values()):
        raise ValueError(f"check_finite: every tensor must be one value per row [B], got shapes {sizes}")
    keep = torch.ones(next(iter(values.values())).shape[0], dtype=torch.bool, device=next(iter(values.values())).device)
    problems = []
    for key, t in values.items():
        finite = torch.isfinite(t)
        if not bool(finite.all()):
            bad = torch.nonzero(~finite).flatten().tolist()
            shown = bad[:10] + (["..."] if len(bad) > 10 else [])
            problems.append(f"'{key}' is NaN/inf at rows {shown} ({len(bad)} of {t.numel()})")
            keep &= finite
    if problems and on_nonfinite == "error":
        raise NonFiniteRewardError("; ".join(problems) + ". Refusing the step (set trainer.nonfinite_rewards: drop "
                                   "to train on the other samples instead).")
    if not bool(keep.any()):
        raise NonFiniteRewardError("; ".join(problems) + ". Every row is non-finite: nothing left to train on.")
    return keep


# ---------------------------------------------------------------------------------------------------------------
# 1. Group advantages.   A_i = (r_i − mean_{g(i)}) / (std + eps)
# ---------------------------------------------------------------------------------------------------------------
def _group_stats(rewards: torch.Tensor, group_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row group mean and unbiased (Bessel, n−1) group std, as torch.std / TRL's nanstd. A group of one has
    std 0 here (TRL's would be NaN; it never builds groups of one in training)."""
    _, inverse, counts = torch.unique(group_ids, return_inverse=True, return_counts=True)
    counts = counts.to(rewards.dtype)
    sums = torch.zeros_like(counts).index_add_(0, inverse, rewards)
    mean = (sums / counts)[inverse]
    sq = torch.zeros_like(counts).index_add_(0, inverse, (rewards - mean) ** 2)
    var = torch.where(counts > 1, sq / (counts - 1).clamp(min=1), torch.zeros_like(sq))
    return mean, var.sqrt()[inverse]


def group_advantages(rewards: torch.Tensor, group_ids: torch.Tensor, scale_rewards: ScaleRewards = "group",
                     eps: float = 1e-4) -> tuple[torch.Tensor, torch.Tensor]:
    """Advantages [B] and a zero-std flag [B] (True for every row of a group whose rewards are all equal).

    scale_rewards (TRL 1.16 `scale_rewards`, `multi_objective_aggregation="sum_then_normalize"`):
      group  A = (r − mean_g) / (std_g + eps)               GRPO (DeepSeekMath eq. 3's outcome supervision)
      batch  A = (r − mean_g) / (std_batch + eps)           group mean, ONE std over the whole batch (TRL; the
                                                            std of all B rewards, not a pooled within-group std)
      none   A = r − mean_g                                 Dr.GRPO (arXiv 2503.20783 §3.1): no std division
    `group_ids` need not be contiguous or equal-sized (rows dropped for NaN leave smaller groups).
    zero_std is always the *group* std ≈ 0 (what `zero_std_frac` and `drop_zero_std_groups` mean); TRL's own
    `frac_reward_zero_std` log uses the batch std under scale_rewards="batch".
    """
    if rewards.ndim != 1 or group_ids.shape != rewards.shape:
        raise ValueError(f"group_advantages: rewards {tuple(rewards.shape)} and group_ids "
                         f"{tuple(group_ids.shape)} must both be [B]")
    if scale_rewards != "none" and not eps > 0:
        raise ValueError(f"group_advantages: eps must be > 0 (a constant group has std 0), got {eps}")
    rewards = rewards.float()
    mean, group_std = _group_stats(rewards, group_ids)
    zero_std = torch.isclose(group_std, torch.zeros_like(group_std))
    advantages = rewards - mean
    if scale_rewards == "group":
        advantages = advantages / (group_std + eps)
    elif scale_rewards == "batch":
        batch_std = rewards.std() if rewards.numel() > 1 else torch.zeros((), dtype=rewards.dtype)
        advantages = advantages / (batch_std + eps)
    elif scale_rewards != "none":
        raise ValueError(f"scale_rewards must be 'group', 'batch' or 'none', got {scale_rewards!r}")
    return advantages, zero_std


# ---------------------------------------------------------------------------------------------------------------
# 2. Several rewards → one advantage.
# ---------------------------------------------------------------------------------------------------------------
def combine_rewards(scores: dict[str, torch.Tensor], weights: dict[str, float], group_ids: torch.Tensor, *,
                    mode: Literal["weighted_sum", "advantage_sum"] = "weighted_sum",
                    scale_rewards: ScaleRewards = "group", eps: float = 1e-4,
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(advantages [B], total_reward [B] = Σ_k w_k r_k, zero_std [B]).

    weighted_sum   A = group_advantages(Σ_k w_k r_k)                 (TRL "sum_then_normalize")
    advantage_sum  A = Σ_k w_k · group_advantages(r_k)              (MixGRPO `advantage_aggr`: each reward is
                   normalised within its group first, so a reward with a large scale cannot drown the others).
                   zero_std is then True only where *every* reward is constant in the group (A ≡ 0 there).
    Scores must be finite (run `check_finite` first).
    """
    if not scores:
        raise ValueError("combine_rewards: no reward scores given")
    missing, extra = sorted(set(scores) - set(weights)), sorted(set(weights) - set(scores))
    if missing or extra:
        raise ValueError(f"combine_rewards: scores and weights name different rewards "
                         f"(no weight for {missing}, no scores for {extra})")
    scores = {k: v.float() for k, v in scores.items()}
    total = sum(weights[k] * scores[k] for k in scores)
    if mode == "weighted_sum":
        advantages, zero_std = group_advantages(total, group_ids, scale_rewards, eps)
    elif mode == "advantage_sum":
        advantages = torch.zeros_like(total)
        zero_std = torch.ones_like(total, dtype=torch.bool)
        for name, r in scores.items():
            adv_k, zero_k = group_advantages(r, group_ids, scale_rewards, eps)
            advantages = advantages + weights[name] * adv_k
            zero_std &= zero_k
    else:
        raise ValueError(f"reward_aggregation must be 'weighted_sum' or 'advantage_sum', got {mode!r}")
    return advantages, total, zero_std


# ---------------------------------------------------------------------------------------------------------------
# 2b. Spatial credit: where in the image the reward's verdict comes from → which image tokens get the advantage.
# ---------------------------------------------------------------------------------------------------------------
def spatial_credit_weights(boxes: list[list[tuple[float, float, float, float]]], image_sizes: list[tuple[int, int]],
                           grid: int, strength: float) -> torch.Tensor:
    """Per-token weights [B, grid·grid] (raster order, the order image tokens are emitted), mean 1 per sample.

    boxes[i]: the pixel boxes (x1, y1, x2, y2) a structured reward looked at in image i (GenEval: the kept
    detections); image_sizes[i] = (width, height). Token t of a g×g grid covers one cell of the image; c_i,t is the
    fraction of that cell covered by image i's boxes (the largest over boxes). Then
        w_i,t = (1 − λ) + λ · c_i,t / mean_t(c_i,t),   λ = `strength` in [0, 1],
    so A_i,t = A_i · w_i,t keeps each sample's total advantage (mean weight 1) and moves a fraction λ of it onto
    the tokens drawing the objects the reward judged. An image with no box (nothing detected) keeps w ≡ 1, as does
    λ = 0 (plain GRPO). Assumes token t and image cell t correspond (TA-Tok / SigLIP patches, the shapes VQ).
    """
    if not 0.0 <= strength <= 1.0:
        raise ValueError(f"spatial_credit_weights: strength must be in [0, 1], got {strength}")
    if len(boxes) != len(image_sizes):
        raise ValueError(f"spatial_credit_weights: {len(boxes)} box lists for {len(image_sizes)} images")
    weights = torch.ones(len(boxes), grid * grid)
    edges = torch.linspace(0.0, 1.0, grid + 1)
    lo, hi = edges[:-1], edges[1:]
    for i, (image_boxes, (width, height)) in enumerate(zip(boxes, image_sizes)):
        cover = torch.zeros(grid, grid)
        for x1, y1, x2, y2 in image_boxes:
            # Overlap of the box (in [0,1] image coordinates) with each cell, per axis, as a fraction of the cell.
            fx = ((torch.clamp(hi, max=x2 / width) - torch.clamp(lo, min=x1 / width)).clamp(min=0) * grid)
            fy = ((torch.clamp(hi, max=y2 / height) - torch.clamp(lo, min=y1 / height)).clamp(min=0) * grid)
            cover = torch.maximum(cover, fy[:, None] * fx[None, :])
        if cover.sum() > 0:
            weights[i] = (1 - strength) + strength * cover.flatten() / cover.mean()
    return weights


# ---------------------------------------------------------------------------------------------------------------
# 3. The loss.
# ---------------------------------------------------------------------------------------------------------------
def behaviour_weights(old_logprobs: torch.Tensor, behaviour_logprobs: torch.Tensor, cap: float) -> torch.Tensor:
    """Truncated importance weights [B,N] = min(π_old / π_b, C) (TIS, see the module doc), no gradient."""
    if not cap > 0:
        raise ValueError(f"behaviour_weights: cap must be > 0, got {cap}")
    return torch.exp(old_logprobs.detach() - behaviour_logprobs).clamp(max=cap)


def grpo_loss(logprobs: torch.Tensor, old_logprobs: torch.Tensor, ref_logprobs: torch.Tensor | None,
              advantages: torch.Tensor, mask: torch.Tensor, *, beta: float, epsilon: float,
              epsilon_high: float | None = None, loss_type: LossType = "bnpo",
              importance_sampling_level: ISLevel = "token", max_completion_length: int | None = None,
              num_items_in_batch: float | torch.Tensor | None = None, accumulation_steps: int = 1,
              world_size: int = 1, use_bias_correction_kl: bool = False, entropy: torch.Tensor | None = None,
              behaviour_weights: torch.Tensor | None = None,
              ) -> tuple[torch.Tensor, dict[str, float]]:
    """GRPO loss of one micro-batch; call `.backward()` on it for every micro-batch of an optimizer step.

    logprobs [B,N] (differentiable), old_logprobs [B,N] (π_old, from the rollout), ref_logprobs [B,N] or None
    (needed when beta > 0), advantages [B] (one per sample) or [B,N] (per token, §2b), mask [B,N] (1 = token
    counts; image tokens are always all 1 here).

    Gradient accumulation and data parallelism, matching TRL 1.16:
      accumulation_steps  micro-batches per optimizer step. grpo/bnpo/dr_grpo divide by it (each micro-batch is
                          one equal share of the step).
      num_items_in_batch  dapo only: active tokens in everything one optimizer step covers, i.e. summed over all
                          micro-batches and all ranks (the loop passes mask.sum() of the whole mini-batch, which
                          is the rollout batch when mini_batch_size is None). Defaults to this micro-batch's
                          mask.sum() (one micro-batch, one rank).
      world_size          dapo only: DDP averages gradients over ranks, so each rank divides by
                          num_items_in_batch / world_size; the step then equals Σ_all tokens / num_items_in_batch.
    use_bias_correction_kl  multiply the per-token KL by the (differentiable) ratio ρ, so its gradient is the
                          unbiased reverse-KL gradient (DeepSeek-V3.2, arXiv 2512.02556). TRL 1.16's default is
                          True; BLIP3o-NEXT (TRL 0.21) had no such term, hence our default False. It changes the
                          gradient even on-policy, where ρ = 1 in value.
    behaviour_weights     [B,N] TIS weights from `behaviour_weights` (or None): multiply each token's clipped
                          surrogate, not the KL, as TRL 1.16 does.
    Returns (loss, metrics). Metrics are detached python floats over this micro-batch (masked means like TRL's;
    per sequence at sequence level): `loss` (before the accumulation division), `kl` (when beta > 0),
    `ratio/mean`, `clip_ratio/low`, `clip_ratio/high`, `clip_ratio` (region = low or high), `entropy` (when
    given), `tokens`.
    """
    if logprobs.shape != old_logprobs.shape or logprobs.shape != mask.shape or logprobs.ndim != 2:
        raise ValueError(f"grpo_loss: logprobs {tuple(logprobs.shape)}, old_logprobs {tuple(old_logprobs.shape)} "
                         f"and mask {tuple(mask.shape)} must all be the same [B,N]")
    if advantages.shape not in ((logprobs.shape[0],), tuple(logprobs.shape)):
        raise ValueError(f"grpo_loss: advantages must be [B]={logprobs.shape[0]} or [B,N]={tuple(logprobs.shape)}, "
                         f"got {tuple(advantages.shape)}")
    if beta != 0.0 and ref_logprobs is None:
        raise ValueError("grpo_loss: beta > 0 needs ref_logprobs")
    eps_low, eps_high = epsilon, (epsilon if epsilon_high is None else epsilon_high)
    mask = mask.to(logprobs.dtype)
    adv = advantages.to(logprobs.dtype)
    if adv.ndim == 1:
        adv = adv.unsqueeze(1)  # [B,1]: one outcome advantage for every token of a sample

    # Importance weights. token: log ρ_t = π_t − π_old,t (PPO, Schulman 2017 eq. 6).
    # sequence (GSPO, arXiv 2507.18071 eq. 7): log s = (1/|y|) Σ_t (π_t − π_old,t), one length-normalised ratio
    # per sample, shaped [B,1] so it broadcasts over tokens.
    log_ratio = logprobs - old_logprobs
    if importance_sampling_level == "token":
        log_weights = log_ratio
    elif importance_sampling_level == "sequence":
        log_weights = ((log_ratio * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)).unsqueeze(-1)
    else:
        raise ValueError(f"importance_sampling_level must be 'token' or 'sequence', got {importance_sampling_level!r}")
    ratio = torch.exp(log_weights)

    # Clipped surrogate (PPO eq. 7, with DAPO's decoupled clip range [1 − ε_low, 1 + ε_high], arXiv 2503.14476 §3.1):
    # per-token loss = −min(ρ A, clip(ρ, 1 − ε_low, 1 + ε_high) A).
    clipped_ratio = torch.clamp(ratio, 1 - eps_low, 1 + eps_high)
    per_token_loss = -torch.min(ratio * adv, clipped_ratio * adv)
    if behaviour_weights is not None:  # TIS: the samples came from π_b, not π_old (module doc)
        if behaviour_weights.shape != logprobs.shape:
            raise ValueError(f"grpo_loss: behaviour_weights {tuple(behaviour_weights.shape)} must be [B,N]="
                             f"{tuple(logprobs.shape)}")
        per_token_loss = per_token_loss * behaviour_weights.to(per_token_loss.dtype)

    # k3 KL estimator (Schulman, "Approximating KL divergence"; DeepSeekMath eq. 4), unbiased for KL(π‖π_ref) under
    # samples from π and always ≥ 0:  exp(π_ref − π) − (π_ref − π) − 1.
    per_token_kl = None
    if beta != 0.0:
        delta = ref_logprobs - logprobs
        per_token_kl = torch.exp(delta) - delta - 1
        if use_bias_correction_kl:
            per_token_kl = per_token_kl * ratio
        per_token_loss = per_token_loss + beta * per_token_kl
    per_token_loss = per_token_loss.expand_as(mask)  # [B,1] at sequence level with beta = 0

    # Aggregation over tokens (TRL 1.16 loss_type):
    #   grpo     mean over each sample's tokens, then over samples (DeepSeekMath eq. 3; biased toward short samples)
    #   bnpo     mean over all active tokens of the micro-batch
    #   dr_grpo  sum / (B · max_completion_length): a constant normaliser (Dr.GRPO §3.1, removes the length bias)
    #   dapo     sum / active tokens of the whole optimizer step (DAPO eq. 12, token-level over the global batch)
    masked = per_token_loss * mask
    if loss_type == "grpo":
        loss = (masked.sum(-1) / mask.sum(-1).clamp(min=1.0)).mean()
        scaled = loss / accumulation_steps
    elif loss_type == "bnpo":
        loss = masked.sum() / mask.sum().clamp(min=1.0)
        scaled = loss / accumulation_steps
    elif loss_type == "dr_grpo":
        length = mask.shape[1] if max_completion_length is None else max_completion_length
        loss = masked.sum() / (mask.shape[0] * length)
        scaled = loss / accumulation_steps
    elif loss_type == "dapo":
        items = (mask.sum() if num_items_in_batch is None
                 else torch.as_tensor(num_items_in_batch, dtype=mask.dtype, device=mask.device))
        loss = scaled = masked.sum() / (items.clamp(min=1.0) / world_size)
    else:
        raise ValueError(f"loss_type must be one of grpo, bnpo, dr_grpo, dapo; got {loss_type!r}")

    metrics = _loss_metrics(ratio, adv, mask, per_token_kl, entropy, eps_low, eps_high)
    metrics["loss"] = float(loss.detach())
    return scaled, metrics


def _loss_metrics(ratio: torch.Tensor, adv: torch.Tensor, mask: torch.Tensor, per_token_kl: torch.Tensor | None,
                  entropy: torch.Tensor | None, eps_low: float, eps_high: float) -> dict[str, float]:
    """TRL 1.16's definitions: a clip is counted only where it changes the gradient (low: ρ < 1−ε_low with A < 0;
    high: ρ > 1+ε_high with A > 0). Token level: masked mean over tokens; sequence level: mean over samples."""
    with torch.no_grad():
        def masked_mean(x: torch.Tensor) -> float:
            if x.shape[1] == 1:  # one value per sequence
                return float(x.float().mean())
            return float((x * mask).sum() / mask.sum().clamp(min=1.0))

        low = ((ratio < 1 - eps_low) & (adv < 0)).to(mask.dtype)
        high = ((ratio > 1 + eps_high) & (adv > 0)).to(mask.dtype)
        metrics = {
            "ratio/mean": masked_mean(ratio),
            "clip_ratio/low": masked_mean(low),
            "clip_ratio/high": masked_mean(high),
            "clip_ratio": masked_mean(torch.maximum(low, high)),
            "tokens": float(mask.sum()),
        }
        if per_token_kl is not None:
            metrics["kl"] = masked_mean(per_token_kl)
        if entropy is not None:
            metrics["entropy"] = masked_mean(entropy)
    return metrics


# ---------------------------------------------------------------------------------------------------------------
# 4. Conditioning anchor: keep the hidden states the frozen renderer reads where the reference puts them.
# ---------------------------------------------------------------------------------------------------------------
def conditioning_anchor(hidden: torch.Tensor, ref_hidden: torch.Tensor) -> torch.Tensor:
    """Relative squared drift per sample [B]: Σ_t ‖h_t − h_ref,t‖² / Σ_t ‖h_ref,t‖², over the conditioning window
    (`<S0>` + the N image tokens, the positions the renderer reads), for the *same* prompt and tokens.

    Why it exists: the renderer is frozen and paints from these hidden states, so an update of the AR body can
    leave a token sequence's log-prob unchanged and still change its image. The KL only sees log-probs, i.e. the
    hidden states projected by `lm_head`; every direction `lm_head` ignores drifts freely. Measured on the shapes
    world (full weights, lr 3e-5, β 0.04, 600 steps): the hidden states moved 48% and the trained tokens scored
    0.70 rendered from the reference's hidden states but 0.57 from the policy's own, so the reward fell while the
    tokens improved. The recipe adds `trainer.conditioning_anchor · mean_i(anchor_i)` to the loss (0 = off, the
    BLIP3o-NEXT recipe). Its square root is the same quantity the drift monitor logs as `drift/hidden_rel`."""
    if hidden.shape != ref_hidden.shape or hidden.ndim != 3:
        raise ValueError(f"conditioning_anchor: hidden {tuple(hidden.shape)} and ref_hidden "
                         f"{tuple(ref_hidden.shape)} must be the same [B, N+1, H]")
    h, ref = hidden.float(), ref_hidden.detach().float()
    return (h - ref).pow(2).sum(dim=(1, 2)) / ref.pow(2).sum(dim=(1, 2)).clamp_min(1e-12)
