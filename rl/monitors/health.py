"""Learning-health guards, on by default in every recipe (`monitors.health`): a dead or collapsed run never looks
healthy.

GRPO can stop learning while its curves look fine: every group of G samples gets equal rewards (all advantages 0,
nothing is trained), the gradient is exactly 0, the policy's entropy collapses onto one answer, the images stop
depending on the prompt (one picture that a lenient reward accepts for every prompt), or the reward the trainer
uses is not the reward the reward service computes. Each is one check here, turned into a `MetricRule`
(rl/monitors/metric_rules.py) on a metric the step logs, so warnings, stop and rollback work exactly as for
`monitors.rules`:

| check | metric | default trigger |
|---|---|---|
| `all_advantages_zero` | `zero_std_frac` (samples in groups of equal rewards) | mean of 10 > 0.9, 10 readings |
| `grad_norm_zero` | `grad_norm` (before clipping) | < 1e-12, 5 readings |
| `entropy_collapse` | `entropy` (policy, per token, on its samples) | mean of 10 fell > 90% from steps 1-10, 10 times |
| `prompt_dependence` | `health/prompt_dependence` (below), every 10 steps | < 0.1 (mean of 3), 3 readings |
| `reward_recheck` | `health/reward_recheck_diff` (below), every 10 steps | > 1e-4 |

- **Equal rewards: solved or stuck.** With GenEval-style rewards the step also logs `zero_std_frac/solved`, the
  samples whose group had equal rewards because every sample was right. Those prompts are learned, and a
  well-trained run has many; `zero_std_frac - zero_std_frac/solved` is the share stuck without an advantage
  (every sample equally wrong), the dead signal. `rollout.rest_solved_at` rests solved prompts for a turn.
- **Prompt dependence** (`cross_prompt_scores`): the step's images are scored again against the rows of *other*
  prompts of the same step (a seeded derangement, `prompts/prompt_swap.py`: text and metadata of another prompt).
  `health/prompt_dependence` is the mean over images of sign(reward(own prompt) - reward(other prompt)): near 1
  when the images follow their prompts, near 0 when they do not (equal scores count 0). For GenEval-style rows
  `health/accuracy` and `health/swapped_accuracy` are logged as well. Rewards that never read the prompt
  (aesthetic, JPEG size) give equal scores for every image; when the first check finds every score equal, the
  check says so once and stays off for the run.
- **Reward recheck**: `samples` of the step's images are scored again in the trainer (the recipe's rewards, in
  this process) and compared with the scores the reward path reported for them (the local suite, Ray reward
  actors, or a reward server behind `remote`). `health/reward_recheck_diff` is the largest absolute difference of
  the weighted totals. A reward that is not a function of (image, prompt, metadata), rows and scores that got out
  of order, or a server running other code shows up here. Under `rollout.engine: ray` the trainer process then
  loads its own copy of the reward models (as the gold and drift monitors do).

Each check has `action` (default: the section's `action`, `log`: a warning in the progress output, stderr and
`RUN_DIR/monitor.log`, the metric in metrics.jsonl); `stop` ends the run with a checkpoint and `rollback` restores
the checkpoint before the trouble began. A run a guard stopped says so in its summary. Set a check to `null` to
turn it off, or `monitors.health.enabled: false` for all.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from rl.monitors.action import write_monitor_message
from rl.monitors.config import HealthConfig, MetricRule, PeriodicCheck
from rl.monitors.monitor import Monitor, StepView
from seeding import derive_seed


REPEAT_EVERY = 25  # a dead run warns at once, then every 25th reading: visible, not a flood

CHECK_METRICS = {"all_advantages_zero": "zero_std_frac", "grad_norm_zero": "grad_norm", "entropy_collapse": "entropy",
                 "prompt_dependence": "health/prompt_dependence", "reward_recheck": "health/reward_recheck_diff"}
WHAT = {"all_advantages_zero": ("all advantages zero (groups with equal rewards: nothing is learned; "
                                "zero_std_frac/solved tells solved prompts from stuck ones)"),
        "grad_norm_zero": "gradient norm 0 (the update changes nothing)",
        "entropy_collapse": "policy entropy collapsed",
        "prompt_dependence": "images no longer depend on the prompt (other prompts' rows score as well)",
        "reward_recheck": "the trainer's reward differs from the reward path's"}


def health_rules(cfg: HealthConfig) -> list[MetricRule]:
    """The enabled checks as metric rules (named `health: <what>` in their warnings)."""
    if not cfg.enabled:
        return []
    rules = []
    for name, metric in CHECK_METRICS.items():
        check = getattr(cfg, name)
        if check is None:
            continue
        rules.append(MetricRule(metric=metric, above=check.above, below=check.below, fall=check.fall,
                                relative=check.fall is not None, baseline_steps=check.baseline_steps,
                                window=check.window, patience=check.patience, min_step=check.min_step,
                                action=check.action or cfg.action, name=f"health: {WHAT[name]}",
                                repeat_every=REPEAT_EVERY))
    return rules


def _totals(scores: dict[str, Any], weights: dict[str, float]) -> np.ndarray:
    return sum(weights[k] * np.asarray(v, dtype=np.float64) for k, v in scores.items() if k in weights)


class HealthMonitor(Monitor):
    """The periodic checks that need work in the step (prompt dependence, reward recheck); the other checks are
    metric rules (`health_rules`), run by the family's MetricRules."""

    def __init__(self, cfg: HealthConfig, seed: int, *, run_dir: str | Path | None = None):
        self.cfg, self.seed = cfg, seed
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.prompt_check_off: str | None = None
        self.prompt_checks = 0

    def _due(self, check: PeriodicCheck | None, step: int) -> bool:
        return self.cfg.enabled and check is not None and step % check.every == 0

    def due(self, step: int) -> bool:
        return (self._due(self.cfg.prompt_dependence, step) and self.prompt_check_off is None) or \
            self._due(self.cfg.reward_recheck, step)

    def after_update(self, view: StepView) -> dict[str, Any]:
        """The family's hook: the periodic checks when due, on batches with one image per score."""
        if not self.due(view.step) or view.batch.extra_images is not None:
            return {}
        t0 = time.perf_counter()
        with view.full_weights():
            out, notes = self.check(view.step, view.batch, view.suite_scores, view.suite)
        for note in notes:
            write_monitor_message(note, self.run_dir)
        out["timing/health_s"] = time.perf_counter() - t0
        return out

    def check(self, step: int, batch: Any, suite_scores: Any, suite: Any) -> tuple[dict[str, float], list[str]]:
        """Metrics of this step's periodic checks, and notes to print once (a check that turns itself off)."""
        out: dict[str, float] = {}
        notes: list[str] = []
        images = list(batch.images.numpy())
        weights = suite_scores.weights
        reported = _totals({k: v for k, v in suite_scores.scores.items() if k not in suite_scores.failed}, weights)
        if self._due(self.cfg.prompt_dependence, step) and self.prompt_check_off is None:
            out.update(self._prompt_dependence(step, batch, images, reported, suite, notes))
        if self._due(self.cfg.reward_recheck, step):
            n = min(self.cfg.reward_recheck.samples, len(images))
            rng = np.random.default_rng(derive_seed(self.seed, "health_recheck", step))
            idx = rng.choice(len(images), size=n, replace=False)
            again = suite.score([images[i] for i in idx], [batch.prompts[i] for i in idx],
                                [batch.metadata[i] for i in idx])
            common = {k: v for k, v in again.scores.items()
                      if k not in again.failed and k not in suite_scores.failed}
            diff = np.abs(_totals(common, weights) - _totals(
                {k: np.asarray(suite_scores.scores[k], dtype=np.float64)[idx] for k in common}, weights))
            diff = diff[np.isfinite(diff)]
            if len(diff):
                out["health/reward_recheck_diff"] = float(diff.max())
        return out, notes

    def _prompt_dependence(self, step: int, batch: Any, images: list, reported: np.ndarray, suite: Any,
                           notes: list[str]) -> dict[str, float]:
        from prompts.prompt_swap import swap_partners
        from rl.evaluate import geneval_correctness

        # Derange whole groups (one row each): every image is scored against another group's prompt and row.
        groups = [int(g) for g in batch.group_ids]
        first = {}
        for i, g in enumerate(groups):
            first.setdefault(g, i)
        keyed = [{**(batch.metadata[i] or {}), "prompt": str(g)} for g, i in first.items()]
        partner = swap_partners(keyed, seed=derive_seed(self.seed, "health_swap", step))
        if partner is None:
            return {}
        other = [first[int(partner[str(g)])] for g in groups]
        other_prompts = [batch.prompts[j] for j in other]
        swapped = suite.score(images, other_prompts, [batch.metadata[j] for j in other])
        own = reported
        other = _totals({k: v for k, v in swapped.scores.items() if k not in swapped.failed}, swapped.weights)
        ok = np.isfinite(own) & np.isfinite(other)
        if not ok.any():
            return {}
        sign = np.sign(own[ok] - other[ok])
        first_check, self.prompt_checks = self.prompt_checks == 0, self.prompt_checks + 1
        if not sign.any() and first_check:
            self.prompt_check_off = (f"[health] step {step}: every image scores the same against another prompt "
                                     "as against its own: the rewards do not read the prompt, so the prompt-"
                                     "dependence check is off for this run")
            notes.append(self.prompt_check_off)
            return {}
        out = {"health/prompt_dependence": float(sign.mean())}
        own_correct = [geneval_correctness(d) for d in batch.reward_details]
        swap_correct = [geneval_correctness(d) for d in swapped.details]
        if all(c is not None for c in own_correct + swap_correct):
            out["health/accuracy"] = float(np.mean([c[1] for c in own_correct]))
            out["health/swapped_accuracy"] = float(np.mean([c[1] for c in swap_correct]))
        return out
