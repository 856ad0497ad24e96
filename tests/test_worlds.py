"""Worlds plug in by name (worlds/__init__.py): discovery, the manifests' entries, generic code that never imports a
world, and docs/ADDING_A_WORLD.md's recipe (copy worlds/shapes/, rename, run) done for real on a copy."""

from __future__ import annotations

import ast
import re
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

import worlds
from worlds.manifest import CONTRIBUTION_KINDS, RecipeKind, World

ROOT = Path(__file__).resolve().parents[1]
GENERIC_PACKAGES = ("rl", "rollouts", "rewards", "prompts", "engines")


def test_the_worlds_are_found_by_name_and_an_unknown_one_is_a_clear_error():
    assert {"shapes", "shapes_edit"} <= set(worlds.world_names())
    assert worlds.get_world("shapes").presets == {"shapes": "worlds.shapes.preset:shapes_spec"}
    with pytest.raises(worlds.WorldError, match=r"unknown world 'shape' \(did you mean 'shapes'\?\); worlds: \["):
        worlds.get_world("shape")
    with pytest.raises(ValueError, match="unknown contribution kind"):
        worlds.contributions("reward")


def test_every_manifest_entry_imports_and_is_what_its_kind_needs():
    for name in worlds.world_names():
        world = worlds.get_world(name)
        for kind in CONTRIBUTION_KINDS:
            for key, target in getattr(world, kind).items():
                if kind == "recipe_kinds":
                    assert isinstance(target, RecipeKind)
                    assert hasattr(worlds.load_object(target.schema), "model_validate"), (name, key)
                    assert callable(worlds.load_object(target.run)), (name, key)
                    continue
                obj = worlds.load_object(target)
                assert callable(obj), (name, kind, key)
                if kind == "image_tokenizers":
                    assert hasattr(obj, "from_pretrained"), (name, key)


def test_generic_code_never_imports_a_world():
    """Generic packages may read the index (`import worlds`), never a world's own modules."""
    offenders = []
    for package in GENERIC_PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                names = []
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.module:
                    names = [node.module] + ([f"{node.module}.{a.name}" for a in node.names]
                                             if node.module == "worlds" else [])
                for n in names:
                    if n.startswith("worlds.") and n not in ("worlds.manifest",):
                        offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}: {n}")
    assert offenders == []


def test_two_worlds_claiming_one_name_is_an_error_naming_both(monkeypatch):
    clash = World(name="other", description="", presets={"shapes": "elsewhere:spec"})
    found = dict(worlds._discover())
    monkeypatch.setattr(worlds, "_manifests", {**found, "other": clash})
    with pytest.raises(worlds.WorldError, match=r"presets name 'shapes' is registered by two worlds, 'shapes'"):
        worlds.contributions("presets")


@pytest.fixture
def copied_world(tmp_path, monkeypatch):
    """docs/ADDING_A_WORLD.md steps 1-3 on a copy named `mytask`, in a folder added to the worlds package path."""
    root = tmp_path / "more_worlds"
    target = root / "mytask"
    shutil.copytree(ROOT / "worlds" / "shapes", target, ignore=shutil.ignore_patterns("__pycache__"))
    for py in target.rglob("*.py"):  # step 2: the copy's modules import each other, not the shapes world's
        py.write_text(py.read_text().replace("worlds.shapes.", "worlds.mytask."))
    init = target / "__init__.py"  # step 3: the names it registers
    text = init.read_text()
    text = text.replace('name="shapes"', 'name="mytask"')
    for old, new in (('{"shapes": "worlds.mytask.prompts', '{"mytask": "worlds.mytask.prompts'),
                     ('{"shapes": "worlds.mytask.preset', '{"mytask": "worlds.mytask.preset'),
                     ('{"shapes": "worlds.mytask.detector', '{"mytask": "worlds.mytask.detector'),
                     ('{"sft": RecipeKind', '{"mytask_sft": RecipeKind')):
        assert old in text, old
        text = text.replace(old, new)
    # The checkpoint's classes keep their names (PatchAutoencoder, ShapesVQTokenizer): the copy drops those two
    # entries and its checkpoints load them through the shapes world, as the guide says.
    text = re.sub(r"\n    component_classes=\{[^}]*\},", "", text)
    text = re.sub(r"\n    image_tokenizers=\{[^}]*\},", "", text)
    assert "component_classes" not in text and "image_tokenizers" not in text
    init.write_text(text)
    monkeypatch.setattr(worlds, "__path__", [*worlds.__path__, str(root)])
    worlds.refresh()
    yield target
    worlds.refresh()
    for name in [m for m in sys.modules if m == "worlds.mytask" or m.startswith("worlds.mytask.")]:
        del sys.modules[name]


def test_a_copied_world_plugs_in_by_name(copied_world, tmp_path):
    from rl.cli import app
    from worlds.shapes.prompts import shapes_prompt_rows

    assert "mytask" in worlds.world_names()
    recipe = tmp_path / "mytask_grpo.yaml"
    recipe.write_text(f"""\
name: mytask_grpo
model: {{source: path, path: {copied_world / 'pretrained'}}}
rollout:
  prompts: {{format: mytask, split: train}}
  prompts_per_step: 2
rewards:
  - name: geneval@flowgrpo
    options: {{detector: mytask}}
trainer: {{num_generations: 2, max_steps: 1}}
eval:
  prompts: {{format: mytask, split: heldout, shuffle: false}}
""")
    result = CliRunner().invoke(app, ["validate", str(recipe)])
    assert result.exit_code == 0, result.output
    assert f"{len(shapes_prompt_rows('train'))} prompts" in result.output

    from rl.eval_command import recipe_split
    from rl.recipe import load_recipe

    no_eval = tmp_path / "no_eval.yaml"
    no_eval.write_text(recipe.read_text().split("eval:")[0])
    heldout = recipe_split(load_recipe(no_eval), "heldout")  # `nativerl eval --split heldout`: the world's split
    assert (heldout.format, heldout.split) == ("mytask", "heldout")

    sft = tmp_path / "mytask_sft.yaml"
    sft.write_text("kind: mytask_sft\noutput_dir: runs/mytask_sft\n")
    result = CliRunner().invoke(app, ["validate", str(sft)])
    assert result.exit_code == 0, result.output
    assert "pre-training (SFTConfig)" in result.output
    assert worlds.load_object(worlds.lookup("recipe_kinds", "mytask_sft").schema).__module__ == "worlds.mytask.sft"

    # The copy's own modules do the work: its detector reads its world's scenes exactly, its preset builds.
    import importlib

    from rewards.detectors import build_detector
    from rollouts.presets import preset_spec

    detector = build_detector("mytask")
    assert type(detector).__module__ == "worlds.mytask.detector"
    world = importlib.import_module("worlds.mytask.world")
    scene = world.sample_random_scene(np.random.default_rng(0), max_objects=6)
    found = sorted((d.class_name, d.color) for d in detector.detect(world.render_scene(scene)))
    assert found == sorted((o.shape, o.color) for o in scene.objects)
    assert preset_spec("mytask").tokens_per_image == 16

    bad = tmp_path / "bad.yaml"
    bad.write_text(recipe.read_text().replace("format: mytask, split: train", "format: mytsk, split: train"))
    result = CliRunner().invoke(app, ["validate", str(bad)])
    assert result.exit_code == 2
    assert "unknown prompt format 'mytsk' (did you mean 'mytask'?)" in result.output
