"""The one interface every monitor implements, and the family that the driver calls.

A monitor watches a run and may end it. The driver (rl/train_loop.py) knows no monitor by name: it holds one
`Monitors` family and calls, in every step,

    monitors.before_update(view)        after the rewards, before the optimizer steps (the weights are still π_old)
    metrics |= monitors.after_update(view)
                                        after the update and the weight publish; the metrics join the step's
    report = monitors.after_step(view)  once the step's metrics are complete (evaluation included): more metrics,
                                        and the action: continue, stop, or roll back to a checkpoint

plus `restore(history)` when a run resumes (a monitor rebuilds its readings from metrics.jsonl, silently) and
`warnings()` at the end (what acted during the run, for its summary). Actions are decided only at the step
boundary, where the driver can checkpoint: a monitor that measures mid-step logs a metric, and a rule
(rl/monitors/metric_rules.py) turns the metric into an action.

Each hook reads the step through a `StepView`; a monitor that runs the generator wraps that work in
`view.full_weights()` (FSDP2 gathers the sharded weights; a no-op otherwise). Every hook is a no-op by default,
so a monitor implements the hooks it needs. The members, in the order they are called: drift
(rl/monitors/drift.py), health (rl/monitors/health.py), gold (rl/monitors/gold.py), metric rules
(rl/monitors/metric_rules.py, which run last so they can read every other member's metrics).
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field, replace
from typing import Any

from rl.monitors.action import MonitorAction, strongest


@dataclass
class StepView:
    """What a monitor may read about the current step; the driver fills in what the step has so far."""

    step: int
    generator: Any = None  # the policy's generator (the updated weights from after_update on)
    batch: Any = None  # the step's RolloutBatch, its rewards attached
    suite_scores: Any = None  # the reward path's SuiteScores for the batch (weights, failed rewards, details)
    metrics: dict[str, Any] = field(default_factory=dict)  # the step's metrics so far (after_step)
    sampling: Any = None  # the recipe's rollout.sampling
    renderer: Any = None  # the recipe's rollout.renderer
    reward_suite: Callable[[], Any] | None = None  # the driver's own reward models, built on first use
    full_weights: Callable[[], AbstractContextManager] = nullcontext

    @property
    def suite(self) -> Any:
        """The recipe's rewards in this process (under Ray the trainer builds its copy only when asked)."""
        if self.reward_suite is None:
            raise RuntimeError("this step view carries no reward suite")
        return self.reward_suite()


@dataclass
class MonitorReport:
    metrics: dict[str, Any] = field(default_factory=dict)
    action: MonitorAction = field(default_factory=lambda: MonitorAction("continue"))


class Monitor:
    """One member of the family. Override the hooks the monitor needs (module docstring)."""

    def before_update(self, view: StepView) -> None:
        return None

    def after_update(self, view: StepView) -> dict[str, Any]:
        return {}

    def after_step(self, view: StepView) -> MonitorReport:
        return MonitorReport()

    def restore(self, history: list[dict[str, Any]]) -> None:
        """Rebuild readings from a resumed run's metrics rows (no messages, no actions)."""
        return None

    def warnings(self) -> list[str]:
        """One line per check that acted during the run."""
        return []


class Monitors:
    """The family: calls every member's hook in order and combines what they return."""

    def __init__(self, members: list[Monitor]):
        self.members = list(members)

    def before_update(self, view: StepView) -> None:
        for member in self.members:
            member.before_update(view)

    def after_update(self, view: StepView) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for member in self.members:
            out.update(member.after_update(view))
        return out

    def after_step(self, view: StepView) -> MonitorReport:
        """Members see the metrics of the members before them (a rule can read gold/*); the strongest action wins."""
        metrics: dict[str, Any] = {}
        actions = []
        for member in self.members:
            seen = {**view.metrics, **metrics}
            report = member.after_step(replace(view, metrics=seen))
            metrics.update(report.metrics)
            actions.append(report.action)
        return MonitorReport(metrics, strongest(actions))

    def restore(self, history: list[dict[str, Any]]) -> None:
        for member in self.members:
            member.restore(history)

    def warnings(self) -> list[str]:
        return [line for member in self.members for line in member.warnings()]
