"""The run's metrics: one flat JSON object per step in `metrics.jsonl`, mirrored to TensorBoard (and wandb).

Each line is written with a single `write()` on a file opened with O_APPEND, so a crash leaves either the whole
line or none of it; readers still skip a trailing fragment (`read_metrics`), so a half line can never break them.
A write that fails or comes up short (a full disk: ENOSPC, or a short count) is undone (the file is cut back to
its length before the line) and raises `MetricsWriteError`: the run stops loudly instead of losing steps, and
`--resume` redoes the steps after the last checkpoint. After a resume, TensorBoard purges the redone steps
(`purge_step`), so its curves have one point per step.
"""

from __future__ import annotations

import contextlib
import errno
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


class MetricsWriteError(OSError):
    """A metrics line could not be written in full (disk full, quota); it was rolled back."""


class MetricsLog:
    def __init__(self, run_dir: str | Path, *, tensorboard: bool = True, wandb_project: str | None = None,
                 run_name: str = "run", config: dict[str, Any] | None = None):
        self.path = Path(run_dir) / "metrics.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._tb = None
        self._tb_dir = Path(run_dir) / "tensorboard"
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(log_dir=str(self._tb_dir))
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
            before = os.fstat(fd).st_size
            try:
                written = os.write(fd, line)
                if written != len(line):
                    raise OSError(errno.ENOSPC, f"short write: {written} of {len(line)} bytes")
                os.fsync(fd)
            except OSError as exc:
                with contextlib.suppress(OSError):  # leave no fragment that the next line would be glued to
                    os.ftruncate(fd, before)
                raise MetricsWriteError(exc.errno or errno.EIO, (
                    f"{self.path}: could not write step {step}'s metrics ({exc.strerror or exc}); the disk (or "
                    "quota) is probably full. The line was rolled back and the run stops here: free space, then "
                    "continue with nativerl train --resume RUN_DIR")) from exc
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
        if self._tb is not None:  # TensorBoard drops the events of the redone steps when it reads the logs
            from torch.utils.tensorboard import SummaryWriter

            self._tb.close()
            self._tb = SummaryWriter(log_dir=str(self._tb_dir), purge_step=step + 1)
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
