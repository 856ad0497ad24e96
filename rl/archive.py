"""Rollout archive: keep a step's whole rollout batch on disk, so it can be inspected and rescored later.

`logging.archive_every: k` keeps every k-th step (k = 1: every rollout). Layout of `RUN_DIR/archive/step-XXXXXX/`:
- `rollouts.pt`: the `RolloutBatch` itself (`RolloutBatch.save`: the one schema): prompts, metadata, prompt ids,
  image tokens, log-probs, render seeds, images, per-reward scores and details, policy version;
- `images/NNNN.png`: each image as a lossless PNG, for people and for tools that do not read torch files;
- `index.json`: one record per row (prompt, group, render seed, PNG file, per-reward scores) plus the step, the
  policy version and the reward tags (`name@version`), readable without torch;
- `rescored/<reward>.json`: written later by `nativerl rescore` (rl/rescore.py), beside the originals.
A step is written into `.tmp-step-XXXXXX` and renamed into place, so a reader never sees half an archive.
"""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rollouts.batch import RolloutBatch

ARCHIVE_DIR = "archive"
STEP_DIR = "step-{:06d}"


def _finite_or_none(x: float) -> float | None:
    return x if math.isfinite(x) else None


def archive_rollouts(run_dir: str | Path, step: int, batch: RolloutBatch,
                     reward_tags: dict[str, str] | None = None) -> Path:
    """Write one step's rollouts (module docstring) and return the step's folder."""
    from PIL import Image

    root = Path(run_dir) / ARCHIVE_DIR
    root.mkdir(parents=True, exist_ok=True)
    final = root / STEP_DIR.format(step)
    tmp = root / (".tmp-" + final.name)
    if tmp.exists():
        shutil.rmtree(tmp)
    (tmp / "images").mkdir(parents=True)
    batch.save(tmp / "rollouts.pt")
    records = []
    for i in range(len(batch)):
        name = f"images/{i:04d}.png"
        Image.fromarray(batch.images[i].cpu().numpy()).save(tmp / name)
        records.append({
            "row": i,
            "prompt": batch.prompts[i],
            "group": int(batch.group_ids[i]),
            "render_seed": int(batch.render_seeds[i]),
            "image": name,
            "rewards": {k: _finite_or_none(float(v[i])) for k, v in batch.rewards.items()},
        })
    index = {"step": int(step), "policy_version": int(batch.policy_version), "num_rows": len(batch),
             "reward_tags": dict(reward_tags or {}), "rows": records}
    (tmp / "index.json").write_text(json.dumps(index, indent=1))
    if final.exists():  # a resumed run redoes the step: its new archive replaces the old one (rescores included)
        shutil.rmtree(final)
    tmp.rename(final)
    return final


@dataclass
class ArchivedStep:
    step: int
    path: Path

    @property
    def index(self) -> dict[str, Any]:
        return json.loads((self.path / "index.json").read_text())

    def load_batch(self) -> RolloutBatch:
        return RolloutBatch.load(self.path / "rollouts.pt")


def abandon_archive_after(run_dir: str | Path, step: int) -> Path | None:
    """Move archived steps newer than `step` into `archive/abandoned-<UTC time>/` (a resume from an earlier step:
    the new branch's rollouts must not mix with the old branch's). Returns the folder, or None if none was newer."""
    import time

    newer = [a.path for a in archived_steps(run_dir) if a.step > step]
    if not newer:
        return None
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    target, n = Path(run_dir) / ARCHIVE_DIR / f"abandoned-{stamp}", 1
    while target.exists():
        n += 1
        target = Path(run_dir) / ARCHIVE_DIR / f"abandoned-{stamp}-{n}"
    target.mkdir()
    for p in newer:
        p.rename(target / p.name)
    return target


def archived_steps(run_dir: str | Path) -> list[ArchivedStep]:
    """The complete archived steps of a run, oldest first (half-written `.tmp-*` folders are ignored)."""
    root = Path(run_dir) / ARCHIVE_DIR
    if not root.is_dir():
        return []
    out = []
    for p in sorted(root.iterdir()):
        if p.is_dir() and p.name.startswith("step-") and (p / "index.json").is_file() \
                and (p / "rollouts.pt").is_file():
            out.append(ArchivedStep(step=int(p.name.split("-", 1)[1]), path=p))
    return out
