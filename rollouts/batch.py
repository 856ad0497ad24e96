"""The one rollout schema. Every stage (sampler, renderer, rewards, trainer, archive) passes this.

Rows are ordered group by group: rows [g*G, (g+1)*G) are the G samples of prompt g.
It saves to disk as is (`save`/`load`), so the archive and offline rescoring need no second format.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import torch

from rollouts.safe_torch_load import from_plain, safe_torch_load, to_plain


@dataclass
class RolloutBatch:
    prompts: list[str]  # [B] caption (or instruction) per row
    metadata: list[dict[str, Any]]  # [B] the prompt's row (GenEval include/exclude, OCR target, ...)
    group_ids: torch.Tensor  # [B] long: index of the prompt within this step
    prompt_ids: torch.Tensor  # [B, P] long, left-padded template + `<im_start><S0>`
    prompt_mask: torch.Tensor  # [B, P] long, 0 on left padding
    image_tokens: torch.Tensor  # [B, N] long, image-codebook indices in [0, K)
    logprobs: torch.Tensor  # [B, N] float32, log-prob of each token under the distribution sampled from
    images: torch.Tensor  # [B, H, W, 3] uint8
    render_seeds: torch.Tensor  # [B] long, renderer noise seed per row
    policy_version: int = 0
    timings: dict[str, float] = field(default_factory=dict)
    # renders_per_sample M > 1: renders 2..M of every row, uint8 [B, M-1, H, W, 3], and their seeds [B, M-1]; the
    # reward stage scores all M and gives each row the mean (rewards/suite.py: RewardSuite.score_rollouts).
    extra_images: torch.Tensor | None = None
    extra_render_seeds: torch.Tensor | None = None
    # Filled by the reward stage: per-reward scores [B] (NaN where a reward failed for that row).
    rewards: dict[str, torch.Tensor] = field(default_factory=dict)
    reward_details: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        b = len(self.prompts)
        for name in ("metadata", "group_ids", "prompt_ids", "prompt_mask", "image_tokens", "logprobs",
                     "images", "render_seeds"):
            value = getattr(self, name)
            if len(value) != b:
                raise ValueError(f"RolloutBatch.{name} has {len(value)} rows, prompts has {b}")
        if self.images.dtype != torch.uint8 or self.images.ndim != 4 or self.images.shape[-1] != 3:
            raise ValueError(f"RolloutBatch.images must be uint8 [B,H,W,3], got {self.images.dtype} "
                             f"{tuple(self.images.shape)}")
        if (self.extra_images is None) != (self.extra_render_seeds is None):
            raise ValueError("RolloutBatch.extra_images and extra_render_seeds come together")
        if self.extra_images is not None:
            m = self.extra_render_seeds.shape[1] if self.extra_render_seeds.ndim == 2 else -1
            if (self.extra_images.shape[:2] != (b, m) or self.extra_images.shape[2:] != self.images.shape[1:]
                    or self.extra_images.dtype != torch.uint8 or len(self.extra_render_seeds) != b):
                raise ValueError(f"RolloutBatch.extra_images must be uint8 [B, M-1, H, W, 3] with seeds [B, M-1], got "
                                 f"{self.extra_images.dtype} {tuple(self.extra_images.shape)} and seeds "
                                 f"{tuple(self.extra_render_seeds.shape)}")
        if self.image_tokens.shape != self.logprobs.shape:
            raise ValueError(f"image_tokens {tuple(self.image_tokens.shape)} and logprobs "
                             f"{tuple(self.logprobs.shape)} differ")

    def __len__(self) -> int:
        return len(self.prompts)

    @property
    def renders_per_sample(self) -> int:
        return 1 if self.extra_images is None else 1 + int(self.extra_images.shape[1])

    def all_renders(self) -> torch.Tensor:
        """uint8 [B, M, H, W, 3]: every render of every row, the first being `images`."""
        first = self.images.unsqueeze(1)
        return first if self.extra_images is None else torch.cat([first, self.extra_images], dim=1)

    @property
    def num_groups(self) -> int:
        return int(self.group_ids.max().item()) + 1 if len(self) else 0

    def pil_images(self) -> list:
        from PIL import Image

        return [Image.fromarray(img.numpy()) for img in self.images.cpu()]

    def select(self, rows: torch.Tensor | list[int]) -> RolloutBatch:
        idx = torch.as_tensor(rows, dtype=torch.long)
        picked = [int(i) for i in idx]
        kwargs: dict[str, Any] = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if isinstance(v, torch.Tensor):
                kwargs[f.name] = v[idx]
            elif f.name == "rewards":
                kwargs[f.name] = {k: t[idx] for k, t in v.items()}
            elif f.name in ("prompts", "metadata") or (f.name == "reward_details" and v):
                kwargs[f.name] = [v[i] for i in picked]
            else:
                kwargs[f.name] = v
        return RolloutBatch(**kwargs)

    @staticmethod
    def concat(batches: list[RolloutBatch]) -> RolloutBatch:
        """Concatenate batches, renumbering groups so they stay distinct."""
        if not batches:
            raise ValueError("RolloutBatch.concat needs at least one batch")
        offset, group_ids = 0, []
        for b in batches:
            group_ids.append(b.group_ids + offset)
            offset += b.num_groups
        pad = max(b.prompt_ids.shape[1] for b in batches)

        def left_pad(t: torch.Tensor, value: int) -> torch.Tensor:
            return torch.nn.functional.pad(t, (pad - t.shape[1], 0), value=value)

        reward_names = set().union(*(b.rewards.keys() for b in batches))
        return RolloutBatch(
            prompts=[p for b in batches for p in b.prompts],
            metadata=[m for b in batches for m in b.metadata],
            group_ids=torch.cat(group_ids),
            prompt_ids=torch.cat([left_pad(b.prompt_ids, 0) for b in batches]),
            prompt_mask=torch.cat([left_pad(b.prompt_mask, 0) for b in batches]),
            image_tokens=torch.cat([b.image_tokens for b in batches]),
            logprobs=torch.cat([b.logprobs for b in batches]),
            images=torch.cat([b.images for b in batches]),
            render_seeds=torch.cat([b.render_seeds for b in batches]),
            extra_images=_cat_optional([b.extra_images for b in batches], "extra_images"),
            extra_render_seeds=_cat_optional([b.extra_render_seeds for b in batches], "extra_render_seeds"),
            policy_version=min(b.policy_version for b in batches),
            timings={k: sum(b.timings.get(k, 0.0) for b in batches) for b in batches for k in b.timings},
            rewards={k: torch.cat([b.rewards[k] for b in batches]) for k in reward_names
                     if all(k in b.rewards for b in batches)},
            reward_details=[d for b in batches for d in b.reward_details],
        )

    def save(self, path: str | Path) -> None:
        path = Path(path)
        tmp = path.with_suffix(path.suffix + ".tmp")
        # Plain data only (rollouts/safe_torch_load.py), so `load` can read it with weights_only=True.
        torch.save({f.name: to_plain(getattr(self, f.name)) for f in fields(self)}, tmp)
        tmp.replace(path)

    @staticmethod
    def load(path: str | Path) -> RolloutBatch:
        """An archived batch. The file is untrusted (archives are shared): read without running code from it."""
        data = safe_torch_load(path, "archived rollout batch")
        if not isinstance(data, dict) or not {f.name for f in fields(RolloutBatch)} >= set(data):
            found = sorted(data) if isinstance(data, dict) else type(data).__name__
            raise ValueError(f"{path}: not a RolloutBatch file (found {found})")
        return RolloutBatch(**{k: from_plain(v) if k in ("metadata", "reward_details") else v
                               for k, v in data.items()})


def _cat_optional(parts: list[torch.Tensor | None], name: str) -> torch.Tensor | None:
    if all(p is None for p in parts):
        return None
    if any(p is None for p in parts) or len({p.shape[1] for p in parts}) != 1:
        raise ValueError(f"RolloutBatch.concat: batches disagree on {name} (renders_per_sample)")
    return torch.cat(parts)
