"""Run directories, checkpoints, archives and recipes are read without running code from them (docs/SECURITY.md).

Each attack is real: a pickle whose `__reduce__` would create a marker file is planted in the file, and the test
checks that the load is refused naming the file *and* that the marker was never created.
"""

from __future__ import annotations

import builtins
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from rl.checkpoint import TrainingState, load_checkpoint, save_checkpoint
from rl.recipe import RecipeError, Recipe, TrainerConfig, load_recipe
from rollouts.batch import RolloutBatch
from rollouts.safe_torch_load import UnsafeFileError, safe_torch_load
from test_recipe import GOOD  # the smallest valid recipe

ROOT = Path(__file__).resolve().parents[1]


class Payload:
    """Unpickling this calls open(marker, "w"): code chosen by whoever wrote the file."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return builtins.open, (self.marker, "w")


def plant(path: Path, marker: Path, wrap=lambda p: p) -> None:
    torch.save(wrap(Payload(marker)), path)


@pytest.fixture(scope="module")
def tiny_policy():
    from rl.optim import build_optimizer, build_scheduler
    from rl.policy import Policy
    from rollouts.config import ModelConfig
    from rollouts.generator import NativeImageGenerator

    cfg = TrainerConfig(policy="lora", lora={"r": 2, "lora_alpha": 4}, max_steps=4)
    policy = Policy(NativeImageGenerator.from_config(ModelConfig(source="preset", preset="tiny")), cfg)
    optimizer = build_optimizer(policy.trainable_parameters(), cfg)
    return policy, optimizer, build_scheduler(optimizer, cfg, 4)


def _checkpoint(tmp_path, tiny_policy, step=1):
    policy, optimizer, scheduler = tiny_policy
    state = TrainingState(step=step, policy_version=step, prompt_stream={"epoch": 0, "position": 0})
    return save_checkpoint(tmp_path / "run", state, policy, optimizer, scheduler)


@pytest.mark.parametrize("name, wrap", [
    ("trainer_state.pt", lambda p: {"optimizer": p, "scheduler": {}, "sharded": False}),
    ("rng.pt", lambda p: {"python": p}),
])
def test_a_pickle_payload_in_a_checkpoint_is_refused_and_never_runs(tmp_path, tiny_policy, name, wrap):
    path = _checkpoint(tmp_path, tiny_policy)
    policy, optimizer, scheduler = tiny_policy
    assert load_checkpoint(path, policy, optimizer, scheduler).step == 1  # the honest checkpoint loads
    marker = tmp_path / "pwned"
    plant(path / name, marker, wrap)
    with pytest.raises(UnsafeFileError, match=rf"{name}: refused to load .*GLOBAL io.open\)"):
        load_checkpoint(path, policy, optimizer, scheduler)
    assert not marker.exists()


def test_resume_names_the_refused_file(tmp_path):
    """Through the trainer: `--resume` of a run whose checkpoint was tampered with stops with the file's name."""
    from rl.train_loop import CheckpointLoadError, train

    data = {"name": "t", "model": {"source": "preset", "preset": "tiny"},
            "rollout": {"prompts": {"format": "inline", "prompts": ["a red circle"]},
                        "renderer": {"num_inference_steps": 1}},
            "rewards": [{"name": "jpeg_compressibility"}],
            "trainer": {"num_generations": 2, "max_steps": 1, "policy": "lora", "lora": {"r": 2, "lora_alpha": 4},
                        "micro_batch_size": 2},
            "logging": {"sample_every": 0, "tensorboard": False}, "checkpoint": {"every": 1}}
    run = tmp_path / "run"
    train(Recipe.model_validate(data), run, progress=False)
    marker = tmp_path / "pwned"
    plant(run / "checkpoints" / "step-000001" / "trainer_state.pt", marker)
    with pytest.raises(CheckpointLoadError, match=r"trainer_state.pt: refused to load"):
        train(Recipe.model_validate(data), run, resume=True, progress=False)
    assert not marker.exists()


def test_an_fsdp2_optimizer_shard_goes_through_the_same_refusal(tmp_path):
    marker = tmp_path / "pwned"
    plant(tmp_path / "optimizer-rank0.pt", marker, lambda p: {"optimizer": p})
    with pytest.raises(UnsafeFileError, match="optimizer-rank0.pt: refused"):
        safe_torch_load(tmp_path / "optimizer-rank0.pt", "checkpoint's optimizer shard")
    assert not marker.exists()


def _batch(n=2):
    return RolloutBatch(
        prompts=["a", "b"][:n],
        metadata=[{"reference_image": np.full((4, 4, 3), 7, np.uint8), "tag": "x"}, {"count": np.int64(3)}][:n],
        group_ids=torch.zeros(n, dtype=torch.long), prompt_ids=torch.ones(n, 3, dtype=torch.long),
        prompt_mask=torch.ones(n, 3, dtype=torch.long), image_tokens=torch.zeros(n, 4, dtype=torch.long),
        logprobs=torch.zeros(n, 4), images=torch.zeros(n, 8, 8, 3, dtype=torch.uint8),
        render_seeds=torch.arange(n), rewards={"r": torch.tensor([0.5, 1.0][:n])},
        reward_details=[{"r": {"score": np.float32(0.5), "box": (1, 2)}}, {"r": {"why": object()}}][:n])


