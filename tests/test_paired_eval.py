"""Paired comparison of two held-out evaluations: the change per metric and a bootstrap interval over prompts,
on hand-made evaluations with a known answer, and on the tiny preset through `nativerl eval` / `compare-evals`."""

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from rl.cli import app
from rl.paired_eval import UnpairedEvaluations, format_paired_table, load_evaluation, paired_differences


def _evaluation(accuracy_by_tag, reward_shift=0.0, seeds=2, seed=0):
    """per_image for prompts in tags: prompt p of tag t is correct with the given probability (fixed rng)."""
    rng = np.random.default_rng(seed)
    rows, p = [], 0
    for tag, (n, prob) in accuracy_by_tag.items():
        for _ in range(n):
            for s in range(seeds):
                ok = bool(rng.random() < prob)
                rows.append({"prompt": p, "text": f"{tag} {p}", "seed": s, "tag": tag, "correct": ok,
                             "scores": {"geneval": float(ok) + reward_shift, "jpeg": 0.5}})
            p += 1
    return {"per_image": rows}


def _row(rows, metric):
    return next(r for r in rows if r["metric"] == metric)


def test_known_improvement_is_found_and_no_change_is_not():
    a = _evaluation({"counting": (40, 0.2), "colors": (40, 0.5), "position": (3, 0.5)})
    b = _evaluation({"counting": (40, 0.8), "colors": (40, 0.5), "position": (3, 0.5)}, seed=0)
    rows = paired_differences(a, b)
    # The per-tag change is exactly the difference of the per-prompt accuracies; overall is the mean over tags.
    counting = _row(rows, "accuracy/counting")
    assert counting["prompts"] == 40 and counting["diff"] == pytest.approx(counting["b"] - counting["a"])
    assert counting["low"] > 0.3 and counting["diff"] > 0.4
    overall = _row(rows, "accuracy")
    per_tag = [_row(rows, f"accuracy/{t}") for t in ("colors", "counting", "position")]
    assert overall["diff"] == pytest.approx(np.mean([r["diff"] for r in per_tag]))
    assert overall["low"] > 0  # the improvement is real
    assert _row(rows, "accuracy/position")["low"] is None  # 3 prompts: no interval
    jpeg = _row(rows, "reward/jpeg/mean")
    assert jpeg["diff"] == 0 and jpeg["low"] == jpeg["high"] == 0  # identical scores: a zero-width interval
    same = paired_differences(a, a)
    assert all(r["diff"] == 0 for r in same) and _row(same, "accuracy")["low"] == 0
    table = format_paired_table(rows, ("base", "new"))
    assert "| accuracy/counting |" in table and "n/a (too few prompts)" in table and " *" in table


def test_interval_covers_a_null_effect_most_of_the_time():
    """Two independent draws of the same model: the 95% interval should contain 0 in most trials."""
    covered = 0
    for trial in range(40):
        a = _evaluation({"t": (30, 0.5)}, seed=2 * trial)
        b = _evaluation({"t": (30, 0.5)}, seed=2 * trial + 1)
        r = _row(paired_differences(a, b, resamples=1000, seed=trial), "accuracy")
        covered += r["low"] <= 0 <= r["high"]
    assert covered >= 32  # ~38 expected; a broken interval (too narrow) would miss far more often


def test_unpaired_evaluations_are_refused():
    a = _evaluation({"t": (6, 0.5)})
    with pytest.raises(UnpairedEvaluations, match="different prompts"):
        paired_differences(a, _evaluation({"t": (7, 0.5)}))
    b = json.loads(json.dumps(a))
    b["per_image"][0]["text"] = "something else"
    with pytest.raises(UnpairedEvaluations, match="prompt 0"):
        paired_differences(a, b)
    with pytest.raises(UnpairedEvaluations, match="no per-image results"):
        paired_differences(a, {"accuracy": 0.5})


