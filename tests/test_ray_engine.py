"""The Ray rollout engine on real Ray actors (tiny preset, CPU): weight sync and versions, shard dispatch, rewards in
their own actors, staleness, and faults (a killed actor, a hung actor, a dead reward actor).

One engine (2 rollout actors, 2 reward actors) is shared by the module: actor start-up (imports + building the
generator) is most of the cost on 2 cores. Tests that break actors check that the engine recovers, so order does
not matter.
"""

import threading
import time

import numpy as np
import pytest
import torch
from conftest_ray import ray_session  # noqa: F401 - the session's one Ray instance

from engines.local_engine import LocalRolloutEngine
from engines.shard_plan import plan_shards
from rewards.spec import RewardSpec
from rewards.suite import RewardFailure, RewardSuite
from rl.policy import Policy
from rl.recipe import LoraSettings, RolloutConfig, TrainerConfig
from rollouts.config import ModelConfig, RendererConfig, SamplingConfig
from rollouts.generator import NativeImageGenerator
from rollouts.rollout import generate_rollouts

pytestmark = [pytest.mark.ray, pytest.mark.slow]  # Ray start-up: minutes on 2 cores

MODEL = ModelConfig(preset="tiny", device="cpu", seed=0)
SAMPLING = SamplingConfig(temperature=1.0, top_k=None, top_p=None)
RENDERER = RendererConfig(num_inference_steps=2, guidance_scale=2.0)
LORA = LoraSettings(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])
ROWS = [{"prompt": p} for p in ("a red circle", "two blue squares", "a green triangle", "a yellow star")]
G = 2
REWARDS = [RewardSpec(name="jpeg_compressibility", required=True),
           RewardSpec(name="jpeg_compressibility@ddpo", alias="jpeg_ddpo", weight=0.5, required=False)]


