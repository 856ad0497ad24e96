"""Conditioning drift: after an update, do the step's rewards still describe its tokens?

GRPO's importance ratio only sees token log-probs. In a native image generator the renderer reads the AR's hidden
states, so an update that leaves a token sequence equally likely can still change the image those tokens paint: the
reward stored with the rollout goes stale and nothing in the loss notices (shared notes, peers: "no one checks that
re-decoding stored tokens reproduces the reward"). Every `every` steps this monitor takes `samples` rollouts of the
step, spread over its groups, and after the update re-renders their stored tokens with the new weights and the same
renderer seeds (`rollouts/rerender.py`), re-scores them with the recipe's rewards and logs:

    drift/hidden_rel           ‖h_after − h_before‖ / ‖h_before‖ of the conditioning hidden states (h_before is
                               taken just before the update)
    drift/pixel_rms            RMS pixel change in [0, 1] between the rollout image and the re-render
    drift/<reward>/delta       mean (reward of the re-render − reward stored with the rollout)
    drift/<reward>/abs_delta   mean |…|

A generator whose renderer reads the token ids rather than hidden states (`conditioning_tracks_policy` False:
Janus-Pro's VQ decoder) cannot drift at all: the same ids paint the same image whatever the weights. There the
monitor measures nothing and logs `drift/not_applicable` = 1 on its steps.

A LoRA on `lm_head` alone cannot drift (the hidden states are computed before `lm_head`): all four read 0. An update
of the attention or MLP layers moves them. A large `abs_delta` means the step trained on rewards that no longer hold
for its tokens; set `trainer.conditioning_anchor` (rl/grpo.py §4), lower the learning rate, or
train fewer layers.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from rollouts.rerender import conditioning_of, rerender_rollouts


class DriftMonitorConfig(BaseModel):
    """`monitors.drift` in a recipe."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    every: int = Field(0, ge=0, description="Measure conditioning drift every K steps (0 = off).")
    samples: int = Field(8, ge=1, description="Rollouts of the step re-rendered and re-scored.")

    @property
    def enabled(self) -> bool:
        return self.every > 0


def drift_rows(batch_size: int, samples: int) -> list[int]:
    """`samples` row indices spread evenly over the batch (so over its groups)."""
    return sorted({int(i) for i in np.linspace(0, batch_size - 1, min(samples, batch_size)).round()})


class DriftMonitor:
    """`before_update(step, generator, batch)` then `after_update(generator, batch, suite, renderer_cfg)`."""

    def __init__(self, config: DriftMonitorConfig):
        self.config = config
        self._rows: list[int] | None = None
        self._hidden_before: torch.Tensor | None = None

    def due(self, step: int) -> bool:
        return self.config.enabled and step % self.config.every == 0

    def before_update(self, step: int, generator, batch) -> None:
        self._rows, self._hidden_before = None, None
        if not self.due(step):
            return
        if not getattr(generator, "conditioning_tracks_policy", True):
            self._rows = []  # due, but nothing can drift: after_update reports not applicable
            return
        self._rows = drift_rows(len(batch), self.config.samples)
        self._hidden_before = conditioning_of(generator, batch, self._rows).float().cpu()

    def after_update(self, generator, batch, suite, renderer_cfg) -> dict[str, Any]:
        if self._rows is None:
            return {}
        rows, before = self._rows, self._hidden_before
        self._rows, self._hidden_before = None, None
        if not rows:
            return {"drift/not_applicable": 1.0}
        hidden = conditioning_of(generator, batch, rows)
        images = rerender_rollouts(generator, batch, rows, renderer_cfg, hidden=hidden)
        out: dict[str, Any] = {
            "drift/hidden_rel": float((hidden.float().cpu() - before).norm() / before.norm().clamp_min(1e-12)),
            "drift/pixel_rms": float(((images.float() - batch.images[rows].float()) / 255.0).pow(2).mean().sqrt()),
        }
        scores = suite.score(list(images.numpy()), [batch.prompts[i] for i in rows], [batch.metadata[i] for i in rows])
        for name, new in scores.scores.items():
            if name in scores.failed or name not in batch.rewards:
                continue
            delta = torch.as_tensor(new, dtype=torch.float32) - batch.rewards[name][rows].float()
            delta = delta[torch.isfinite(delta)]
            if len(delta):
                out[f"drift/{name}/delta"] = float(delta.mean())
                out[f"drift/{name}/abs_delta"] = float(delta.abs().mean())
        return out
