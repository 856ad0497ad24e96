"""One rollout step: prompt rows → G samples each → tokens, log-probs, hidden states, images → RolloutBatch.

Seeds: everything random derives from `seed` alone. The token sampler uses a torch.Generator seeded with
`seeding.derive_seed(seed, "tokens")`; renderer noise uses one seed per row from `render_seeds`, which with
`seed_policy="shared_per_group"` gives every row of a group the same seed (common random numbers: reward
differences inside a group then come from the tokens, not from renderer luck), and with "independent" a
different seed per row. With `renders_per_sample` M > 1, render m ≥ 1 of every row uses `render_seeds(...,
render=m)` (shared or independent alike) and lands in `RolloutBatch.extra_images`; the reward stage averages over a
row's renders. Same `seed` ⇒ same tokens and same images.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rollouts.batch import RolloutBatch
from rollouts.config import RendererConfig, SamplingConfig
from rollouts.sample_and_render import render_seeds, sample_and_render

__all__ = ["generate_rollouts", "render_seeds", "sample_and_render"]


def generate_rollouts(generator, rows: Sequence[dict[str, Any]], *, group_size: int, sampling: SamplingConfig,
                      renderer_cfg: RendererConfig, seed: int, policy_version: int = 0) -> RolloutBatch:
    """G samples for each prompt row (`row["prompt"]`), rows ordered group by group.

    Editing rows (with `reference_image`, docs/CONTRACTS.md) go to `rollouts.edit_rollout`; a batch is all one kind."""
    from prompts.edit_prompts import is_edit_row

    editing = [is_edit_row(r) for r in rows]
    if any(editing):
        if not all(editing):
            raise ValueError("a rollout batch mixes editing rows (with 'reference_image') and text-to-image rows")
        from rollouts.edit_rollout import generate_edit_rollouts

        return generate_edit_rollouts(generator, rows, group_size=group_size, sampling=sampling,
                                      renderer_cfg=renderer_cfg, seed=seed, policy_version=policy_version)
    if group_size < 1:
        raise ValueError(f"group_size must be >= 1, got {group_size}")
    for i, row in enumerate(rows):
        if "prompt" not in row:
            raise ValueError(f"prompt row {i} has no 'prompt' key: {sorted(row)}")
    prompts = [row["prompt"] for row in rows for _ in range(group_size)]
    prompt_ids, prompt_mask = generator.encode_prompts(prompts)
    return sample_and_render(generator, rows, prompts, prompt_ids, prompt_mask, group_size=group_size,
                             sampling=sampling, renderer_cfg=renderer_cfg, seed=seed, policy_version=policy_version,
                             render=lambda hidden, seeds: generator.render(hidden, seeds, renderer_cfg))
