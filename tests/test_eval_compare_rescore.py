"""`nativerl eval`, `compare`, `rescore` and the rollout archive on tiny runs: a finished run, a run that crashed
after logging step 3 but before its final checkpoint (left with a half-written metrics line), the same run resumed
with `nativerl train --resume`, and a second seed of the same recipe.

The runs train on generated GenEval prompts (`coco_generated`) with the real offline GenEval stand-in
(YOLOv3-tiny + HSV colours) and JPEG compressibility, so per-tag GenEval accuracy is logged and evaluated.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image
from typer.testing import CliRunner

from prompts.coco_prompts import generate_geneval_prompts
from rewards.spec import RewardSpec
from rl.archive import archived_steps
from rl.cli import app
from rl.compare import compare_runs, group_curve, load_run
from rl.metrics_log import read_metrics
from rl.rescore import read_rescored, rescore_run
from rollouts.batch import RolloutBatch
from tiny_fixtures import tiny_recipe

TINY = tiny_recipe(
    name="user_layer_tiny", seed=0,
    rollout={"prompts": {"format": "coco_generated", "coco": {"num_prompts": 12, "seed": 0}}, "prompts_per_step": 2},
    rewards=[{"name": "geneval", "options": {"detector": "yolov3tiny", "colour": "hsv"}},
             {"name": "jpeg_compressibility", "weight": 0.5}],
    trainer={"num_generations": 2, "max_steps": 3, "learning_rate": 0.05, "policy": "lora",
             "lora": {"r": 4, "lora_alpha": 8}, "beta": 0.01},
    logging={"sample_every": 1, "sample_count": 4, "archive_every": 1},
    checkpoint={"every": 2, "keep_last": None})

runner = CliRunner()


def cli(*args):
    result = runner.invoke(app, [str(a) for a in args])
    return result


def ok(*args):
    result = cli(*args)
    assert result.exit_code == 0, result.output
    return result


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("user_layer")
    recipe = root / "tiny.yaml"
    recipe.write_text(yaml.safe_dump(TINY))
    a, b, in_progress = root / "a", root / "b", root / "in_progress"
    ok("train", recipe, "--run-dir", a, "--no-progress")
    # What a crash leaves on disk: step 3 was logged (and a fourth line half written) but the final checkpoint
    # never landed. The copy stays in that state; `a` is resumed from its step-2 checkpoint.
    shutil.rmtree(a / "checkpoints" / "step-000003")
    with open(a / "metrics.jsonl", "a") as f:
        f.write('{"step": 4, "reward/mean": 0.')
    shutil.copytree(a, in_progress)
    resumed = ok("train", "--resume", a, "--no-progress")
    ok("train", recipe, "--run-dir", b, "--no-progress", "--set", "seed=1")
    prompts = root / "eval.jsonl"
    prompts.write_text("".join(json.dumps(r) + "\n" for r in generate_geneval_prompts(6, seed=11)))
    return {"root": root, "recipe": recipe, "a": a, "b": b, "in_progress": in_progress, "prompts": prompts,
            "resume_output": resumed.output}


def test_the_resumed_and_in_progress_runs(runs):
    assert "resumed from" in runs["resume_output"] and "step-000002" in runs["resume_output"]
    assert [r["step"] for r in read_metrics(runs["a"])] == [1, 2, 3]
    assert (runs["a"] / "metrics.jsonl").read_text().endswith("\n")  # the fragment is gone after the resume
    assert (runs["a"] / "checkpoints" / "step-000003" / "state.json").is_file()
    assert [r["step"] for r in read_metrics(runs["in_progress"])] == [1, 2, 3]
    assert not (runs["in_progress"] / "metrics.jsonl").read_text().endswith("\n")
    assert sorted(p.name for p in (runs["in_progress"] / "checkpoints").iterdir()) == ["step-000002"]


# ------------------------------------------------------------------ archive

def test_archive_keeps_each_steps_rollouts_pngs_scores_and_policy_version(runs):
    steps = archived_steps(runs["a"])
    assert [s.step for s in steps] == [1, 2, 3]
    metrics = {r["step"]: r for r in read_metrics(runs["a"])}
    for item in steps:
        index, batch = item.index, item.load_batch()
        assert isinstance(batch, RolloutBatch) and len(batch) == 4 == index["num_rows"]
        assert index["policy_version"] == batch.policy_version == item.step - 1  # weights the rollouts came from
        assert index["reward_tags"] == {} or "geneval" in index["reward_tags"]
        assert batch.image_tokens.shape == (4, 16) and batch.logprobs.shape == (4, 16)
        assert [r["prompt"] for r in index["rows"]] == batch.prompts
        assert [r["render_seed"] for r in index["rows"]] == batch.render_seeds.tolist()
        for row in index["rows"]:
            png = np.asarray(Image.open(item.path / row["image"]).convert("RGB"))
            assert np.array_equal(png, batch.images[row["row"]].numpy())  # lossless: the rewarded pixels
        jpeg = [r["rewards"]["jpeg_compressibility"] for r in index["rows"]]
        assert np.mean(jpeg) == pytest.approx(metrics[item.step]["reward/jpeg_compressibility/mean"], rel=1e-6)
        assert all("tag" in m and "include" in m for m in batch.metadata)  # GenEval rows kept for rescoring


# ------------------------------------------------------------------ rescore

def test_rescore_with_the_training_reward_reproduces_the_logged_scores(runs):
    a = runs["a"]
    lines = rescore_run(a, RewardSpec(name="jpeg_compressibility", alias="jpeg_again"))
    metrics = {r["step"]: r for r in read_metrics(a)}
    assert [line["step"] for line in lines] == [1, 2, 3]
    for line in lines:
        assert line["rescored/jpeg_again/mean"] == pytest.approx(metrics[line["step"]]
                                                                 ["reward/jpeg_compressibility/mean"], rel=1e-6)
        stored = json.loads((a / "archive" / f"step-{line['step']:06d}" / "rescored" / "jpeg_again.json").read_text())
        batch = RolloutBatch.load(a / "archive" / f"step-{line['step']:06d}" / "rollouts.pt")
        assert stored["scores"] == pytest.approx(batch.rewards["jpeg_compressibility"].tolist(), rel=1e-6)
        assert stored["tag"] == "jpeg_compressibility@flowgrpo" and stored["policy_version"] == line["step"] - 1


def test_rescore_cli_with_a_new_reward_and_rescoring_replaces_lines(runs, tmp_path, monkeypatch):
    (tmp_path / "my_rewards.py").write_text(
        "import numpy as np\n"
        "def redness(images, prompts, metadata, channel=0):\n"
        "    return [float(np.asarray(im)[..., channel].mean() / 255.0) for im in images]\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    a = runs["a"]
    for _ in range(2):  # the second run replaces the first one's lines
        result = ok("rescore", a, "--reward", "my_rewards:redness", "--options", '{"channel": 0}', "--alias", "red")
    assert "step 3: red =" in result.output
    red_lines = [r for r in read_rescored(a) if "rescored/red/mean" in r]
    assert [r["step"] for r in red_lines] == [1, 2, 3]
    for line in red_lines:  # independently: the red channel of the archived PNG files
        folder = a / "archive" / f"step-{line['step']:06d}" / "images"
        expected = np.mean([np.asarray(Image.open(p).convert("RGB"))[..., 0].mean() / 255 for p in
                            sorted(folder.glob("*.png"))])
        assert line["rescored/red/mean"] == pytest.approx(expected, rel=1e-9)

    empty = tmp_path / "no_archive"
    empty.mkdir()
    (empty / "config.yaml").write_text(yaml.safe_dump(TINY))
    result = cli("rescore", empty, "--reward", "jpeg_compressibility")
    assert result.exit_code == 2 and "no archived rollouts" in result.output
    result = cli("rescore", a, "--reward", "jpeg_compressibilty")
    assert result.exit_code == 2 and "did you mean 'jpeg_compressibility'" in result.output


def test_rescore_geneval_logs_accuracy(runs):
    lines = rescore_run(runs["b"], RewardSpec(name="geneval@fixed", alias="geneval_fixed",
                                              options={"detector": "yolov3tiny", "colour": "hsv"}), steps=[1, 3])
    assert [line["step"] for line in lines] == [1, 3]
    assert all(0.0 <= line["rescored/geneval_fixed/accuracy"] <= 1.0 for line in lines)
    assert lines[0]["rescored/geneval_fixed/tag"] == "geneval@fixed+yolov3tiny+hsv"
    with pytest.raises(FileNotFoundError, match=r"steps \[7\] are not archived"):
        rescore_run(runs["b"], RewardSpec(name="jpeg_compressibility"), steps=[7])


# ------------------------------------------------------------------ eval

def eval_results(out):
    return json.loads((Path(out) / "eval.json").read_text())


def test_eval_of_a_run_in_progress_uses_its_latest_checkpoint(runs):
    out = runs["root"] / "eval_in_progress"
    result = ok("eval", runs["in_progress"], "--prompts", runs["prompts"], "--seeds", "2", "--out", out)
    report = eval_results(out)
    assert report["step"] == 2 and report["checkpoint"].endswith("step-000002") and report["num_images"] == 12
    assert report["format"] == "geneval_jsonl"
    res = report["results"]
    assert set(report["reward_tags"]) == {"geneval", "jpeg_compressibility"}
    assert {f"accuracy/{t}" for t in report["tag_counts"]} <= set(res) and "accuracy" in res
    assert report["tag_counts"] == {t: 2 for t in ("single_object", "two_object", "counting", "colors",
                                                   "position", "color_attr")}
    md = (out / "eval.md").read_text()
    assert "| jpeg_compressibility | jpeg_compressibility@flowgrpo |" in md and "| **overall** | 12 |" in md
    assert md in result.output


def test_eval_of_the_exported_generator_matches_the_run_and_differs_from_the_untrained_model(runs):
    from prompts.row_files import load_jsonl
    from rewards.suite import RewardSuite
    from rl.evaluate import evaluate_prompts
    from rl.recipe import load_recipe
    from rollouts.generator import NativeImageGenerator

    root, a = runs["root"], runs["a"]
    ok("export", a, "--out", root / "exported")
    ok("eval", a, "--prompts", runs["prompts"], "--seeds", "1", "--out", root / "eval_run")
    ok("eval", root / "exported", "--prompts", runs["prompts"], "--seeds", "1", "--recipe", a / "config.yaml",
       "--out", root / "eval_exported")
    run_res, exp_res = eval_results(root / "eval_run"), eval_results(root / "eval_exported")
    assert run_res["step"] == 3 and exp_res["kind"] == "exported"
    assert run_res["results"] == pytest.approx(exp_res["results"], rel=1e-6)

    recipe = load_recipe(a / "config.yaml")
    untrained = NativeImageGenerator.from_config(recipe.model)
    base = evaluate_prompts(untrained, load_jsonl(runs["prompts"], geneval=True), RewardSuite(recipe.rewards),
                            seeds=1, sampling=recipe.rollout.sampling, renderer_cfg=recipe.rollout.renderer)
    key = "reward/jpeg_compressibility/mean"
    assert base[key] != pytest.approx(run_res["results"][key], rel=1e-9)  # the trained adapters were loaded


def test_export_loads_with_plain_transformers(runs):
    """The export's LM is a plain Qwen3 for transformers' Auto classes (no trust_remote_code), with the same logits
    as the generator's LM; the connector lives in the side file that our loader reads."""
    import torch
    from transformers import AutoModelForCausalLM

    from rollouts.blip3o_checkpoint import PARTS_NAME
    from rollouts.generator import NativeImageGenerator

    root = runs["root"]
    exported = root / "exported_auto"
    ok("export", runs["a"], "--out", exported)
    assert json.loads((exported / "config.json").read_text())["model_type"] == "qwen3"
    assert (exported / PARTS_NAME).is_file()
    lm = AutoModelForCausalLM.from_pretrained(exported).eval()
    gen = NativeImageGenerator.from_pretrained(exported, device="cpu", dtype="float32")
    ids = torch.tensor([[1, 2, 3, 4, 5]])
    with torch.no_grad():
        assert torch.allclose(lm(ids).logits, gen.lm(ids).logits, atol=1e-5)


