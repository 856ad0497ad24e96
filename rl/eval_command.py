"""`nativerl eval RUN_DIR|CHECKPOINT --prompts FILE --seeds N`: fixed prompts × fixed seeds → eval.json + eval.md.

What is evaluated:
- a run directory (`config.yaml` + `checkpoints/`): the policy of its latest checkpoint (or `--step`), loaded into
  the run's own generator with the run's sampling and renderer settings; rewards from the run's recipe;
- one checkpoint of a run (`RUN_DIR/checkpoints/step-XXXXXX/`): that step, same as above;
- an exported generator (`nativerl export` output, the BLIP3o-NEXT layout): loaded with
  `ModelConfig(source="path")`; rewards, sampling and renderer from `--recipe` (the recipe's model is ignored).
`--reward` (repeatable: a name like `ocr`, or a JSON spec `{"name": ..., "options": {...}}`) replaces the rewards.
Prompts: `--prompts FILE`, or `--split heldout` for the recipe's own held-out prompts (`eval.prompts`, or the shapes
worlds' held-out split) with the recipe's `eval.seeds` and `eval.num_prompts` unless given.

The generation is `rl.evaluate.evaluate_prompts` (seeds `derive_seed(EVAL_SEED, "eval", s, chunk start)`, the same
for every checkpoint, so two checkpoints are compared on the same sampling and renderer noise). Reported: per-reward
means and, when a reward gives GenEval correctness, accuracy overall and per tag, strict (exact-scene) accuracy and,
for GenEval-style prompt sets, the accuracy of the same images against a deranged prompt's metadata
(`swapped_accuracy`: the prompt-dependence check, rl/evaluate.py).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rewards.spec import RewardSpec
from rollouts.sampling_source import resolve_sampling


@dataclass
class EvalTarget:
    kind: str  # "run" | "exported"
    path: Path
    run_dir: Path | None = None
    checkpoint: Path | None = None
    step: int | None = None


def resolve_target(target: str | Path, step: int | None = None) -> EvalTarget:
    """Say what `target` is (module docstring); errors name what is missing."""
    from rl.checkpoint import checkpoint_for_step, list_checkpoints

    target = Path(target)
    if not target.exists():
        raise FileNotFoundError(f"{target}: no such run directory or checkpoint")
    if (target / "state.json").is_file() and (target / "policy").exists():  # RUN_DIR/checkpoints/step-XXXXXX
        run_dir = target.parent.parent
        if not (run_dir / "config.yaml").is_file():
            raise FileNotFoundError(f"{target} looks like a training checkpoint but {run_dir} has no config.yaml")
        state = json.loads((target / "state.json").read_text())
        return EvalTarget("run", target, run_dir=run_dir, checkpoint=target, step=int(state["step"]))
    if (target / "config.yaml").is_file() and not (target / "config.json").is_file():
        if not list_checkpoints(target):
            from rl.metrics_log import read_metrics

            rows = read_metrics(target)
            reached = f"it has logged {rows[-1]['step']} step(s)" if rows else "it has logged no step yet"
            raise FileNotFoundError(f"{target}: run has no checkpoint yet ({reached}); wait for checkpoint.every "
                                    "steps, or evaluate an exported generator")
        ckpt = checkpoint_for_step(target, step)
        state = json.loads((ckpt / "state.json").read_text())
        return EvalTarget("run", target, run_dir=target, checkpoint=ckpt, step=int(state["step"]))
    if (target / "config.json").is_file():
        return EvalTarget("exported", target)
    raise FileNotFoundError(f"{target}: neither a run directory (config.yaml + checkpoints/), a training checkpoint "
                            "(state.json + policy/) nor an exported generator (config.json)")


def parse_reward_option(text: str) -> RewardSpec:
    """`--reward ocr` or `--reward '{"name": "clipscore", "options": {"path": "..."}}'`."""
    text = text.strip()
    if text.startswith("{"):
        try:
            return RewardSpec.model_validate(json.loads(text))
        except json.JSONDecodeError as exc:
            raise ValueError(f"--reward {text!r}: not valid JSON: {exc.msg}") from None
    return RewardSpec(name=text)


def infer_format(path: Path) -> str:
    if path.suffix == ".txt":
        return "ocr_txt"
    if path.suffix == ".jsonl":
        with path.open(encoding="utf-8") as f:
            for line in f:
                if line.strip():
                    try:
                        first = json.loads(line)
                    except json.JSONDecodeError:
                        return "jsonl"  # the loader reports the bad line with its number
                    return "geneval_jsonl" if isinstance(first, dict) and "tag" in first else "jsonl"
    raise ValueError(f"--prompts {path}: cannot tell the format from the name; pass --format "
                     "geneval_jsonl|ocr_txt|jsonl")


def load_generator(target: EvalTarget, recipe: Any) -> Any:
    """The generator to evaluate, with the target's weights."""
    from rollouts.generator import NativeImageGenerator

    if target.kind == "exported":
        model_cfg = recipe.model.model_copy(update={"source": "path", "path": str(target.path)})
        generator = NativeImageGenerator.from_config(model_cfg)
    elif recipe.trainer.policy == "lora":
        from rl.policy import Policy

        generator = NativeImageGenerator.from_config(recipe.model)
        policy = Policy(generator, recipe.trainer)
        policy.load(target.checkpoint / "policy")
        generator.lm = policy.merged_lm()  # plain LM: no adapter overhead while sampling
    else:
        # Full weights: load them straight into the LM (a Policy would also deep-copy a reference LM).
        from safetensors.torch import load_file

        from rl.policy import apply_sync_state

        generator = NativeImageGenerator.from_config(recipe.model)
        files = sorted((target.checkpoint / "policy").glob("*.safetensors"))
        if not files:
            raise FileNotFoundError(f"{target.checkpoint / 'policy'}: no *.safetensors weights (full policy)")
        state = {}
        for f in files:
            state.update(load_file(str(f), device=str(generator.device)))
        apply_sync_state(generator.lm, state)
    generator.eval()
    return generator


