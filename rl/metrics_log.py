"""The run's metrics: one flat JSON object per step in `metrics.jsonl`, mirrored to TensorBoard (and wandb).

Each line is written with a single `write()` on a file opened with O_APPEND, so a crash leaves either the whole
line or none of it; readers still skip a trailing fragment (`read_metrics`), so a half line can never break them.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any


def _jsonable(value: Any) -> Any:
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None  # JSON has no NaN; a missing value reads as null
    return value


class MetricsLog:
    def __init__(self, run_dir: str | Path, *, tensorboard: bool = True, wandb_project: str | None = None,
                 run_name: str = "run", config: dict[str, Any] | None = None):
        self.path = Path(run_dir) / "metrics.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._tb = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(log_dir=str(Path(run_dir) / "tensorboard"))
        self._wandb = None
        if wandb_project:
            try:
                import wandb
            except ImportError:
                raise RuntimeError("logging.wandb is true but the wandb package is not installed "
                                   "(pip install wandb)") from None
            self._wandb = wandb.init(project=wandb_project, name=run_name, config=config, dir=str(run_dir))

    def append(self, step: int, metrics: dict[str, Any]) -> dict[str, Any]:
        row = {"step": int(step), **{k: _jsonable(v) for k, v in metrics.items()}}
        line = (json.dumps(row, sort_keys=False) + "\n").encode()
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line)
            os.fsync(fd)
        finally:
            os.close(fd)
        if self._tb is not None:
            for k, v in row.items():
                if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool):
                    self._tb.add_scalar(k, v, step)
            self._tb.flush()
        if self._wandb is not None:
            self._wandb.log({k: v for k, v in row.items() if k != "step"}, step=step)
        return row

    def truncate_after(self, step: int) -> None:
        """Drop lines of steps after `step` (a resumed run redoes them), rewriting the file atomically."""
        if not self.path.exists():
            return
        keep = [r for r in read_metrics(self.path) if r.get("step", -1) <= step]
        tmp = self.path.with_suffix(".jsonl.tmp")
        tmp.write_text("".join(json.dumps(r) + "\n" for r in keep))
        tmp.replace(self.path)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
        if self._wandb is not None:
            self._wandb.finish()


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """All complete lines of a metrics.jsonl, including one still being written to (a fragment is skipped)."""
    path = Path(path)
    if path.is_dir():
        path = path / "metrics.jsonl"
    rows = []
    if not path.exists():
        return rows
    for line in path.read_text().splitlines(keepends=True):
        if not line.endswith("\n"):
            break
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows
