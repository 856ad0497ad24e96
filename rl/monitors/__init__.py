"""Monitors: what watches a run while it trains, and may stop it or roll it back.

One family with one interface (`monitor.py`: `Monitor`, called by the driver through `Monitors`):

| file | monitor | hook |
|---|---|---|
| `drift.py` | conditioning drift: re-render stored tokens after the update, re-score them | before/after_update |
| `health.py` | learning-health guards that need work in the step (prompt dependence, reward recheck) | after_update |
| `gold.py` | gold versus proxy rewards on held-out prompts (reward hacking) | after_step |
| `metric_rules.py` | guard rails on any logged metric, the health guards' thresholds included | after_step |

`config.py` is the recipe's `monitors:` section (pydantic only), `action.py` what a monitor asks the loop to do and
where its warnings go, `build.py` the family a recipe asks for. Importing this package, or its `config`, imports
no torch: `nativerl validate` never pays for the monitors' machinery. The per-step image and diversity statistics
that the monitors' rules often read live in `rl/rollout_statistics.py`.
"""
