"""Local rollout engine: the generator runs in this process (tests, CPU demos).

A `RolloutEngine` (`engines/protocol.py`) like the Ray engine, so the driver does not care which one runs. Here the
policy being trained *is* the generator's LM, so publishing only records the version; the driver scores the
rollouts with its own reward suite (`scores_rollouts` is False) and nothing is prefetched (`overlaps_steps`).
"""

from __future__ import annotations

from typing import Any

import torch

from engines.protocol import RolloutEngine
from rollouts.batch import RolloutBatch
from rollouts.config import RendererConfig, SamplingConfig
from rollouts.rollout import generate_rollouts


class LocalRolloutEngine(RolloutEngine):
    def __init__(self, generator: Any, sampling: SamplingConfig, renderer: RendererConfig):
        self.generator, self.sampling, self.renderer = generator, sampling, renderer
        self.policy_version = 0

    def generate(self, rows: list[dict[str, Any]], *, group_size: int, seed: int,
                 policy_version: int) -> RolloutBatch:
        if policy_version != self.policy_version:
            raise RuntimeError(f"local engine holds policy v{self.policy_version}, asked for v{policy_version}")
        lm = self.generator.lm
        was_training = lm.training
        lm.eval()  # sample from the policy without dropout, as the log-probs assume
        try:
            with torch.no_grad():
                return generate_rollouts(self.generator, rows, group_size=group_size, sampling=self.sampling,
                                         renderer_cfg=self.renderer, seed=seed, policy_version=policy_version)
        finally:
            lm.train(was_training)

    def publish_weights(self, state: dict[str, torch.Tensor] | None, version: int) -> None:
        self.policy_version = version

    def shutdown(self) -> None:
        pass
