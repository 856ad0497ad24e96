"""Reward-curve PNG of one run (the overlay of several runs is `rl/compare.py`)."""

from __future__ import annotations

from pathlib import Path

from rl.metrics_log import read_metrics


def smooth(values: list[float], alpha: float = 0.3) -> list[float]:
    """Exponential moving average (TensorBoard-style smoothing)."""
    out, acc = [], None
    for v in values:
        acc = v if acc is None else alpha * v + (1 - alpha) * acc
        out.append(acc)
    return out


def plot_reward_curve(run_dir: str | Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run_dir = Path(run_dir)
    rows = read_metrics(run_dir)
    steps = [r["step"] for r in rows]
    keys = [k for k in (rows[0] if rows else {}) if k.startswith("reward/") and k.endswith("/mean")
            and k != "reward/mean"]
    fig, ax = plt.subplots(figsize=(7, 4))
    for key in ["reward/mean", *keys]:
        vals = [r.get(key) for r in rows]
        if any(v is None for v in vals):
            continue
        line, = ax.plot(steps, vals, alpha=0.3)
        ax.plot(steps, smooth(vals), color=line.get_color(), label=key)
    ax.set_xlabel("step")
    ax.set_ylabel("reward")
    ax.set_title(run_dir.name)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    out = run_dir / "reward_curve.png"
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
