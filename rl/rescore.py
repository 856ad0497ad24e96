"""`nativerl rescore RUN_DIR --reward NAME`: score a run's archived rollout images with another reward.

Typical use: a run trained on a proxy (OCR, GenEval with YOLOv3-tiny) is rescored afterwards with a reward it
never saw (a stronger detector, CLIPScore, aesthetics) to see whether the proxy's gains are real.

For every archived step (`rl/archive.py`) it scores the exact pixels that were rewarded during training (the images
stored in `rollouts.pt`, with their prompts and metadata), through a one-reward `RewardSuite` (same failure and
timeout policy as training; a failure is reported, never turned into a score) and writes:
- `archive/step-XXXXXX/rescored/<key>.json`: tag, options, per-row scores and details, mean, GenEval accuracy;
- `RUN_DIR/rescored.jsonl`: one metrics-like line per (step, reward), `{"step", "policy_version",
  "rescored/<key>/mean", "rescored/<key>/accuracy"?, "rescored/<key>/tag"}`, which `nativerl compare` plots.
Rescoring again with the same reward key replaces that reward's lines and files (other rewards' are kept).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from rewards.spec import RewardSpec
from rl.archive import archived_steps

RESCORED_FILE = "rescored.jsonl"


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if hasattr(value, "item") and getattr(value, "ndim", 0) == 0:
        value = value.item()
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if hasattr(value, "tolist"):
        return _jsonable(value.tolist())
    return repr(value)


def read_rescored(run_dir: str | Path) -> list[dict[str, Any]]:
    """Lines of `RUN_DIR/rescored.jsonl` (a trailing fragment of a file being written is skipped)."""
    from rl.metrics_log import read_metrics

    return read_metrics(Path(run_dir) / RESCORED_FILE)


def rescore_run(run_dir: str | Path, spec: RewardSpec, *, steps: list[int] | None = None,
                suite: Any = None) -> list[dict[str, Any]]:
    """Rescore every archived step (or only `steps`) with `spec`; returns the lines written to rescored.jsonl."""
    from rewards.suite import RewardSuite
    from rl.evaluate import geneval_correctness

    run_dir = Path(run_dir)
    archive = archived_steps(run_dir)
    if steps is not None:
        have = {a.step for a in archive}
        missing = sorted(set(steps) - have)
        if missing:
            raise FileNotFoundError(f"{run_dir}: steps {missing} are not archived; archived: {sorted(have) or 'none'}")
        archive = [a for a in archive if a.step in set(steps)]
    if not archive:
        raise FileNotFoundError(f"{run_dir}: no archived rollouts (archive/step-*/); train with "
                                "logging.archive_every: k to keep every k-th step's rollouts")
    suite = suite or RewardSuite([spec])
    key = spec.key
    lines = []
    for item in archive:
        batch = item.load_batch()
        out = suite.score_rollouts(batch)  # renders_per_sample > 1: the mean over each row's renders, as in training
        if key in out.failed:
            raise RuntimeError(f"rescore {spec.name!r} failed on {item.path}: {out.failed[key]}")
        scores = out.scores[key]
        details = [d.get(key, {}) for d in out.details]
        line: dict[str, Any] = {"step": item.step, "policy_version": int(batch.policy_version),
                                f"rescored/{key}/mean": float(np.nanmean(scores)),
                                f"rescored/{key}/tag": out.tags[key]}
        correct = [c for c in (geneval_correctness({key: d}) for d in details) if c is not None]
        if correct:
            line[f"rescored/{key}/accuracy"] = float(np.mean([c for _, c in correct]))
        record = {"reward": spec.name, "key": key, "tag": out.tags[key], "options": spec.options,
                  "step": item.step, "policy_version": int(batch.policy_version),
                  "mean": line[f"rescored/{key}/mean"], "accuracy": line.get(f"rescored/{key}/accuracy"),
                  "scores": [float(s) for s in scores], "details": details}
        folder = item.path / "rescored"
        folder.mkdir(exist_ok=True)
        tmp = folder / f".{key}.json.tmp"
        tmp.write_text(json.dumps(_jsonable(record), indent=1))
        tmp.replace(folder / f"{key}.json")
        lines.append(line)
    _replace_lines(run_dir, key, lines)
    return lines


def _replace_lines(run_dir: Path, key: str, lines: list[dict[str, Any]]) -> None:
    """rescored.jsonl without this reward's old lines for the rescored steps, plus the new ones (atomic)."""
    prefix = f"rescored/{key}/"
    steps = {line["step"] for line in lines}
    kept = [r for r in read_rescored(run_dir)
            if not (r.get("step") in steps and any(k.startswith(prefix) for k in r))]
    rows = sorted(kept + lines, key=lambda r: r.get("step", 0))
    path = run_dir / RESCORED_FILE
    tmp = path.with_suffix(".jsonl.tmp")
    tmp.write_text("".join(json.dumps(_jsonable(r)) + "\n" for r in rows))
    tmp.replace(path)


def rescored_curves(run_dir: str | Path) -> dict[str, list[tuple[int, float]]]:
    """{"rescored/<key>/mean": [(step, value), ...], ...} from rescored.jsonl, sorted by step."""
    curves: dict[str, list[tuple[int, float]]] = {}
    for row in read_rescored(run_dir):
        for k, v in row.items():
            if k.startswith("rescored/") and isinstance(v, (int, float)) and not isinstance(v, bool):
                curves.setdefault(k, []).append((int(row["step"]), float(v)))
    return {k: sorted(v) for k, v in curves.items()}
