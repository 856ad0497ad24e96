"""The GRPO driver on the tiny preset: resume after SIGKILL is exact, bad rewards are never trained on."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from rewards.suite import RewardFailure
from rl.metrics_log import read_metrics
from rl.recipe import Recipe
from rl.train_loop import train
from tiny_fixtures import tiny_recipe

ROOT = Path(__file__).resolve().parents[1]

TINY = tiny_recipe(
    name="t", seed=3,
    rollout={"prompts": {"format": "inline", "prompts": ["a red circle", "two blue squares", "a cat"]},
             "prompts_per_step": 1},
    trainer={"num_generations": 4, "max_steps": 6, "learning_rate": 1e-3, "policy": "lora",
             "lora": {"r": 4, "lora_alpha": 8}, "beta": 0.01, "num_iterations": 2, "mini_batch_size": 2,
             "micro_batch_size": 2},
    checkpoint={"every": 3, "keep_last": None})

VOLATILE = ("timing/", "throughput/")


def run_cli(args, **kw):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-m", "rl.cli", *args, "--no-progress"], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kw)


def stable(rows):
    return [{k: v for k, v in r.items() if not k.startswith(VOLATILE)} for r in rows]


@pytest.mark.slow
def test_resume_after_sigkill_reproduces_metrics(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump(TINY))
    straight, killed = tmp_path / "straight", tmp_path / "killed"

    p = run_cli(["train", str(recipe), "--run-dir", str(straight)])
    out, _ = p.communicate(timeout=400)
    assert p.returncode == 0, out

    p = run_cli(["train", str(recipe), "--run-dir", str(killed)])
    deadline = time.time() + 400
    while not (killed / "checkpoints" / "step-000003" / "state.json").exists():
        assert p.poll() is None, p.stdout.read()
        assert time.time() < deadline
        time.sleep(0.05)
    p.send_signal(signal.SIGKILL)  # a hard kill: no cleanup, possibly mid-step 4
    p.wait(timeout=60)
    assert p.returncode == -signal.SIGKILL
    assert max(r["step"] for r in read_metrics(killed)) < 6

    p = run_cli(["train", "--resume", str(killed)])
    out, _ = p.communicate(timeout=400)
    assert p.returncode == 0, out
    assert "resumed from" in out

    a, b = stable(read_metrics(straight)), stable(read_metrics(killed))
    assert [r["step"] for r in b] == [1, 2, 3, 4, 5, 6]
    for ra, rb in zip(a, b):
        assert ra == rb, {k: (ra[k], rb.get(k)) for k in ra if ra[k] != rb.get(k)}


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_ctrl_c_or_sigterm_stops_at_a_step_boundary_with_a_checkpoint(tmp_path, sig):
    """A signal ends the run after the step in flight, with a checkpoint of that step (checkpoint.every is 0 here,
    so without it everything would be lost), exit code 128 + signal, and the run resumes from there."""
    data = _recipe(**{"trainer.max_steps": 200})
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump(data))
    run = tmp_path / "run"
    p = run_cli(["train", str(recipe), "--run-dir", str(run)])
    deadline = time.time() + 300
    while len(read_metrics(run)) < 2 if (run / "metrics.jsonl").exists() else True:
        assert p.poll() is None, p.stdout.read()
        assert time.time() < deadline
        time.sleep(0.05)
    p.send_signal(sig)
    out, _ = p.communicate(timeout=120)
    assert p.returncode == 128 + sig, out
    last = max(r["step"] for r in read_metrics(run))
    assert 2 <= last < 200 and f"stopped after step {last}, checkpoint saved" in out
    assert (run / "checkpoints" / f"step-{last:06d}" / "state.json").exists()
    p = run_cli(["train", "--resume", str(run), "--set", f"trainer.max_steps={last + 1}"])
    out, _ = p.communicate(timeout=300)
    assert p.returncode == 0, out
    assert [r["step"] for r in read_metrics(run)] == list(range(1, last + 2))


def test_a_corrupt_checkpoint_is_named_and_an_earlier_one_resumes(tmp_path):
    from rl.train_loop import CheckpointLoadError

    data = _recipe(**{"trainer.max_steps": 4})
    data["checkpoint"] = {"every": 2, "keep_last": None}
    run = tmp_path / "run"
    train(Recipe.model_validate(data), run, progress=False)
    torn = run / "checkpoints" / "step-000004" / "policy" / "adapter_model.safetensors"
    torn.write_bytes(torn.read_bytes()[:100])  # what a disk-full or a kill during a copy leaves behind
    with pytest.raises(CheckpointLoadError, match=r"step-000004 cannot be loaded: .*--resume-step 2"):
        train(Recipe.model_validate(data), run, resume=True, progress=False)
    data["trainer"]["max_steps"] = 5
    result = train(Recipe.model_validate(data), run, resume=True, resume_step=2, progress=False)
    assert result.steps == 5 and [r["step"] for r in read_metrics(run)] == [1, 2, 3, 4, 5]


def _nan_module(tmp_path, monkeypatch):
    (tmp_path / "bad_rewards.py").write_text(
        "import math\n"
        "def half_nan(images, prompts, metadata):\n"
        "    return [float('nan') if i % 4 == 0 else float(i % 3) for i in range(len(images))]\n")
    monkeypatch.syspath_prepend(str(tmp_path))


def _recipe(**changes):
    data = yaml.safe_load(yaml.safe_dump(TINY))
    data["trainer"]["max_steps"] = 1
    data["checkpoint"] = {"every": 0}
    for key, value in changes.items():
        section, field = key.split(".")
        data.setdefault(section, {})[field] = value
    return data


def test_nan_reward_refuses_the_step(tmp_path, monkeypatch):
    _nan_module(tmp_path, monkeypatch)
    data = _recipe()
    data["rewards"] = [{"name": "bad_rewards:half_nan"}]
    with pytest.raises(RewardFailure, match="half_nan.*non-finite"):
        train(Recipe.model_validate(data), tmp_path / "run", progress=False)
    assert not (tmp_path / "run" / "checkpoints").exists()  # nothing was trained or saved


def test_nan_reward_rows_dropped_when_asked(tmp_path, monkeypatch):
    _nan_module(tmp_path, monkeypatch)
    data = _recipe(**{"trainer.nonfinite_rewards": "drop"})
    data["rewards"] = [{"name": "bad_rewards:half_nan"}]
    result = train(Recipe.model_validate(data), tmp_path / "run", progress=False)
    m = result.last_metrics
    assert m["dropped_nonfinite"] == 1 and m["reward/mean"] == pytest.approx((1 + 2 + 0) / 3)
    assert m["policy_version"] == 1


def test_export_merges_lora_into_a_loadable_generator(tmp_path):
    import torch

    from rl.export import export_checkpoint
    from rl.recipe import load_recipe
    from rl.policy import Policy
    from rl.checkpoint import latest_checkpoint
    from rollouts.config import ModelConfig
    from rollouts.generator import NativeImageGenerator
    from rollouts.sampler import image_token_logprobs

    data = _recipe(**{"trainer.max_steps": 2, "trainer.learning_rate": 5e-2})
    data["checkpoint"] = {"every": 1}
    run = tmp_path / "run"
    train(Recipe.model_validate(data), run, progress=False)
    out = export_checkpoint(run, tmp_path / "exported")

    recipe = load_recipe(run / "config.yaml")
    trained = NativeImageGenerator.from_config(recipe.model)
    policy = Policy(trained, recipe.trainer)
    policy.load(latest_checkpoint(run) / "policy")
    exported = NativeImageGenerator.from_config(ModelConfig(source="path", path=str(out)))
    fresh = NativeImageGenerator.from_config(recipe.model)

    ids, mask = exported.encode_prompts(["a red circle", "a cat"])
    tokens = torch.randint(0, exported.vocab.num_image_tokens, (2, exported.tokens_per_image))
    sampling = recipe.rollout.sampling
    with torch.no_grad():
        got = image_token_logprobs(exported.lm, ids, mask, tokens, vocab=exported.vocab, sampling=sampling)
        want = policy.logprobs(ids, mask, tokens, sampling)
        base = image_token_logprobs(fresh.lm, ids, mask, tokens, vocab=fresh.vocab, sampling=sampling)
    assert torch.allclose(got, want, atol=1e-4)
    assert (got - base).abs().max() > 1e-3  # the export carries the trained adapters, not the initial weights


def test_gold_monitor_rolls_back_when_proxy_rises_and_gold_falls(tmp_path, monkeypatch):
    """A proxy that keeps rising and a gold reward that keeps falling: the run stops at the second reading and
    its last checkpoint holds the gold-best (step 1) weights."""
    from safetensors.torch import load_file

    (tmp_path / "drift_rewards.py").write_text(
        "calls = {'proxy': 0, 'gold': 0}\n"
        "def rising(images, prompts, metadata):\n"
        "    calls['proxy'] += 1\n"
        "    return [calls['proxy'] + 0.01 * i for i in range(len(images))]\n"
        "def falling(images, prompts, metadata):\n"
        "    calls['gold'] += 1\n"
        "    return [-float(calls['gold'])] * len(images)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    data = _recipe(**{"trainer.max_steps": 4, "trainer.learning_rate": 5e-2})
    data["rewards"] = [{"name": "drift_rewards:rising"}]
    data["eval"] = {"prompts": {"format": "inline", "prompts": ["a red circle", "a cat"]}}
    data["monitors"] = {"gold": [{"name": "drift_rewards:falling"}], "every": 1, "rule": "rollback"}
    data["checkpoint"] = {"every": 1, "keep_last": None}
    run = tmp_path / "run"
    result = train(Recipe.model_validate(data), run, progress=False)
    assert result.steps == 2 and "gold-monitor" in (result.stopped_by_monitor or "")
    assert "roll back" in (run / "monitor.log").read_text()
    rows = read_metrics(run)
    assert [r["step"] for r in rows] == [1, 2] and rows[1]["gold/score"] < rows[0]["gold/score"]
    ck = run / "checkpoints"
    w1 = load_file(ck / "step-000001" / "policy" / "adapter_model.safetensors")
    w2 = load_file(ck / "step-000002" / "policy" / "adapter_model.safetensors")
    assert all(torch.equal(w1[k], w2[k]) for k in w1)


def _torchrun(args, timeout=600):
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
                          "--master-addr", "127.0.0.1", "--master-port", str(port), "-m", "rl.cli", *args,
                          "--no-progress"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return out


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["ddp", "fsdp2"])
def test_torchrun_two_ranks_train_together(tmp_path, strategy):
    """`torchrun --nproc-per-node 2 nativerl train`: gloo on CPU, each rank rolls out its own prompt groups, the
    advantages are computed over both ranks' rewards, gradients are averaged (DDP) or the full weights are sharded
    (FSDP2), rank 0 alone writes the run, and the run resumes from its checkpoint on both ranks. The FSDP2 run
    computes in bf16 (autocast over fp32 master shards, issue 13) and its checkpoint holds the fp32 masters."""
    data = _recipe(**{"trainer.max_steps": 2, "trainer.distributed_strategy": strategy})
    if strategy == "fsdp2":
        data["trainer"]["policy"] = "full"
        data["trainer"]["bf16"] = "on"
    data["checkpoint"] = {"every": 1}
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump(data))
    run = tmp_path / "run"
    _torchrun(["train", str(recipe), "--run-dir", str(run)])
    rows = read_metrics(run)
    assert [r["step"] for r in rows] == [1, 2]
    group = data["trainer"]["num_generations"] * data["rollout"]["prompts_per_step"]
    assert rows[0]["rollout/images"] == 2 * group  # both ranks' rollouts entered the advantages
    weights = "adapter_model.safetensors" if strategy == "ddp" else "model.safetensors"
    assert (run / "checkpoints" / "step-000002" / "policy" / weights).exists()
    assert all(r["nonfinite_updates"] == 0 and r["kl"] is not None for r in rows)
    if strategy == "fsdp2":
        from safetensors.torch import load_file

        saved = load_file(str(run / "checkpoints" / "step-000002" / "policy" / weights))
        assert all(v.dtype == torch.float32 for v in saved.values())  # masters, gathered from the shards
    out = _torchrun(["train", "--resume", str(run), "--set", "trainer.max_steps=3"])
    assert "resumed from" in out.stdout
    assert [r["step"] for r in read_metrics(run)] == [1, 2, 3]


@pytest.mark.slow
def test_torchrun_with_the_ray_engine(tmp_path):
    """torchrun + `rollout.engine: ray`: rank 0 alone drives the Ray actors, which generate and score both ranks'
    prompt groups; each rank receives its rows and trains on them (DDP), and rank 0 publishes the new weights."""
    data = _recipe(**{"trainer.max_steps": 2})
    data["rollout"].update({"engine": "ray", "num_rollout_workers": 1, "worker_num_cpus": 0.5,
                            "reward_num_cpus": 0.5, "worker_timeout_s": 240, "prompts_per_step": 2})
    data["checkpoint"] = {"every": 0}
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump(data))
    run = tmp_path / "run"
    out = _torchrun(["train", str(recipe), "--run-dir", str(run)], timeout=900)
    assert out.stderr.count("Started a local Ray instance") == 1  # one Ray driver (rank 0), not one per rank
    rows = read_metrics(run)
    assert [r["step"] for r in rows] == [1, 2] and rows[-1]["policy_version"] == 2
    group = data["trainer"]["num_generations"] * data["rollout"]["prompts_per_step"]
    assert rows[0]["rollout/images"] == 2 * group  # both ranks' rows entered the advantages
    assert rows[-1]["faults/actor_restarts"] == 0


def test_a_failing_reward_leaves_the_last_finished_step_checkpointed(tmp_path, monkeypatch):
    """checkpoint.every is 0, and the required reward's server goes down at step 3: step 2's weights, prompt
    position and RNG are saved, and the resumed run (reward back) matches a run that never failed."""
    (tmp_path / "flaky_rewards.py").write_text(
        "import os\n"
        "calls = {'n': 0}\n"
        "def flaky(images, prompts, metadata):\n"
        "    calls['n'] += 1\n"
        "    if os.environ.get('FLAKY_DOWN') and calls['n'] == 3:\n"
        "        raise ConnectionError('reward server unreachable')\n"
        "    return [float(im.mean()) / 255 for im in images]\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    data = _recipe(**{"trainer.max_steps": 4})
    data["rewards"] = [{"name": "flaky_rewards:flaky"}]
    straight, failed = tmp_path / "straight", tmp_path / "failed"
    train(Recipe.model_validate(data), straight, progress=False)
    import flaky_rewards

    flaky_rewards.calls["n"] = 0
    monkeypatch.setenv("FLAKY_DOWN", "1")
    with pytest.raises(RewardFailure, match="reward server unreachable"):
        train(Recipe.model_validate(data), failed, progress=False)
    assert [p.name for p in (failed / "checkpoints").iterdir()] == ["step-000002"]
    monkeypatch.delenv("FLAKY_DOWN")
    train(Recipe.model_validate(data), failed, resume=True, progress=False)
    a, b = stable(read_metrics(straight)), stable(read_metrics(failed))
    assert [r["step"] for r in b] == [1, 2, 3, 4]
    for ra, rb in zip(a, b):
        assert ra == rb, {k: (ra[k], rb.get(k)) for k in ra if ra[k] != rb.get(k)}
