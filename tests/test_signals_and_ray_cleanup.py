"""Signals in every phase end `nativerl train` with 128 + signal, and a driver that ends (here: with an error, after
its GCS was killed) leaves no Ray process behind. Real processes and real signals; each test starts one CLI run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]

HANG = """
import os, pathlib, time
def hang(images, prompts, metadata):
    pathlib.Path(os.environ["MARK"]).write_text("in the reward")
    time.sleep(600)
    return [0.0] * len(images)
"""


def _start(tmp_path: Path, **recipe_changes) -> tuple[subprocess.Popen, Path]:
    (tmp_path / "hanging_reward.py").write_text(HANG)
    data = {"name": "t", "model": {"source": "preset", "preset": "tiny"},
            "rollout": {"prompts": {"format": "inline", "prompts": ["a red circle"]},
                        "renderer": {"num_inference_steps": 1}},
            "rewards": [{"name": "hanging_reward:hang"}],
            "trainer": {"num_generations": 2, "max_steps": 3, "policy": "lora", "lora": {"r": 2, "lora_alpha": 4},
                        "micro_batch_size": 2},
            "logging": {"sample_every": 0, "tensorboard": False}, "checkpoint": {"every": 0}, **recipe_changes}
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump(data))
    mark = tmp_path / "mark"
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{tmp_path}", "MARK": str(mark)}
    p = subprocess.Popen([sys.executable, "-m", "rl.cli", "train", str(recipe), "--run-dir", str(tmp_path / "run"),
                          "--no-progress"], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                         text=True)
    deadline = time.time() + 300
    while not mark.exists():
        assert p.poll() is None, p.stdout.read()
        assert time.time() < deadline
        time.sleep(0.1)
    return p, mark


@pytest.mark.slow
def test_sigterm_during_the_evaluation_exits_143_at_once(tmp_path):
    """The held-out evaluation before training has no step boundary to wait for: it stops at once (it keeps no
    state), with the same exit code as a stop between steps (it used to die with -15)."""
    p, _ = _start(tmp_path, eval={"prompts": {"format": "inline", "prompts": ["a cat"]}, "before_and_after": True})
    t0 = time.time()
    p.send_signal(signal.SIGTERM)
    out, _ = p.communicate(timeout=60)
    assert p.returncode == 143, out
    assert time.time() - t0 < 30 and "SIGTERM" in out and "stopped after step 0 (nothing trained yet)" in out


@pytest.mark.slow
def test_a_second_sigterm_stops_a_hung_step_at_once(tmp_path):
    """The first SIGTERM waits for the step in flight; when that step hangs (a reward that never returns), the
    second one means "stop now" and still exits 143 (it used to be ignored)."""
    p, _ = _start(tmp_path)
    p.send_signal(signal.SIGTERM)
    time.sleep(2.0)
    assert p.poll() is None  # the first signal waits for the step boundary
    t0 = time.time()
    p.send_signal(signal.SIGTERM)
    out, _ = p.communicate(timeout=60)
    assert p.returncode == 143, out
    assert time.time() - t0 < 30


GCS_KILL = r"""
import os, signal, sys, time
from engines.ray_session import connect, ray_descendants
connect(num_cpus=1)
import ray

@ray.remote(num_cpus=0)
def pid():
    return os.getpid()

ray.get(pid.remote(), timeout=120)  # a worker is up, besides the GCS, raylet, agents and monitors
procs = ray_descendants()
print("PIDS", " ".join(str(p.pid) for p in procs), flush=True)
os.kill(next(p.pid for p in procs if p.name() == "gcs_server"), signal.SIGKILL)
time.sleep(1)
raise RuntimeError("the run fails after its GCS died")
"""


@pytest.mark.slow
@pytest.mark.ray
def test_no_ray_process_outlives_a_driver_whose_gcs_was_killed():
    import psutil

    env = {**os.environ, "PYTHONPATH": str(ROOT), "RAY_AUTH_MODE": "disabled"}
    env.pop("RAY_ADDRESS", None)
    p = subprocess.run([sys.executable, "-c", GCS_KILL], cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=300)
    assert "the run fails after its GCS died" in p.stderr and p.returncode == 1, p.stderr[-3000:]
    pids = [int(x) for x in next(line for line in p.stdout.splitlines() if line.startswith("PIDS")).split()[1:]]
    assert len(pids) >= 5  # gcs_server, raylet, agents, a worker, monitors

    def alive(pid: int) -> bool:
        try:
            return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return False

    deadline = time.time() + 20
    while any(alive(pid) for pid in pids) and time.time() < deadline:
        time.sleep(0.5)
    survivors = [f"{pid} {psutil.Process(pid).name()}" for pid in pids if alive(pid)]
    for pid in pids:  # never leave them to the next test
        if alive(pid):
            os.kill(pid, signal.SIGKILL)
    assert not survivors
