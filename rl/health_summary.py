"""The end-of-run learning-health lines of `nativerl train`: was the signal still alive at the end, and did the
policy narrow or collapse? A rising reward alone does not say; these numbers come from metrics.jsonl.

- `zero_std_frac`, mean over the last 10% of steps: samples in groups of equal rewards (no advantage). With
  GenEval-style rewards it is split into *solved* (every sample right: learned) and *stuck* (equally wrong: the
  dead signal), from `zero_std_frac/solved`.
- entropy and within-group token diversity: mean of the first 10 steps against the last 10.
- `grad_norm`: mean over the last 10% of steps.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def _mean(rows: list[dict[str, Any]], key: str) -> float | None:
    values = [r[key] for r in rows if isinstance(r.get(key), (int, float)) and np.isfinite(r[key])]
    return float(np.mean(values)) if values else None


def learning_health_lines(rows: list[dict[str, Any]]) -> list[str]:
    """Markdown bullet lines for the steps in `rows` (metrics.jsonl rows; rows without `zero_std_frac`, such as
    evaluation rows, are ignored). [] when no step was logged."""
    steps = [r for r in rows if "zero_std_frac" in r]
    if not steps:
        return []
    tail = steps[-max(1, len(steps) // 10):]
    head, last = steps[:10], steps[-10:]
    span = f"steps {tail[0].get('step', '?')}-{tail[-1].get('step', '?')}"
    zero_std = _mean(tail, "zero_std_frac")
    line = f"- `zero_std_frac` (groups with equal rewards, no advantage), {span}: {zero_std:.2f}"
    solved = _mean(tail, "zero_std_frac/solved")
    if solved is not None:
        line += (f", of which solved (every sample right) {solved:.2f} and stuck (equally wrong, the dead signal) "
                 f"{max(zero_std - solved, 0.0):.2f}")
    lines = [line]
    for key, name in (("entropy", "entropy"), ("diversity/tokens", "within-group token diversity")):
        first, end = _mean(head, key), _mean(last, key)
        if first is not None and end is not None:
            lines.append(f"- {name}, first 10 → last 10 steps: {first:.2f} → {end:.2f}")
    grad = _mean(tail, "grad_norm")
    if grad is not None:
        lines.append(f"- `grad_norm`, {span}: {grad:.2f}")
    return lines
