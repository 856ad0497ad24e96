"""Ray rollout engine: rollout actors (one generator each, a GPU each in production) and an optional reward actor,
behind the same interface as the local engine (`engines/local_engine.py`, `engines/protocol.py`), with both
optional capabilities (`scores_rollouts`, `overlaps_steps`):

    engine.generate(rows, group_size=G, seed=s, policy_version=v) -> RolloutBatch
    engine.generate_and_score(rows, group_size=G, seed=s, policy_version=v) -> (RolloutBatch, SuiteScores)
    engine.prefetch(rows, group_size=G, seed=s, policy_version=v)     # only with max_staleness > 0
    engine.publish_weights(state, version); engine.stats(); engine.shutdown()

One step:
1. The step's prompt rows are cut into shards of whole groups (`engines/shard_plan.py`; by default one shard per
   actor); each shard has its own seed, so its rollouts do not depend on which actor runs it or how often it is
   re-run. A one-shard step reproduces the local engine exactly.
2. Each idle actor gets the next shard together with the policy version the step uses and a reference to that
   version's weights (put in the object store once by `publish_weights`). An actor holding another version loads it
   first (`engines/rollout_actor.py`); every batch records the version it was sampled with.
3. As soon as a shard is done its result reference goes to the reward actors (one per reward of the recipe), which
   score it while the rollout actors render the next shards (overlap within a step). The batches are concatenated
   in shard order (= input group order, groups renumbered) and the per-shard scores merged
   (`rewards/reward_actor.py`).
4. Faults: an actor that dies (crash, `ray.kill`, node loss) is replaced by a fresh one and its shard re-run; one
   that takes longer than `worker_timeout_s` on a shard is killed and replaced likewise. Shards are retried at most
   `max_shard_attempts` times, actor starts wait at most `start_timeout_s`: every wait has a deadline, so the driver
   never hangs. A shard whose generation *raises* (bad prompt row, weight mismatch) is not retried: the error is
   deterministic and is re-raised naming the shard. A dead or hung reward actor counts as a failure of its reward
   and follows the suite's required/optional policy; it is replaced for the next shards.

Staleness: with `max_staleness = 0` every rollout of a step uses exactly the version the driver asks for, and
asking for a version that has not been published is refused. With `max_staleness = k > 0` the driver may
`prefetch` the next step's rollouts before publishing the update (they run on the actors while it trains); the next
`generate` with the same rows and seed collects them if they lag at most k versions, else it regenerates them.
"""

from __future__ import annotations

import collections
import contextlib
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import ray
from ray.exceptions import GetTimeoutError, RayError, RayTaskError

from engines.protocol import RolloutEngine
from engines.ray_session import TrainerReservation, connect, reserve_trainer
from engines.rollout_actor import RolloutActor
from engines.shard_plan import Shard, plan_shards
from rollouts.batch import RolloutBatch


class RolloutShardError(RuntimeError):
    """A shard could not be generated (its generation raised, or it kept failing after restarts)."""


@dataclass
class _StepJob:
    rows: list[dict[str, Any]]
    group_size: int
    seed: int
    version: int  # the policy version every shard of this step uses
    weights: Any  # ObjectRef of that version's state, or None for version 0
    score: bool
    future: Future | None = None


@dataclass
class _Slot:
    """One rollout actor position; its actor is replaced on faults."""

    actor: Any
    ready_ref: Any = None  # set while the actor is starting
    start_deadline: float = 0.0


