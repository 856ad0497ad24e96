"""Resume never mixes runs and never ignores what it was told; retention keeps good weights; full disks are loud.

Tiny preset runs of a few steps (seconds each). The full-disk faults are real: a file-size limit (RLIMIT_FSIZE)
makes the kernel cut `write()` short or fail it, exactly as a full disk does.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from rl.metrics_log import MetricsLog, MetricsWriteError, read_metrics
from rl.recipe import Recipe, RecipeError
from rl.train_loop import train
from tiny_fixtures import tiny_recipe

ROOT = Path(__file__).resolve().parents[1]

TINY = tiny_recipe(
    name="t", seed=5,
    rollout={"prompts": {"format": "inline", "prompts": ["a red circle", "two blue squares", "a cat"]},
             "renderer": {"num_inference_steps": 1}},
    trainer={"num_generations": 2, "max_steps": 2, "learning_rate": 1e-3, "lr_scheduler_type": "constant",
             "policy": "lora", "lora": {"r": 2, "lora_alpha": 4}, "micro_batch_size": 2},
    checkpoint={"every": 1, "keep_last": None})

VOLATILE = ("timing/", "throughput/")


def recipe(**changes) -> Recipe:
    data = yaml.safe_load(yaml.safe_dump(TINY))
    for key, value in changes.items():
        node = data
        *parents, last = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value
    return Recipe.model_validate(data)


def stable(rows):
    return [{k: v for k, v in r.items() if not k.startswith(VOLATILE)} for r in rows]


def test_resume_applies_and_records_changes_refuses_frozen_ones_and_a_resume_step_never_mixes_branches(tmp_path):
    run = tmp_path / "run"
    train(recipe(**{"logging.tensorboard": True}), run, progress=False)
    assert [r["lr"] for r in read_metrics(run)] == [1e-3, 1e-3]

    # --set on --resume: the new learning rate applies from the next step and config.yaml says so.
    changed = recipe(**{"logging.tensorboard": True, "trainer.learning_rate": 4e-3, "trainer.max_steps": 3})
    train(changed, run, resume=True, progress=False)
    rows = read_metrics(run)
    assert [r["step"] for r in rows] == [1, 2, 3] and rows[2]["lr"] == 4e-3
    config = (run / "config.yaml").read_text()
    assert "learning_rate: 0.004" in config
    assert "# Resumed at step 2" in config and "trainer.learning_rate: 0.001 -> 0.004" in config

    # A key that would make it another run is refused, naming it, before anything on disk changes.
    with pytest.raises(RecipeError, match=r"trainer\.num_generations: 2 -> 4: cannot change when resuming"):
        train(recipe(**{"trainer.num_generations": 4, "trainer.max_steps": 3, "trainer.learning_rate": 4e-3,
                        "logging.tensorboard": True}), run, resume=True, progress=False)
    assert len(read_metrics(run)) == 3

    # --resume-step 1: steps 2 and 3 of the abandoned branch move aside; the new branch redoes them.
    train(changed, run, resume=True, resume_step=1, progress=False)
    checkpoints = run / "checkpoints"
    assert sorted(p.name for p in checkpoints.glob("step-*")) == ["step-000001", "step-000002", "step-000003"]
    abandoned = list(checkpoints.glob("abandoned-*"))
    assert len(abandoned) == 1 and sorted(p.name for p in abandoned[0].iterdir()) == ["step-000002", "step-000003"]
    assert [r["step"] for r in read_metrics(run)] == [1, 2, 3]
    assert "trainer.learning_rate: 0.001 -> 0.004" in (run / "config.yaml").read_text()  # the history is kept

    # TensorBoard: one point per step, although steps 2 and 3 were logged twice (purge_step on resume).
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    steps = [e.step for e in events.Scalars("reward/mean")]
    assert steps == [1, 2, 3], steps


def test_a_run_killed_before_its_first_checkpoint_resumes_from_step_0_exactly(tmp_path):
    """The demo recipe checkpoints only at the end; a kill after the first metrics line used to leave a directory
    that neither --resume nor a fresh train accepted. Step 0 is the recipe's initial state, so resume restarts."""
    from typer.testing import CliRunner

    from rl.cli import app

    straight, killed = tmp_path / "straight", tmp_path / "killed"
    train(recipe(**{"checkpoint.every": 0}), straight, progress=False)
    train(recipe(**{"checkpoint.every": 0, "trainer.max_steps": 1}), killed, progress=False)
    shutil.rmtree(killed / "checkpoints")  # what a kill between metrics line 1 and the first checkpoint leaves
    (tmp_path / "any.yaml").write_text(yaml.safe_dump(TINY))
    fresh = CliRunner().invoke(app, ["train", str(tmp_path / "any.yaml"), "--run-dir", str(killed)])
    assert fresh.exit_code == 2 and f"use --resume {killed}" in fresh.output
    train(recipe(**{"checkpoint.every": 0}), killed, resume=True, progress=False)
    a, b = stable(read_metrics(straight)), stable(read_metrics(killed))
    assert [r["step"] for r in b] == [1, 2] and a == b


