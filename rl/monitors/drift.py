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
Janus-Pro's VQ decoder, GLM-Image's DiT reading prior token ids) cannot drift at all: the same ids paint the same image whatever the weights. There the
monitor measures nothing and logs `drift/not_applicable` = 1 on its steps.

A LoRA on `lm_head` alone cannot drift (the hidden states are computed before `lm_head`): all four read 0. An update
of the attention or MLP layers moves them. A large `abs_delta` means the step trained on rewards that no longer hold
for its tokens; set `trainer.conditioning_anchor` (rl/grpo.py §4), lower the learning rate, or
train fewer layers.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch

from rl.monitors.config import DriftMonitorConfig
from rl.monitors.monitor import Monitor, StepView
from rollouts.rerender import conditioning_of, rerender_rollouts


def drift_rows(batch_size: int, samples: int) -> list[int]:
    """`samples` row indices spread evenly over the batch (so over its groups)."""
    return sorted({int(i) for i in np.linspace(0, batch_size - 1, min(samples, batch_size)).round()})


class DriftMonitor(Monitor):
    """`before_update` keeps the sampled rows' hidden states under the old weights; `after_update` re-renders and
    re-scores them under the new ones."""

    def __init__(self, config: DriftMonitorConfig):
        self.config = config
        self._rows: list[int] | None = None
        self._hidden_before: torch.Tensor | None = None

    def due(self, step: int) -> bool:
        return self.config.enabled and step % self.config.every == 0

    def before_update(self, view: StepView) -> None:
        self._rows, self._hidden_before = None, None
        if not self.due(view.step):
            return
        if not getattr(view.generator, "conditioning_tracks_policy", True):
            self._rows = []  # due, but nothing can drift: after_update reports not applicable
            return
        self._rows = drift_rows(len(view.batch), self.config.samples)
        with view.full_weights():
            self._hidden_before = conditioning_of(view.generator, view.batch, self._rows).float().cpu()

    def after_update(self, view: StepView) -> dict[str, Any]:
        """The same tokens, rendered by the updated weights: do their rewards still hold?"""
        if self._rows is None:
            return {}
        t0 = time.perf_counter()
        with view.full_weights():
            out = self._measure(view.generator, view.batch, view.suite, view.renderer)
        out["timing/drift_s"] = time.perf_counter() - t0
        return out

    def _measure(self, generator, batch, suite, renderer_cfg) -> dict[str, Any]:
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
