"""The rollout-engine interface: both engines implement `RolloutEngine` and declare their capabilities, a missing
capability is a clear error, and the driver reads the declarations instead of probing the engine with hasattr."""

import ast
from pathlib import Path

import pytest

from engines.local_engine import LocalRolloutEngine
from engines.protocol import RolloutEngine
from rollouts.config import ModelConfig, RendererConfig, SamplingConfig
from rollouts.generator import NativeImageGenerator

ROOT = Path(__file__).resolve().parents[1]


def test_engines_declare_their_capabilities():
    from engines.ray_engine import RayRolloutEngine  # the class only: no Ray instance is started

    assert issubclass(LocalRolloutEngine, RolloutEngine) and issubclass(RayRolloutEngine, RolloutEngine)
    assert (LocalRolloutEngine.scores_rollouts, LocalRolloutEngine.overlaps_steps) == (False, False)
    assert (RayRolloutEngine.scores_rollouts, RayRolloutEngine.overlaps_steps) == (True, True)


def test_the_local_engine_generates_and_refuses_what_it_cannot_do():
    gen = NativeImageGenerator.from_config(ModelConfig(preset="tiny", device="cpu", seed=0))
    engine = LocalRolloutEngine(gen, SamplingConfig(top_k=None, top_p=None), RendererConfig(num_inference_steps=1))
    batch = engine.generate([{"prompt": "a red circle"}], group_size=2, seed=3, policy_version=0)
    assert batch.images.shape[0] == 2 and batch.policy_version == 0
    assert dict(engine.reward_tags) == {} and engine.stats() == {}
    with pytest.raises(NotImplementedError, match="LocalRolloutEngine does not score its rollouts"):
        engine.generate_and_score([{"prompt": "a"}], group_size=1, seed=0, policy_version=0)
    with pytest.raises(NotImplementedError, match="LocalRolloutEngine cannot prefetch"):
        engine.prefetch([{"prompt": "a"}], group_size=1, seed=0, policy_version=0)
    engine.publish_weights(None, 1)
    with pytest.raises(RuntimeError, match="holds policy v1, asked for v0"):
        engine.generate([{"prompt": "a"}], group_size=1, seed=0, policy_version=0)


def test_an_engine_without_generate_cannot_be_built():
    class Half(RolloutEngine):
        def publish_weights(self, state, version):
            pass

    with pytest.raises(TypeError, match="abstract"):
        Half()


def test_the_driver_does_not_probe_the_engine():
    tree = ast.parse((ROOT / "rl" / "train_loop.py").read_text())
    probes = [node.lineno for node in ast.walk(tree)
              if isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
              and node.func.id in ("hasattr", "getattr") and node.args
              and "engine" in ast.unparse(node.args[0])]
    assert probes == [], f"rl/train_loop.py probes the engine with hasattr/getattr at lines {probes}"