def test_keep_last_never_deletes_the_last_checkpoint_with_finite_weights(tmp_path):
    from rl.checkpoint import TrainingState, list_checkpoints, save_checkpoint, weights_finite
    from rl.optim import build_optimizer, build_scheduler
    from rl.policy import Policy
    from rollouts.generator import NativeImageGenerator

    r = recipe()
    policy = Policy(NativeImageGenerator.from_config(r.model), r.trainer)
    optimizer = build_optimizer(policy.trainable_parameters(), r.trainer)
    scheduler = build_scheduler(optimizer, r.trainer, 10)
    for step in range(1, 6):
        if step == 3:  # the weights go NaN (what the numerics guard exists to prevent; retention is the backstop)
            with torch.no_grad():
                policy.trainable_parameters()[0].fill_(float("nan"))
        save_checkpoint(tmp_path, TrainingState(step, step, {"epoch": 0, "position": 0}), policy, optimizer,
                        scheduler, keep_last=2)
    kept = list_checkpoints(tmp_path)
    assert [p.name for p in kept] == ["step-000002", "step-000004", "step-000005"]
    assert [weights_finite(p) for p in kept] == [True, False, False]
    # A checkpoint written before the flag existed is judged from its weights.
    state = json.loads((kept[0] / "state.json").read_text())
    del state["weights_finite"]
    (kept[0] / "state.json").write_text(json.dumps(state))
    assert weights_finite(kept[0]) and not weights_finite(kept[1])


def test_metrics_write_failing_with_enospc_rolls_back_and_says_so(tmp_path, monkeypatch):
    import errno
    import os

    import rl.metrics_log as metrics_module

    log = MetricsLog(tmp_path, tensorboard=False)
    log.append(1, {"reward/mean": 0.5})
    real_write = os.write

    def full_disk(fd, data):
        real_write(fd, data[:7])  # part of the line lands, then the disk is full
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(metrics_module.os, "write", full_disk)
    with pytest.raises(MetricsWriteError, match=r"step 2's metrics \(No space left on device\).*--resume"):
        log.append(2, {"reward/mean": 0.7})
    monkeypatch.setattr(metrics_module.os, "write", real_write)
    log.append(2, {"reward/mean": 0.7})  # space freed: the file is whole, no fragment glued to the next line
    assert [r["step"] for r in read_metrics(tmp_path)] == [1, 2]
    assert (tmp_path / "metrics.jsonl").read_text().count("\n") == 2


FULL_DISK = r"""
import json, resource, signal, sys
from pathlib import Path
import torch
from safetensors.torch import save_file
from rl.checkpoint import CheckpointWriteError, TrainingState, list_checkpoints, save_checkpoint
from rl.metrics_log import MetricsLog, MetricsWriteError

run = Path(sys.argv[1])
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # past the limit, write() fails with EFBIG (like ENOSPC)


class Policy:
    def __init__(self):
        self.w = torch.nn.Parameter(torch.ones(64))

    def trainable_parameters(self):
        return [self.w]

    def save(self, directory):
        directory.mkdir(parents=True, exist_ok=True)
        save_file({"w": self.w.detach()}, str(directory / "adapter_model.safetensors"))


policy = Policy()
opt = torch.optim.AdamW([policy.w])
sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
log = MetricsLog(run, tensorboard=False)
log.append(1, {"reward/mean": 0.5})
save_checkpoint(run, TrainingState(1, 1, {}), policy, opt, sched)
size = (run / "metrics.jsonl").stat().st_size
resource.setrlimit(resource.RLIMIT_FSIZE, (size + 40, resource.RLIM_INFINITY))
out = {}
try:
    log.append(2, {"reward/mean": 0.7, "note": "x" * 100})  # the kernel writes 40 bytes of it, then refuses
except MetricsWriteError as exc:
    out["metrics"] = str(exc)
try:
    save_checkpoint(run, TrainingState(2, 2, {}), policy, opt, sched)
except CheckpointWriteError as exc:
    out["checkpoint"] = str(exc)
out["checkpoints"] = [p.name for p in list_checkpoints(run)]
out["leftovers"] = sorted(p.name for p in (run / "checkpoints").iterdir())
print(json.dumps(out))
"""


def test_a_full_disk_stops_metrics_and_checkpoints_loudly_and_leaves_nothing_half_written(tmp_path):
    run = tmp_path / "run"
    p = subprocess.run([sys.executable, "-c", FULL_DISK, str(run)], cwd=ROOT, capture_output=True, text=True,
                       timeout=300, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert p.returncode == 0, p.stderr[-3000:]
    out = json.loads(p.stdout.strip().splitlines()[-1])
    assert "could not write step 2's metrics" in out["metrics"] and "short write: 40 of" in out["metrics"]
    assert [r["step"] for r in read_metrics(run)] == [1]  # the 40 bytes were rolled back
    assert (run / "metrics.jsonl").read_text().endswith("}\n")
    assert "could not write checkpoint" in out["checkpoint"] and "step-000002" in out["checkpoint"]
    assert "probably full" in out["checkpoint"] and "MiB free" in out["checkpoint"]
    assert out["checkpoints"] == ["step-000001"] and out["leftovers"] == ["step-000001"]  # no .tmp-step-000002
