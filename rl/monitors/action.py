"""What a monitor asks the training loop to do, and where its warnings go (shared by every monitor)."""

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


def report_trigger(kind: str, message: str, *, rollback_step: int | None, rollback_text: str, run_dir: Path | None,
                   quiet: bool = False) -> MonitorAction:
    """A monitor's triggering reading: say what happens next, write it (unless `quiet`, e.g. replaying a resumed
    run's history) and return the action. `kind` is the rule's action once it acts, else "log"."""
    message += "; action: " + {"log": "none (logged)", "stop": "stop training", "rollback": rollback_text}[kind]
    if not quiet:
        write_monitor_message(message, run_dir)
    if kind == "log":
        return MonitorAction("continue", message=message)
    return MonitorAction(kind, rollback_step=rollback_step if kind == "rollback" else None, message=message)


def strongest(actions: list[MonitorAction]) -> MonitorAction:
    """rollback (to the earliest step asked) > stop > continue; messages of the acting monitors are joined."""
    acting = [a for a in actions if a.kind != "continue"]
    if not acting:
        return MonitorAction("continue", message="\n".join(a.message for a in actions if a.message))
    rollbacks = [a for a in acting if a.kind == "rollback"]
    message = "\n".join(a.message for a in acting)
    if rollbacks:
        return MonitorAction("rollback", rollback_step=min(a.rollback_step for a in rollbacks), message=message)
    return MonitorAction("stop", message=message)
