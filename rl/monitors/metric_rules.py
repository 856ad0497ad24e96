"""Guard rails on any logged metric: log, stop, or roll back when a metric crosses a line.

The monitors log what reward hacking looks like (`images/dark_frac` rising as an OCR reward wipes the scene,
`diversity/tokens` falling to 0 as groups collapse, `drift/*`, `kl`, a reward's own mean). A rule turns one of those
curves into an action, so a run that starts to hack its reward at 3 a.m. stops there. In a recipe:

    monitors:
      rules:
        - {metric: images/dark_frac, rise: 0.3, window: 5, action: rollback}   # UniRL#407: 0.45 -> 0.93
        - {metric: diversity/tokens, below: 0.02, patience: 3, min_step: 50, action: stop}

A rule reads `metric` from each step's metrics (steps where it is absent, e.g. `eval/*` between evaluations, are
skipped) and compares the mean of its last `window` readings with the limits it sets:
- `above` / `below`: absolute limits;
- `rise` / `fall`: change from the baseline, the mean of the first `baseline_steps` readings (inactive until those
  exist); `relative: true` divides the change by |baseline|.
A reading past any limit *triggers*, and so does a NaN/inf reading (null in metrics.jsonl): a `kl` rule fires on an
infinite KL rather than skipping it. After `patience` consecutive triggering readings, and not before `min_step`,
the rule acts: `log` writes the message and goes on, `stop` ends the run (with a checkpoint), `rollback` ends it
and restores the newest checkpoint from before the first triggering reading of the streak. Every triggering
reading writes one line to stderr and `RUN_DIR/monitor.log`, like the gold monitor. A metric that is not in the
first step's metrics (and is not a periodic one: eval/, gold/, drift/) is an error naming the closest logged keys,
so a misspelt rule never sits there silently.
"""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rl.monitors.action import MonitorAction, report_trigger, strongest
from rl.monitors.config import MetricRule
from rl.monitors.monitor import Monitor, MonitorReport, StepView

PERIODIC_PREFIXES = ("eval/", "gold/", "drift/", "rescored/")


@dataclass
class _RuleState:
    values: list[float] = field(default_factory=list)
    steps: list[int] = field(default_factory=list)
    streak: int = 0
    streak_start: int | None = None
    acted: int = 0  # readings at which the rule acted (streak >= patience, step >= min_step), whole run
    first_acted: int | None = None
    last_message: str = ""


