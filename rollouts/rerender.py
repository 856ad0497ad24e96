"""Render stored rollouts again with the generator's current weights: same token ids, same renderer seeds.

The renderer reads the AR's hidden states, so after a policy update the *same* tokens can paint a different image.
`rerender_rollouts` recomputes the conditioning hidden states by a teacher-forced pass of the current LM over the
stored prompt + image tokens and renders them with the rows' stored seeds (and, for editing rows, the same reference
latents), so any difference from the stored image comes from the weights alone. With unchanged weights it
reproduces the rollout's images (the sampler's KV-cached hidden states equal the teacher-forced ones up to float
rounding). Used by the conditioning-drift monitor (`rl/monitors/drift.py`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from rollouts.batch import RolloutBatch
from rollouts.config import RendererConfig


def conditioning_of(generator, batch: RolloutBatch, rows: Sequence[int]) -> torch.Tensor:
    """Teacher-forced conditioning hidden states of the stored rows under the generator's current LM."""
    idx = torch.as_tensor(list(rows), dtype=torch.long)
    dev = generator.device
    with torch.no_grad():
        return generator.conditioning_hidden_states(batch.prompt_ids[idx].to(dev), batch.prompt_mask[idx].to(dev),
                                                    batch.image_tokens[idx].to(dev))


def rerender_rollouts(generator, batch: RolloutBatch, rows: Sequence[int], renderer_cfg: RendererConfig, *,
                      hidden: torch.Tensor | None = None) -> torch.Tensor:
    """uint8 [len(rows), H, W, 3]: the stored rows rendered again (pass `hidden` to reuse `conditioning_of`)."""
    from prompts.edit_prompts import is_edit_row

    rows = list(rows)
    if hidden is None:
        hidden = conditioning_of(generator, batch, rows)
    seeds = batch.render_seeds[torch.as_tensor(rows, dtype=torch.long)]
    metadata = [batch.metadata[i] for i in rows]
    with torch.no_grad():
        if not any(is_edit_row(m) for m in metadata):
            return generator.render(hidden, seeds, renderer_cfg)
        from rollouts.edit_rollout import reference_batch
        from rollouts.reference_image import reference_latents_for, render_edited_images

        ref_latents = None
        if getattr(generator.renderer, "uses_reference", False):
            size = renderer_cfg.resolution or generator.renderer.native_resolution
            ref_latents = reference_latents_for(generator.renderer, reference_batch(metadata, size),
                                                renderer_cfg.resolution)
        return render_edited_images(generator.renderer, hidden, ref_latents, seeds, renderer_cfg)
