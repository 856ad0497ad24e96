"""What every rollout kind shares: the per-row renderer seeds (from `seeding.derive_seed`), and `sample_and_render`
(sample image tokens, render them, time both, pack one `RolloutBatch`). Text-to-image (`rollouts/rollout.py`) and
editing (`rollouts/edit_rollout.py`) both build on it, so neither imports the other for it. Seeds: see
rollouts/rollout.py.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import torch

from rollouts.batch import RolloutBatch
from rollouts.config import RendererConfig, SamplingConfig
from seeding import derive_seed


def render_seeds(seed: int, num_groups: int, group_size: int, policy: str, render: int = 0) -> torch.Tensor:
    """[num_groups * group_size] long, rows ordered group by group; `render` m > 0 gives the seeds of the m-th
    extra render (renders_per_sample), independent of the first render's."""
    def one(index: int) -> int:
        return derive_seed(seed, "render", index) if render == 0 else derive_seed(seed, "extra_render", index, render)

    if policy == "shared_per_group":
        per = [one(g) for g in range(num_groups) for _ in range(group_size)]
    elif policy == "independent":
        per = [one(r) for r in range(num_groups * group_size)]
    else:
        raise ValueError(f"unknown seed_policy {policy!r}")
    return torch.tensor(per, dtype=torch.long)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def sample_and_render(generator, rows: Sequence[dict[str, Any]], prompts: list[str], prompt_ids: torch.Tensor,
                      prompt_mask: torch.Tensor, *, group_size: int, sampling: SamplingConfig,
                      renderer_cfg: RendererConfig, seed: int, policy_version: int,
                      render: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> RolloutBatch:
    """The part every rollout kind shares: sample image tokens (seeded from `seed`), render them with per-row seeds
    (`render(cond_hidden, seeds)`), time both, and pack the one rollout schema. Prompt ids are one row per sample."""
    device = generator.device
    token_rng = torch.Generator(device=device).manual_seed(derive_seed(seed, "tokens"))
    _sync(device)
    t0 = time.perf_counter()
    # Under the generator's one precision policy (trainer and reference use it too).
    sampled = generator.sample_image_tokens(prompt_ids, prompt_mask, sampling, token_rng)
    _sync(device)
    t1 = time.perf_counter()
    seeds = render_seeds(seed, len(rows), group_size, renderer_cfg.seed_policy)
    images = render(sampled.cond_hidden, seeds)
    extra_images = extra_seeds = None
    if renderer_cfg.renders_per_sample > 1:
        extra = range(1, renderer_cfg.renders_per_sample)
        extra_seeds = torch.stack([render_seeds(seed, len(rows), group_size, renderer_cfg.seed_policy, render=m)
                                   for m in extra], dim=1)
        extra_images = torch.stack([render(sampled.cond_hidden, extra_seeds[:, i]) for i in range(len(extra))],
                                   dim=1)
    _sync(device)
    t2 = time.perf_counter()
    return RolloutBatch(
        prompts=prompts,
        metadata=[row for row in rows for _ in range(group_size)],
        group_ids=torch.arange(len(rows)).repeat_interleave(group_size),
        prompt_ids=prompt_ids.cpu(),
        prompt_mask=prompt_mask.cpu(),
        image_tokens=sampled.image_tokens.cpu(),
        logprobs=sampled.logprobs.cpu(),
        images=images,
        render_seeds=seeds,
        extra_images=extra_images,
        extra_render_seeds=extra_seeds,
        policy_version=policy_version,
        timings={"rollout_ar_s": t1 - t0, "render_s": t2 - t1},
    )
