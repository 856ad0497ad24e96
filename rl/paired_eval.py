"""Is run B better than run A on the held-out set? Paired differences with bootstrap confidence intervals.

Evaluations (`rl/evaluate.py`) use fixed prompts and fixed seeds, so two checkpoints are scored on the same
(prompt, seed) pairs: sampling and renderer noise are shared, and the difference B − A is measured per pair. The
uncertainty left is which prompts happened to be in the held-out set, so the bootstrap resamples *prompts* (all seeds
of a prompt move together), stratified by tag for the accuracy, which GenEval defines as the mean over tags
(each tag keeps its prompt count in every resample). Percentile intervals from `resamples` draws, fixed seed.

    paired_differences(a, b) -> [{"metric", "a", "b", "diff", "low", "high", "prompts"}]

Metrics: every reward's mean (`reward/<name>/mean`), `accuracy` (mean over tags) and `accuracy/<tag>`, and, when
both evaluations have them (GenEval-style prompt sets), `strict_accuracy` (exact scene) and `swapped_accuracy`
(against a deranged prompt's metadata, rl/evaluate.py), overall only. A tag with
fewer than `min_prompts` prompts gets no interval (`low`/`high` None): a bootstrap over two prompts says nothing.

Events: a bootstrap interval can exclude 0 while the change rests on a handful of images (4 of 116 correct before,
0 after: the interval excludes 0, yet an exact McNemar test gives p = 0.125). So every row also counts its
*discordant events* — for accuracy, images correct in one evaluation and wrong in the other (`up`: now right,
`down`: now wrong); for a reward mean, prompts whose score went up or down — and `p_exact`, the exact two-sided
sign test on them (McNemar's exact test for accuracy). `significant(row)` (the `*` of the table) needs all three:
the interval excludes 0, at least `MIN_EVENTS` discordant events, and p_exact < 0.05. Otherwise an interval that
excludes 0 is shown with "too few events".
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np


class UnpairedEvaluations(ValueError):
    """The two evaluations were not run on the same prompts and seeds."""


def load_evaluation(path: str | Path) -> dict[str, Any]:
    """An evaluation from `nativerl eval`'s eval.json, a run's eval_after.json / eval_before.json, or a run
    directory (its eval_after.json), as `evaluate_prompts` returns it (metrics + `per_image`)."""
    path = Path(path)
    file = path / "eval_after.json" if path.is_dir() else path
    if not file.is_file():
        raise FileNotFoundError(f"{file}: not found (give an eval.json or a run directory with eval_after.json)")
    try:
        data = json.loads(file.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{file} is not valid JSON: {exc}") from None
    if isinstance(data.get("results"), dict):  # nativerl eval's report
        data = {**data["results"], "per_image": data.get("per_image", [])}
    return data


def _by_prompt(result: dict[str, Any], who: str) -> dict[int, list[dict[str, Any]]]:
    rows = result.get("per_image")
    if not rows:
        raise UnpairedEvaluations(f"{who}: no per-image results (evaluations written before per_image was recorded)")
    out: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        out[int(r["prompt"])].append(r)
    return out


def _pair(a: dict[str, Any], b: dict[str, Any]) -> list[tuple[list[dict], list[dict]]]:
    pa, pb = _by_prompt(a, "first evaluation"), _by_prompt(b, "second evaluation")
    if sorted(pa) != sorted(pb):
        raise UnpairedEvaluations(f"the evaluations cover different prompts ({len(pa)} vs {len(pb)})")
    pairs = []
    for p in sorted(pa):
        ra = sorted(pa[p], key=lambda r: r["seed"])
        rb = sorted(pb[p], key=lambda r: r["seed"])
        if [(r["seed"], r.get("text")) for r in ra] != [(r["seed"], r.get("text")) for r in rb]:
            raise UnpairedEvaluations(f"prompt {p}: the evaluations differ in seeds or prompt text "
                                      f"({ra[0].get('text')!r} vs {rb[0].get('text')!r})")
        pairs.append((ra, rb))
    return pairs


MIN_EVENTS = 10  # discordant events below which no change is called significant, whatever the interval says
SIGNIFICANCE = 0.05


def sign_test(up: int, down: int) -> float:
    """Exact two-sided binomial test of up vs down discordant events at p = 1/2 (McNemar's exact test)."""
    n = up + down
    if n == 0:
        return 1.0
    k = min(up, down)
    return min(1.0, 2 * sum(math.comb(n, i) for i in range(k + 1)) / 2**n)


def _events(up: int, down: int) -> dict[str, Any]:
    return {"up": int(up), "down": int(down), "p_exact": sign_test(up, down)}


def excludes_zero(row: dict[str, Any]) -> bool:
    return row.get("low") is not None and (row["low"] > 0 or row["high"] < 0)


def significant(row: dict[str, Any]) -> bool:
    """The interval excludes 0 *and* the change rests on enough discordant events (module docstring)."""
    if not excludes_zero(row):
        return False
    if "up" not in row:  # rows from before events were counted
        return True
    return row["up"] + row["down"] >= MIN_EVENTS and row["p_exact"] < SIGNIFICANCE


def too_few_events(row: dict[str, Any]) -> str | None:
    """The note for an interval that excludes 0 but is not significant, else None."""
    if not excludes_zero(row) or significant(row):
        return None
    return (f"too few events: {row['up']} up / {row['down']} down, exact p = {row['p_exact']:.3g}")


def _interval(draws: np.ndarray, confidence: float) -> tuple[float, float]:
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(draws, [tail, 100 - tail])
    return float(low), float(high)


def paired_differences(a: dict[str, Any], b: dict[str, Any], *, confidence: float = 0.95, resamples: int = 4000,
                       min_prompts: int = 5, seed: int = 0) -> list[dict[str, Any]]:
    pairs = _pair(a, b)
    rng = np.random.default_rng(seed)
    out: list[dict[str, Any]] = []

    def row(metric: str, va: np.ndarray, vb: np.ndarray, draws: np.ndarray | None, prompts: int,
            events: dict[str, Any]) -> None:
        low = high = None
        if draws is not None:
            low, high = _interval(draws, confidence)
        out.append({"metric": metric, "a": float(va.mean()), "b": float(vb.mean()), "diff": float((vb - va).mean()),
                    "low": low, "high": high, "prompts": prompts, **events})

    def image_events(pairs_of_tag: list[tuple[list[dict], list[dict]]]) -> dict[str, Any]:
        flips = [(bool(x["correct"]), bool(y["correct"])) for ra, rb in pairs_of_tag for x, y in zip(ra, rb)]
        return _events(sum(not x and y for x, y in flips), sum(x and not y for x, y in flips))

    # Reward means: per-prompt means over seeds, prompts resampled uniformly.
    names = sorted(set(pairs[0][0][0]["scores"]) & set(pairs[0][1][0]["scores"]))
    n = len(pairs)
    idx = rng.integers(0, n, (resamples, n))
    for name in names:
        va = np.array([np.mean([r["scores"][name] for r in ra]) for ra, _ in pairs])
        vb = np.array([np.mean([r["scores"][name] for r in rb]) for _, rb in pairs])
        if not (np.isfinite(va).all() and np.isfinite(vb).all()):
            continue  # a reward that failed somewhere has no clean paired mean
        d = vb - va
        tol = 1e-12 * max(1.0, float(np.abs(np.concatenate([va, vb])).max()))
        row(f"reward/{name}/mean", va, vb, d[idx].mean(axis=1) if n >= min_prompts else None, n,
            _events(int((d > tol).sum()), int((d < -tol).sum())))

    # Accuracy: per-prompt accuracy over seeds, grouped by tag; overall = mean over tags (GenEval).
    tags: dict[str, list[tuple[float, float]]] = defaultdict(list)
    tag_pairs: dict[str, list[tuple[list[dict], list[dict]]]] = defaultdict(list)
    for ra, rb in pairs:
        if ra[0].get("correct") is None or rb[0].get("correct") is None:
            continue
        tags[ra[0]["tag"]].append((np.mean([r["correct"] for r in ra]), np.mean([r["correct"] for r in rb])))
        tag_pairs[ra[0]["tag"]].append((ra, rb))
    if not tags:
        return out
    per_tag_draws, all_a, all_b, enough = [], [], [], True
    for tag in sorted(tags):
        acc = np.array(tags[tag])  # [prompts, 2]
        k = len(acc)
        d = acc[:, 1] - acc[:, 0]
        draws = d[rng.integers(0, k, (resamples, k))].mean(axis=1)
        per_tag_draws.append(draws)
        all_a.append(acc[:, 0].mean())
        all_b.append(acc[:, 1].mean())
        enough = enough and k >= min_prompts
        row(f"accuracy/{tag}", acc[:, 0], acc[:, 1], draws if k >= min_prompts else None, k,
            image_events(tag_pairs[tag]))
    overall_draws = np.mean(per_tag_draws, axis=0)
    # The overall interval needs every tag resampled; small tags still add their (wide) spread to it.
    out.insert(len(out) - len(tags), {
        "metric": "accuracy", "a": float(np.mean(all_a)), "b": float(np.mean(all_b)),
        "diff": float(np.mean(all_b) - np.mean(all_a)), "low": _interval(overall_draws, confidence)[0],
        "high": _interval(overall_draws, confidence)[1], "prompts": sum(len(v) for v in tags.values()),
        **image_events([p for tag in sorted(tag_pairs) for p in tag_pairs[tag]])})
    for key, metric in (("strict", "strict_accuracy"), ("swapped_correct", "swapped_accuracy")):
        extra = _overall_accuracy(pairs, key, rng, resamples, confidence)
        if extra is not None:
            out.append({"metric": metric, **extra})
    return out


def _overall_accuracy(pairs: list[tuple[list[dict], list[dict]]], key: str, rng: np.random.Generator,
                      resamples: int, confidence: float) -> dict[str, Any] | None:
    """Mean-over-tags accuracy of a per-image boolean `key` (exact scene, swapped metadata), paired and
    bootstrapped like `accuracy` (prompts resampled within tags); None when either evaluation lacks it."""
    tags: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for ra, rb in pairs:
        if any(r.get(key) is None for r in ra + rb):
            return None
        tags[ra[0]["tag"]].append((np.mean([r[key] for r in ra]), np.mean([r[key] for r in rb])))
    if not tags:
        return None
    draws, mean_a, mean_b = [], [], []
    for tag in sorted(tags):
        acc = np.array(tags[tag])
        d = acc[:, 1] - acc[:, 0]
        draws.append(d[rng.integers(0, len(acc), (resamples, len(acc)))].mean(axis=1))
        mean_a.append(acc[:, 0].mean())
        mean_b.append(acc[:, 1].mean())
    low, high = _interval(np.mean(draws, axis=0), confidence)
    flips = [(bool(x[key]), bool(y[key])) for ra, rb in pairs for x, y in zip(ra, rb)]
    return {"a": float(np.mean(mean_a)), "b": float(np.mean(mean_b)), "diff": float(np.mean(mean_b) - np.mean(mean_a)),
            "low": low, "high": high, "prompts": sum(len(v) for v in tags.values()),
            **_events(sum(not x and y for x, y in flips), sum(x and not y for x, y in flips))}


def format_paired_table(rows: list[dict[str, Any]], names: tuple[str, str] = ("A", "B"),
                        confidence: float = 0.95) -> str:
    pct = f"{confidence:.0%}"
    lines = [f"| metric | {names[0]} | {names[1]} | change | {pct} interval | prompts | events up/down |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        ci = "n/a (too few prompts)" if r["low"] is None else f"[{r['low']:+.3f}, {r['high']:+.3f}]"
        note = too_few_events(r)
        if note:
            ci += f" ({note})"
        mark = " *" if significant(r) else ""
        events = f"{r['up']}/{r['down']}" if "up" in r else "-"
        lines.append(f"| {r['metric']} | {r['a']:.3f} | {r['b']:.3f} | {r['diff']:+.3f}{mark} | {ci} | "
                     f"{r['prompts']} | {events} |")
    return ("\n".join(lines) + f"\n\n`*`: the {pct} interval excludes 0 and at least {MIN_EVENTS} discordant "
            f"events (images that flipped, or prompts whose reward moved) back it with an exact sign test "
            f"p < {SIGNIFICANCE}. Intervals resample prompts (seeds stay paired).\n")
