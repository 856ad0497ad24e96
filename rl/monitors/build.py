"""The monitor family a recipe asks for, in the order the driver calls it (rl/monitors/monitor.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rl.monitors.config import MonitorsConfig
from rl.monitors.drift import DriftMonitor
from rl.monitors.gold import GoldMonitor
from rl.monitors.health import HealthMonitor, health_rules
from rl.monitors.metric_rules import MetricRules
from rl.monitors.monitor import Monitors


def build_monitors(cfg: MonitorsConfig, *, seed: int, eval_rows: list[dict[str, Any]] | None,
                   run_dir: str | Path | None) -> Monitors:
    """`run_dir`: where warnings are written (None on ranks other than 0). The metric rules come last: they read
    the other members' metrics of the same step."""
    return Monitors([
        DriftMonitor(cfg.drift),
        HealthMonitor(cfg.health, seed, run_dir=run_dir),
        GoldMonitor(cfg, eval_rows=eval_rows, run_dir=run_dir),
        MetricRules(cfg.rules, run_dir=run_dir, builtin=health_rules(cfg.health)),
    ])
