"""What a world contributes to the generic packages: one `World` value per world, in its `__init__.py`.

Every entry is a lazy `"module:attr"` string (as `rollouts/presets.py`'s `LAZY_PRESETS`), so reading a manifest
imports nothing heavy: the named module is imported only when a recipe asks for that name. This file imports
nothing from nativerl, so `rewards/`, `rollouts/`, `prompts/` and `rl/` can all read manifests without importing
each other.
"""

from __future__ import annotations

from dataclasses import dataclass, field

# The kinds of contribution, as named in `World` and in `worlds.contributions(kind)`.
CONTRIBUTION_KINDS = ("prompt_formats", "presets", "component_classes", "image_tokenizers", "rewards", "detectors",
                      "recipe_kinds")


@dataclass(frozen=True)
class RecipeKind:
    """A recipe kind other than GRPO (`kind: <name>` in the YAML), e.g. a world's SFT pre-training.

    `schema`: the pydantic config class the recipe validates against (extra=forbid). `run`: a function
    `(config, progress: bool) -> str | Path` that trains and returns the folder to report. `label`: what
    `nativerl train` / `validate` call it ("SFT")."""

    schema: str
    run: str
    label: str


@dataclass(frozen=True)
class World:
    """The names a world registers. Keys are the names recipes and checkpoints use; values are "module:attr".

    - prompt_formats: `rollout.prompts.format` → `loader(source, base_dir) -> list[dict]` (prompts/formats.py; a
      world's rows come in splits `source.split` = "train" / "heldout").
    - presets: `model.preset` → `() -> rollouts.presets.GeneratorSpec`.
    - component_classes: a renderer component's `_class_name` in a checkpoint's config.json (its VAE) → class.
    - image_tokenizers: an image tokenizer's `_class_name` → class with `from_pretrained(directory)` returning an
      `rollouts.image_tokenizer.ImageTokenizer`.
    - rewards: reward name (`rewards: - name: ...`) → reward class (`rewards/registry.py`'s contract).
    - detectors: GenEval detector name (`options: {detector: ...}`) → detector class (`rewards/detectors`).
    - recipe_kinds: `kind:` → `RecipeKind`.
    """

    name: str
    description: str
    prompt_formats: dict[str, str] = field(default_factory=dict)
    presets: dict[str, str] = field(default_factory=dict)
    component_classes: dict[str, str] = field(default_factory=dict)
    image_tokenizers: dict[str, str] = field(default_factory=dict)
    rewards: dict[str, str] = field(default_factory=dict)
    detectors: dict[str, str] = field(default_factory=dict)
    recipe_kinds: dict[str, RecipeKind] = field(default_factory=dict)