def test_eval_reports_compare_through_the_cli(tmp_path):
    """`nativerl eval` on two checkpoints of a tiny run writes per-image results; compare-evals pairs them."""
    import yaml

    recipe = {
        "name": "pe", "seed": 0, "model": {"source": "preset", "preset": "tiny"},
        "rollout": {"prompts": {"format": "inline", "prompts": ["a red circle", "a cat"]}, "prompts_per_step": 2,
                    "sampling": {"top_k": None, "top_p": None}, "renderer": {"num_inference_steps": 2}},
        "rewards": [{"name": "jpeg_compressibility"}],
        "trainer": {"num_generations": 2, "max_steps": 2, "learning_rate": 0.05, "policy": "lora"},
        "logging": {"sample_every": 0, "tensorboard": False}, "checkpoint": {"every": 1, "keep_last": None},
    }
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(recipe))
    (tmp_path / "p.txt").write_text("".join(f"a sign that says \"{w}\"\n" for w in ("OPEN", "SALE", "EXIT", "BAR",
                                                                                      "INN", "TAXI")))
    runner = CliRunner()

    def ok(*args):
        res = runner.invoke(app, [str(a) for a in args])
        assert res.exit_code == 0, res.output
        return res

    ok("train", tmp_path / "r.yaml", "--run-dir", tmp_path / "run", "--no-progress")
    for step in (1, 2):
        ok("eval", tmp_path / "run", "--prompts", tmp_path / "p.txt", "--seeds", "2", "--step", step, "--out",
           tmp_path / f"e{step}")
    first = load_evaluation(tmp_path / "e1" / "eval.json")
    assert len(first["per_image"]) == 12 and "reward/jpeg_compressibility/mean" in first
    out = ok("compare-evals", tmp_path / "e1" / "eval.json", tmp_path / "e2" / "eval.json").output
    line = next(x for x in out.splitlines() if x.startswith("| reward/jpeg_compressibility/mean"))
    a, b = first["reward/jpeg_compressibility/mean"], load_evaluation(tmp_path / "e2" / "eval.json")[
        "reward/jpeg_compressibility/mean"]
    assert f"{b - a:+.3f}" in line and "| 6 |" in line
    (tmp_path / "p2.txt").write_text("a sign that says \"OPEN\"\n")
    ok("eval", tmp_path / "run", "--prompts", tmp_path / "p2.txt", "--out", tmp_path / "e3")
    bad = runner.invoke(app, ["compare-evals", str(tmp_path / "e1" / "eval.json"), str(tmp_path / "e3" / "eval.json")])
    assert bad.exit_code == 2 and "different prompts" in bad.output

    # `nativerl compare` pairs the runs' eval_after.json with the first run's.
    import shutil

    from rl.compare import compare_runs

    shutil.copytree(tmp_path / "run", tmp_path / "run2")
    (tmp_path / "run" / "eval_after.json").write_text(json.dumps(first))
    (tmp_path / "run2" / "eval_after.json").write_text(json.dumps(load_evaluation(tmp_path / "e2" / "eval.json")))
    result = compare_runs([tmp_path / "run", tmp_path / "run2"], tmp_path / "cmp")
    assert len(result.evals) == 1 and _row(result.evals[0]["rows"], "reward/jpeg_compressibility/mean")["diff"] == (
        pytest.approx(b - a))
    assert "Held-out evaluation" in result.html.read_text()


def test_four_correct_images_of_116_are_too_few_events_for_a_star():
    """The issue's case: 4 of 116 images correct before, none after. The bootstrap interval excludes 0, but an exact
    McNemar test on the 4 discordant images gives p = 0.125: no star, and the table says why."""
    from rl.paired_eval import sign_test, significant

    def ev(correct_prompts):
        return {"per_image": [{"prompt": p, "text": f"p{p}", "seed": 0, "tag": "counting",
                               "correct": p in correct_prompts, "scores": {"geneval": float(p in correct_prompts)}}
                              for p in range(116)]}

    rows = paired_differences(ev({3, 40, 77, 100}), ev(set()))
    acc = _row(rows, "accuracy")
    assert acc["a"] == pytest.approx(4 / 116) and acc["b"] == 0
    assert acc["high"] < 0  # the interval alone would star it
    assert (acc["up"], acc["down"]) == (0, 4) and acc["p_exact"] == pytest.approx(0.125)
    assert not significant(acc) and not significant(_row(rows, "reward/geneval/mean"))
    table = format_paired_table(rows, ("before", "after"))
    line = next(x for x in table.splitlines() if x.startswith("| accuracy |"))
    assert " *" not in line and "too few events: 0 up / 4 down, exact p = 0.125" in line
    # Enough one-sided events star it: 30 of 116 correct before, none after.
    many = paired_differences(ev(set(range(30))), ev(set()))
    assert significant(_row(many, "accuracy")) and sign_test(0, 30) < 1e-8
    assert sign_test(3, 3) == 1.0 and sign_test(0, 0) == 1.0
