"""Fixed-prompt, fixed-seed evaluation: per-reward means, and per-tag accuracy for GenEval-style rewards.

Used before/after training (the demo), every K steps, and by `nativerl eval`. Seeds are fixed: the images of seed
index s for the chunk of rows starting at row `start` use `derive_seed(EVAL_SEED, "eval", s, start)`, with chunks of
`EVAL_CHUNK` rows (the token sampler draws a chunk's rows from one stream, so the chunk size is part of what fixes the
noise, and it is a constant, not a knob). Two checkpoints are so compared on the same sampling and renderer noise.

For GenEval-style prompt sets (rows with `tag` and `include`) three more numbers:
- `swapped_accuracy`: the same images scored against a *deranged* prompt's metadata (`prompts/prompt_swap.py`,
  seeded, within tags). Close to `accuracy`: the images do not depend on the prompt. A prompt-following
  generator keeps it far below `accuracy`.
- `strict_accuracy`: the exact scene (the GenEval reward's `exact`: `strict_correct`, every include clause with
  exactly its count, colours and relations, *and* nothing extra). Mean over tags, like `accuracy`.
- the per-image `swapped_correct` / `strict`, for paired comparisons.
"""

from __future__ import annotations

import sys
import time
from collections import defaultdict
from typing import Any

import numpy as np
import torch

from rollouts.rollout import generate_rollouts
from seeding import derive_seed


def geneval_correctness(detail: dict[str, Any]) -> tuple[str | None, bool] | None:
    """(tag, correct) from one image's reward details (keyed by reward), if a GenEval-style reward gave them."""
    for per_reward in detail.values():
        if isinstance(per_reward, dict) and per_reward.get("correct") is not None:
            return per_reward.get("tag"), bool(per_reward["correct"])
    return None

def geneval_exact(detail: dict[str, Any]) -> bool | None:
    """Exact scene (GenEval reward's `exact`: strict_correct and nothing extra) from one image's reward details."""
    for per_reward in detail.values():
        if isinstance(per_reward, dict) and per_reward.get("exact") is not None:
            return bool(per_reward["exact"])
    return None


EVAL_SEED = 1_234_567
EVAL_CHUNK = 64  # rows per generation call; part of the seed definition (module docstring)


def evaluate_prompts(generator: Any, rows: list[dict[str, Any]], suite: Any, *, seeds: int, sampling: Any,
                     renderer_cfg: Any, progress: str | None = None) -> dict[str, Any]:
    """`progress`: a label for a transient progress bar over the images (None: silent, e.g. inside another bar)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from prompts.prompt_swap import is_geneval_row, swapped_rows

    per_reward: dict[str, list[float]] = defaultdict(list)
    tag_correct: dict[str, list[bool]] = defaultdict(list)
    tag_swapped: dict[str, list[bool]] = defaultdict(list)
    tag_strict: dict[str, list[bool]] = defaultdict(list)
    swapped = swapped_rows(rows) if rows and all(is_geneval_row(r) for r in rows) else None
    per_image: list[dict[str, Any]] = []  # one entry per (prompt, seed): what paired comparisons need
    renderer_cfg = renderer_cfg.model_copy(update={"renders_per_sample": 1})  # one image per prompt and seed
    bar = Progress(TextColumn(f"[bold]{progress}"), BarColumn(), MofNCompleteColumn(), TextColumn("images ETA"),
                   TimeRemainingColumn(), transient=True, disable=progress is None)
    with bar:
        task = bar.add_task("eval", total=len(rows) * seeds)
        # Not a terminal: rich draws nothing, so a plain line at most every 10 s says how far the evaluation is.
        plain = progress is not None and not bar.console.is_terminal
        done, last_line = 0, time.monotonic()
        for s in range(seeds):
            for start in range(0, len(rows), EVAL_CHUNK):
                part = rows[start:start + EVAL_CHUNK]
                with torch.no_grad():
                    batch = generate_rollouts(generator, part, group_size=1, sampling=sampling,
                                              renderer_cfg=renderer_cfg, seed=derive_seed(EVAL_SEED, "eval", s, start))
                images = list(batch.images.numpy())
                scores = suite.score(images, batch.prompts, batch.metadata)
                swap_details = (suite.score(images, batch.prompts, swapped[start:start + EVAL_CHUNK]).details
                                if swapped is not None else [None] * len(part))
                for name, v in scores.scores.items():
                    per_reward[name].extend(float(x) for x in v)
                for i, (row, d, sd) in enumerate(zip(part, scores.details, swap_details)):
                    tag = row.get("tag", "all")
                    found = geneval_correctness(d)
                    entry = {"prompt": start + i, "text": batch.prompts[i], "seed": s, "tag": tag,
                             "correct": None if found is None else bool(found[1]),
                             "scores": {k: float(v[i]) for k, v in scores.scores.items()}}
                    if found is not None:
                        tag_correct[tag].append(found[1])
                        exact = geneval_exact(d)
                        if exact is not None:
                            tag_strict[tag].append(exact)
                            entry["strict"] = exact
                        swap_found = geneval_correctness(sd) if sd is not None else None
                        if swap_found is not None:
                            tag_swapped[tag].append(swap_found[1])
                            entry["swapped_correct"] = bool(swap_found[1])
                    per_image.append(entry)
                bar.advance(task, len(part))
                done += len(part)
                if plain and (time.monotonic() - last_line >= 10 or done == len(rows) * seeds):
                    last_line = time.monotonic()
                    print(f"{progress}: {done}/{len(rows) * seeds} images", file=sys.stderr, flush=True)
    out: dict[str, Any] = {"num_prompts": len(rows), "seeds": seeds}
    for name, v in per_reward.items():
        out[f"reward/{name}/mean"] = float(np.nanmean(v))
    if tag_correct:
        per_tag = {tag: float(np.mean(v)) for tag, v in sorted(tag_correct.items())}
        # GenEval's "Overall" is the mean of the per-tag accuracies (tags have different prompt counts).
        out["accuracy"] = float(np.mean(list(per_tag.values())))
        out["accuracy/per_image"] = float(np.mean([c for v in tag_correct.values() for c in v]))
        out.update({f"accuracy/{tag}": acc for tag, acc in per_tag.items()})
    for key, per_tag_lists in (("swapped_accuracy", tag_swapped), ("strict_accuracy", tag_strict)):
        if per_tag_lists:
            per_tag = {tag: float(np.mean(v)) for tag, v in sorted(per_tag_lists.items())}
            out[key] = float(np.mean(list(per_tag.values())))
            out.update({f"{key}/{tag}": acc for tag, acc in per_tag.items()})
    out["per_image"] = per_image
    return out


def format_eval_table(result: dict[str, Any]) -> str:
    """One evaluation as a markdown table (comparisons: rl/paired_eval.py)."""
    keys = [k for k, v in result.items() if isinstance(v, float)]
    lines = ["| metric | value |", "|---|---|"] + [f"| {k} | {result[k]:.3f} |" for k in keys]
    return "\n".join(lines) + "\n"