def _perturb_lora(policy: Policy, seed: int) -> None:
    """A policy update stand-in: new LoRA weights (B != 0, so the adapters change the samples)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, p in policy.named_trainable_parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.5)


@pytest.fixture(scope="module")
def driver():
    """The trainer side: the policy (LoRA on the tiny LM) and a local engine on the same generator."""
    torch.manual_seed(0)
    generator = NativeImageGenerator.from_config(MODEL)
    policy = Policy(generator, TrainerConfig(policy="lora", lora=LORA, num_generations=G))
    return policy, LocalRolloutEngine(generator, SAMPLING, RENDERER)


@pytest.fixture(scope="module")
def engine(ray_session):  # noqa: F811
    from engines.ray_engine import RayRolloutEngine

    cfg = RolloutConfig(engine="ray", num_rollout_workers=2, sampling=SAMPLING, renderer=RENDERER,
                        worker_timeout_s=60.0, max_staleness=0)
    eng = RayRolloutEngine(MODEL, cfg, "lora", LORA, REWARDS, groups_per_shard=1, worker_num_cpus=0.5,
                           reward_num_cpus=0.25, start_timeout_s=120.0)
    yield eng
    eng.shutdown()


def _publish(engine, driver, version: int) -> None:
    policy, local = driver
    _perturb_lora(policy, seed=version)
    state = policy.state_for_sync()
    engine.publish_weights(state, version)
    local.publish_weights(state, version)


def _assert_same_rollouts(a, b) -> None:
    assert a.prompts == b.prompts
    assert torch.equal(a.group_ids, b.group_ids)
    assert torch.equal(a.image_tokens, b.image_tokens)
    torch.testing.assert_close(a.logprobs, b.logprobs, rtol=0, atol=1e-4)
    assert torch.equal(a.render_seeds, b.render_seeds)
    # uint8 images: allow a rare 1-level rounding difference (thread counts differ between actor and test process)
    assert (a.images.int() - b.images.int()).abs().max() <= 1


def test_one_shard_reproduces_local_engine_after_weight_sync(engine, driver):
    _publish(engine, driver, engine.policy_version + 1)
    v = engine.policy_version
    engine.groups_per_shard = len(ROWS)  # one shard: the step seed is used as is, as the local engine does
    try:
        ray_batch = engine.generate(ROWS, group_size=G, seed=123, policy_version=v)
    finally:
        engine.groups_per_shard = 1
    local_batch = driver[1].generate(ROWS, group_size=G, seed=123, policy_version=v)
    assert ray_batch.policy_version == v
    _assert_same_rollouts(ray_batch, local_batch)
    # and the synced adapters matter: the initial (v0) weights sample different tokens
    base = NativeImageGenerator.from_config(MODEL)
    with torch.no_grad():
        v0 = generate_rollouts(base, ROWS, group_size=G, sampling=SAMPLING, renderer_cfg=RENDERER, seed=123)
    assert not torch.equal(v0.image_tokens, ray_batch.image_tokens)


def test_shards_over_two_actors_keep_group_order_and_their_own_seeds(engine, driver):
    v = engine.policy_version
    batch = engine.generate(ROWS, group_size=G, seed=7, policy_version=v)
    assert batch.prompts == [r["prompt"] for r in ROWS for _ in range(G)]
    assert batch.group_ids.tolist() == [g for g in range(len(ROWS)) for _ in range(G)]
    assert batch.policy_version == v
    # every shard equals that group generated alone, locally, with its shard seed: independent of the actor
    _assert_matches_local_shards(batch, driver, seed=7, version=v)
    engine.groups_per_shard = None  # the default: one shard (here 2 groups) per actor
    try:
        batch = engine.generate(ROWS, group_size=G, seed=7, policy_version=v)
    finally:
        engine.groups_per_shard = 1
    assert batch.group_ids.tolist() == [g for g in range(len(ROWS)) for _ in range(G)]
    _assert_matches_local_shards(batch, driver, seed=7, version=v, groups_per_shard=2)


def test_unpublished_version_is_refused_and_no_rollout_is_stale(engine, driver):
    v = engine.policy_version
    with pytest.raises(RuntimeError, match="publish_weights first"):
        engine.generate(ROWS[:1], group_size=G, seed=1, policy_version=v + 1)
    with pytest.raises(RuntimeError, match="max_staleness > 0"):
        engine.prefetch(ROWS[:1], group_size=G, seed=1, policy_version=v)
    _publish(engine, driver, v + 1)
    with pytest.raises(RuntimeError, match="max_staleness=0"):
        engine.generate(ROWS[:1], group_size=G, seed=1, policy_version=v)  # the driver's old version: stale
    batch = engine.generate(ROWS, group_size=G, seed=1, policy_version=v + 1)
    assert batch.policy_version == v + 1  # concat keeps the oldest shard's version: every shard used v+1


def test_generate_and_score_matches_scoring_in_the_driver(engine):
    v = engine.policy_version
    batch, scores = engine.generate_and_score(ROWS, group_size=G, seed=5, policy_version=v)
    expected = RewardSuite(REWARDS).score(list(batch.images.numpy()), batch.prompts, batch.metadata)
    assert scores.failed == {}
    assert scores.weights == expected.weights
    assert scores.tags == expected.tags
    for key in expected.scores:
        np.testing.assert_allclose(scores.scores[key], expected.scores[key])
    assert len(scores.details) == len(batch)


def test_dead_reward_actor_follows_required_optional_policy(engine, ray_session):  # noqa: F811
    v = engine.policy_version
    restarts = engine.stats()["reward_actor_restarts"]
    ray_session.kill(engine.reward_actors["jpeg_ddpo"])  # optional reward: dropped, weights renormalised
    _, scores = engine.generate_and_score(ROWS[:2], group_size=G, seed=9, policy_version=v)
    assert set(scores.failed) == {"jpeg_ddpo"} and "died" in scores.failed["jpeg_ddpo"]
    assert np.isnan(scores.scores["jpeg_ddpo"]).all()
    assert np.isfinite(scores.scores["jpeg_compressibility"]).all()
    assert scores.weights == {"jpeg_compressibility": 1.5}  # 1 + 0.5 kept on the survivor (suite rule)
    ray_session.kill(engine.reward_actors["jpeg_compressibility"])  # required reward: the step fails, by name
    with pytest.raises(RewardFailure, match="jpeg_compressibility"):
        engine.generate_and_score(ROWS[:2], group_size=G, seed=9, policy_version=v)
    assert engine.stats()["reward_actor_restarts"] == restarts + 2
    _, scores = engine.generate_and_score(ROWS[:2], group_size=G, seed=9, policy_version=v)  # replaced actors
    assert scores.failed == {}


def _assert_matches_local_shards(batch, driver, seed: int, version: int, groups_per_shard: int = 1) -> None:
    for shard in plan_shards(ROWS, seed, groups_per_shard=groups_per_shard):
        local = driver[1].generate(shard.rows, group_size=G, seed=shard.seed, policy_version=version)
        first = shard.first_group * G
        rows = slice(first, first + len(shard.rows) * G)
        assert torch.equal(batch.image_tokens[rows], local.image_tokens), f"shard {shard.index}"


def test_killed_rollout_actor_is_replaced_and_its_groups_rerun(engine, driver, ray_session):  # noqa: F811
    _publish(engine, driver, engine.policy_version + 1)
    v = engine.policy_version
    restarts = engine.stats()["actor_restarts"]
    victim = engine.actors[0]
    ray_session.get(victim.stall_next.remote(6.0))  # it will be inside its shard when the kill comes
    killer = threading.Timer(1.5, ray_session.kill, args=(victim,))
    killer.start()
    batch = engine.generate(ROWS, group_size=G, seed=11, policy_version=v)
    killer.join()
    assert engine.stats()["actor_restarts"] == restarts + 1
    assert engine.actors[0] is not victim
    assert batch.policy_version == v
    _assert_matches_local_shards(batch, driver, seed=11, version=v)  # same rollouts as without the fault
    # the replacement (fresh v0 weights) loads the current version before its first rollout
    replacement = engine.actors[0]
    assert ray_session.get(replacement.ready.remote(), timeout=120)["policy_version"] == 0
    batch = engine.generate(ROWS, group_size=G, seed=11, policy_version=v)
    assert ray_session.get(replacement.ready.remote())["policy_version"] == v
    _assert_matches_local_shards(batch, driver, seed=11, version=v)


def test_hung_rollout_actor_hits_the_timeout_and_the_step_completes(engine, ray_session):  # noqa: F811
    v = engine.policy_version
    stats = engine.stats()
    engine.worker_timeout_s = 6.0
    try:
        ray_session.get(engine.actors[1].stall_next.remote(600.0))  # hangs far beyond any test's patience
        t0 = time.monotonic()
        batch = engine.generate(ROWS, group_size=G, seed=13, policy_version=v)
        elapsed = time.monotonic() - t0
    finally:
        engine.worker_timeout_s = 60.0
    assert len(batch) == len(ROWS) * G and batch.policy_version == v
    assert engine.stats()["actor_timeouts"] == stats["actor_timeouts"] + 1
    assert engine.stats()["actor_restarts"] == stats["actor_restarts"] + 1
    assert elapsed < 60.0


def test_prefetch_overlaps_steps_only_within_max_staleness(engine, driver):
    v = engine.policy_version
    engine.max_staleness = 1
    try:
        engine.prefetch(ROWS, group_size=G, seed=17, policy_version=v)  # runs while the "trainer" updates
        _publish(engine, driver, v + 1)
        batch = engine.generate(ROWS, group_size=G, seed=17, policy_version=v + 1)
        assert batch.policy_version == v and engine.stats()["prefetch_used"] >= 1  # one version behind: allowed
        engine.prefetch(ROWS, group_size=G, seed=19, policy_version=v + 1)
        _publish(engine, driver, v + 2)
        _publish(engine, driver, v + 3)  # now two versions behind: regenerated with v+3
        discarded = engine.stats()["prefetch_discarded"]
        batch = engine.generate(ROWS, group_size=G, seed=19, policy_version=v + 3)
        assert batch.policy_version == v + 3 and engine.stats()["prefetch_discarded"] == discarded + 1
    finally:
        engine.max_staleness = 0


def test_trainer_placement_group_takes_its_resources_out_of_the_pool(engine, ray_session):  # noqa: F811
    from engines.ray_session import reserve_trainer

    before = ray_session.available_resources().get("CPU", 0.0)
    reservation = reserve_trainer(num_cpus=0.5, timeout_s=30.0)
    try:
        time.sleep(0.5)  # resource view refresh
        assert ray_session.available_resources().get("CPU", 0.0) == pytest.approx(before - 0.5)
    finally:
        reservation.release()


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_cli_train_joins_a_running_cluster(tmp_path):
    """The multi-node path on one machine: `ray start --head`, then `nativerl train RECIPE --ray-address ...`."""
    import json
    import os
    import signal
    import subprocess
    import sys
    from pathlib import Path

    bin_dir = Path(sys.executable).parent
    repo = Path(__file__).resolve().parents[1]
    port = _free_port()
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    env.pop("RAY_ADDRESS", None)
    # --block keeps the CLI in the foreground; SIGTERM to it stops exactly the processes it started.
    head = subprocess.Popen([str(bin_dir / "ray"), "start", "--head", "--block", f"--port={port}", "--num-cpus=2",
                             "--include-dashboard=false", f"--dashboard-port={_free_port()}",
                             f"--ray-client-server-port={_free_port()}", "--disable-usage-stats"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        run_dir = tmp_path / "run"
        out = subprocess.run([str(bin_dir / "nativerl"), "train", str(repo / "recipes" / "tiny_smoke.yaml"),
                              "--set", "rollout.engine=ray", "--set", "trainer.max_steps=1",
                              "--set", "checkpoint.every=0", "--run-dir", str(run_dir), "--no-progress",
                              "--ray-address", f"127.0.0.1:{port}"],
                             env=env, capture_output=True, text=True, timeout=240, check=False)
        assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
        assert "Connected to Ray cluster" in out.stderr  # joined the head, did not start its own instance
        metrics = json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[-1])
        assert metrics["policy_version"] == 1 and metrics["faults/actor_restarts"] == 0
    finally:
        head.send_signal(signal.SIGTERM)
        head.wait(timeout=60)
        # `ray start` records its address for `--address auto`; drop the record of the head we just stopped so
        # that no later ray.init() on this machine tries to join it.
        record = Path("/tmp/ray/ray_current_cluster")
        if record.is_file() and record.read_text().strip().endswith(f":{port}"):
            record.unlink()

