"""`nativerl compare RUN_DIR [RUN_DIR...]`: overlay the curves of several runs, with confidence bands across seeds.

Runs are grouped by recipe into *arms*: two runs whose resolved `config.yaml` differ only in `seed` / `model.seed`
are seeds of one arm, labelled by the fields that differ between the arms (`lr=0.001`) and drawn as one colour: each run's raw curve (thin), and the mean over the group's runs of the smoothed
curves (EMA, `rl.curves.smooth`) with a ±1 std band where at least two runs have that step. A group of one run is
its smoothed curve.

Panels (whatever the runs logged; `--metric` picks any other numeric key or prefix, e.g. grad_norm, loss): `reward/mean`, `reward/<name>/mean`, `geneval/accuracy[/<tag>]`,
`rescored/<reward>/...` (from `nativerl rescore`), `gold/...` (rl/monitors/gold.py), `kl`, `entropy`, and the
reward-hacking monitors `images/*` and `diversity/*`.

Outputs in `--out`: `compare.png` (all panels) and `compare.html`, one self-contained file (images embedded as
base64) with the plot, a table of runs (steps done, in progress or finished), the last smoothed value of every
panel per group, and the sample grids (`RUN_DIR/samples/step-XXXXXX.png`) at the chosen steps.

Held-out evaluations (`eval_after.json`): with several arms and several seeds in an arm, each arm against the first
arm (per metric the mean ± std over each arm's runs, and the change of means). Otherwise each run is compared with
the first evaluated run on the same prompts and seeds (`rl/paired_eval.py`: the change, its bootstrap interval and
the discordant events per metric); runs evaluated on other prompts or seeds are listed as not comparable.

Runs still in progress are fine: `read_metrics` skips a half-written last line, and a run is compared up to the
step it has reached.
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from rl.curves import smooth
from rl.metrics_log import read_metrics
from rl.paired_eval import significant, too_few_events
from rl.rescore import rescored_curves
from rl.strict_yaml import load_yaml

# Panel order: prefixes (or exact keys) in the order they are drawn.
PANEL_ORDER = ("reward/mean", "reward/", "reward_share/", "reward_corr/", "geneval/accuracy", "rescored/", "gold/",
               "eval/", "kl", "entropy", "images/", "diversity/")
SKIP_SUFFIXES = ("/tag",)


@dataclass
class RunCurves:
    path: Path
    name: str
    seed: int | None
    group_key: str
    max_steps: int | None
    curves: dict[str, list[tuple[int, float]]]
    samples: dict[int, Path] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)  # flattened resolved recipe without its seeds

    @property
    def last_step(self) -> int:
        return max((s for c in self.curves.values() for s, _ in c), default=0)

    @property
    def finished(self) -> bool:
        """The final checkpoint (always written at max_steps) exists; metrics alone can be ahead of it."""
        return self.max_steps is not None and \
            (self.path / "checkpoints" / f"step-{int(self.max_steps):06d}" / "state.json").is_file()


def _config(run_dir: Path) -> dict[str, Any]:
    path = run_dir / "config.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"{run_dir}: no config.yaml (not a run directory)")
    data = load_yaml(path.read_text(), str(path)) or {}  # a run directory is untrusted: no alias bombs
    if not isinstance(data, dict):
        raise TypeError(f"{path}: not a recipe mapping")
    return data


def _without_seeds(config: dict[str, Any]) -> dict[str, Any]:
    stripped = json.loads(json.dumps(config, default=str))
    stripped.pop("seed", None)
    if isinstance(stripped.get("model"), dict):
        stripped["model"].pop("seed", None)
    return stripped


def _group_key(config: dict[str, Any]) -> str:
    """Hash of the resolved recipe without its seeds: runs that differ only by seed share it."""
    return hashlib.sha1(json.dumps(_without_seeds(config), sort_keys=True).encode()).hexdigest()[:8]


def flatten(config: Any, prefix: str = "") -> dict[str, Any]:
    """{"trainer.learning_rate": 0.001, "rewards.0.name": "geneval", ...}"""
    if isinstance(config, dict):
        items = config.items()
    elif isinstance(config, list):
        items = ((str(i), v) for i, v in enumerate(config))
    else:
        return {prefix: config}
    out: dict[str, Any] = {}
    for k, v in items:
        out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
    if not out and prefix:
        out[prefix] = config  # an empty list / mapping is a value too
    return out


SHORT_NAMES = {"trainer.learning_rate": "lr"}


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    return "null" if value is None else str(value)


def difference_labels(configs: list[dict[str, Any]], limit: int = 3) -> list[str]:
    """One label per (flattened) config from the fields that differ between them: `lr=0.001, beta=0.01`. A field
    is named by its last part when that is unambiguous among the differing fields (`lr` for the learning rate);
    more than `limit` differences end in '+N more'. Identical configs get empty labels."""
    keys = sorted({k for c in configs for k in c})
    differing = [k for k in keys if len({json.dumps(c.get(k, "<unset>"), default=str) for c in configs}) > 1]
    differing = [k for k in differing if k != "name"] or differing  # the name says least when other fields differ
    leaves = [k.rsplit(".", 1)[-1] for k in differing]

    def short(k: str) -> str:
        if k in SHORT_NAMES:
            return SHORT_NAMES[k]
        leaf = k.rsplit(".", 1)[-1]
        return leaf if leaves.count(leaf) == 1 and not leaf.isdigit() else k

    labels = []
    for c in configs:
        parts = [f"{short(k)}={_fmt(c.get(k))}" for k in differing[:limit]]
        if len(differing) > limit:
            parts.append(f"+{len(differing) - limit} more")
        labels.append(", ".join(parts))
    return labels


def load_run(run_dir: str | Path) -> RunCurves:
    run_dir = Path(run_dir)
    config = _config(run_dir)
    curves: dict[str, list[tuple[int, float]]] = {}
    for row in read_metrics(run_dir / "metrics.jsonl"):
        step = row.get("step")
        if not isinstance(step, int):
            continue
        for key, value in row.items():
            if key == "step" or isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            if isinstance(value, float) and not math.isfinite(value):
                continue
            curves.setdefault(key, []).append((step, float(value)))
    curves.update(rescored_curves(run_dir))
    samples = {}
    sample_dir = run_dir / "samples"
    if sample_dir.is_dir():
        for p in sample_dir.glob("step-*.png"):
            try:
                samples[int(p.stem.split("-", 1)[1])] = p
            except ValueError:
                continue  # e.g. a half-written step-000010.tmp.png
    trainer = config.get("trainer") if isinstance(config.get("trainer"), dict) else {}
    return RunCurves(path=run_dir, name=str(config.get("name", run_dir.name)), seed=config.get("seed"),
                     group_key=_group_key(config), max_steps=trainer.get("max_steps"),
                     curves={k: sorted(v) for k, v in curves.items()}, samples=samples,
                     config=flatten(_without_seeds(config)))


def panel_keys(runs: list[RunCurves], metrics: list[str] | None = None) -> list[str]:
    """The default panels (PANEL_ORDER), or with `metrics` every logged numeric metric that is one of them or
    under one of them as a prefix (`grad_norm`, `clip_ratio`, `loss`, `timing/`...), default panel or not."""
    keys = {k for r in runs for k in r.curves if not k.endswith(SKIP_SUFFIXES)}
    if metrics:
        keys = {k for k in keys if any(k == m or k.startswith(m.rstrip("/") + "/") for m in metrics)}

    def rank(k: str) -> tuple[int, str]:
        for i, prefix in enumerate(PANEL_ORDER):
            if k == prefix or (prefix.endswith("/") and k.startswith(prefix)) or k.startswith(prefix + "/"):
                return i, k
        return len(PANEL_ORDER), k

    wanted = keys if metrics else [k for k in keys if rank(k)[0] < len(PANEL_ORDER)]
    return sorted(wanted, key=rank)


@dataclass
class GroupCurve:
    steps: np.ndarray
    mean: np.ndarray
    std: np.ndarray  # NaN where fewer than two runs have the step
    count: np.ndarray


def group_curve(series: list[list[tuple[int, float]]], alpha: float) -> GroupCurve:
    """Mean ± std over runs of each run's smoothed curve, at every step any run has reached."""
    per_run = []
    for s in series:
        if s:
            steps = [st for st, _ in s]
            per_run.append(dict(zip(steps, smooth([v for _, v in s], alpha))))
    all_steps = np.array(sorted({st for d in per_run for st in d}), dtype=float)
    mean, std, count = [], [], []
    for st in all_steps:
        vals = np.array([d[int(st)] for d in per_run if int(st) in d])
        mean.append(vals.mean())
        std.append(vals.std(ddof=1) if len(vals) >= 2 else np.nan)
        count.append(len(vals))
    return GroupCurve(all_steps, np.array(mean), np.array(std), np.array(count))