def test_archived_rollouts_round_trip_and_a_planted_payload_is_refused_on_rescore(tmp_path):
    from rewards.spec import RewardSpec
    from rl.archive import archive_rollouts
    from rl.rescore import rescore_run

    folder = archive_rollouts(tmp_path / "run", 1, _batch())
    back = RolloutBatch.load(folder / "rollouts.pt")  # weights-only, and the numpy metadata comes back as numpy
    assert isinstance(back.metadata[0]["reference_image"], np.ndarray)
    assert back.metadata[0]["reference_image"].tolist() == _batch().metadata[0]["reference_image"].tolist()
    assert back.metadata[1] == {"count": 3} and back.reward_details[0]["r"] == {"score": 0.5, "box": (1, 2)}
    assert back.reward_details[1]["r"]["why"].startswith("<object object")  # kept readable, never re-created
    marker = tmp_path / "pwned"
    plant(folder / "rollouts.pt", marker, lambda p: {"prompts": ["a"], "metadata": [p]})
    with pytest.raises(UnsafeFileError, match="rollouts.pt: refused to load this archived rollout batch"):
        rescore_run(tmp_path / "run", RewardSpec(name="jpeg_compressibility"))
    assert not marker.exists()


def test_no_project_code_unpickles_without_weights_only():
    """Every torch.load of the project is weights_only=True (safe_torch_load); the one opt-in is
    `convert-ta-tok --allow-unsafe-pickle`, for a file the user says they trust. No pickle, numpy-pickle or
    unsafe YAML loading anywhere."""
    import re

    offenders = []
    for path in [*ROOT.glob("rl/**/*.py"), *ROOT.glob("rollouts/**/*.py"), *ROOT.glob("rewards/**/*.py")]:
        text = path.read_text()
        for m in re.finditer(r"torch\.load\(", text):
            call = text[m.start():m.start() + 160].split("torch.load(")[1]
            opt_in = path.name == "ta_tok_checkpoint.py" and "if allow_unsafe_pickle" in text[m.start() - 80:m.start()]
            if "weights_only=True" not in call and not opt_in:
                offenders.append(f"{path.relative_to(ROOT)}: {call}")
        for bad in ("pickle.load", "allow_pickle=True", "yaml.load(", "yaml.unsafe_load", "yaml.full_load"):
            if bad in text:
                offenders.append(f"{path.relative_to(ROOT)}: {bad}")
    assert not offenders


def test_duplicate_yaml_keys_are_refused_naming_key_and_lines(tmp_path):
    p = tmp_path / "r.yaml"
    p.write_text(GOOD.replace("max_steps: 2}", "max_steps: 2, learning_rate: 1.0e-5}") + "trainer:\n  beta: 0\n")
    with pytest.raises(RecipeError, match=r"r.yaml.*duplicate key 'trainer' at line 8 \(first at line 7\)"):
        load_recipe(p)


def test_an_alias_bomb_is_refused_quickly(tmp_path):
    # "Billion laughs": 9 levels of 9 aliases each, 9^9 nodes once expanded, from a 600-byte file.
    lines = ['l0: &l0 ["x", "x", "x", "x", "x", "x", "x", "x", "x"]']
    for i in range(1, 9):
        lines.append(f"l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * 9) + "]")
    p = tmp_path / "bomb.yaml"
    p.write_text(GOOD + "\n".join(lines) + "\n")
    t0 = time.perf_counter()
    with pytest.raises(RecipeError, match="MAX_ALIASES|MAX_EXPANDED_NODES"):
        load_recipe(p)
    assert time.perf_counter() - t0 < 5
    few = tmp_path / "few.yaml"  # a handful of aliases stays fine: YAML's anchors are a feature
    few.write_text(GOOD.replace("trainer: {num_generations: 4, max_steps: 2}",
                                "trainer: &t {num_generations: 4, max_steps: 2}\neval: {}\n"))
    assert load_recipe(few).trainer.max_steps == 2


@pytest.mark.parametrize("override, key", [
    ("trainer.learning_rate=.inf", "trainer.learning_rate"),
    ("trainer.beta=.nan", "trainer.beta"),
    ("trainer.max_grad_norm=.inf", "trainer.max_grad_norm"),
    ("rollout.renderer.guidance_scale=-.inf", "rollout.renderer.guidance_scale"),
])
def test_non_finite_hyperparameters_are_refused(tmp_path, override, key):
    p = tmp_path / "r.yaml"
    p.write_text(GOOD)
    with pytest.raises(RecipeError, match=key.replace(".", r"\.")):
        load_recipe(p, [override])


def test_non_finite_reward_weight_and_an_overlong_prompt_are_refused(tmp_path):
    from prompts.prompt_sets import load_prompt_rows
    from prompts.row_files import PromptSetError

    p = tmp_path / "r.yaml"
    p.write_text(GOOD.replace("{name: jpeg_compressibility}", "{name: jpeg_compressibility, weight: .nan}"))
    with pytest.raises(RecipeError, match=r"rewards\.0\.weight"):
        load_recipe(p)
    p.write_text(GOOD.replace('["a red circle"]', '["' + "a red circle " * 400 + '"]'))
    recipe = load_recipe(p)
    with pytest.raises(PromptSetError, match="5200 characters; max_prompt_chars is 4096"):
        load_prompt_rows(recipe.rollout.prompts)
