"""The recipe's `monitors:` section, as a schema: pydantic models only (no torch, no numpy), so loading or
validating a recipe never imports the monitors' machinery. Each model's behaviour is described in the module that
acts on it: the gold-versus-proxy fields (the top level of `monitors:`) in `rl/monitors/gold.py`, `rules` in
`rl/monitors/metric_rules.py`, `drift` in `rl/monitors/drift.py`, `health` in `rl/monitors/health.py`.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from rewards.spec import RewardSpec

Action = Literal["log", "stop", "rollback"]


class MetricRule(BaseModel):
    """One entry of `monitors.rules`."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    metric: str = Field(..., description="A key of metrics.jsonl, e.g. images/dark_frac, diversity/tokens, kl.")
    above: float | None = Field(None, description="Trigger when the (windowed) value is above this.")
    below: float | None = Field(None, description="Trigger when the (windowed) value is below this.")
    rise: float | None = Field(None, ge=0, description="Trigger when the value rose more than this from the baseline.")
    fall: float | None = Field(None, ge=0, description="Trigger when the value fell more than this from the baseline.")
    relative: bool = Field(False, description="rise/fall are fractions of |baseline|.")
    baseline_steps: int = Field(10, ge=1, description="Readings averaged into the baseline (for rise/fall).")
    window: int = Field(1, ge=1, description="Compare the mean of the last N readings (smooths noisy metrics).")
    patience: int = Field(1, ge=1, description="Consecutive triggering readings before the rule acts.")
    min_step: int = Field(0, ge=0, description="No action before this step (triggers are still written).")
    action: Action = Field("log", description="What to do when the rule acts.")
    name: str | None = Field(None, description="Shown in the rule's warnings instead of 'rule'.")
    repeat_every: int = Field(1, ge=1, description="Write every Nth triggering reading of a streak (the first, "
                              "the one that acts first and every Nth); 1 writes all.")

    @model_validator(mode="after")
    def _has_a_limit(self) -> MetricRule:
        if all(v is None for v in (self.above, self.below, self.rise, self.fall)):
            raise ValueError(f"monitors.rules ({self.metric}): set at least one of above, below, rise, fall")
        return self


class DriftMonitorConfig(BaseModel):
    """`monitors.drift` in a recipe."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    every: int = Field(0, ge=0, description="Measure conditioning drift every K steps (0 = off).")
    samples: int = Field(8, ge=1, description="Rollouts of the step re-rendered and re-scored.")

    @property
    def enabled(self) -> bool:
        return self.every > 0


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class HealthCheck(_Section):
    above: float | None = None
    below: float | None = None
    fall: float | None = Field(None, ge=0, description="Relative fall from the first `baseline_steps` readings.")
    baseline_steps: int = Field(10, ge=1)
    window: int = Field(1, ge=1, description="Mean of the last N readings.")
    patience: int = Field(1, ge=1, description="Consecutive triggering readings before it acts.")
    min_step: int = Field(0, ge=0)
    action: Action | None = Field(None, description="None: monitors.health.action.")

    @model_validator(mode="after")
    def _has_a_limit(self) -> HealthCheck:
        if all(v is None for v in (self.above, self.below, self.fall)):
            raise ValueError("a monitors.health check needs one of above, below, fall (or set the check to null)")
        return self


class PeriodicCheck(HealthCheck):
    every: int = Field(10, ge=1, description="Run the check every K steps.")


class RecheckConfig(PeriodicCheck):
    samples: int = Field(8, ge=1, description="Images re-scored in the trainer per check.")


class HealthConfig(_Section):
    """`monitors.health` in a recipe (rl/monitors/health.py)."""

    enabled: bool = True
    action: Action = Field("log", description="What a triggered check does unless it sets its own action.")
    all_advantages_zero: HealthCheck | None = Field(
        default_factory=lambda: HealthCheck(above=0.9, window=10, patience=10))
    grad_norm_zero: HealthCheck | None = Field(default_factory=lambda: HealthCheck(below=1e-12, patience=5))
    entropy_collapse: HealthCheck | None = Field(
        default_factory=lambda: HealthCheck(fall=0.9, baseline_steps=10, window=10, patience=10))
    prompt_dependence: PeriodicCheck | None = Field(
        default_factory=lambda: PeriodicCheck(below=0.1, window=3, patience=3))
    reward_recheck: RecheckConfig | None = Field(default_factory=lambda: RecheckConfig(above=1e-4))


class MonitorsConfig(BaseModel):
    """`monitors:` in a recipe. Its top-level fields configure the gold-versus-proxy monitor, off unless `gold`
    lists rewards and `every` > 0; `rules`, `drift` and `health` configure the other members of the family."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    gold: list[RewardSpec] = Field(default_factory=list, description="Held-out gold rewards (never trained on), "
                                   "combined with their weights. Empty = the monitor is off.")
    every: int = Field(0, ge=0, description="Measure gold and proxy every K steps (0 = off).")
    num_prompts: int | None = Field(None, ge=1, description="First N prompts of the recipe's eval.prompts.")
    seeds: int = Field(1, ge=1, description="Fixed seeds per prompt.")
    rule: Action = Field("log", description="What to do when the proxy rises while gold falls: log only, stop, or "
                         "stop and roll back to the gold-best checkpoint.")
    gold_drop: float = Field(0.05, ge=0, description="Gold must fall by more than this from its best reading in "
                             "the window.")
    proxy_rise: float = Field(0.0, ge=0, description="...while the proxy rose by more than this since then.")
    relative: bool = Field(False, description="Thresholds are fractions of the best reading's |value|.")
    window: int = Field(5, ge=2, description="Readings considered (the best gold is searched among them).")
    patience: int = Field(1, ge=1, description="Consecutive triggering readings before the rule acts.")
    min_step: int = Field(0, ge=0, description="No action before this step (readings are still logged).")
    rules: list[MetricRule] = Field(default_factory=list, description="Guard rails on logged metrics: log, stop or "
                                    "roll back when one crosses a limit (rl/monitors/metric_rules.py).")
    drift: DriftMonitorConfig = Field(default_factory=DriftMonitorConfig, description="Conditioning drift: re-render "
                                      "stored tokens after the update and re-score them (rl/monitors/drift.py).")
    health: HealthConfig = Field(default_factory=HealthConfig, description="Learning-health guards, on by "
                                 "default: all advantages zero, gradient 0, entropy collapse, prompt dependence, "
                                 "reward recheck (rl/monitors/health.py).")

    @model_validator(mode="after")
    def _check(self) -> MonitorsConfig:
        keys = [s.key for s in self.gold]
        dupes = sorted({k for k in keys if keys.count(k) > 1})
        if dupes:
            raise ValueError(f"monitors.gold: {dupes} listed twice; give each an 'alias'")
        if self.gold and not self.every:
            raise ValueError("monitors.gold is set but monitors.every is 0: say how often to measure")
        return self

    @property
    def enabled(self) -> bool:
        """The gold-versus-proxy monitor is on (the other members say so in their own sections)."""
        return bool(self.gold) and self.every > 0
