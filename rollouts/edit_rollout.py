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

import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from rollouts.batch import RolloutBatch
from rollouts.config import RendererConfig, SamplingConfig
from rollouts.edit_prompts import INSTRUCTION, reference_pixels
from rollouts.reference_image import reference_latents_for, render_edited_images, resize_images
from rollouts.sampler import sample_image_tokens


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reference_batch(rows: Sequence[dict[str, Any]], size: int) -> np.ndarray:
    """uint8 [R, size, size, 3]: each row's reference, resized to the renderer's resolution when it differs."""
    return np.stack([resize_images(reference_pixels(r)[None], size)[0] for r in rows])


def generate_edit_rollouts(generator, rows: Sequence[dict[str, Any]], *, group_size: int, sampling: SamplingConfig,
                           renderer_cfg: RendererConfig, seed: int, policy_version: int = 0) -> RolloutBatch:
    from rollouts.rollout import derive_seed, render_seeds

    if group_size < 1:
        raise ValueError(f"group_size must be >= 1, got {group_size}")
    for i, row in enumerate(rows):
        if not isinstance(row.get(INSTRUCTION), str):
            raise ValueError(f"editing row {i} has no string 'instruction': {sorted(row)}")
    device = generator.device
    size = renderer_cfg.resolution or generator.renderer.native_resolution
    refs = reference_batch(rows, size)  # one per group
    prompt_ids, prompt_mask = generator.encode_edit_prompts([r[INSTRUCTION] for r in rows], refs)
    prompt_ids = prompt_ids.repeat_interleave(group_size, dim=0)
    prompt_mask = prompt_mask.repeat_interleave(group_size, dim=0)
    ref_latents = None
    if getattr(generator.renderer, "uses_reference", False):
        ref_latents = reference_latents_for(generator.renderer, refs, renderer_cfg.resolution)
        ref_latents = ref_latents.repeat_interleave(group_size, dim=0)

    token_rng = torch.Generator(device=device).manual_seed(derive_seed(seed, "tokens"))
    _sync(device)
    t0 = time.perf_counter()
    sampled = sample_image_tokens(generator.lm, prompt_ids, prompt_mask, vocab=generator.vocab,
                                  num_tokens=generator.tokens_per_image, sampling=sampling, generator=token_rng)
    _sync(device)
    t1 = time.perf_counter()
    seeds = render_seeds(seed, len(rows), group_size, renderer_cfg.seed_policy)
    images = render_edited_images(generator.renderer, sampled.cond_hidden, ref_latents, seeds, renderer_cfg)
    _sync(device)
    t2 = time.perf_counter()
    return RolloutBatch(
        prompts=[r.get("prompt", r[INSTRUCTION]) for r in rows for _ in range(group_size)],
        metadata=[r for r in rows for _ in range(group_size)],
        group_ids=torch.arange(len(rows)).repeat_interleave(group_size),
        prompt_ids=prompt_ids.cpu(),
        prompt_mask=prompt_mask.cpu(),
        image_tokens=sampled.image_tokens.cpu(),
        logprobs=sampled.logprobs.cpu(),
        images=images,
        render_seeds=seeds,
        policy_version=policy_version,
        timings={"rollout_ar_s": t1 - t0, "render_s": t2 - t1},
    )
