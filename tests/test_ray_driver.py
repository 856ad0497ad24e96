"""The GRPO driver on the Ray engine (its own module, so the engine shared by test_ray_engine.py has released
its actors' CPUs before this one starts)."""

import pytest
from conftest_ray import ray_session  # noqa: F401 - the session's one Ray instance

pytestmark = [pytest.mark.ray, pytest.mark.slow]  # Ray start-up: minutes on 2 cores


def test_driver_trains_through_ray_with_prefetch_when_staleness_allows(tmp_path, ray_session):  # noqa: F811
    """The GRPO driver on the Ray engine: rewards scored in reward actors, and with max_staleness=1 the next
    step's rollouts are prefetched during the update and used (one version behind, as allowed)."""
    from rl.metrics_log import read_metrics
    from rl.recipe import Recipe
    from rl.train_loop import train

    recipe = Recipe.model_validate({
        "name": "ray", "seed": 1, "model": {"source": "preset", "preset": "tiny", "device": "cpu"},
        "rollout": {"prompts": {"format": "inline", "prompts": ["a red circle", "two cats"]}, "prompts_per_step": 2,
                    "engine": "ray", "num_rollout_workers": 1, "max_staleness": 1,
                    "worker_num_cpus": 0.5, "reward_num_cpus": 0.5, "worker_timeout_s": 180,
                    "sampling": {"top_k": None, "top_p": None}, "renderer": {"num_inference_steps": 2}},
        "rewards": [{"name": "jpeg_compressibility"}],
        "trainer": {"num_generations": 2, "max_steps": 3, "policy": "lora", "learning_rate": 1e-3},
        "logging": {"sample_every": 0, "tensorboard": False}, "checkpoint": {"every": 0},
        "monitors": {"drift": {"every": 3, "samples": 2}},  # runs in the driver, on its own generator and rewards
    })
    result = train(recipe, tmp_path / "run", progress=False)
    rows = read_metrics(tmp_path / "run")
    assert [r["step"] for r in rows] == [1, 2, 3] and result.steps == 3
    assert rows[-1]["faults/prefetch_used"] >= 1
    assert rows[-1]["reward_tag/jpeg_compressibility"] == "jpeg_compressibility@flowgrpo"
    assert "jpeg_compressibility@flowgrpo" in (tmp_path / "run" / "config.yaml").read_text()
    assert "drift/hidden_rel" not in rows[1] and rows[-1]["drift/hidden_rel"] > 0  # default LoRA: attention layers
    assert 0 <= rows[-1]["drift/jpeg_compressibility/abs_delta"] < 1
