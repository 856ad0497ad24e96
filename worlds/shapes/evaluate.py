"""GenEval-style evaluation of a shapes-world generator on the held-out prompts, with fixed seeds.

Like GenEval (`djghosh13/geneval`): each image is judged `correct` by the official rule, accuracy is reported per
tag, and overall = the mean of the six tag accuracies. Scoring is `rewards.geneval` with the exact `shapes`
detector, i.e. the same code that scores real photos with Mask2Former / YOLO.

Fixed seeds: the evaluation set is `images_per_tag` images per tag, cycling through that tag's held-out prompts in
file order; token sampling and renderer noise derive from `seed` only (`rollouts.rollout.generate_rollouts`), so
two models evaluated with the same arguments see the same prompts and the same renderer noise.

`evaluate_ground_truth_rendering` checks the renderer alone: ground-truth scenes -> VQ tokens -> teacher-forced AR
hidden states -> render -> detector. It answers "when the tokens are right, does the picture come out right?".
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from prompts.prompt_swap import swapped_rows
from rollouts.config import RendererConfig, SamplingConfig
from worlds.shapes.prompts import TAGS, shapes_prompt_rows

EVAL_SAMPLING = SamplingConfig(top_k=None, top_p=None)  # T = 1, the full distribution (what GRPO samples)
EVAL_RENDERER = RendererConfig(num_inference_steps=8, guidance_scale=1.0)


def _geneval_reward():
    from rewards.geneval import GenEvalReward

    return GenEvalReward(detector="shapes")


def evaluation_rows(images_per_tag: int, split: str = "heldout") -> list[dict[str, Any]]:
    """`images_per_tag` rows per tag, cycling through the tag's prompts in file order."""
    rows = shapes_prompt_rows(split)
    out = []
    for tag in TAGS:
        tag_rows = [r for r in rows if r["tag"] == tag]
        out += [tag_rows[i % len(tag_rows)] for i in range(images_per_tag)]
    return out


@dataclass
class EvalReport:
    accuracy: dict[str, float]  # tag -> fraction `correct`
    mean_score: dict[str, float]  # tag -> mean partial-credit `score` (the GRPO reward)
    num_images: dict[str, int]
    rows: list[dict[str, Any]] = field(default_factory=list, repr=False)
    images: torch.Tensor | None = field(default=None, repr=False)  # [B, H, W, 3] uint8
    correct: list[bool] = field(default_factory=list, repr=False)
    swapped_accuracy: dict[str, float] = field(default_factory=dict)  # tag -> against a deranged prompt's metadata
    strict_accuracy: dict[str, float] = field(default_factory=dict)  # tag -> exact scene, nothing extra

    @property
    def overall(self) -> float:
        return float(np.mean([self.accuracy[t] for t in self.accuracy]))

    def summary(self) -> dict[str, Any]:
        out = {"overall": round(self.overall, 4), "accuracy": {t: round(v, 4) for t, v in self.accuracy.items()},
               "mean_score": {t: round(v, 4) for t, v in self.mean_score.items()},
               "num_images": self.num_images}
        for name, per_tag in (("swapped", self.swapped_accuracy), ("strict", self.strict_accuracy)):
            if per_tag:
                out[f"{name}_overall"] = round(float(np.mean(list(per_tag.values()))), 4)
                out[f"{name}_accuracy"] = {t: round(v, 4) for t, v in per_tag.items()}
        return out

    def table(self, title: str = "held-out GenEval accuracy") -> str:
        head = f"{title}\n" + " | ".join(f"{t:>13}" for t in [*self.accuracy, "overall"])
        vals = " | ".join(f"{100 * v:12.1f}%" for v in [*self.accuracy.values(), self.overall])
        return head + "\n" + vals