class RayRolloutEngine(RolloutEngine):
    scores_rollouts = True  # reward actors score shards while later shards render
    overlaps_steps = True  # prefetch: the next step renders while the driver updates

    def __init__(self, model_cfg: Any, rollout_cfg: Any, policy_mode: str, lora_settings: Any,
                 reward_specs: list[Any] | None = None, *, groups_per_shard: int | None = None,
                 worker_num_cpus: float = 1.0, reward_num_cpus: float = 1.0, reward_num_gpus: float = 0.0, reward_timeout_s: float | None = None,
                 trainer_num_cpus: float = 0.0, trainer_num_gpus: float = 0.0, start_timeout_s: float = 600.0,
                 max_shard_attempts: int = 3, torch_threads: int | None = 1):
        """model_cfg: rollouts.config.ModelConfig (the driver's); rollout_cfg: the recipe's RolloutConfig (engine,
        num_rollout_workers, worker_num_gpus, max_staleness, worker_timeout_s, sampling, renderer);
        policy_mode: "lora" | "full"; lora_settings: an object or dict with r, lora_alpha, lora_dropout,
        target_modules; reward_specs: the recipe's rewards (None = no reward actor; generate_and_score then fails).
        groups_per_shard: prompt groups per shard; None = one shard per actor (the largest batches: AR decoding
        costs about the same for 4 or 8 rows, so halving a batch nearly doubles its cost). An int makes a
        step's rollouts independent of the number of actors and gives finer reward/render overlap.
        trainer_num_cpus/gpus > 0 reserve the trainer's resources in their own placement group."""
        if groups_per_shard is not None and groups_per_shard < 1:
            raise ValueError(f"groups_per_shard must be >= 1, got {groups_per_shard}")
        if max_shard_attempts < 1:
            raise ValueError(f"max_shard_attempts must be >= 1, got {max_shard_attempts}")
        connect()
        self.num_workers = int(rollout_cfg.num_rollout_workers)
        self.max_staleness = int(rollout_cfg.max_staleness)
        self.worker_timeout_s = float(rollout_cfg.worker_timeout_s)
        self.start_timeout_s = float(start_timeout_s)
        self.groups_per_shard = groups_per_shard
        self.max_shard_attempts = int(max_shard_attempts)
        self.trainer: TrainerReservation | None = None
        if trainer_num_cpus > 0 or trainer_num_gpus > 0:
            self.trainer = reserve_trainer(trainer_num_cpus, trainer_num_gpus, timeout_s=self.start_timeout_s)
        lora = _lora_kwargs(lora_settings) if policy_mode == "lora" else None
        self._actor_args = (model_cfg.model_dump(mode="json"), rollout_cfg.sampling.model_dump(mode="json"),
                            rollout_cfg.renderer.model_dump(mode="json"), policy_mode, lora, torch_threads)
        self._actor_options = {"num_cpus": worker_num_cpus, "num_gpus": float(rollout_cfg.worker_num_gpus),
                               "max_restarts": 0}
        self._stats = collections.Counter(actor_restarts=0, actor_timeouts=0, shard_retries=0,
                                          reward_actor_restarts=0, prefetch_used=0, prefetch_discarded=0)
        self._version, self._weights = 0, None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ray-rollout-step")
        self._prefetched: _StepJob | None = None
        self.slots = [self._start_slot() for _ in range(self.num_workers)]

        self.reward_specs: list[Any] = []
        self.reward_actors: dict[str, Any] = {}  # reward key -> its actor
        self.reward_tags: dict[str, str] = {}
        if reward_specs:
            from rewards.spec import RewardSpec

            self.reward_specs = [s if isinstance(s, RewardSpec) else RewardSpec.model_validate(s)
                                 for s in reward_specs]
            self._reward_options = {"num_cpus": reward_num_cpus, "num_gpus": reward_num_gpus, "max_restarts": 0}
            finite = [s.timeout_s for s in self.reward_specs if s.timeout_s is not None]
            # The suite enforces each reward's timeout_s itself; the actor-level timeout only catches a hung process.
            self.reward_timeout_s = float(reward_timeout_s or (
                2 * max(finite) + 30 if len(finite) == len(self.reward_specs) else self.worker_timeout_s))
            self.reward_actors = {s.key: self._start_reward_actor(s) for s in self.reward_specs}
            for key, actor in self.reward_actors.items():
                self.reward_tags.update(self._wait_started(actor.ready.remote(), f"reward actor {key!r}")["tags"])
        for slot in self.slots:
            self._wait_started(slot.ready_ref, "rollout actor")
            slot.ready_ref = None

    # ------------------------------------------------------------------ public interface
    @property
    def actors(self) -> list[Any]:
        """Current rollout actor handles (a replaced actor's slot holds its successor)."""
        return [s.actor for s in self.slots]

    @property
    def policy_version(self) -> int:
        return self._version

    def publish_weights(self, state: dict[str, Any] | None, version: int) -> None:
        """Make `version` current: its state goes into the object store once; every actor loads it before its
        next rollout (and starts loading now, in the background, if idle)."""
        if version < self._version:
            raise ValueError(f"publish_weights: version {version} is older than the published v{self._version}")
        if state is None and version != 0:
            raise ValueError(f"publish_weights: version {version} needs a state (only v0 is the initial weights)")
        self._weights = ray.put(state) if state is not None else None
        self._version = int(version)
        if self._weights is not None:
            for slot in self.slots:
                if slot.ready_ref is None:
                    slot.actor.load_weights.remote(self._version, [self._weights])

    def generate(self, rows: list[dict[str, Any]], *, group_size: int, seed: int,
                 policy_version: int) -> RolloutBatch:
        batch, _ = self._collect(self._job(rows, group_size, seed, policy_version, score=False), policy_version)
        return batch

    def generate_and_score(self, rows: list[dict[str, Any]], *, group_size: int, seed: int,
                           policy_version: int) -> tuple[RolloutBatch, Any]:
        """Rollouts plus their `rewards.suite.SuiteScores` (scored shard by shard while later shards render)."""
        if not self.reward_actors:
            raise RuntimeError("generate_and_score needs reward actors: construct RayRolloutEngine with reward_specs")
        return self._collect(self._job(rows, group_size, seed, policy_version, score=True), policy_version)

    def prefetch(self, rows: list[dict[str, Any]], *, group_size: int, seed: int, policy_version: int,
                 score: bool = False) -> None:
        """Start the next step's rollouts now, with the current weights (needs max_staleness > 0). The next
        generate/generate_and_score with the same rows, group_size and seed collects them."""
        if self.max_staleness == 0:
            raise RuntimeError("prefetch needs rollout.max_staleness > 0: with 0 no rollout may use a stale policy")
        if self._prefetched is not None:
            self._discard_prefetch()
        job = self._new_job(rows, group_size, seed, policy_version, score)
        job.future = self._executor.submit(self._run_step, job)
        self._prefetched = job

    def stats(self) -> dict[str, float]:
        return dict(self._stats)

    def shutdown(self) -> None:
        if self._prefetched is not None:
            self._discard_prefetch()
        self._executor.shutdown(wait=True, cancel_futures=True)
        for slot in self.slots:
            _kill(slot.actor)
        self.slots = []
        for actor in self.reward_actors.values():
            _kill(actor)
        self.reward_actors = {}
        if self.trainer is not None:
            self.trainer.release()
            self.trainer = None

    # ------------------------------------------------------------------ step jobs and staleness
    def _new_job(self, rows, group_size, seed, policy_version, score) -> _StepJob:
        if policy_version > self._version:
            raise RuntimeError(f"rollouts for policy v{policy_version} were asked for, but the latest published "
                               f"version is v{self._version}: call publish_weights first")
        if self._version - policy_version > self.max_staleness:
            raise RuntimeError(f"rollouts for policy v{policy_version} were asked for while v{self._version} is "
                               f"published (max_staleness={self.max_staleness})")
        return _StepJob(rows=list(rows), group_size=int(group_size), seed=int(seed), version=self._version,
                        weights=self._weights, score=score)

    def _job(self, rows, group_size, seed, policy_version, score) -> _StepJob:
        pre = self._prefetched
        if pre is not None and (pre.rows, pre.group_size, pre.seed, pre.score) == (list(rows), group_size, seed,
                                                                                   score):
            self._prefetched = None
            if 0 <= policy_version - pre.version <= self.max_staleness:
                self._stats["prefetch_used"] += 1
                return pre
            self._stats["prefetch_discarded"] += 1
            _quiet_wait(pre.future)
        elif pre is not None:
            self._discard_prefetch()
        job = self._new_job(rows, group_size, seed, policy_version, score)
        job.future = self._executor.submit(self._run_step, job)
        return job

    def _discard_prefetch(self) -> None:
        job, self._prefetched = self._prefetched, None
        self._stats["prefetch_discarded"] += 1
        _quiet_wait(job.future)

    def _collect(self, job: _StepJob, policy_version: int) -> tuple[RolloutBatch, Any]:
        batch, scores = job.future.result()
        lag = policy_version - batch.policy_version  # concat keeps the oldest shard's version
        if lag < 0 or lag > self.max_staleness:
            raise RuntimeError(f"rollouts used policy v{batch.policy_version} for a step at v{policy_version} "
                               f"(max_staleness={self.max_staleness})")
        return batch, scores

    # ------------------------------------------------------------------ actors
    def _start_slot(self) -> _Slot:
        actor = RolloutActor.options(**self._actor_options).remote(*self._actor_args)
        return _Slot(actor=actor, ready_ref=actor.ready.remote(), start_deadline=time.monotonic() + self.start_timeout_s)

    def _replace(self, slot: _Slot) -> None:
        _kill(slot.actor)
        fresh = self._start_slot()
        slot.actor, slot.ready_ref, slot.start_deadline = fresh.actor, fresh.ready_ref, fresh.start_deadline
        self._stats["actor_restarts"] += 1

    def _start_reward_actor(self, spec: Any) -> Any:
        from rewards.reward_actor import RewardActor

        return RewardActor.options(**self._reward_options).remote([spec.model_dump(mode="json")])

    def _wait_started(self, ready_ref: Any, what: str) -> dict[str, Any]:
        try:
            return ray.get(ready_ref, timeout=self.start_timeout_s)
        except GetTimeoutError:
            raise RuntimeError(f"{what} did not start within start_timeout_s={self.start_timeout_s} "
                               f"(requested {self._actor_options}; available {ray.available_resources()})") from None

    # ------------------------------------------------------------------ one step (runs in the executor thread)
    def _run_step(self, job: _StepJob) -> tuple[RolloutBatch, Any]:
        t0 = time.perf_counter()
        per_shard = self.groups_per_shard or -(-len(job.rows) // self.num_workers)
        shards = plan_shards(job.rows, job.seed, per_shard)
        queue: collections.deque[Shard] = collections.deque(shards)
        attempts: collections.Counter[int] = collections.Counter()
        results: dict[int, RolloutBatch] = {}
        score_refs: dict[tuple[int, str], Any] = {}  # (shard index, reward key) -> SuiteScores ref
        inflight: dict[Any, tuple[_Slot, Shard, float]] = {}  # result ref -> (slot, shard, deadline)
        weights = [job.weights] if job.weights is not None else None
        try:
            while queue or inflight:
                busy = {id(s) for s, _, _ in inflight.values()}
                for slot in self.slots:
                    if queue and slot.ready_ref is None and id(slot) not in busy:
                        shard = queue.popleft()
                        ref = slot.actor.generate.remote(shard, job.group_size, job.version, weights)
                        inflight[ref] = (slot, shard, time.monotonic() + self.worker_timeout_s)
                starting = {s.ready_ref: s for s in self.slots if s.ready_ref is not None}
                deadlines = [d for _, _, d in inflight.values()] + [s.start_deadline for s in starting.values()]
                wait_s = max(0.0, min(deadlines) - time.monotonic())
                done, _ = ray.wait(list(inflight) + list(starting), num_returns=1, timeout=wait_s)
                for ref in done:
                    if ref in starting:
                        self._on_started(starting[ref])
                        continue
                    slot, shard, _ = inflight.pop(ref)
                    try:
                        results[shard.index] = ray.get(ref)
                    except RayTaskError as exc:  # the generation itself raised: deterministic, not retried
                        raise RolloutShardError(f"shard {shard.index} (prompt groups {shard.first_group}.."
                                                f"{shard.first_group + len(shard.rows) - 1}) failed: {exc}") from exc
                    except RayError as exc:  # the actor died: replace it, run the shard again
                        self._retry(shard, attempts, queue, f"actor died: {type(exc).__name__}")
                        self._replace(slot)
                        continue
                    if job.score:
                        for key, actor in self.reward_actors.items():
                            score_refs[(shard.index, key)] = actor.score.remote(ref)
                now = time.monotonic()
                for ref, (slot, shard, deadline) in list(inflight.items()):
                    if now > deadline:  # hung: kill it (its result is never read) and run the shard elsewhere
                        del inflight[ref]
                        self._stats["actor_timeouts"] += 1
                        self._retry(shard, attempts, queue, f"timed out after worker_timeout_s="
                                    f"{self.worker_timeout_s}")
                        self._replace(slot)
                for slot in self.slots:
                    if slot.ready_ref is not None and now > slot.start_deadline:
                        raise RolloutShardError(f"a replacement rollout actor did not start within start_timeout_s="
                                                f"{self.start_timeout_s} (available {ray.available_resources()})")
        except BaseException:
            for ref in list(inflight) + list(score_refs.values()):
                _cancel(ref)
            raise
        t_rollouts = time.perf_counter() - t0
        batch = RolloutBatch.concat([results[s.index] for s in shards])
        scores = self._gather_scores(shards, results, score_refs) if job.score else None
        batch.timings["engine_rollout_wall_s"] = t_rollouts
        batch.timings["engine_reward_tail_s"] = time.perf_counter() - t0 - t_rollouts
        return batch, scores

    def _on_started(self, slot: _Slot) -> None:
        ref, slot.ready_ref = slot.ready_ref, None
        try:
            ray.get(ref)
        except RayError as exc:
            raise RolloutShardError(f"a replacement rollout actor failed to start: {exc}") from exc

    def _retry(self, shard: Shard, attempts: collections.Counter, queue: collections.deque, reason: str) -> None:
        attempts[shard.index] += 1
        if attempts[shard.index] >= self.max_shard_attempts:
            raise RolloutShardError(f"shard {shard.index} failed {attempts[shard.index]} times "
                                    f"(max_shard_attempts={self.max_shard_attempts}); last: {reason}")
        self._stats["shard_retries"] += 1
        queue.appendleft(shard)

    def _gather_scores(self, shards: list[Shard], results: dict[int, RolloutBatch],
                       score_refs: dict[tuple[int, str], Any]) -> Any:
        from rewards.reward_actor import actor_failure_scores, merge_shard_scores
        from rewards.suite import RewardFailure

        deadline = time.monotonic() + self.reward_timeout_s
        pending = list(score_refs.values())
        while pending and time.monotonic() < deadline:
            _, pending = ray.wait(pending, num_returns=len(pending), timeout=max(0.0, deadline - time.monotonic()))
        hung = {key for (_, key), ref in score_refs.items() if ref in set(pending)}
        for key in hung:  # kill it: its outstanding shards then count as failures of its reward
            _kill(self.reward_actors[key])
        dead: set[str] = set(hung)
        grid = []
        try:
            for s in shards:
                row = []
                for spec in self.reward_specs:
                    try:
                        row.append(ray.get(score_refs[(s.index, spec.key)], timeout=10.0))
                    except RayTaskError as exc:
                        if isinstance(exc.cause, RewardFailure):
                            raise exc.cause from None
                        raise
                    except (RayError, GetTimeoutError) as exc:
                        dead.add(spec.key)
                        reason = (f"reward actor timed out after {self.reward_timeout_s} s" if spec.key in hung
                                  else f"reward actor died: {type(exc).__name__}")
                        row.append(actor_failure_scores([spec], self.reward_tags, len(results[s.index]), reason))
                grid.append(row)
        finally:
            for spec in self.reward_specs:
                if spec.key in dead:
                    _kill(self.reward_actors[spec.key])
                    self.reward_actors[spec.key] = self._start_reward_actor(spec)
                    self._stats["reward_actor_restarts"] += 1
        return merge_shard_scores(grid, self.reward_specs)


def _lora_kwargs(settings: Any) -> dict[str, Any]:
    data = settings if isinstance(settings, dict) else settings.model_dump()
    return {"r": int(data["r"]), "lora_alpha": int(data["lora_alpha"]),
            "lora_dropout": float(data.get("lora_dropout", 0.0)), "target_modules": list(data["target_modules"])}


def _kill(actor: Any) -> None:
    with contextlib.suppress(Exception):  # already dead or never started: nothing left to stop
        ray.kill(actor, no_restart=True)


def _cancel(ref: Any) -> None:
    with contextlib.suppress(Exception):  # finished, or its actor is gone
        ray.cancel(ref)


def _quiet_wait(future: Future | None) -> None:
    """Wait for a step nobody will use (its actors must be free again); its errors no longer matter."""
    if future is None:
        return
    with contextlib.suppress(Exception):  # a discarded step's failure is not this step's failure
        future.result()
