"""Prompt data: the rows a run trains and evaluates on, at the bottom of the import graph.

A prompt row is a dict with at least `prompt` (docs/CONTRACTS.md, "Prompt rows"); GenEval rows add `tag`,
`include`, `exclude`; editing rows add `instruction` and `reference_image`. This package reads them from files
(`row_files`), generates them (`coco_prompts`), names the words they are made of (`vocabulary`), finds the loader
of a recipe's `rollout.prompts.format` (`formats`, a registry that worlds add their own formats to) and streams them
step by step (`prompt_sets`). It imports nothing from `rl/`, `rollouts/`, `rewards/` or a world: the generator,
the rewards and the driver all read prompts, prompts read none of them.
"""
