"""Every seed the project derives comes from `derive_seed(seed, purpose, *index)`: one formula, one table of purposes.

Why one function: seeds built by hand (`seed * 1000 + chunk`, `seed + step`, `seed * 1_000_003 + step * 7919`)
collide (with `seed + step`, step 1 of run 0 and step 0 of run 1 share a stream; two purposes that add small
offsets to one seed overlap) and hide what a number depends on. `derive_seed` hashes (seed, purpose, index...) with numpy's `SeedSequence`, whose output is fixed across numpy
versions, so streams of different purposes or indices are independent and a result depends only on what is named.

The purposes are listed in `PURPOSES`; each has a fixed salt, so adding a purpose never moves an existing stream.
The values are 62-bit (they fit `torch.Generator.manual_seed`, `numpy.random.default_rng` and `random.Random`).

Kept outside this table on purpose: the shapes worlds' SFT training and their SFT-time evaluators
(`worlds/shapes*/sft.py`, `worlds/shapes*/evaluate.py`), whose seeds define the committed checkpoints and their
`sft_summary.json`; changing them would make those files unreproducible.
"""

from __future__ import annotations

import numpy as np

# purpose -> salt. Append only: a salt once used is never reused or renumbered.
PURPOSES: dict[str, int] = {
    "tokens": 1,           # a rollout's token sampler (rollouts/sample_and_render.py)
    "render": 2,           # a rollout row's renderer noise, first render
    "extra_render": 3,     # render m >= 1 of a row (renders_per_sample > 1)
    "shard": 4,            # a Ray shard of a rollout step (engines/shard_plan.py)
    "step": 5,             # a GRPO step's rollout seed, per rank (rl/train_loop.py)
    "update_order": 6,     # minibatch order of a step's update (mu > 1 or minibatches)
    "eval": 7,             # fixed evaluation images: seed index, chunk (rl/evaluate.py)
    "gold_eval": 8,        # the gold monitor's held-out images: seed index (rl/monitors/gold.py)
    "health_recheck": 9,   # which images the health monitor re-scores at a step
    "health_swap": 10,     # the health monitor's prompt derangement at a step
    "prompt_order": 11,    # a prompt stream's shuffle of one epoch (prompts/prompt_sets.py)
    "tiny_weights": 12,    # a tiny released-layout checkpoint's fine-tuned weights, per variant (tests)
    "prompt_priority": 13, # a prioritised prompt stream's weighted draw, per draw (prompts/prompt_priority.py)
}


def derive_seed(seed: int, purpose: str, *index: int) -> int:
    """A 62-bit seed from (seed, purpose, index...). Unknown purposes raise, so a typo cannot alias a stream."""
    try:
        salt = PURPOSES[purpose]
    except KeyError:
        raise ValueError(f"unknown seed purpose {purpose!r}; known: {', '.join(PURPOSES)}") from None
    seed = int(seed) % 2**64  # a negative recipe seed is still one fixed stream
    entropy = [seed & 0xFFFFFFFF, seed >> 32, salt, *(int(i) for i in (index or (0,)))]
    state = np.random.SeedSequence(entropy)
    return int(state.generate_state(1, dtype=np.uint64)[0] >> np.uint64(2))


__all__ = ["PURPOSES", "derive_seed"]