def group_runs(runs: list[RunCurves]) -> dict[str, list[RunCurves]]:
    """label -> runs (an *arm*: runs whose recipes differ only by seed). The label says what differs between the
    arms (`lr=0.001`, `difference_labels`); one arm, or arms whose recipes differ nowhere, are labelled by name."""
    by_key: dict[str, list[RunCurves]] = {}
    for r in runs:
        by_key.setdefault(r.group_key, []).append(r)
    groups = list(by_key.values())
    diffs = difference_labels([g[0].config for g in groups]) if len(groups) > 1 else [""] * len(groups)
    out = {}
    for group, diff in zip(groups, diffs):
        label = diff or group[0].name
        if label in out:
            label = f"{label} [{group[0].group_key}]"
        out[f"{label} (n={len(group)})" if len(group) > 1 else label] = group
    return out


def plot_comparison(groups: dict[str, list[RunCurves]], keys: list[str], out: Path, *, alpha: float = 0.3,
                    columns: int = 3) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = max(len(keys), 1)
    rows = math.ceil(n / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(5.0 * columns, 3.3 * rows), squeeze=False)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, key in zip(axes.flat, keys):
        for gi, (label, group) in enumerate(groups.items()):
            colour = colours[gi % len(colours)]
            series = [r.curves.get(key, []) for r in group]
            if not any(series):
                continue
            for s in series:  # raw curves, thin
                if s:
                    ax.plot([st for st, _ in s], [v for _, v in s], color=colour, alpha=0.25, linewidth=0.8)
            g = group_curve(series, alpha)
            marker = "o" if len(g.steps) <= 30 else None  # few points (a run just started) stay visible
            ax.plot(g.steps, g.mean, color=colour, linewidth=1.8, label=label, marker=marker, markersize=3)
            band = g.count >= 2
            if band.any():
                ax.fill_between(g.steps, np.where(band, g.mean - g.std, np.nan),
                                np.where(band, g.mean + g.std, np.nan), color=colour, alpha=0.18, linewidth=0)
        ax.set_title(key, fontsize=9)
        ax.grid(alpha=0.3)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(keys):]:
        ax.axis("off")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="upper center", ncol=min(len(labels), 4), fontsize=8)
    fig.tight_layout(rect=(0, 0, 1, 0.96 if handles else 1))
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return out


