"""What a monitor asks the training loop to do, and where its warnings go (shared by the gold monitor and the
metric rules)."""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

log = logging.getLogger("nativerl.monitor")


@dataclass
class MonitorAction:
    kind: Literal["continue", "stop", "rollback"]
    rollback_step: int | None = None  # rollback: restore the newest checkpoint at or before this step
    message: str = ""


def write_monitor_message(message: str, run_dir: Path | None) -> None:
    """One warning line to the logging setup when the user configured one (else stderr) and RUN_DIR/monitor.log."""
    if log.hasHandlers():
        log.warning(message)
    else:  # without handlers Python's last-resort handler would print it as well: once is enough
        print(message, file=sys.stderr, flush=True)
    if run_dir is not None:
        run_dir.mkdir(parents=True, exist_ok=True)
        with open(run_dir / "monitor.log", "a", encoding="utf-8") as f:
            f.write(message + "\n")
