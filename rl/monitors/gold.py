"""Gold versus proxy: catch reward hacking while it happens.

The training reward is a *proxy* (OCR read by a small model, GenEval seen by YOLOv3-tiny, ...). Every `every` steps
the monitor generates images for held-out prompts with fixed seeds (the recipe's `eval.prompts`, first
`num_prompts`, `seeds` seeds) and scores the same images with the proxy (the recipe's rewards, combined with their
weights) and with held-out *gold* rewards the policy never trains on (`gold`, combined with their weights). When
the proxy keeps rising while gold falls, the policy is exploiting the proxy.

Rule (`update`), on the readings (step, proxy, gold) so far:
- consider the last `window` readings; `best` = the one with the highest gold among them;
- gold_drop  = gold(best) - gold(now)     (divided by |gold(best)| when `relative`);
- proxy_rise = proxy(now) - proxy(best)   (divided by |proxy(best)| when `relative`);
- the reading *triggers* when gold_drop > `gold_drop` and proxy_rise > `proxy_rise`;
- after `patience` consecutive triggering readings (and not before step `min_step`), the rule acts:
  `log` writes the warning and goes on; `stop` ends the run; `rollback` ends the run and asks the trainer to restore
  the checkpoint at or before the best reading's step (the gold-best policy is the run's result).
Every triggering reading writes one clear line (to the `nativerl.monitor` logger, stderr and `RUN_DIR/monitor.log`):
    [gold-monitor] step 40: proxy reward/mean rose 0.512 -> 0.731 (+0.219) while gold fell 0.640 -> 0.552
    (-0.088 > 0.05) since step 20; action: stop

In the monitor family (rl/monitors/monitor.py) this is the `after_step` hook: when due it measures and applies the
rule, and its metrics (gold/proxy, gold/score, gold/<name>/mean, gold/proxy/<name>/mean) join the step's. A resumed
run rebuilds the readings from its metrics (`restore`). On `rollback` the driver loads the policy of
`rollback_checkpoint(run_dir, action.rollback_step)` and saves it as this step's checkpoint, so `eval` / `export`
of the run pick the gold-best weights.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from rl.monitors.action import MonitorAction, report_trigger
from rl.monitors.config import MonitorsConfig
from rl.monitors.monitor import Monitor, MonitorReport, StepView


@dataclass
class GoldReading:
    step: int
    proxy: float
    gold: float
    metrics: dict[str, float] = field(default_factory=dict)


def combined(means: dict[str, float], weights: dict[str, float]) -> float:
    """Weighted sum of per-reward means (the same combination training uses for the proxy)."""
    return float(sum(weights[k] * means[k] for k in weights))


class GoldMonitor(Monitor):
    def __init__(self, cfg: MonitorsConfig, *, eval_rows: list[dict[str, Any]] | None = None,
                 run_dir: str | Path | None = None, gold_suite: Any = None):
        self.cfg = cfg
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.readings: list[GoldReading] = []
        self._streak = 0
        self.rows: list[dict[str, Any]] = []
        self.suite = None
        if not cfg.enabled:
            return
        if not eval_rows:
            raise ValueError("monitors: gold rewards are scored on the recipe's held-out eval.prompts; set "
                             "eval.prompts (eval.every may stay 0)")
        self.rows = list(eval_rows)[: cfg.num_prompts]
        if gold_suite is None:
            from rewards.suite import RewardSuite

            gold_suite = RewardSuite(cfg.gold)
        self.suite = gold_suite

    @property
    def enabled(self) -> bool:
        return self.cfg.enabled

    def due(self, step: int) -> bool:
        return self.enabled and step % self.cfg.every == 0

    # ---------------------------------------------------------------- measuring
    def measure(self, step: int, generator: Any, proxy_suite: Any, *, sampling: Any, renderer_cfg: Any,
                proxy_weights: dict[str, float] | None = None) -> GoldReading:
        """Generate the held-out images once (fixed seeds) and score them with the proxy and the gold rewards."""
        import torch

        from rl.evaluate import EVAL_SEED
        from rollouts.rollout import generate_rollouts
        from seeding import derive_seed

        proxy_scores: dict[str, list[float]] = {}
        gold_scores: dict[str, list[float]] = {}
        renderer_cfg = renderer_cfg.model_copy(update={"renders_per_sample": 1})  # fixed seeds stand in for renders
        for s in range(self.cfg.seeds):
            with torch.no_grad():
                batch = generate_rollouts(generator, self.rows, group_size=1, sampling=sampling,
                                          renderer_cfg=renderer_cfg, seed=derive_seed(EVAL_SEED, "gold_eval", s))
            images = list(batch.images.numpy())
            for suite, into in ((proxy_suite, proxy_scores), (self.suite, gold_scores)):
                out = suite.score(images, batch.prompts, batch.metadata)
                for k, v in out.scores.items():
                    if k not in out.failed:
                        into.setdefault(k, []).extend(float(x) for x in v)
        proxy_means = {k: float(np.nanmean(v)) for k, v in proxy_scores.items()}
        gold_means = {k: float(np.nanmean(v)) for k, v in gold_scores.items()}
        if proxy_weights is None:
            proxy_weights = {s.key: float(s.weight) for s in proxy_suite.specs}
        gold_weights = {s.key: float(s.weight) for s in self.cfg.gold}
        missing = [k for k in gold_weights if k not in gold_means]
        if missing:
            raise RuntimeError(f"gold monitor: gold reward(s) {missing} failed at step {step}")
        proxy = combined({k: proxy_means.get(k, float("nan")) for k in proxy_weights}, proxy_weights)
        gold = combined(gold_means, gold_weights)
        metrics = {"gold/proxy": proxy, "gold/score": gold}
        metrics.update({f"gold/{k}/mean": v for k, v in gold_means.items()})
        metrics.update({f"gold/proxy/{k}/mean": v for k, v in proxy_means.items()})
        return GoldReading(step=step, proxy=proxy, gold=gold, metrics=metrics)

    def check(self, step: int, generator: Any, proxy_suite: Any, *, sampling: Any,
              renderer_cfg: Any) -> tuple[dict[str, float], MonitorAction]:
        """One call per training step: measure when due and apply the rule; ({}, continue) otherwise."""
        if not self.due(step):
            return {}, MonitorAction("continue")
        reading = self.measure(step, generator, proxy_suite, sampling=sampling, renderer_cfg=renderer_cfg)
        return reading.metrics, self.update(step, reading.proxy, reading.gold)

    def after_step(self, view: StepView) -> MonitorReport:
        """The family's hook: measure when due (with the full weights), then apply the rule."""
        if not self.due(view.step):
            return MonitorReport()
        with view.full_weights():
            metrics, action = self.check(view.step, view.generator, view.suite, sampling=view.sampling,
                                         renderer_cfg=view.renderer)
        return MonitorReport(metrics, action)

    def restore(self, metrics_rows: list[dict[str, Any]]) -> None:
        """Rebuild the readings of a resumed run from its metrics (`gold/proxy`, `gold/score`), silently."""
        self.readings, self._streak = [], 0
        for row in metrics_rows:
            if isinstance(row.get("gold/proxy"), (int, float)) and isinstance(row.get("gold/score"), (int, float)):
                self.update(int(row["step"]), row["gold/proxy"], row["gold/score"], quiet=True)

    # ---------------------------------------------------------------- the rule
    def update(self, step: int, proxy: float, gold: float, *, quiet: bool = False) -> MonitorAction:
        """Record one reading and apply the rule (module docstring)."""
        cfg = self.cfg
        self.readings.append(GoldReading(step=step, proxy=float(proxy), gold=float(gold)))
        recent = self.readings[-cfg.window:]
        best = max(recent, key=lambda r: r.gold)
        now = self.readings[-1]
        drop, rise = best.gold - now.gold, now.proxy - best.proxy
        if cfg.relative:
            drop /= max(abs(best.gold), 1e-12)
            rise /= max(abs(best.proxy), 1e-12)
        triggered = best is not now and drop > cfg.gold_drop and rise > cfg.proxy_rise
        self._streak = self._streak + 1 if triggered else 0
        if not triggered:
            return MonitorAction("continue")
        acting = self._streak >= cfg.patience and step >= cfg.min_step
        kind = cfg.rule if acting else "log"
        unit = " (relative)" if cfg.relative else ""
        message = (f"[gold-monitor] step {step}: proxy rose {best.proxy:.4g} -> {now.proxy:.4g} "
                   f"(+{now.proxy - best.proxy:.4g}) while gold fell {best.gold:.4g} -> {now.gold:.4g} "
                   f"(-{best.gold - now.gold:.4g}; drop {drop:.4g} > {cfg.gold_drop}{unit}) since step {best.step}; "
                   f"{self._streak}/{cfg.patience} triggering reading(s)")
        return report_trigger(kind, message, rollback_step=best.step, run_dir=self.run_dir, quiet=quiet,
                              rollback_text=f"stop and roll back to the checkpoint at or before step {best.step}")


def rollback_checkpoint(run_dir: str | Path, step: int) -> Path:
    """The latest checkpoint at or before `step` (the gold-best reading); error if none is kept."""
    from rl.checkpoint import list_checkpoints

    found = [p for p in list_checkpoints(run_dir) if int(p.name.split("-", 1)[1]) <= step]
    if not found:
        have = [p.name for p in list_checkpoints(run_dir)]
        raise FileNotFoundError(f"{run_dir}: no checkpoint at or before step {step} to roll back to (kept: "
                                f"{have or 'none'}); checkpoint more often or keep more (checkpoint.keep_last)")
    return found[-1]