def _data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def _nearest(available: list[int], wanted: int) -> int | None:
    return min(available, key=lambda s: (abs(s - wanted), s)) if available else None


def sample_steps(runs: list[RunCurves], steps: list[int] | None) -> list[int]:
    """The requested steps, or by default the first and the latest step any run has a sample grid for."""
    if steps:
        return list(dict.fromkeys(steps))
    have = sorted({s for r in runs for s in r.samples})
    return list(dict.fromkeys([have[0], have[-1]])) if have else []


def held_out_comparisons(runs: list[RunCurves], groups: dict[str, list[RunCurves]] | None = None
                         ) -> list[dict[str, Any]]:
    """Held-out evaluations (`eval_after.json`) compared. With several arms and several seeds in an arm: each arm
    against the first arm, per metric the mean and spread over the arm's runs (`{"baseline", "run", "arms"}`).
    Otherwise each evaluated run against the first, paired on prompts and seeds (`{"baseline", "run", "rows" |
    "error"}`, rl/paired_eval.py)."""
    from rl.paired_eval import UnpairedEvaluations, load_evaluation, paired_differences

    evaluated = {id(r): load_evaluation(r.path / "eval_after.json") for r in runs
                 if (r.path / "eval_after.json").is_file()}
    if len(evaluated) < 2:
        return []
    groups = groups or group_runs(runs)
    arms = {label: [evaluated[id(r)] for r in group if id(r) in evaluated] for label, group in groups.items()}
    arms = {label: evs for label, evs in arms.items() if evs}
    if len(arms) >= 2 and any(len(evs) >= 2 for evs in arms.values()):
        (base_label, base_evs), rest = next(iter(arms.items())), list(arms.items())[1:]
        return [{"baseline": base_label, "run": label, "arms": arm_differences(base_evs, evs)}
                for label, evs in rest]
    ordered = [(r, evaluated[id(r)]) for r in runs if id(r) in evaluated]
    (base, base_eval), rest = ordered[0], ordered[1:]
    out = []
    for run, ev in rest:
        item: dict[str, Any] = {"baseline": str(base.path), "run": str(run.path)}
        try:
            item["rows"] = paired_differences(base_eval, ev)
        except UnpairedEvaluations as exc:
            item["error"] = str(exc)
        out.append(item)
    return out