def recipe_split(recipe: Any, split: str) -> Any:
    """The recipe's own prompt source for `split`: heldout = `eval.prompts` (or, for a world's prompt format such
    as shapes, the held-out split of the training prompts); train = `rollout.prompts`, unshuffled."""
    if split not in ("heldout", "train"):
        raise ValueError(f"--split {split!r}: expected heldout or train")
    train = recipe.rollout.prompts.model_copy(update={"shuffle": False})
    if split == "train":
        return train
    if recipe.eval.prompts is not None:
        return recipe.eval.prompts
    import worlds

    if worlds.lookup("prompt_formats", train.format) is not None:  # a world's rows come in train / heldout splits
        return train.model_copy(update={"split": "heldout"})
    raise ValueError("the recipe has no held-out prompts (eval.prompts is not set and the training prompts have no "
                     "held-out split); pass --prompts FILE")


def run_eval(target: str | Path, prompts: str | Path | None = None, *, seeds: int | None = None,
             fmt: str | None = None, out_dir: str | Path | None = None, recipe_path: str | Path | None = None,
             rewards: list[RewardSpec] | None = None, overrides: list[str] | None = None,
             num_prompts: int | None = None, step: int | None = None, split: str | None = None) -> dict[str, Any]:
    """Evaluate and write `eval.json` + `eval.md` in `out_dir`; returns the eval.json content. Prompts: a file
    (`prompts`), or the recipe's own `split` (`recipe_split`; seeds and prompt count default to `eval.seeds` and
    `eval.num_prompts`)."""
    from prompts.prompt_sets import load_prompt_rows
    from rewards.suite import RewardSuite
    from rl.evaluate import evaluate_prompts
    from rl.recipe import PromptSource, Recipe, load_recipe

    resolved = resolve_target(target, step)
    if resolved.kind == "run":
        recipe = load_recipe(resolved.run_dir / "config.yaml", overrides)
    elif recipe_path is not None:
        recipe = load_recipe(recipe_path, overrides)
    elif rewards:
        recipe = Recipe.model_validate({"rewards": [r.model_dump() for r in rewards]})
    else:
        raise ValueError(f"{resolved.path} is an exported generator: pass --recipe (for rewards, sampling and "
                         "renderer settings) or --reward")
    specs = list(rewards) if rewards else list(recipe.rewards)
    if not specs:
        raise ValueError("no rewards to evaluate with: the recipe has none and no --reward was given")
    if (prompts is None) == (split is None):
        raise ValueError("give --prompts FILE or --split heldout|train (the recipe's own prompts), not both")
    if split is not None:
        source = recipe_split(recipe, split)
        recipe_dir = resolved.run_dir if resolved.kind == "run" else Path(recipe_path).parent if recipe_path else None
        rows = load_prompt_rows(source, recipe_dir)
        fmt, label = source.format, f"recipe:{split}"
        seeds = seeds or recipe.eval.seeds
        num_prompts = num_prompts or recipe.eval.num_prompts
        stem = split
    else:
        prompts = Path(prompts)
        fmt = fmt or infer_format(prompts)
        rows = load_prompt_rows(PromptSource(format=fmt, path=str(prompts.resolve())))
        label, stem = str(prompts), prompts.stem
    seeds = seeds or 1
    rows = rows[:num_prompts] if num_prompts else rows

    generator = load_generator(resolved, recipe)
    recipe.rollout.sampling = resolve_sampling(recipe.rollout.sampling, generator)  # source: checkpoint
    suite = RewardSuite(specs)
    result = evaluate_prompts(generator, rows, suite, seeds=seeds, sampling=recipe.rollout.sampling,
                              renderer_cfg=recipe.rollout.renderer, progress="eval")
    per_image = result.pop("per_image", [])
    tag_counts: dict[str, int] = {}
    for row in rows:
        if "tag" in row:
            tag_counts[row["tag"]] = tag_counts.get(row["tag"], 0) + seeds
    report = {
        "target": str(resolved.path), "kind": resolved.kind, "checkpoint": str(resolved.checkpoint or ""),
        "step": resolved.step, "prompts": label, "format": fmt, "num_prompts": len(rows), "seeds": seeds,
        "num_images": len(rows) * seeds, "reward_tags": dict(suite.tags), "tag_counts": tag_counts,
        "sampling": recipe.rollout.sampling.model_dump(), "renderer": recipe.rollout.renderer.model_dump(),
        "results": result,
        "per_image": per_image,  # for paired comparisons (nativerl compare-evals)
    }
    if out_dir is None:
        base = resolved.run_dir / "eval" if resolved.kind == "run" else Path("eval") / resolved.path.name
        out_dir = base / (stem + (f"-step-{resolved.step:06d}" if resolved.step is not None else ""))
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "eval.json").write_text(json.dumps(report, indent=1))
    (out_dir / "eval.md").write_text(format_report(report))
    report["out_dir"] = str(out_dir)
    return report


