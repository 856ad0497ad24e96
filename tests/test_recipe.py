"""Recipes: typed validation, errors that name the key and file, --set overrides, `nativerl validate`."""

import subprocess
import sys
from pathlib import Path

import pytest

from rl.recipe import RecipeError, load_recipe

ROOT = Path(__file__).resolve().parents[1]


def write(tmp_path, text, name="r.yaml"):
    p = tmp_path / name
    p.write_text(text)
    return p


GOOD = """
name: t
rollout:
  prompts: {format: inline, prompts: ["a red circle"]}
rewards:
  - {name: jpeg_compressibility}
trainer: {num_generations: 4, max_steps: 2}
"""


def test_misspelt_key_names_key_file_and_closest(tmp_path):
    p = write(tmp_path, GOOD.replace("num_generations", "num_generatons"))
    with pytest.raises(RecipeError) as e:
        load_recipe(p)
    msg = str(e.value)
    assert str(p) in msg and "trainer.num_generatons" in msg and "trainer.num_generations" in msg


def test_wrong_type_names_key(tmp_path):
    p = write(tmp_path, GOOD.replace("max_steps: 2", "max_steps: lots"))
    with pytest.raises(RecipeError, match="trainer.max_steps"):
        load_recipe(p)


def test_set_overrides_are_type_checked(tmp_path):
    p = write(tmp_path, GOOD)
    r = load_recipe(p, ["trainer.beta=0.04", "rollout.sampling.top_k=null", "trainer.loss_type=dapo"])
    assert r.trainer.beta == 0.04 and r.rollout.sampling.top_k is None and r.trainer.loss_type == "dapo"
    with pytest.raises(RecipeError, match="trainer.loss_type"):
        load_recipe(p, ["trainer.loss_type=ppo"])
    with pytest.raises(RecipeError, match="trainer.bta"):
        load_recipe(p, ["trainer.bta=0.1"])


def test_defaults_are_blip3o_next_values(tmp_path):
    r = load_recipe(write(tmp_path, GOOD.replace("num_generations: 4, ", "")))
    t = r.trainer
    assert (t.num_generations, t.beta, t.loss_type, t.epsilon, t.max_grad_norm) == (16, 0.001, "bnpo", 0.2, 1.0)
    assert r.rollout.renderer.guidance_scale == 2.0 and r.rollout.renderer.num_inference_steps == 30


def test_grpo_recipe_without_rewards_is_refused(tmp_path):
    with pytest.raises(RecipeError, match="reward"):
        load_recipe(write(tmp_path, "trainer: {max_steps: 1}\n"))


def test_validate_cli_exit_codes(tmp_path):
    bad = write(tmp_path, GOOD.replace("num_generations", "num_generatons"), "bad.yaml")
    good = write(tmp_path, GOOD, "good.yaml")
    nativerl = [sys.executable, "-m", "rl.cli"]
    out = subprocess.run([*nativerl, "validate", str(bad)], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode != 0 and "num_generatons" in out.stderr
    out = subprocess.run([*nativerl, "validate", str(good)], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    unknown = write(tmp_path, GOOD.replace("jpeg_compressibility", "jpeg_compresibility"), "unk.yaml")
    out = subprocess.run([*nativerl, "validate", str(unknown)], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode != 0 and "jpeg_compressibility" in out.stderr


def test_recipe_schema_imports_no_torch():
    """Loading and validating a recipe needs only the schema: `import rl.recipe` (the `monitors:` section included)
    must not import torch, or `nativerl validate` pays seconds for it."""
    code = ("import sys, rl.recipe, rl.monitors.config; "
            "assert 'torch' not in sys.modules, sorted(m for m in sys.modules if m.startswith('torch'))[:5]")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
