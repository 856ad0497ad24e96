"""Every check of a GRPO recipe that needs no model weights: `nativerl validate` runs them, and so does `nativerl
train` before it loads anything, so a run never dies after minutes of loading on something a file check finds.

    preflight(recipe, recipe_dir) -> Preflight(problems, missing_files, notes)

- rewards: the name, a user module (found beside the recipe) and its signature, the version (`geneval@nover`
  lists the versions), option names and types (`detectr` names `detector`) — `rewards.registry.check_reward`;
- prompts: the training and held-out prompt sets load;
- optional packages the recipe switches on: wandb (`logging.wandb`), tensorboard, ray (`rollout.engine: ray`);
- local files: `model.path` must be a checkpoint folder (a config.json inside, not an empty folder), and every
  other path the recipe names (diffusion folder, image tokenizer, reward weights) must exist. These are
  `missing_files`, kept apart because `validate --allow-missing-weights` reports them as warnings (to check a
  recipe before the weights are copied over).
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

OPTIONAL_PACKAGES = (  # (recipe switch, package, how to get it)
    ("logging.wandb", "wandb", "pip install wandb, or set logging.wandb=false"),
    ("logging.tensorboard", "tensorboard", "pip install tensorboard, or set logging.tensorboard=false"),
    ("rollout.engine=ray", "ray", "pip install 'ray[default]', or set rollout.engine=local"),
)


@dataclass
class Preflight:
    problems: list[str] = field(default_factory=list)
    missing_files: list[str] = field(default_factory=list)
    prompt_count: int = 0

    def errors(self, allow_missing_files: bool = False) -> list[str]:
        return self.problems + ([] if allow_missing_files else self.missing_files)


def local_paths(recipe: Any) -> list[tuple[str, str]]:
    """(field, value) of every local file or folder a recipe names: the model's and the rewards' weights."""
    found = []
    if recipe.model.source == "path" and recipe.model.path:
        found.append(("model.path", recipe.model.path))
    for name in ("image_tokenizer", "diffusion_path"):
        if getattr(recipe.model, name):
            found.append((f"model.{name}", getattr(recipe.model, name)))

    def walk(prefix: str, options: dict) -> None:
        for key, value in options.items():
            if isinstance(value, dict):
                walk(f"{prefix}.{key}", value)
            elif isinstance(value, str) and (key.endswith(("path", "_dir")) or key == "weights"):
                found.append((f"{prefix}.{key}", value))

    for i, spec in enumerate(recipe.rewards):
        walk(f"rewards[{i}].options", spec.options)
    return found


def _switched_on(recipe: Any, switch: str) -> bool:
    if switch == "logging.wandb":
        return bool(recipe.logging.wandb)
    if switch == "logging.tensorboard":
        return bool(recipe.logging.tensorboard)
    return recipe.rollout.engine == "ray"


def preflight(recipe: Any, recipe_dir: Path | None = None) -> Preflight:
    from prompts.prompt_sets import load_prompt_rows
    from prompts.row_files import PromptSetError
    from rewards.registry import check_reward

    out = Preflight()
    for i, spec in enumerate(recipe.rewards):
        out.problems += [f"rewards[{i}]: {p}" for p in check_reward(spec)]
    for where, source in (("rollout.prompts", recipe.rollout.prompts), ("eval.prompts", recipe.eval.prompts)):
        if source is None:
            continue
        try:
            rows = load_prompt_rows(source, recipe_dir)
        except (PromptSetError, ImportError, OSError, ValueError) as exc:
            out.problems.append(f"{where}: {exc}")
            continue
        if where == "rollout.prompts":
            out.prompt_count = len(rows)
    for switch, package, fix in OPTIONAL_PACKAGES:
        if _switched_on(recipe, switch) and importlib.util.find_spec(package) is None:
            out.problems.append(f"{switch}: the {package} package is not installed ({fix})")
    for where, value in local_paths(recipe):
        path = Path(value).expanduser()
        if not path.exists():
            out.missing_files.append(f"{where} = {value} does not exist (nothing is downloaded: point it at your "
                                     "local copy)")
        elif where == "model.path" and not any((path / f).is_file() for f in ("config.json", "model_index.json")):
            what = "an empty folder" if path.is_dir() and not any(path.iterdir()) else "not a checkpoint folder"
            out.missing_files.append(f"model.path = {value} is {what}: no config.json (expected a BLIP3o-NEXT "
                                     "checkpoint or a `nativerl export` folder) and no model_index.json (a "
                                     "diffusers pipeline folder, as GLM-Image's)")
    return out
