"""Held-out shapes-editing accuracy with fixed seeds: the fraction of edits the exact checker passes, per tag.

Rows: the first `rows_per_tag` held-out rows of each tag (`worlds/shapes_edit/prompts.py`); one sample per row;
token sampling and renderer noise derive from `seed` only, so two models are compared on the same edits and the
same noise. Overall = the mean of the per-tag accuracies.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from rollouts.config import RendererConfig, SamplingConfig
from worlds.shapes_edit.edits import EDIT_TAGS

EVAL_SAMPLING = SamplingConfig(top_k=None, top_p=None)  # T = 1, the distribution GRPO samples from
EVAL_RENDERER = RendererConfig(num_inference_steps=8, guidance_scale=1.0)


@torch.no_grad()
def evaluate_edits(gen, *, rows_per_tag: int = 64, seed: int = 4321, split: str = "heldout",
                   sampling: SamplingConfig = EVAL_SAMPLING, renderer_cfg: RendererConfig = EVAL_RENDERER,
                   batch_size: int = 96) -> dict[str, Any]:
    from worlds.shapes_edit.reward import ShapesEditReward
    from rollouts.rollout import generate_rollouts
    from worlds.shapes_edit.prompts import shapes_edit_rows

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


@torch.no_grad()
def evaluate_ground_truth_edits(gen, vq, *, rows_per_tag: int = 64, seed: int = 4321, split: str = "heldout",
                                renderer_cfg: RendererConfig = EVAL_RENDERER) -> dict[str, Any]:
    """The renderer check: a correct edit of each row (`apply_edit`), VQ-tokenized, teacher-forced through the AR
    with the row's edit prompt, rendered; the fraction the exact checker passes, per tag. Also the VQ alone
    (decode the same tokens): the ceiling any generator can reach."""
    from worlds.shapes_edit.reward import ShapesEditReward
    from rollouts.conditioning import conditioning_hidden_states
    from rollouts.renderer import render_images
    from worlds.shapes_edit.edits import apply_edit, render_objects
    from worlds.shapes_edit.prompts import shapes_edit_rows

    rng = np.random.default_rng(seed)
    rows = [r for tag in EDIT_TAGS for r in shapes_edit_rows(split, tags=[tag])[:rows_per_tag]]
    truth = np.stack([render_objects(apply_edit(r, rng)) for r in rows])
    tokens = torch.from_numpy(vq.encode(truth)).to(gen.device)
    was_training = gen.lm.training
    gen.lm.eval()
    ids, mask = gen.encode_edit_prompts([r["instruction"] for r in rows], np.stack([r["reference_image"]
                                                                                    for r in rows]))
    hidden = conditioning_hidden_states(gen.lm, ids, mask, tokens, gen.vocab)
    gen.lm.train(was_training)
    rendered = render_images(gen.renderer, hidden, list(range(seed, seed + len(rows))), renderer_cfg)
    reward = ShapesEditReward()
    prompts = [r["prompt"] for r in rows]
    on_render = reward([im.numpy() for im in rendered], prompts, rows).details
    on_decode = reward(list(vq.decode(tokens.cpu().numpy())), prompts, rows).details
    acc = {t: round(float(np.mean([d["correct"] for d in on_render if d["tag"] == t])), 4) for t in EDIT_TAGS}
    return {"accuracy": round(float(np.mean(list(acc.values()))), 4), "per_tag": acc,
            "vq_decode_accuracy": round(float(np.mean([d["correct"] for d in on_decode])), 4),
            "num_images": len(rows)}
