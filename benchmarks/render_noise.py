"""How much of the reward's spread inside a GRPO group is renderer noise? (is `renders_per_sample` > 1 worth it)

    .venv/bin/python benchmarks/render_noise.py [--recipe recipes/shapes_grpo_lm_head.yaml] [--prompts 32] [--group 8]
                                                [--renders 8] [--seed 0] [--json out.json]

For `--prompts` training prompts of the recipe, G token sequences each are sampled once, and every sequence is
rendered M times with independent renderer seeds. Scores r[p, i, m] (the recipe's rewards, weighted sum) give:

    total     mean over prompts of the variance, inside the group, of single-render rewards r[p, :, :]
    noise     mean over sequences of the variance over its M renders (the part a new render seed changes)
    noise share = noise / total; with M renders averaged, the noise part of a row's reward shrinks by 1/M.

The advantage signal GRPO wants is the spread *between* token sequences; the noise part is luck. Reported with the
machine and the settings; nothing here trains.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipe", default="recipes/shapes_grpo_lm_head.yaml")
    ap.add_argument("--prompts", type=int, default=32)
    ap.add_argument("--group", type=int, default=8)
    ap.add_argument("--renders", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()

    from prompts.prompt_sets import load_prompt_rows
    from rewards.suite import RewardSuite
    from rl.grpo import combine_rewards
    from rl.recipe import load_recipe
    from rollouts.generator import NativeImageGenerator
    from rollouts.rollout import generate_rollouts

    recipe = load_recipe(args.recipe)
    if recipe.torch_threads:
        torch.set_num_threads(recipe.torch_threads)
    rows = load_prompt_rows(recipe.rollout.prompts)[: args.prompts]
    gen = NativeImageGenerator.from_config(recipe.model)
    suite = RewardSuite(recipe.rewards)
    renderer = recipe.rollout.renderer.model_copy(update={"renders_per_sample": args.renders,
                                                          "seed_policy": "independent"})
    t0 = time.perf_counter()
    with torch.no_grad():
        batch = generate_rollouts(gen, rows, group_size=args.group, sampling=recipe.rollout.sampling,
                                  renderer_cfg=renderer, seed=args.seed)
    renders = batch.all_renders().flatten(0, 1)
    m = args.renders
    out = suite.score(list(renders.numpy()), [p for p in batch.prompts for _ in range(m)],
                      [r for r in batch.metadata for _ in range(m)])
    _, total_reward, _ = combine_rewards({k: torch.as_tensor(v) for k, v in out.scores.items() if k not in out.failed},
                                         out.weights, torch.zeros(len(renders), dtype=torch.long))
    r = total_reward.double().numpy().reshape(len(rows), args.group, m)
    total = float(np.mean([r[p].var() for p in range(len(rows))]))
    noise = float(r.var(axis=2).mean())
    between = float(np.mean([r[p].mean(axis=1).var() for p in range(len(rows))]))
    result = {
        "recipe": args.recipe, "prompts": len(rows), "group": args.group, "renders": m,
        "images": int(len(renders)), "seconds": round(time.perf_counter() - t0, 1),
        "machine": f"{platform.machine()} {os.cpu_count()} cores, torch {torch.__version__}",
        "reward_mean": float(r.mean()), "within_group_var": total, "render_noise_var": noise,
        "between_sequence_var": between, "noise_share": noise / total if total > 0 else float("nan"),
        "sequences_whose_reward_changes_with_the_seed": float((r.std(axis=2) > 0).mean()),
    }
    print(json.dumps(result, indent=1))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