def _report(rows: list[dict[str, Any]], images: torch.Tensor, scores: list[float],
            details: list[dict[str, Any]]) -> EvalReport:
    acc, mean, num = {}, {}, {}
    for tag in TAGS:
        idx = [i for i, r in enumerate(rows) if r["tag"] == tag]
        if not idx:
            continue
        acc[tag] = float(np.mean([details[i]["correct"] for i in idx]))
        mean[tag] = float(np.mean([scores[i] for i in idx]))
        num[tag] = len(idx)
    return EvalReport(acc, mean, num, rows, images, [bool(d["correct"]) for d in details])


@torch.no_grad()
def evaluate_heldout(gen, *, images_per_tag: int = 48, seed: int = 1234, split: str = "heldout",
                     sampling: SamplingConfig = EVAL_SAMPLING, renderer_cfg: RendererConfig = EVAL_RENDERER,
                     batch_size: int = 128) -> EvalReport:
    """Sample one image per evaluation row (fixed seeds), score with GenEval + the shapes detector."""
    from rollouts.rollout import generate_rollouts

    rows = evaluation_rows(images_per_tag, split)
    was_training = gen.lm.training
    gen.lm.eval()
    images = []
    for chunk, start in enumerate(range(0, len(rows), batch_size)):
        batch = generate_rollouts(gen, rows[start:start + batch_size], group_size=1, sampling=sampling,
                                  renderer_cfg=renderer_cfg, seed=seed * 1000 + chunk)
        images.append(batch.images)
    gen.lm.train(was_training)
    images_t = torch.cat(images)
    reward = _geneval_reward()
    arrays, prompts = [im.numpy() for im in images_t], [r["prompt"] for r in rows]
    out = reward(arrays, prompts, rows)
    report = _report(rows, images_t, out.scores, out.details)
    swapped = swapped_rows(rows)
    if swapped is not None:  # prompt dependence: the same images against a deranged prompt's metadata
        on_swapped = reward(arrays, prompts, swapped)
        report.swapped_accuracy = _per_tag(rows, [bool(d["correct"]) for d in on_swapped.details])
    report.strict_accuracy = _per_tag(rows, [bool(d["exact"]) for d in out.details])
    return report


def _per_tag(rows: list[dict[str, Any]], flags: list[bool]) -> dict[str, float]:
    return {tag: float(np.mean([f for r, f in zip(rows, flags) if r["tag"] == tag]))
            for tag in TAGS if any(r["tag"] == tag for r in rows)}


@torch.no_grad()
def evaluate_ground_truth_rendering(gen, vq, *, num_images: int = 192, seed: int = 1234, split: str = "heldout",
                                    renderer_cfg: RendererConfig = EVAL_RENDERER) -> dict[str, Any]:
    """Render the VQ tokens of ground-truth scenes of held-out prompts; fraction the detector judges correct."""
    from rollouts.conditioning import conditioning_hidden_states
    from rollouts.renderer import render_images
    from worlds.shapes.world import render_scene, sample_scene

    rng = np.random.default_rng(seed)
    rows = evaluation_rows(max(1, num_images // len(TAGS)), split)
    truth = np.stack([render_scene(sample_scene(r, rng)) for r in rows])
    tokens = torch.from_numpy(vq.encode(truth)).to(gen.device)
    ids, mask = gen.encode_prompts([r["prompt"] for r in rows])
    hidden = conditioning_hidden_states(gen.lm, ids, mask, tokens, gen.vocab)
    rendered = render_images(gen.renderer, hidden, list(range(seed, seed + len(rows))), renderer_cfg)
    reward = _geneval_reward()
    prompts = [r["prompt"] for r in rows]
    on_render = reward([im.numpy() for im in rendered], prompts, rows)
    on_decode = reward(list(vq.decode(tokens.cpu().numpy())), prompts, rows)  # the tokenizer alone
    report = _report(rows, rendered, on_render.scores, on_render.details)
    return {"accuracy": round(report.overall, 4), "per_tag": {t: round(v, 4) for t, v in report.accuracy.items()},
            "vq_decode_accuracy": round(float(np.mean([d["correct"] for d in on_decode.details])), 4),
            "num_images": len(rows)}