def arm_differences(a: list[dict[str, Any]], b: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per metric every run of both arms reports: mean and std (over the arm's runs, i.e. training seeds) of each
    arm and the difference of the means (b − a)."""
    def numeric(ev: dict[str, Any]) -> dict[str, float]:
        return {k: float(v) for k, v in ev.items() if isinstance(v, (int, float)) and not isinstance(v, bool)
                and math.isfinite(float(v)) and (k == "accuracy" or k.startswith(("accuracy/", "reward/")))}

    va, vb = [numeric(e) for e in a], [numeric(e) for e in b]
    common = sorted(set.intersection(*(set(v) for v in va + vb)))
    common.sort(key=lambda k: (not k.startswith("reward/"), k != "accuracy", k))
    rows = []
    for key in common:
        xa, xb = np.array([v[key] for v in va]), np.array([v[key] for v in vb])
        rows.append({"metric": key, "a_mean": float(xa.mean()), "a_std": float(xa.std(ddof=1)) if len(xa) > 1
                     else None, "a_n": len(xa), "b_mean": float(xb.mean()),
                     "b_std": float(xb.std(ddof=1)) if len(xb) > 1 else None, "b_n": len(xb),
                     "diff": float(xb.mean() - xa.mean())})
    return rows


def format_arm_table(rows: list[dict[str, Any]], names: tuple[str, str]) -> str:
    def cell(mean: float, std: float | None, n: int) -> str:
        return f"{mean:.3f} ± {std:.3f} (n={n})" if std is not None else f"{mean:.3f} (n={n})"

    lines = [f"| metric | {names[0]} | {names[1]} | change of means |", "|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['metric']} | {cell(r['a_mean'], r['a_std'], r['a_n'])} | "
                     f"{cell(r['b_mean'], r['b_std'], r['b_n'])} | {r['diff']:+.3f} |")
    return "\n".join(lines) + ("\n\nPer arm: mean ± std over its runs (training seeds), each run's held-out "
                               "evaluation; n = runs.\n")


def write_html(groups: dict[str, list[RunCurves]], keys: list[str], png: Path, out: Path,
               steps: list[int], *, alpha: float = 0.3, evals: list[dict[str, Any]] | None = None) -> Path:
    esc = html.escape
    parts = ["<!doctype html><html><head><meta charset='utf-8'><title>nativerl compare</title><style>",
             ("body{font-family:sans-serif;margin:20px;color:#222}table{border-collapse:collapse;margin:8px 0}"
              "td,th{border:1px solid #ccc;padding:3px 8px;font-size:13px;text-align:right}"
              "th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}img{max-width:100%}"
              ".grid{display:flex;flex-wrap:wrap;gap:12px}.grid figure{margin:0}figcaption{font-size:12px}"),
             "</style></head><body><h1>Run comparison</h1>"]
    parts.append("<h2>Runs</h2><table><tr><th>group</th><th>run</th><th>seed</th><th>steps</th><th>status</th></tr>")
    for label, group in groups.items():
        for r in group:
            status = "finished" if r.finished else "in progress"
            parts.append(f"<tr><td>{esc(label)}</td><td>{esc(str(r.path))}</td><td>{esc(str(r.seed))}</td>"
                         f"<td>{r.last_step} / {r.max_steps}</td><td>{status}</td></tr>")
    parts.append("</table>")
    parts.append(f"<h2>Curves</h2><p>Thin lines: raw values per run. Thick: mean over the group's runs of the "
                 f"EMA-smoothed curves (alpha {alpha}); band: ±1 std across runs.</p>"
                 f"<img alt='curves' src='{_data_uri(png)}'>")
    parts.append("<h2>Last smoothed value</h2><table><tr><th>metric</th>"
                 + "".join(f"<th>{esc(label)}</th>" for label in groups) + "</tr>")
    for key in keys:
        cells = []
        for group in groups.values():
            g = group_curve([r.curves.get(key, []) for r in group], alpha)
            if len(g.steps) == 0:
                cells.append("<td>-</td>")
                continue
            spread = f" ± {g.std[-1]:.3g}" if np.isfinite(g.std[-1]) else ""
            cells.append(f"<td>{g.mean[-1]:.4g}{spread} <small>(step {int(g.steps[-1])})</small></td>")
        parts.append(f"<tr><td>{esc(key)}</td>{''.join(cells)}</tr>")
    parts.append("</table>")
    for item in evals or []:
        parts.append(f"<h2>Held-out evaluation: {esc(item['run'])} vs {esc(item['baseline'])}</h2>")
        if "arms" in item:
            parts.append("<p>Arm against arm: mean ± std over each arm's runs (training seeds).</p><table><tr>"
                         "<th>metric</th><th>baseline arm</th><th>arm</th><th>change of means</th></tr>")
            for r in item["arms"]:
                a = f"{r['a_mean']:.3f}" + (f" ± {r['a_std']:.3f}" if r["a_std"] is not None else "")
                b = f"{r['b_mean']:.3f}" + (f" ± {r['b_std']:.3f}" if r["b_std"] is not None else "")
                parts.append(f"<tr><td>{esc(r['metric'])}</td><td>{a} (n={r['a_n']})</td><td>{b} (n={r['b_n']})"
                             f"</td><td>{r['diff']:+.3f}</td></tr>")
            parts.append("</table>")
            continue
        if "error" in item:
            parts.append(f"<p>Not comparable: {esc(item['error'])}</p>")
            continue
        parts.append("<p>Same prompts and seeds; change = run − baseline; 95% bootstrap interval over prompts "
                     "(bold: excludes 0 and rests on enough discordant events, rl/paired_eval.py).</p>"
                     "<table><tr><th>metric</th><th>baseline</th><th>run</th><th>change</th>"
                     "<th>95% interval</th><th>prompts</th></tr>")
        for r in item["rows"]:
            ci = "n/a" if r["low"] is None else f"[{r['low']:+.3f}, {r['high']:+.3f}]"
            change = f"{r['diff']:+.3f}"
            if significant(r):
                change = f"<b>{change}</b>"
            elif too_few_events(r):
                ci += f" ({too_few_events(r)})"
            parts.append(f"<tr><td>{esc(r['metric'])}</td><td>{r['a']:.3f}</td><td>{r['b']:.3f}</td>"
                         f"<td>{change}</td><td>{ci}</td><td>{r['prompts']}</td></tr>")
        parts.append("</table>")
    if steps:
        parts.append("<h2>Samples</h2>")
        for wanted in steps:
            parts.append(f"<h3>step {wanted}</h3><div class='grid'>")
            for label, group in groups.items():
                for r in group:
                    got = _nearest(sorted(r.samples), wanted)
                    if got is None:
                        parts.append(f"<figure><figcaption>{esc(label)} / {esc(r.path.name)}: no sample grids"
                                     "</figcaption></figure>")
                        continue
                    note = "" if got == wanted else f" (nearest to {wanted})"
                    parts.append(f"<figure><img alt='samples' src='{_data_uri(r.samples[got])}'><figcaption>"
                                 f"{esc(label)} / {esc(r.path.name)}: step {got}{note}</figcaption></figure>")
            parts.append("</div>")
    parts.append("</body></html>")
    out.write_text("\n".join(parts), encoding="utf-8")
    return out


@dataclass
class Comparison:
    png: Path
    html: Path
    runs: list[RunCurves]
    keys: list[str]
    evals: list[dict[str, Any]] = field(default_factory=list)
    groups: dict[str, list[RunCurves]] = field(default_factory=dict)  # label (what differs) -> the arm's runs


def compare_runs(run_dirs: list[str | Path], out_dir: str | Path, *, steps: list[int] | None = None,
                 metrics: list[str] | None = None, alpha: float = 0.3) -> Comparison:
    if not run_dirs:
        raise ValueError("compare: give at least one run directory")
    runs = [load_run(d) for d in run_dirs]
    keys = panel_keys(runs, metrics)
    if not keys:
        raise ValueError(f"compare: no metrics to plot in {[str(d) for d in run_dirs]}"
                         + (f" matching {metrics}" if metrics else " (no metrics.jsonl lines yet?)"))
    groups = group_runs(runs)
    out_dir = Path(out_dir)
    png = plot_comparison(groups, keys, out_dir / "compare.png", alpha=alpha)
    evals = held_out_comparisons(runs, groups)
    page = write_html(groups, keys, png, out_dir / "compare.html", sample_steps(runs, steps), alpha=alpha,
                      evals=evals)
    return Comparison(png=png, html=page, runs=runs, keys=keys, evals=evals, groups=groups)
