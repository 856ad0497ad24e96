"""One editing rollout step: editing rows → G edits each → tokens, log-probs, images → `RolloutBatch`.

Like `rollouts.rollout.generate_rollouts` (same seeds, same schema, same sampler and renderer), plus the reference:
each row's reference image is tokenized once (`generator.image_tokenizer`) and placed in the AR context between
vision markers (`rollouts/reference_image.py`); when the renderer takes reference latents, they are encoded once
per row too. The G samples of a group are copies of one row: they share the reference, its tokens, its latents and
(with `seed_policy="shared_per_group"`) the renderer noise, so reward differences inside a group come from the
sampled tokens. `RolloutBatch.prompt_ids` hold the full edit prompt, so the trainer's log-prob recomputation
sees exactly the context the sampler saw.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from prompts.edit_prompts import INSTRUCTION, reference_pixels
from rollouts.batch import RolloutBatch
from rollouts.config import RendererConfig, SamplingConfig
from rollouts.reference_image import reference_latents_for, render_edited_images, resize_images


def reference_batch(rows: Sequence[dict[str, Any]], size: int) -> np.ndarray:
    """uint8 [R, size, size, 3]: each row's reference, resized to the renderer's resolution when it differs."""
    return np.stack([resize_images(reference_pixels(r)[None], size)[0] for r in rows])


def generate_edit_rollouts(generator, rows: Sequence[dict[str, Any]], *, group_size: int, sampling: SamplingConfig,
                           renderer_cfg: RendererConfig, seed: int, policy_version: int = 0) -> RolloutBatch:
    from rollouts.sample_and_render import sample_and_render

    if group_size < 1:
        raise ValueError(f"group_size must be >= 1, got {group_size}")
    for i, row in enumerate(rows):
        if not isinstance(row.get(INSTRUCTION), str):
            raise ValueError(f"editing row {i} has no string 'instruction': {sorted(row)}")
    size = renderer_cfg.resolution or generator.renderer.native_resolution
    refs = reference_batch(rows, size)  # one per group
    prompt_ids, prompt_mask = generator.encode_edit_prompts([r[INSTRUCTION] for r in rows], refs)
    prompt_ids = prompt_ids.repeat_interleave(group_size, dim=0)
    prompt_mask = prompt_mask.repeat_interleave(group_size, dim=0)
    ref_latents = None
    if getattr(generator.renderer, "uses_reference", False):
        ref_latents = reference_latents_for(generator.renderer, refs, renderer_cfg.resolution)
        ref_latents = ref_latents.repeat_interleave(group_size, dim=0)

    prompts = [r.get("prompt", r[INSTRUCTION]) for r in rows for _ in range(group_size)]
    return sample_and_render(generator, rows, prompts, prompt_ids, prompt_mask, group_size=group_size,
                             sampling=sampling, renderer_cfg=renderer_cfg, seed=seed, policy_version=policy_version,
                             render=lambda hidden, seeds: render_edited_images(generator.renderer, hidden,
                                                                               ref_latents, seeds, renderer_cfg))
