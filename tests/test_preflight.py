"""`nativerl validate` catches what `train` would die on, without loading weights; `train` runs the same checks
before it loads anything. Also the recipe conveniences a new user reaches for: `--set` on list items, two rewards
of one kind under aliases, shipped recipes from any folder, `-h` and `--version`."""

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from rl.cli import app
from rl.recipe import RecipeError, load_recipe

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()

SHAPES = {
    "name": "pf", "model": {"source": "preset", "preset": "tiny"},
    "rollout": {"prompts": {"format": "shapes", "split": "train"}},
    "rewards": [{"name": "geneval@flowgrpo", "options": {"detector": "shapes"}}],
    "trainer": {"num_generations": 2, "max_steps": 1},
    "logging": {"tensorboard": False},
}


def recipe_file(tmp_path, data, name="r.yaml"):
    p = tmp_path / name
    p.write_text(yaml.safe_dump(data))
    return p


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def test_misspelt_reward_option_names_the_key_and_the_closest(tmp_path):
    bad = {**SHAPES, "rewards": [{"name": "geneval@flowgrpo", "options": {"detectr": "shapes"}}]}
    res = invoke("validate", recipe_file(tmp_path, bad))
    assert res.exit_code == 2
    assert "unknown option 'detectr'" in res.output and "did you mean 'detector'" in res.output
    # A reward whose options are a pydantic model: the same, through the model.
    jpeg = {**SHAPES, "rewards": [{"name": "jpeg_compressibility", "options": {"qualty": 80}}]}
    res = invoke("validate", recipe_file(tmp_path, jpeg))
    assert res.exit_code == 2 and "unknown option 'qualty'" in res.output and "'quality'" in res.output


def test_unknown_reward_version_lists_the_versions(tmp_path):
    res = invoke("validate", recipe_file(tmp_path, {**SHAPES, "rewards": [{"name": "geneval@nover"}]}))
    assert res.exit_code == 2
    assert "unknown version 'nover'" in res.output and "['flowgrpo', 'fixed']" in res.output


def test_optional_package_switched_on_but_missing(tmp_path, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    res = invoke("validate", recipe_file(tmp_path, SHAPES), "--set", "logging.wandb=true")
    assert res.exit_code == 2 and "logging.wandb: the wandb package is not installed" in res.output


@pytest.mark.parametrize("state", ["missing", "empty", "no_config"])
def test_checkpoint_folder_problems_are_errors(tmp_path, state):
    folder = tmp_path / "ckpt"
    if state != "missing":
        folder.mkdir()
    if state == "no_config":
        (folder / "model.safetensors").write_bytes(b"x")
    data = {**SHAPES, "model": {"source": "path", "path": str(folder)}}
    res = invoke("validate", recipe_file(tmp_path, data))
    assert res.exit_code == 2
    expected = {"missing": "does not exist", "empty": "is an empty folder", "no_config": "not a checkpoint folder"}
    assert f"model.path = {folder}" in res.output and expected[state] in res.output
    warned = invoke("validate", recipe_file(tmp_path, data), "--allow-missing-weights")
    assert warned.exit_code == 0 and "warning: model.path" in warned.output


def test_train_refuses_before_loading_anything(tmp_path):
    """The same checks stop `train` at once (no model is built: the run directory is never created)."""
    bad = {**SHAPES, "rewards": [{"name": "geneval@flowgrpo", "options": {"detectr": "shapes"}}]}
    start = time.perf_counter()
    res = invoke("train", recipe_file(tmp_path, bad), "--run-dir", tmp_path / "run", "--no-progress")
    assert res.exit_code == 2 and "unknown option 'detectr'" in res.output
    assert not (tmp_path / "run").exists() and time.perf_counter() - start < 30


def test_set_list_items_typed_and_checked(tmp_path):
    p = recipe_file(tmp_path, SHAPES)
    r = load_recipe(p, ["rewards.0.weight=2", "rewards.0.options.detector=shapes"])
    assert r.rewards[0].weight == 2.0
    with pytest.raises(RecipeError, match="rewards.0.weight"):
        load_recipe(p, ["rewards.0.weight=heavy"])
    with pytest.raises(RecipeError, match="'rewards' is a list of 1; '3' is not an index"):
        load_recipe(p, ["rewards.3.weight=2"])
    res = invoke("validate", p, "--set", "rewards.0.weight=2")
    assert res.exit_code == 0, res.output


def test_same_reward_twice_with_aliases(tmp_path):
    two = {**SHAPES, "rewards": [{"name": "jpeg_compressibility"},
                                 {"name": "jpeg_compressibility", "alias": "jpeg_again", "weight": 0.5}]}
    r = load_recipe(recipe_file(tmp_path, two))
    assert [s.key for s in r.rewards] == ["jpeg_compressibility", "jpeg_again"]
    same = {**SHAPES, "rewards": [{"name": "jpeg_compressibility"}, {"name": "jpeg_compressibility"}]}
    with pytest.raises(RecipeError, match="listed twice; give each its own `alias:`"):
        load_recipe(recipe_file(tmp_path, same))


def test_shipped_recipe_from_another_folder(tmp_path, monkeypatch):
    """A shipped recipe's relative `model.path` is found from any folder and stored absolute in the run's config."""
    monkeypatch.chdir(tmp_path)
    r = load_recipe(ROOT / "recipes" / "shapes_grpo.yaml")
    assert Path(r.model.path).is_absolute() and (Path(r.model.path) / "config.json").is_file()
    res = invoke("validate", ROOT / "recipes" / "shapes_grpo.yaml")
    assert res.exit_code == 0 and "warning" not in res.output, res.output


def test_help_short_flag_and_version():
    for args in (["-h"], ["train", "-h"]):
        res = runner.invoke(app, args)
        assert res.exit_code == 0 and "--help" in res.output
    res = runner.invoke(app, ["--version"])
    assert res.exit_code == 0 and res.output.startswith("nativerl ")


def test_first_screens_have_no_library_warnings(tmp_path):
    """A fresh shell: `validate` on a shipped recipe and one tiny `train` step print no library warnings
    (transformers' model-type notice, FutureWarning, PEFT's save_embedding_layers notice, ...)."""
    exe = Path(sys.executable).with_name("nativerl")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHONWARNINGS", "TRANSFORMERS_VERBOSITY"))}
    recipe = ROOT / "recipes" / "shapes_grpo.yaml"
    runs = [[str(exe), "validate", str(recipe)],
            [str(exe), "train", str(recipe), "--run-dir", str(tmp_path / "run"), "--set", "trainer.max_steps=1",
             "--set", "eval.before_and_after=false", "--set", "rollout.prompts_per_step=1",
             "--set", "trainer.num_generations=2", "--set", "logging.tensorboard=false",
             "--set", "trainer.micro_batch_size=1"]]
    for cmd in runs:
        res = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
        assert res.returncode == 0, res.stderr
        lowered = res.stderr.lower()
        for needle in ("warning:", "futurewarning", "deprecat", "to instantiate a model of type",
                       "save_embedding_layers", "userwarning"):
            assert needle not in lowered, f"{cmd[1]}: {needle!r} in stderr:\n{res.stderr}"
    # Not a terminal: plain progress lines. `tokens` counts the step's image tokens (2 rows), not one micro-batch's.
    assert "GRPO step 1/1  reward" in res.stderr
    import json

    (row,) = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    config = json.loads((ROOT / "rollouts/shapes/pretrained/config.json").read_text())
    per_image = config["nativerl"]["tokens_per_image"]
    assert row["tokens"] == 2 * per_image
