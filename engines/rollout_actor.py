"""The Ray rollout actor: one `NativeImageGenerator` (AR LM + frozen renderer) on its own device, generating the
shards (whole prompt groups, `engines/shard_plan.py`) that `engines/ray_engine.py` dispatches to it.

Weights: the actor builds its generator from the same `ModelConfig` as the driver (same preset seed or checkpoint),
so at policy version 0 both hold identical weights. Every `generate` call names the policy version it must use and
carries a reference to that version's published state; an actor holding another version loads it first
(`rollouts/weight_sync.py`), so a restarted actor can never sample from its stale initial weights. The state
reference arrives wrapped in a list so that Ray does not fetch it on calls where the actor already holds the version.

`RolloutWorker` is a plain class (usable and testable without Ray); `RolloutActor` is its Ray actor class.
"""

from __future__ import annotations

import os
import time
from typing import Any

import ray
import torch

from engines.shard_plan import Shard
from rollouts.batch import RolloutBatch
from rollouts.config import ModelConfig, RendererConfig, SamplingConfig
from rollouts.generator import NativeImageGenerator
from rollouts.rollout import generate_rollouts
from rollouts.weight_sync import apply_sync_state, prepare_policy_lm


class RolloutWorker:
    def __init__(self, model_cfg: dict[str, Any], sampling: dict[str, Any], renderer: dict[str, Any],
                 policy_mode: str, lora: dict[str, Any] | None, num_threads: int | None = 1):
        if num_threads:
            # Several actors share a node's cores; torch's default (all cores each) oversubscribes them.
            torch.set_num_threads(num_threads)
        self.sampling = SamplingConfig.model_validate(sampling)
        self.renderer_cfg = RendererConfig.model_validate(renderer)
        self.generator = NativeImageGenerator.from_config(ModelConfig.model_validate(model_cfg))
        prepare_policy_lm(self.generator, policy_mode, lora)
        self.policy_version = 0
        self._stall_next_s = 0.0

    def ready(self) -> dict[str, Any]:
        """Called once after creation: the engine waits on it (with a start-up timeout) before dispatching."""
        gpu_ids = ray.get_gpu_ids() if ray.is_initialized() else []
        return {"pid": os.getpid(), "device": str(self.generator.device), "gpu_ids": list(gpu_ids),
                "policy_version": self.policy_version}

    def stall_next(self, seconds: float) -> None:
        """Fault injection (tests, drills): the next `generate` sleeps `seconds` first, like a hung device."""
        self._stall_next_s = float(seconds)

    def load_weights(self, version: int, weights: list[Any] | None) -> float:
        """Hold policy `version`; `weights` is `[state]` or `[ObjectRef of state]` (None only for version 0).
        Returns the seconds it took."""
        t0 = time.perf_counter()
        if version == self.policy_version:
            return 0.0
        if not weights:
            raise RuntimeError(f"rollout actor holds policy v{self.policy_version} and was asked for v{version} "
                               "without its weights")
        state = weights[0]
        if isinstance(state, ray.ObjectRef):
            state = ray.get(state)
        apply_sync_state(self.generator.lm, state)
        self.policy_version = int(version)
        return time.perf_counter() - t0

    def generate(self, shard: Shard, group_size: int, version: int, weights: list[Any] | None) -> RolloutBatch:
        if self._stall_next_s:
            stall, self._stall_next_s = self._stall_next_s, 0.0
            time.sleep(stall)
        load_s = self.load_weights(version, weights)
        with torch.no_grad():
            batch = generate_rollouts(self.generator, shard.rows, group_size=group_size, sampling=self.sampling,
                                      renderer_cfg=self.renderer_cfg, seed=shard.seed,
                                      policy_version=self.policy_version)
        batch.timings["weight_load_s"] = load_s
        return batch


RolloutActor = ray.remote(RolloutWorker)