def test_lora_adapter_loads_offline_with_auto_peft(runs):
    """A LoRA checkpoint names a local base (the run's base_model/ folder): AutoPeftModelForCausalLM loads it with
    the hub switched off, at once (no retries)."""
    import os
    import subprocess
    import sys

    adapter = runs["a"] / "checkpoints" / "step-000003" / "policy"
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert Path(config["base_model_name_or_path"]).is_dir()
    code = ("import sys; from peft import AutoPeftModelForCausalLM; "
            "m = AutoPeftModelForCausalLM.from_pretrained(sys.argv[1]); print(type(m).__name__)")
    res = subprocess.run([sys.executable, "-c", code, str(adapter)], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert res.returncode == 0 and "PeftModelForCausalLM" in res.stdout, res.stderr


def test_eval_on_the_recipes_own_split(runs, tmp_path):
    """`nativerl eval RUN --split heldout` uses the recipe's eval.prompts; a recipe without any says so."""
    res = cli("eval", runs["a"], "--split", "heldout")
    assert res.exit_code == 2 and "no held-out prompts" in res.output
    out = tmp_path / "heldout"
    ok("eval", runs["a"], "--split", "heldout", "--out", out,
       "--set", "eval.prompts={format: inline, prompts: [a red circle, two cats]}", "--set", "eval.seeds=2",
       "--reward", "jpeg_compressibility")  # inline prompts carry no GenEval metadata
    report = eval_results(out)
    assert report["prompts"] == "recipe:heldout" and report["num_prompts"] == 2 and report["seeds"] == 2
    assert {r["text"] for r in report["per_image"]} == {"a red circle", "two cats"}
    both = cli("eval", runs["a"], "--split", "heldout", "--prompts", runs["prompts"])
    assert both.exit_code == 2 and "not both" in both.output


def test_eval_ocr_prompts_with_a_reward_option(runs, tmp_path):
    prompts = tmp_path / "ocr.txt"
    prompts.write_text('a sign that says "OPEN"\na poster that reads "SALE"\n')
    out = tmp_path / "eval_ocr"
    ok("eval", runs["a"], "--prompts", prompts, "--reward", '{"name": "ocr", "options": {"backend": "rapidocr"}}',
       "--out", out, "--set", "rollout.renderer.num_inference_steps=1")
    report = eval_results(out)
    assert report["format"] == "ocr_txt" and list(report["reward_tags"]) == ["ocr"]
    assert 0.0 <= report["results"]["reward/ocr/mean"] <= 1.0 and "accuracy" not in report["results"]
    assert report["renderer"]["num_inference_steps"] == 1


def test_eval_errors_name_the_problem(runs, tmp_path):
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    (fresh / "config.yaml").write_text(yaml.safe_dump(TINY))
    (fresh / "metrics.jsonl").write_text('{"step": 1, "reward/mean": 0.1}\n')
    result = cli("eval", fresh, "--prompts", runs["prompts"])
    assert result.exit_code == 2 and "no checkpoint yet" in result.output and "logged 1 step" in result.output
    result = cli("eval", runs["root"] / "exported", "--prompts", runs["prompts"])
    assert result.exit_code == 2 and "pass --recipe" in result.output
    result = cli("eval", runs["a"], "--prompts", runs["prompts"], "--step", "1")
    assert result.exit_code == 2 and "step-000002" in result.output  # names the checkpoints the run has


# ------------------------------------------------------------------ compare

def test_group_curve_is_mean_and_std_over_runs_of_the_smoothed_curves():
    g = group_curve([[(1, 1.0), (2, 2.0), (3, 3.0)], [(1, 3.0), (2, 4.0)]], alpha=1.0)  # alpha 1: no smoothing
    assert g.steps.tolist() == [1, 2, 3] and g.mean.tolist() == [2.0, 3.0, 3.0]
    assert g.std[:2] == pytest.approx([2 ** 0.5] * 2) and np.isnan(g.std[2]) and g.count.tolist() == [2, 2, 1]
    smoothed = group_curve([[(1, 0.0), (2, 1.0)]], alpha=0.5)
    assert smoothed.mean.tolist() == [0.0, 0.5]


def test_compare_overlays_seeds_in_progress_and_rescored_curves(runs, tmp_path):
    a, b, in_progress = runs["a"], runs["b"], runs["in_progress"]
    rescore_run(a, RewardSpec(name="jpeg_compressibility", alias="jpeg_cmp"))
    other = tmp_path / "other_lr"  # a different recipe (learning rate): its own group
    shutil.copytree(b, other)
    cfg = yaml.safe_load((other / "config.yaml").read_text())
    cfg["trainer"]["learning_rate"] = 0.01
    (other / "config.yaml").write_text(yaml.safe_dump(cfg))

    out = tmp_path / "report"
    result = ok("compare", a, b, in_progress, other, "--out", out, "--steps", "1,3,99")
    assert "in progress" in result.output and "finished" in result.output
    cmp = compare_runs([a, b, in_progress, other], tmp_path / "again", steps=[1, 3, 99])
    for key in ("reward/mean", "reward/geneval/mean", "reward/jpeg_compressibility/mean", "geneval/accuracy",
                "kl", "entropy", "images/brightness", "images/dark_frac", "images/colour_entropy",
                "images/edge_density", "diversity/image", "diversity/tokens", "rescored/jpeg_cmp/mean"):
        assert key in cmp.keys, key
    assert any(k.startswith("geneval/accuracy/") for k in cmp.keys)
    assert cmp.keys.index("reward/mean") < cmp.keys.index("kl") < cmp.keys.index("images/brightness")

    with Image.open(out / "compare.png") as png:
        assert png.size[0] > 600 and png.size[1] > 600
    page = (out / "compare.html").read_text()
    assert "http" not in page.replace("http-equiv", "")  # self-contained: nothing fetched
    assert page.count("data:image/png;base64,") == 1 + 4 * 3  # the curves + 4 runs x 3 chosen steps
    assert "(nearest to 99)" in page and page.count("in progress") >= 1
    # 3 runs of one recipe, 1 of another: arms labelled by what differs between them, not by a hash.
    assert "lr=0.05 (n=3)" in page and "lr=0.01" in page and "user_layer_tiny [" not in page
    assert set(cmp.groups) == {"lr=0.05 (n=3)", "lr=0.01"}

    ip = load_run(in_progress)
    assert not ip.finished and ip.last_step == 3 and load_run(a).finished
    rows = read_metrics(in_progress)
    assert ip.curves["reward/mean"] == [(r["step"], r["reward/mean"]) for r in rows]

    result = cli("compare", a, "--metric", "nothing/")
    assert result.exit_code == 2 and "no metrics to plot" in result.output
    # Any numeric metric of metrics.jsonl, default panel or not.
    some = compare_runs([a, other], tmp_path / "m", metrics=["grad_norm", "clip_ratio", "loss", "zero_std_frac",
                                                            "timing/"])
    assert {"grad_norm", "loss", "zero_std_frac", "timing/rollout_s"} <= set(some.keys)


def test_compare_aggregates_held_out_evals_arm_against_arm(runs, tmp_path):
    """Several seeds per arm: each arm's mean and spread over its runs, arm against arm (not run vs first run)."""
    def with_eval(src, name, lr, accuracy):
        dst = tmp_path / name
        shutil.copytree(src, dst)
        cfg = yaml.safe_load((dst / "config.yaml").read_text())
        cfg["trainer"]["learning_rate"] = lr
        (dst / "config.yaml").write_text(yaml.safe_dump(cfg))
        (dst / "eval_after.json").write_text(json.dumps({"accuracy": accuracy, "reward/geneval/mean": accuracy,
                                                         "per_image": []}))
        return dst

    arm_a = [with_eval(runs["a"], "a1", 0.05, 0.2), with_eval(runs["b"], "a2", 0.05, 0.4)]
    arm_b = [with_eval(runs["a"], "b1", 0.01, 0.5), with_eval(runs["b"], "b2", 0.01, 0.7)]
    cmp = compare_runs(arm_a + arm_b, tmp_path / "arms")
    (item,) = cmp.evals
    assert item["baseline"] == "lr=0.05 (n=2)" and item["run"] == "lr=0.01 (n=2)"
    acc = next(r for r in item["arms"] if r["metric"] == "accuracy")
    assert acc["a_mean"] == pytest.approx(0.3) and acc["b_mean"] == pytest.approx(0.6)
    assert acc["a_std"] == pytest.approx(0.1414, abs=1e-3) and acc["diff"] == pytest.approx(0.3)
    res = ok("compare", *arm_a, *arm_b, "--out", tmp_path / "arms_cli")
    assert "0.300 ± 0.141 (n=2)" in res.output and "+0.300" in res.output