class MetricRules(Monitor):
    def __init__(self, rules: list[MetricRule], *, run_dir: str | Path | None = None,
                 builtin: list[MetricRule] | None = None):
        """`builtin`: rules the toolkit adds (the health guards, rl/monitors/health.py); their metrics may be absent
        from a step (an update that was skipped logs no grad_norm), so their names are not checked."""
        self.rules = list(rules) + list(builtin or [])
        self._user_rules = len(rules)
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.states = [_RuleState() for _ in self.rules]
        self._checked_names = False

    @property
    def enabled(self) -> bool:
        return bool(self.rules)

    def check(self, step: int, metrics: dict[str, Any], *, quiet: bool = False) -> MonitorAction:
        """Feed one step's metrics to every rule; the strongest action wins (rollback > stop > continue)."""
        if not self._checked_names:
            self._checked_names = True
            self._check_names(metrics)
        actions = [self._update(rule, state, step, metrics, quiet)
                   for rule, state in zip(self.rules, self.states)]
        return strongest(actions)

    def after_step(self, view: StepView) -> MonitorReport:
        """The family's hook: the rules read the step's complete metrics (the other monitors' included)."""
        if not self.enabled:
            return MonitorReport()
        return MonitorReport(action=self.check(view.step, view.metrics))

    def warnings(self) -> list[str]:
        return self.triggered()

    def triggered(self) -> list[str]:
        """One line per rule that acted during the run (its patience reached, whatever its action), for the run's
        summary: a run whose guards warned must not look healthy at the end."""
        return [f"{rule.name or 'rule ' + rule.metric}: acted at {state.acted} reading(s) from step "
                f"{state.first_acted}; last: {state.last_message}"
                for rule, state in zip(self.rules, self.states) if state.acted]

    def restore(self, metrics_rows: list[dict[str, Any]]) -> None:
        """Rebuild the rules' readings of a resumed run from its metrics, silently and without acting."""
        self.states = [_RuleState() for _ in self.rules]
        self._checked_names = True
        for row in metrics_rows:
            self.check(int(row["step"]), row, quiet=True)

    def _check_names(self, metrics: dict[str, Any]) -> None:
        for rule in self.rules[: self._user_rules]:
            if rule.metric in metrics or rule.metric.startswith(PERIODIC_PREFIXES):
                continue
            close = difflib.get_close_matches(rule.metric, list(metrics), n=3, cutoff=0.5)
            raise ValueError(f"monitors.rules: metric {rule.metric!r} is not logged"
                             + (f" (closest: {', '.join(close)})" if close else "")
                             + "; see metrics.jsonl for the keys a step logs")

    def _update(self, rule: MetricRule, state: _RuleState, step: int, metrics: dict[str, Any],
                quiet: bool) -> MonitorAction:
        if rule.metric not in metrics:
            return MonitorAction("continue")
        value = metrics[rule.metric]
        reasons = []
        if value is None or (isinstance(value, float) and not math.isfinite(value)):
            # NaN/inf (read back from metrics.jsonl as null) is the loudest reading there is: it triggers, and stays
            # out of the window and baseline so later finite readings are judged on finite numbers.
            reasons.append(f"value is {value if value is not None else 'NaN/inf (null)'} (non-finite)")
            now = None
        elif isinstance(value, bool) or not isinstance(value, (int, float)):
            return MonitorAction("continue")
        else:
            state.values.append(float(value))
            state.steps.append(step)
            now = sum(state.values[-rule.window:]) / len(state.values[-rule.window:])
        if now is not None and rule.above is not None and now > rule.above:
            reasons.append(f"{now:.4g} > above {rule.above:g}")
        if now is not None and rule.below is not None and now < rule.below:
            reasons.append(f"{now:.4g} < below {rule.below:g}")
        if (now is not None and (rule.rise is not None or rule.fall is not None)
                and len(state.values) > rule.baseline_steps):
            base = sum(state.values[: rule.baseline_steps]) / rule.baseline_steps
            change = now - base
            scaled = change / max(abs(base), 1e-12) if rule.relative else change
            unit = " (relative)" if rule.relative else ""
            if rule.rise is not None and scaled > rule.rise:
                reasons.append(f"rose {base:.4g} -> {now:.4g} (+{scaled:.4g} > {rule.rise:g}{unit})")
            if rule.fall is not None and -scaled > rule.fall:
                reasons.append(f"fell {base:.4g} -> {now:.4g} (-{-scaled:.4g} > {rule.fall:g}{unit})")
        if not reasons:
            state.streak, state.streak_start = 0, None
            return MonitorAction("continue")
        state.streak += 1
        if state.streak == 1:
            state.streak_start = step
        acting = state.streak >= rule.patience and step >= rule.min_step
        if acting:
            state.acted += 1
            state.first_acted = step if state.first_acted is None else state.first_acted
        kind = rule.action if acting else "log"
        window = f" (mean of last {min(rule.window, len(state.values))})" if rule.window > 1 and now is not None else ""
        message = (f"[{rule.name or 'rule'}] step {step}: {rule.metric}{window} " + "; ".join(reasons)
                   + f"; {state.streak}/{rule.patience} triggering reading(s)")
        state.last_message = message
        shown = state.streak in (1, rule.patience) or state.streak % rule.repeat_every == 0 or kind != "log"
        return report_trigger(kind, message, rollback_step=state.streak_start - 1, run_dir=self.run_dir,
                              quiet=quiet or not shown,
                              rollback_text=f"stop and roll back to the checkpoint before step {state.streak_start}")
