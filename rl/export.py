"""`nativerl export`: a checkpoint's policy merged into the generator, saved so that both
`NativeImageGenerator.from_config(ModelConfig(source="path", path=OUT))` (and so any recipe) and plain
transformers' `AutoModelForCausalLM.from_pretrained(OUT)` load it: layout "transformers" (model_type qwen3, the
connector and other non-LM parts in `nativerl_parts.safetensors`; rollouts/blip3o_checkpoint.py). Layout "blip3o"
writes the released BLIP3o-NEXT model_type instead, for BLIP3o-NEXT's own code."""

from __future__ import annotations

from pathlib import Path

from rl.checkpoint import checkpoint_for_step
from rl.recipe import load_recipe


def export_checkpoint(run_dir: str | Path, out: str | Path, step: int | None = None,
                      layout: str = "transformers") -> Path:
    from rl.policy import Policy
    from rollouts.generator import NativeImageGenerator

    run_dir, out = Path(run_dir), Path(out)
    config = run_dir / "config.yaml"
    if not config.is_file():
        raise FileNotFoundError(f"{run_dir}: no config.yaml (not a run directory)")
    recipe = load_recipe(config)
    ckpt = checkpoint_for_step(run_dir, step)
    generator = NativeImageGenerator.from_config(recipe.model)
    policy = Policy(generator, recipe.trainer)
    policy.load(ckpt / "policy")
    generator.lm = policy.merged_lm()
    generator.save_pretrained(out, layout=layout)
    return out
