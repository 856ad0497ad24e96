"""Held-out shapes-editing accuracy with fixed seeds: the fraction of edits the exact checker passes, per tag.

Rows: the first `rows_per_tag` held-out rows of each tag (`rollouts/shapes_edit/prompts.py`); one sample per row;
token sampling and renderer noise derive from `seed` only, so two models are compared on the same edits and the
same noise. Overall = the mean of the per-tag accuracies.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from rollouts.config import RendererConfig, SamplingConfig
from rollouts.shapes_edit.edits import EDIT_TAGS

EVAL_SAMPLING = SamplingConfig(top_k=None, top_p=None)  # T = 1, the distribution GRPO samples from
EVAL_RENDERER = RendererConfig(num_inference_steps=8, guidance_scale=1.0)


@torch.no_grad()
def evaluate_edits(gen, *, rows_per_tag: int = 64, seed: int = 4321, split: str = "heldout",
                   sampling: SamplingConfig = EVAL_SAMPLING, renderer_cfg: RendererConfig = EVAL_RENDERER,
                   batch_size: int = 96) -> dict[str, Any]:
    from rewards.shapes_edit import ShapesEditReward
    from rollouts.rollout import generate_rollouts
    from rollouts.shapes_edit.prompts import shapes_edit_rows

    rows = [r for tag in EDIT_TAGS for r in shapes_edit_rows(split, tags=[tag])[:rows_per_tag]]
    was_training = gen.lm.training
    gen.lm.eval()
    reward = ShapesEditReward()
    details = []
    for chunk, start in enumerate(range(0, len(rows), batch_size)):
        part = rows[start:start + batch_size]
        batch = generate_rollouts(gen, part, group_size=1, sampling=sampling, renderer_cfg=renderer_cfg,
                                  seed=seed * 1000 + chunk)
        details += reward(list(batch.images.numpy()), batch.prompts, batch.metadata).details
    gen.lm.train(was_training)
    acc = {t: float(np.mean([d["correct"] for d in details if d["tag"] == t])) for t in EDIT_TAGS}
    score = {t: float(np.mean([d["score"] for d in details if d["tag"] == t])) for t in EDIT_TAGS}
    return {"overall": float(np.mean(list(acc.values()))), "accuracy": acc, "mean_score": score,
            "num_images": len(rows)}
