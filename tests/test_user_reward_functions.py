"""A user's own reward `mymodule:fn`: found beside the recipe from any folder, called in our signature or TRL's, a
wrong signature refused by `validate` showing the expected ones, failures that show the user's frames, and an
optional reward's failure announced in the progress output."""

import json

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from rewards.spec import RewardSpec
from rewards.suite import RewardFailure, RewardSuite
from rl.cli import app
from rl.metrics_log import read_metrics
from rl.recipe import load_recipe

runner = CliRunner()

MODULE = '''
import numpy as np


def brightness(images, prompts, metadata, scale=1.0):
    return [scale * float(np.asarray(im).mean()) / 255 for im in images]


def trl_style(prompts, completions, tag=None, **kwargs):
    # TRL passes the dataset columns as keyword lists: here the metadata's `tag`.
    assert len(tag) == len(completions)
    return [float(np.asarray(c).mean()) / 255 for c in completions]


def _helper(images):
    raise ValueError("the user's bug")


def broken(images, prompts, metadata):
    return _helper(images)


def one_arg(images):
    return [0.0] * len(images)
'''


def recipe_with(tmp_path, module, rewards, name="r.yaml"):
    folder = tmp_path / "project"
    folder.mkdir(exist_ok=True)
    (folder / f"{module}.py").write_text(MODULE)
    data = {"name": "u", "model": {"source": "preset", "preset": "tiny"},
            "rollout": {"prompts": {"format": "inline", "prompts": ["a red circle", "a cat"]},
                        "prompts_per_step": 1, "renderer": {"num_inference_steps": 2},
                        "sampling": {"top_k": None, "top_p": None}},
            "rewards": rewards, "trainer": {"num_generations": 2, "max_steps": 1, "policy": "lora"},
            "logging": {"tensorboard": False, "sample_every": 0}, "checkpoint": {"every": 0}}
    path = folder / name
    path.write_text(yaml.safe_dump(data))
    return path


def test_module_beside_the_recipe_is_found_from_another_folder(tmp_path, monkeypatch):
    recipe = recipe_with(tmp_path, "rw_beside", [{"name": "rw_beside:brightness", "options": {"scale": 2.0}}])
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    res = runner.invoke(app, ["validate", str(recipe)])
    assert res.exit_code == 0, res.output
    r = load_recipe(recipe)
    assert r.rewards[0].module_dir == str(recipe.parent.resolve())  # kept in the run's config: resume finds it
    res = runner.invoke(app, ["train", str(recipe), "--run-dir", str(tmp_path / "run"), "--no-progress"])
    assert res.exit_code == 0, res.output
    (row,) = read_metrics(tmp_path / "run")
    assert 0 < row["reward/rw_beside:brightness/mean"] <= 2.0


def test_missing_module_says_where_it_looked(tmp_path):
    recipe = recipe_with(tmp_path, "rw_other", [{"name": "nosuchmodule_h17:fn"}])
    res = runner.invoke(app, ["validate", str(recipe)])
    assert res.exit_code == 2
    assert "nosuchmodule_h17" in res.output and "recipe's folder or the current directory" in res.output


def test_trl_style_reward_gets_prompts_completions_and_columns(tmp_path):
    recipe = recipe_with(tmp_path, "rw_trl", [{"name": "rw_trl:trl_style"}])
    suite = RewardSuite(load_recipe(recipe).rewards)
    images = [np.full((8, 8, 3), v, np.uint8) for v in (0, 255)]
    out = suite.score(images, ["a", "b"], [{"tag": "colors"}, {"tag": "counting"}])
    assert out.scores["rw_trl:trl_style"].tolist() == [0.0, 1.0] and not out.failed


def test_wrong_signature_shows_the_expected_ones(tmp_path):
    recipe = recipe_with(tmp_path, "rw_sig", [{"name": "rw_sig:one_arg"}])
    res = runner.invoke(app, ["validate", str(recipe)])
    assert res.exit_code == 2
    assert "one_arg(images)" in res.output and "fn(images, prompts, metadata, **options)" in res.output
    assert "fn(prompts, completions, **kwargs)" in res.output


def test_failure_shows_the_users_frames_not_ours(tmp_path):
    recipe = recipe_with(tmp_path, "rw_frames", [{"name": "rw_frames:broken"}])
    suite = RewardSuite(load_recipe(recipe).rewards)
    with pytest.raises(RewardFailure) as e:
        suite.score([np.zeros((4, 4, 3), np.uint8)], ["a"], [{}])
    msg = str(e.value)
    assert "the user's bug" in msg and "Traceback (your code)" in msg
    assert "rw_frames.py" in msg and "in _helper" in msg and "in broken" in msg
    assert "suite.py" not in msg and "registry.py" not in msg and "threading.py" not in msg


def test_optional_reward_failure_is_announced_in_the_progress_output(tmp_path, capfd):
    from rl.train_loop import train

    recipe = recipe_with(tmp_path, "rw_opt", [{"name": "rw_opt:brightness"},
                                              {"name": "rw_opt:broken", "required": False, "alias": "flaky"}])
    result = train(load_recipe(recipe), tmp_path / "run", recipe_dir=recipe.parent, progress=True)
    err = capfd.readouterr().err
    assert result.steps == 1
    assert "warning: step 1: optional reward 'flaky' failed (ValueError: the user's bug)" in err
    assert "weights renormalised to rw_opt:brightness=2" in err
    assert json.loads((tmp_path / "run" / "metrics.jsonl").read_text())["reward_failed/flaky"].startswith("ValueError")


def test_module_dir_in_a_spec_is_used(tmp_path):
    recipe = recipe_with(tmp_path, "rw_spec", [{"name": "rw_spec:brightness"}])
    spec = RewardSpec(name="rw_spec:brightness", module_dir=str(recipe.parent))
    out = RewardSuite([spec]).score([np.full((2, 2, 3), 255, np.uint8)], ["a"], [{}])
    assert out.scores["rw_spec:brightness"].tolist() == [1.0]