def format_report(report: dict[str, Any]) -> str:
    res = report["results"]
    what = f"{report['target']}" + (f" (step {report['step']})" if report.get("step") is not None else "")
    lines = [f"# Evaluation of {what}", "",
             (f"{report['num_prompts']} prompts from `{report['prompts']}` ({report['format']}) × "
              f"{report['seeds']} seed(s) = {report['num_images']} images."), "",
             "| reward | tag | mean |", "|---|---|---|"]
    for key, tag in report["reward_tags"].items():
        value = res.get(f"reward/{key}/mean")
        lines.append(f"| {key} | {tag} | {value:.4f} |" if isinstance(value, float) else f"| {key} | {tag} | - |")
    if "accuracy" in res:
        lines += ["", "| GenEval tag | images | accuracy |", "|---|---|---|"]
        for tag, n in sorted(report["tag_counts"].items()):
            acc = res.get(f"accuracy/{tag}")
            lines.append(f"| {tag} | {n} | {acc:.4f} |" if isinstance(acc, float) else f"| {tag} | {n} | - |")
        lines.append(f"| **overall** | {report['num_images']} | {res['accuracy']:.4f} |")
        notes = []
        for key, what in (("strict_accuracy", "the exact scene: right objects, counts, colours and relations, "
                           "nothing extra"),
                          ("swapped_accuracy", "the same images scored against a deranged prompt's metadata; near "
                           "overall, the images do not depend on the prompt")):
            if isinstance(res.get(key), float):
                lines.append(f"| {key} | {report['num_images']} | {res[key]:.4f} |")
                notes.append(f"- {key}: {what}.")
        lines += [""] + notes if notes else []
    return "\n".join(lines) + "\n"
