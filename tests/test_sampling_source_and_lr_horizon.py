"""`rollout.sampling.source: checkpoint` takes top-k/top-p from generation_config.json as HF `generate` would
(upstream's GRPO rollouts), refuses conflicting or unsupported settings, and survives a resumed run's config;
`trainer.lr_schedule_steps` / `lr_schedule_epochs` set the cosine's horizon independently of max_steps."""

import json
import math

import pytest
import torch

from rl.optim import build_optimizer, build_scheduler, schedule_horizon
from rl.recipe import TrainerConfig
from rollouts.config import ModelConfig, SamplingConfig
from rollouts.generator import NativeImageGenerator
from rollouts.sampling_source import resolve_sampling
from rollouts.tiny_release import write_tiny_release


pytestmark = pytest.mark.usefixtures("one_torch_thread")


class _Gen:  # resolve_sampling only reads these two attributes
    def __init__(self, generation_config):
        self.generation_config = generation_config
        self.load_report = {"source": "ckpt"}


def test_checkpoint_source_reads_generation_config(tmp_path):
    rel = write_tiny_release(tmp_path, "grpo-geneval")
    gen = NativeImageGenerator.from_config(ModelConfig(source="path", path=str(rel.checkpoint), device="cpu",
                                                       dtype="float32", tokens_per_image=16))
    s = resolve_sampling(SamplingConfig(source="checkpoint", restrict_to_image_tokens=False), gen)
    assert (s.top_k, s.top_p, s.temperature) == (20, 0.95, 1.0)  # generation_config's 0.6 is not used (upstream)
    assert s.restrict_to_image_tokens is False
    # A resumed run's config.yaml holds the resolved values: resolving again agrees.
    again = SamplingConfig.model_validate(json.loads(s.model_dump_json()))
    assert resolve_sampling(again, gen) == s
    assert resolve_sampling(SamplingConfig(), gen).top_k == 1200  # source: recipe is untouched


def test_checkpoint_source_errors_name_the_problem():
    with pytest.raises(ValueError, match=r"rollout.sampling.top_k = 1200 but .*takes top_k = 20 from "
                                         r"ckpt/generation_config.json"):
        resolve_sampling(SamplingConfig(source="checkpoint", top_k=1200), _Gen({"top_k": 20, "top_p": 0.95}))
    with pytest.raises(ValueError, match="has no generation_config.json"):
        resolve_sampling(SamplingConfig(source="checkpoint"), _Gen(None))
    with pytest.raises(ValueError, match="repetition_penalty"):
        resolve_sampling(SamplingConfig(source="checkpoint"), _Gen({"repetition_penalty": 1.1}))
    # Keys the file lacks fall back to HF's defaults (top_k 50, top_p 1.0 = off), as generate would.
    s = resolve_sampling(SamplingConfig(source="checkpoint"), _Gen({"do_sample": True}))
    assert (s.top_k, s.top_p) == (50, None)
    s = resolve_sampling(SamplingConfig(source="checkpoint"), _Gen({"top_k": 0, "top_p": 1.0}))
    assert (s.top_k, s.top_p) == (None, None)


def test_lr_horizon_is_independent_of_max_steps():
    with pytest.raises(ValueError, match="lr_schedule_steps = 100 is below max_steps = 400"):
        TrainerConfig(max_steps=400, lr_schedule_steps=100)
    with pytest.raises(ValueError, match="not both"):
        TrainerConfig(lr_schedule_steps=1000, lr_schedule_epochs=3)
    # TRL's num_train_epochs: floor(epochs x prompts / prompts per step).
    assert schedule_horizon(TrainerConfig(max_steps=900, lr_schedule_epochs=3), 19_653, 32) == 1842
    assert schedule_horizon(TrainerConfig(max_steps=900, lr_schedule_steps=1842), 10, 32) == 1842
    assert schedule_horizon(TrainerConfig(max_steps=900), 10, 32) == 900
    with pytest.raises(ValueError, match="is 3 steps, below max_steps"):
        schedule_horizon(TrainerConfig(max_steps=900, lr_schedule_epochs=3), 32, 32)

    def lr_after(cfg, horizon):
        opt = build_optimizer([torch.nn.Parameter(torch.zeros(1))], cfg)
        sched = build_scheduler(opt, cfg, horizon)
        for _ in range(cfg.max_steps):
            opt.step()
            sched.step()
        return opt.param_groups[0]["lr"]

    cfg = TrainerConfig(max_steps=900, learning_rate=1e-6, lr_schedule_steps=1842)
    assert lr_after(TrainerConfig(max_steps=900, learning_rate=1e-6), 900) == pytest.approx(0.0, abs=1e-15)
    assert lr_after(cfg, 1842) == pytest.approx(1e-6 * 0.5 * (1 + math.cos(math.pi * 900 / 1842)), rel=1e-5)
