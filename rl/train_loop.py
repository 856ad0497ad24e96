"""The GRPO driver. One step, top to bottom:

    prompts → rollouts (`rollouts/`) → rewards (`rewards/`) → advantages (`rl/grpo.py`)
            → μ × minibatch updates → publish new weights to the rollout side → log → checkpoint → eval

Everything it calls is a swappable component named by the recipe; this file only orders them.
"""

from __future__ import annotations

import functools
import math
import random
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rl import grpo
from rl.checkpoint import (TrainingState, checkpoint_for_step, latest_checkpoint, load_checkpoint, restore_rng,
                           rng_state, save_checkpoint)
from rl.distributed import (all_reduce_max, all_reduce_sum, all_reduce_sums, broadcast_from_main,
                            gather_for_advantages, init_distributed, scatter_from_main, shutdown, unsharded,
                            wrap_policy)
from rl.finite_guards import NonFiniteUpdateError, check_finite_weights, update_is_finite
from rl.evaluate import evaluate_prompts, format_eval_table, geneval_correctness
from rl.interrupt import Interrupted, StopRequests
from rl.metrics_log import MetricsLog, read_metrics
from rl.monitors.build import build_monitors
from rl.monitors.gold import rollback_checkpoint
from rl.monitors.monitor import StepView
from rl.rollout_statistics import group_diversity, image_statistics, reward_balance
from rl.optim import apply_optimizer_settings, build_optimizer, build_scheduler, clip_gradients, schedule_horizon
from rl.policy import Policy
from rl.recipe import Recipe, recipe_to_yaml
from rl.sample_grid import save_sample_grid
from engines.protocol import RolloutEngine
from rewards.suite import RewardSuite
from rollouts.generator import NativeImageGenerator
from prompts.prompt_priority import PrioritizedPromptStream
from prompts.prompt_sets import PromptStream, load_prompt_rows
from rollouts.sampling_source import resolve_sampling
from seeding import derive_seed

TIMING_KEYS = ("timing/", "throughput/")


def step_seed(run_seed: int, step: int, rank: int = 0) -> int:
    """Rollout seed of a step on a rank: a pure function of (run seed, step, rank), so a resumed run samples the same
    rollouts, and rank 0 of a multi-rank run samples what a single-rank run samples."""
    return derive_seed(run_seed, "step", step, rank)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class CheckpointLoadError(RuntimeError):
    """The checkpoint to resume from exists but cannot be read."""


@dataclass
class TrainResult:
    run_dir: Path
    steps: int
    last_metrics: dict[str, Any] = field(default_factory=dict)
    eval_before: dict[str, Any] | None = None
    eval_after: dict[str, Any] | None = None
    stopped_by_monitor: str | None = None
    interrupted_by: str | None = None  # "SIGINT" / "SIGTERM": stopped at a step boundary with a checkpoint
    warnings: list[str] = field(default_factory=list)  # rules and health guards that triggered (MetricRules.triggered)


def split_for_rank(batch: Any, scores: Any, rank: int, rows_per_rank: int, groups_per_rank: int) -> tuple[Any, Any]:
    """Rank `rank`'s rows of a step generated for all ranks (groups in rank order), as if it had generated them."""
    from dataclasses import replace

    rows = list(range(rank * rows_per_rank, (rank + 1) * rows_per_rank))
    part = batch.select(rows)
    part.group_ids = part.group_ids - rank * groups_per_rank
    own = slice(rows[0], rows[-1] + 1)
    return part, replace(scores, scores={k: v[own] for k, v in scores.scores.items()}, details=scores.details[own])


def build_engine(recipe: Recipe, generator: NativeImageGenerator) -> RolloutEngine:
    if recipe.rollout.engine == "ray":
        from engines.ray_engine import RayRolloutEngine

        r = recipe.rollout
        # Workers store their LM in the precision the trainer computes in (rl/policy.py: one autocast policy).
        compute = {torch.bfloat16: "bfloat16", torch.float32: "float32"}.get(generator.compute_dtype)
        model = recipe.model.model_copy(update={"dtype": compute}) if compute else recipe.model
        # Reward models live in their own actors and score finished shards while later shards render.
        return RayRolloutEngine(model, r, recipe.trainer.policy, recipe.trainer.lora, recipe.rewards,
                                groups_per_shard=r.groups_per_shard, worker_num_cpus=r.worker_num_cpus,
                                reward_num_cpus=r.reward_num_cpus, reward_num_gpus=r.reward_num_gpus,
                                trainer_num_gpus=r.trainer_num_gpus, start_timeout_s=r.worker_timeout_s)
    from engines.local_engine import LocalRolloutEngine

    return LocalRolloutEngine(generator, recipe.rollout.sampling, recipe.rollout.renderer)


def reward_metrics(scores: dict[str, torch.Tensor], total: torch.Tensor, details: list[dict[str, Any]],
                   tags: dict[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {"reward/mean": float(total.mean()), "reward/std": float(total.std())
                           if len(total) > 1 else 0.0}
    for name, s in scores.items():
        out[f"reward/{name}/mean"] = float(torch.nanmean(s))
        out[f"reward_tag/{name}"] = tags.get(name, name)
    # GenEval-style rewards report a tag and correctness per image: log accuracy overall and per tag.
    correct = [c for c in (geneval_correctness(d) for d in details) if c is not None]
    if correct:
        out["geneval/accuracy"] = float(np.mean([bool(c) for _, c in correct]))
        for tag in sorted({t for t, _ in correct if t}):
            vals = [bool(c) for t, c in correct if t == tag]
            out[f"geneval/accuracy/{tag}"] = float(np.mean(vals))
    return out


def whole_groups(flags: torch.Tensor, group_ids: torch.Tensor) -> torch.Tensor:
    """Per sample: True where every sample of its group has the flag."""
    out = torch.zeros_like(flags, dtype=torch.bool)
    for g in torch.unique(group_ids).tolist():
        members = group_ids == g
        out[members] = bool(flags[members].all())
    return out


def solved_fraction(zero_std: torch.Tensor, group_ids: torch.Tensor, details: list[dict[str, Any]]) -> float | None:
    """Share of the samples (this rank's) whose group had equal rewards *because every sample was right*
    (GenEval-style `correct`); None without GenEval correctness. Equal rewards are a dead signal only when the group
    is wrong: `zero_std_frac` minus this is the share stuck without an advantage."""
    correct = [geneval_correctness(d) for d in details]
    if not correct or any(c is None for c in correct):
        return None
    right = torch.tensor([bool(c[1]) for c in correct])
    return float(whole_groups(zero_std & right, group_ids).float().mean())


def group_spreads(total: torch.Tensor, group_ids: torch.Tensor) -> tuple[list[int], list[float]]:
    """Each group's standard deviation of the combined reward over its finite samples (NaN with fewer than two):
    what `rollout.prompt_priority` ranks rows by."""
    groups, spreads = [], []
    for g in torch.unique(group_ids).tolist():
        values = total[(group_ids == g) & torch.isfinite(total)]
        groups.append(int(g))
        spreads.append(float(values.std(unbiased=False)) if len(values) > 1 else float("nan"))
    return groups, spreads


class PlainProgress:
    """Progress as plain lines on stderr, at most one every `every_s` seconds (and at the first and last step)."""

    def __init__(self, total: int, start: int, every_s: float = 10.0):
        self.total, self.start, self.every_s = total, start, every_s
        self.t0 = self.last = time.monotonic()

    def update(self, step: int, reward: float) -> None:
        now = time.monotonic()
        if step not in (self.start + 1, self.total) and now - self.last < self.every_s:
            return
        self.last = now
        per_step = (now - self.t0) / max(step - self.start, 1)
        eta = per_step * (self.total - step)
        print(f"GRPO step {step}/{self.total}  reward {reward:.3f}  {per_step:.2f} s/step  "
              f"ETA {int(eta // 60)}m{int(eta % 60):02d}s", file=sys.stderr, flush=True)


def rollout_statistics(images: torch.Tensor, tokens: torch.Tensor, group_ids: torch.Tensor,
                       world_size: int = 1) -> dict[str, float]:
    """Image statistics and within-group diversity (rl/rollout_statistics.py) of this rank's rollouts, averaged
    over ranks. Every rank holds the same number of rows and groups, so the mean of the ranks' means is the mean
    over all rows."""
    local = {**image_statistics(images), **group_diversity(images, tokens, group_ids)}
    keys = sorted(local)
    return dict(zip(keys, (v / world_size for v in all_reduce_sums([local[k] for k in keys]))))


class GRPOTrainer:
    """Holds the run's components; `run()` is the loop."""

    @functools.cached_property
    def suite(self) -> RewardSuite:
        """The driver's reward models. Under Ray, the reward actors score training rollouts, so this is built
        only when evaluation or the gold monitor needs it."""
        return RewardSuite(self.recipe.rewards, allow_nonfinite=self.recipe.trainer.nonfinite_rewards == "drop")

    @property
    def reward_tags(self) -> dict[str, str]:
        return (self.engine.reward_tags if self.engine is not None else None) or self.suite.tags

    @property
    def rank0_drives_ray(self) -> bool:
        """torchrun + Ray: rank 0 is the only Ray driver; it generates and scores every rank's rows and scatters
        them (the other ranks hold no engine)."""
        return self.dist.enabled and self.recipe.rollout.engine == "ray"

    def __init__(self, recipe: Recipe, run_dir: str | Path, *, recipe_dir: Path | None = None,
                 resume: bool = False, resume_step: int | None = None, progress: bool = True):
        self.recipe, self.run_dir, self.progress = recipe, Path(run_dir), progress
        self.run_dir.mkdir(parents=True, exist_ok=True)
        cfg = recipe.trainer
        # Under torchrun each rank generates its own share of the step's prompt groups; rewards are gathered before
        # the group statistics and gradients are averaged by DDP (rl/distributed.py). One process: all no-ops.
        self.dist = init_distributed()
        if recipe.torch_threads:
            torch.set_num_threads(recipe.torch_threads)
        seed_everything(recipe.seed)
        self.generator = NativeImageGenerator.from_config(recipe.model)
        # source: checkpoint → the checkpoint's generation_config.json top-k/top-p, fixed here for the whole run.
        recipe.rollout.sampling = resolve_sampling(recipe.rollout.sampling, self.generator)
        base_model = self._base_model_folder() if cfg.policy == "lora" else None
        self.policy = Policy(self.generator, cfg)
        self.policy.base_model_path = base_model
        wrap_policy(self.policy, self.dist, cfg.distributed_strategy)
        self.sharded = self.dist.enabled and cfg.distributed_strategy == "fsdp2"
        if self.sharded:
            # FSDP2 must see its root (the scorer) run first; the sampler calls the decoder layers directly.
            ids, mask = self.generator.encode_prompts(["warm-up"])
            tokens = torch.zeros(1, self.generator.tokens_per_image, dtype=torch.long, device=ids.device)
            with torch.no_grad():
                self.policy.logprobs(ids, mask, tokens, recipe.rollout.sampling)
        self.optimizer = build_optimizer(self.policy.trainable_parameters(), cfg)
        self.updates_per_step = cfg.num_iterations * self._minibatches_per_iteration()
        train_rows = load_prompt_rows(recipe.rollout.prompts, recipe_dir)
        horizon = schedule_horizon(cfg, len(train_rows), recipe.rollout.prompts_per_step)
        self.scheduler = build_scheduler(self.optimizer, cfg, horizon * self.updates_per_step)
        priority = recipe.rollout.prompt_priority
        self.stream = (PromptStream(train_rows, recipe.seed, recipe.rollout.prompts.shuffle) if priority is None
                       else PrioritizedPromptStream(train_rows, recipe.seed, priority.floor, priority.memory))
        self.eval_rows = None
        if recipe.eval.prompts is not None:
            self.eval_rows = load_prompt_rows(recipe.eval.prompts, recipe_dir)[: recipe.eval.num_prompts]
        self.state = TrainingState(step=0, policy_version=0, prompt_stream=self.stream.state_dict())
        main = self.dist.is_main  # only rank 0 writes the run directory
        self.monitors = build_monitors(recipe.monitors, seed=recipe.seed, eval_rows=self.eval_rows,
                                       run_dir=self.run_dir if main else None)
        self.metrics = MetricsLog(self.run_dir, tensorboard=recipe.logging.tensorboard,
                                  wandb_project=recipe.logging.wandb_project if recipe.logging.wandb else None,
                                  run_name=recipe.name, config=recipe.model_dump(mode="json")) if main else None
        self.engine: RolloutEngine | None = (None if (self.rank0_drives_ray and not main)
                                             else build_engine(recipe, self.generator))
        if resume:
            self._resume(resume_step)
        elif main:
            (self.run_dir / "config.yaml").write_text(self._resolved_config())
        if self.state.policy_version:
            self._publish()

    def _base_model_folder(self) -> str:
        """A folder that transformers' AutoModelForCausalLM loads as this run's base LM, for the LoRA adapters'
        base_model_name_or_path: model.path itself when it is one (a `nativerl export`), else the base LM written
        once to RUN_DIR/base_model (a preset, or a BLIP3o-NEXT-layout checkpoint, whose model_type transformers
        does not know; the size of the LM, written before any update)."""
        import json

        model = self.recipe.model
        if model.source == "path" and model.path:
            config = Path(model.path) / "config.json"
            if config.is_file() and json.loads(config.read_text()).get("model_type") == "qwen3":
                return str(Path(model.path).resolve())
        folder = (self.run_dir / "base_model").resolve()
        if self.dist.is_main and not (folder / "config.json").is_file():
            import shutil

            from transformers.utils import logging as hf_logging

            tmp = folder.with_name("base_model.tmp")  # written whole, then renamed: never a half folder
            hf_logging.disable_progress_bar()  # a one-shard "Writing model shards" bar on the first screen
            try:
                self.generator.lm.save_pretrained(tmp)
            finally:
                hf_logging.enable_progress_bar()
            self.generator.tokenizer.save_pretrained(tmp)
            if folder.exists():
                shutil.rmtree(folder)
            tmp.replace(folder)
        return str(folder)

    def _publish(self) -> None:
        state = self.policy.state_for_sync()  # every rank takes part (a collective under FSDP2)
        if self.engine is not None:
            self.engine.publish_weights(state, self.state.policy_version)

    def _resolved_config(self, resumed: tuple[int, dict[str, tuple[Any, Any]]] | None = None) -> str:
        header = "# Resolved recipe of this run. Reward versions used: " + ", ".join(
            f"{k} = {v}" for k, v in self.reward_tags.items()) + "\n"
        if resumed is not None:  # keep the history of earlier resumes, add this one
            old = (self.run_dir / "config.yaml").read_text().splitlines()
            header += "".join(line + "\n" for line in old if line.startswith("# Resumed"))
            step, changes = resumed
            header += (f"# Resumed at step {step} ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}), from "
                       "then on: " + "; ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in changes.items()) + "\n")
        return header + recipe_to_yaml(self.recipe)

    def _minibatches_per_iteration(self) -> int:
        cfg = self.recipe.trainer
        batch = self.recipe.rollout.prompts_per_step * cfg.num_generations
        return math.ceil(batch / (cfg.mini_batch_size or batch))

    def _resume(self, step: int | None = None) -> None:
        """Continue the run in run_dir from its latest checkpoint (or `step`'s). The recipe may differ from the
        run's config.yaml (`--set` on `--resume`): the changes apply from here on and are recorded in config.yaml;
        keys that would make the run a different run (RESUME_FROZEN) are refused. Resuming from an earlier step
        moves the newer checkpoints and archived steps aside, so the two branches never mix. Step 0 needs no
        checkpoint: it is the recipe's initial state, so a run killed before its first checkpoint restarts."""
        from rl.archive import abandon_archive_after
        from rl.checkpoint import abandon_checkpoints_after, list_checkpoints

        changes = self._check_resume_changes()
        if step == 0 or (step is None and not list_checkpoints(self.run_dir)):
            path = None  # seed_everything in __init__ already put the policy, RNG and prompt stream at step 0
        else:
            path = checkpoint_for_step(self.run_dir, step)
            try:
                self.state = load_checkpoint(path, self.policy, self.optimizer, self.scheduler)
            except Exception as exc:  # a torn or corrupted file: name it, and say how to go back one checkpoint
                older = [p.name for p in list_checkpoints(self.run_dir) if p.name < path.name]
                hint = (f"; resume from an earlier one with --resume {self.run_dir} --resume-step "
                        f"{int(older[-1].split('-')[1])} (later metrics are dropped)" if older else "")
                raise CheckpointLoadError(f"checkpoint {path} cannot be loaded: {type(exc).__name__}: {exc}"
                                          f"{hint}") from exc
            # The recipe's optimizer settings win over the checkpoint's (a changed learning rate applies now).
            apply_optimizer_settings(self.optimizer, self.scheduler, self.recipe.trainer)
            self.stream.load_state_dict(self.state.prompt_stream)
        if self.dist.is_main:
            for moved in (abandon_checkpoints_after(self.run_dir, self.state.step),
                          abandon_archive_after(self.run_dir, self.state.step)):
                if moved is not None:
                    print(f"moved the abandoned branch's steps after {self.state.step} to {moved}")
            if changes:
                (self.run_dir / "config.yaml").write_text(self._resolved_config(resumed=(self.state.step, changes)))
        if self.metrics is not None:
            self.metrics.truncate_after(self.state.step)
        self.monitors.restore(read_metrics(self.run_dir))
        for key, (old, new) in changes.items():
            print(f"resume: {key} changed from {old!r} to {new!r}")
        print(f"resumed from {path} (step {self.state.step})" if path is not None else
              "no checkpoint yet: restarting from step 0 (the recipe's initial state)")

    def _check_resume_changes(self) -> dict[str, tuple[Any, Any]]:
        """{key: (run's value, recipe's value)} against the run's config.yaml; RecipeError for a frozen key."""
        from rl.recipe import RecipeError, load_recipe, recipe_changes, resume_frozen

        stored = self.run_dir / "config.yaml"
        if not stored.is_file():
            return {}
        changes = recipe_changes(load_recipe(stored), self.recipe)
        frozen = {k: v for k, v in changes.items() if resume_frozen(k)}
        if frozen:
            listed = "; ".join(f"{k}: {old!r} -> {new!r}" for k, (old, new) in frozen.items())
            raise RecipeError(f"--resume {self.run_dir}: {listed}: cannot change when resuming (the checkpoint's "
                              "weights, optimizer and prompt stream belong to the old value); start a new run "
                              "with another --run-dir instead")
        return changes

    def _rank0_generates_for_all(self, all_rows: list[dict[str, Any]], step: int) -> tuple[Any, Any]:
        """torchrun + Ray: rank 0 has every rank's prompt groups generated and scored by the actors (one seed for
        the step), then each rank receives its own rows, group ids renumbered from 0, and their scores."""
        P, G, world = self.recipe.rollout.prompts_per_step, self.recipe.trainer.num_generations, self.dist.world_size
        parts = None
        if self.dist.is_main:
            batch, scores = self.engine.generate_and_score(all_rows, group_size=G,
                                                           seed=step_seed(self.recipe.seed, step),
                                                           policy_version=self.state.policy_version)
            parts = [split_for_rank(batch, scores, r, P * G, P) for r in range(world)]
        return scatter_from_main(parts)

    # ---------------------------------------------------------------- one GRPO step
    def step(self, step: int) -> dict[str, Any]:
        recipe, cfg = self.recipe, self.recipe.trainer
        G = cfg.num_generations

        # 1. prompts → rollouts
        t0 = time.perf_counter()
        P, rank, world = recipe.rollout.prompts_per_step, self.dist.rank, self.dist.world_size
        all_rows = self.stream.next(P * world)  # every rank advances the stream alike
        rows = all_rows[rank * P:(rank + 1) * P]
        scored_by_engine = self.rank0_drives_ray or self.engine.scores_rollouts
        request = dict(group_size=G, seed=step_seed(recipe.seed, step, rank),
                       policy_version=self.state.policy_version)
        if self.rank0_drives_ray:
            batch, suite_scores = self._rank0_generates_for_all(all_rows, step)
        elif scored_by_engine:  # Ray: reward actors score shards while later shards render
            batch, suite_scores = self.engine.generate_and_score(rows, **request)
        else:
            with unsharded(self.policy):  # FSDP2: the sampler calls the LM's parts directly
                batch = self.engine.generate(rows, **request)
        t_rollout = time.perf_counter() - t0
        overlaps = self.engine is not None and self.engine.overlaps_steps  # ranks > 0 under rank0_drives_ray: None
        if recipe.rollout.max_staleness > 0 and overlaps and step < cfg.max_steps:
            # Overlap across steps: the next step's rollouts start now, from the weights before this update.
            ahead = self.stream.peek(P * world)
            self.engine.prefetch(ahead if self.rank0_drives_ray else ahead[rank * P:(rank + 1) * P], group_size=G,
                                 seed=step_seed(recipe.seed, step + 1), policy_version=self.state.policy_version,
                                 score=scored_by_engine)

        # 2. rollouts → rewards (a failing required reward raises here, naming itself)
        t0 = time.perf_counter()
        if not scored_by_engine:
            suite_scores = self.suite.score_rollouts(batch)
        t_reward = time.perf_counter() - t0
        if suite_scores.failed and self.progress and self.dist.is_main:
            # Visible in the progress output: the combined reward's scale now rests on the other rewards' weights.
            weights = ", ".join(f"{k}={w:g}" for k, w in suite_scores.weights.items())
            for key, reason in suite_scores.failed.items():
                print(f"warning: step {step}: optional reward {key!r} failed ({reason}); left out of this step, "
                      f"weights renormalised to {weights}", file=sys.stderr)
        scores = {k: torch.as_tensor(v, dtype=torch.float32) for k, v in suite_scores.scores.items()
                  if k not in suite_scores.failed}
        batch.rewards = scores
        batch.reward_details = suite_scores.details

        # 3. rewards → advantages, over every rank's rows. Non-finite rewards refuse the step or are dropped (per
        #    the recipe) *before* the group statistics, so they neither train nor shift the other advantages.
        all_scores, all_groups, mine = gather_for_advantages(scores, batch.group_ids)
        keep = grpo.check_finite(all_scores, on_nonfinite=cfg.nonfinite_rewards)
        adv_kept, total_kept, zero_std_kept = grpo.combine_rewards(
            {k: v[keep] for k, v in all_scores.items()}, suite_scores.weights, all_groups[keep],
            mode=cfg.reward_aggregation, scale_rewards=cfg.scale_rewards, eps=cfg.advantage_epsilon)
        grpo.check_finite(adv_kept, "advantages")
        n_all = len(all_groups)
        advantages, total = torch.zeros(n_all), torch.full((n_all,), float("nan"))
        zero_std = torch.zeros(n_all, dtype=torch.bool)
        advantages[keep], total[keep], zero_std[keep] = adv_kept, total_kept, zero_std_kept
        if cfg.drop_zero_std_groups:
            keep = keep & ~zero_std
        any_kept = bool(keep.any())  # over every rank's rows
        solved = self._solved_groups(total, zero_std, all_groups)
        if recipe.rollout.rest_solved_at is not None:
            self.stream.rest([self.stream.served[g] for g in solved])
        if recipe.rollout.prompt_priority is not None:
            groups, spreads = group_spreads(total, all_groups)
            self.stream.observe([self.stream.served[g] for g in groups], spreads)
        all_scores_for_log, total_for_log = all_scores, total
        advantages, total, keep = advantages[mine], total[mine], keep[mine]
        active = None
        if self.dist.enabled:
            # DDP needs the same forward/backward passes on every rank: dropped rows are forwarded but marked
            # inactive, and `_update` normalises by the active rows of all ranks, so the gradient equals the
            # single-process gradient with those rows dropped (loss and KL alike).
            active = keep
            keep = torch.ones_like(keep) if any_kept else torch.zeros_like(keep)
        rows_used = torch.nonzero(keep).flatten()

        # 4. μ × minibatch updates against the rollout's log-probs
        view = self._monitor_view(step, batch=batch, suite_scores=suite_scores)
        self.monitors.before_update(view)
        t0 = time.perf_counter()
        token_weights, credit_metrics = self._spatial_credit(batch) if cfg.spatial_credit > 0 else (None, {})
        self._updating = True  # from here a failure may leave the weights between two steps: no emergency save
        update = (self._update(batch, advantages, rows_used, step, token_weights,
                               None if active is None else active[rows_used]) if len(rows_used)
                  else {"skipped": 1.0})
        t_update = time.perf_counter() - t0

        # 5. publish the new weights to the rollout side
        t0 = time.perf_counter()
        if len(rows_used):
            self.state.policy_version += 1
            self._publish()
        t_sync = time.perf_counter() - t0

        finite = torch.isfinite(total_for_log)
        m: dict[str, Any] = reward_metrics({k: v[finite] for k, v in all_scores_for_log.items()},
                                           total_for_log[finite], suite_scores.details, suite_scores.tags)
        for name, reason in suite_scores.failed.items():
            m[f"reward_failed/{name}"] = reason
        m.update(update)
        m.update(credit_metrics)
        m["rollout/images"] = len(all_groups)  # over all ranks
        m["zero_std_frac"] = float(zero_std_kept.float().mean())
        solved_frac = solved_fraction(zero_std[mine], batch.group_ids, suite_scores.details)
        if solved_frac is not None:
            m["zero_std_frac/solved"] = solved_frac
        if recipe.rollout.rest_solved_at is not None:
            m["prompts/rested"] = len(solved)
            m["prompts/resting"] = len(self.stream.resting)
        if recipe.rollout.prompt_priority is not None:
            m.update(self.stream.metrics())
        m["dropped_nonfinite"] = int((~finite).sum())
        m["policy_version"] = self.state.policy_version
        m.update(rollout_statistics(batch.images, batch.image_tokens, batch.group_ids, world))
        m.update(reward_balance({k: v[finite] for k, v in all_scores_for_log.items()}, suite_scores.weights,
                                all_groups[finite]))
        m.update({"timing/rollout_s": t_rollout, "timing/rollout_ar_s": batch.timings.get("rollout_ar_s", 0.0),
                  "timing/render_s": batch.timings.get("render_s", 0.0), "timing/reward_s": t_reward,
                  "timing/update_s": t_update, "timing/sync_s": t_sync,
                  "throughput/images_per_s": len(batch) * world / max(t_rollout, 1e-9)})
        m.update({f"faults/{k}": v for k, v in (self.engine.stats() if self.engine is not None else {}).items()})
        m.update(self.monitors.after_update(view))  # drift, and the health checks that need work in the step
        if self.dist.is_main:
            self._write_samples(step, batch, total)
        return m

    def _solved_groups(self, total: torch.Tensor, zero_std: torch.Tensor, group_ids: torch.Tensor) -> list[int]:
        """Groups (over every rank) whose samples all got the same combined reward, at least
        `rollout.rest_solved_at`; [] when resting is off. A dropped (non-finite) sample never counts as solved."""
        threshold = self.recipe.rollout.rest_solved_at
        if threshold is None:
            return []
        solved = whole_groups(zero_std & (total >= threshold), group_ids)
        return sorted(int(g) for g in torch.unique(group_ids[solved]).tolist())

    def _monitor_view(self, step: int, **seen: Any) -> StepView:
        """What the monitors may read about this step (rl/monitors/monitor.py)."""
        return StepView(step=step, generator=self.generator, sampling=self.recipe.rollout.sampling,
                        renderer=self.recipe.rollout.renderer, reward_suite=lambda: self.suite,
                        full_weights=lambda: unsharded(self.policy), **seen)

    def _spatial_credit(self, batch: Any) -> tuple[torch.Tensor, dict[str, float]]:
        """Per-token advantage weights [B, N] from the boxes a structured reward reported (rl/grpo.py §2b)."""
        cfg = self.recipe.trainer
        n = batch.image_tokens.shape[1]
        grid = math.isqrt(n)
        if grid * grid != n:
            raise ValueError(f"trainer.spatial_credit needs a square token grid; this model emits {n} image tokens")
        key = cfg.spatial_credit_reward
        if key is None:
            key = next((k for d in batch.reward_details for k, v in d.items()
                        if isinstance(v, dict) and "credit_boxes" in v), None)
        if key is None:
            raise ValueError("trainer.spatial_credit: no reward reports `credit_boxes` (GenEval does); set "
                             "spatial_credit to 0 or add such a reward")
        boxes, sizes = [], []
        for i, d in enumerate(batch.reward_details):
            detail = d.get(key)
            if not isinstance(detail, dict) or "credit_boxes" not in detail:
                raise ValueError(f"trainer.spatial_credit_reward {key!r}: row {i} has no credit_boxes in its details")
            boxes.append(detail["credit_boxes"])
            sizes.append(tuple(detail.get("image_size") or batch.images.shape[2:0:-1]))
        weights = grpo.spatial_credit_weights(boxes, sizes, grid, cfg.spatial_credit)
        return weights, {"spatial_credit/with_boxes": float(np.mean([bool(b) for b in boxes])),
                         "spatial_credit/max_weight": float(weights.max())}

    def _update(self, batch: Any, advantages: torch.Tensor, rows: torch.Tensor, step: int,
                token_weights: torch.Tensor | None = None, active: torch.Tensor | None = None) -> dict[str, Any]:
        """μ × mini-batch optimizer steps on `rows` of the batch. `active` [len(rows)] bool (DDP with dropped
        rows): rows that every rank must forward (DDP runs the same passes everywhere) but that do not train.

        Each optimizer step's gradient is Σ over its active rows of the per-row loss / (active rows of that
        mini-batch over all ranks / world size): DDP's gradient average then equals the single-process gradient on
        the same active rows, dropped rows included or not. (All image samples have the same N tokens, so for
        every loss type the single-process mini-batch loss is the mean of the per-row losses.)"""
        cfg, sampling = self.recipe.trainer, self.recipe.rollout.sampling
        dev = self.policy.device  # rollouts arrive on the CPU (the one schema); the update runs on this device
        ids, mask = batch.prompt_ids[rows].to(dev), batch.prompt_mask[rows].to(dev)
        tokens, behaviour = batch.image_tokens[rows].to(dev), batch.logprobs[rows].to(dev)
        adv = advantages[rows].to(dev)
        if token_weights is not None:  # A_i,t = A_i · w_i,t (rl/grpo.py §2b)
            adv = adv[:, None] * token_weights[rows].to(dev)
        n = len(rows)
        active = torch.ones(n, dtype=torch.bool) if active is None else active.cpu()
        completion_mask = torch.ones_like(tokens, dtype=torch.float32)  # always exactly N image tokens
        micro, world = cfg.micro_batch_size, self.dist.world_size
        coll = self.dist.device  # where collectives run (cuda under nccl)

        def scored(fn) -> torch.Tensor:
            return torch.cat([fn(ids[i:i + micro], mask[i:i + micro], tokens[i:i + micro], sampling)
                              for i in range(0, n, micro)])

        # π_ref log-probs for the KL, and the reference's conditioning hidden states for the anchor (rl/grpo.py §4).
        anchor = cfg.conditioning_anchor
        ref = ref_hidden = None
        if anchor > 0:
            pieces = [self.policy.reference_logprobs(ids[i:i + micro], mask[i:i + micro], tokens[i:i + micro],
                                                     sampling, with_hidden=True) for i in range(0, n, micro)]
            ref, ref_hidden = torch.cat([p[0] for p in pieces]), torch.cat([p[1] for p in pieces])
        elif cfg.beta > 0:
            ref = scored(self.policy.reference_logprobs)
        # π_old (rl/grpo.py): the trainer's own forward before this step's first update. The first optimizer step
        # uses π.detach() (ρ exactly 1); later ones (μ > 1 or several mini-batches) need the stored values.
        old = None
        if self.updates_per_step > 1:
            with torch.no_grad(), self.policy.autocast():
                old = scored(self.policy.logprobs)
        mini = cfg.mini_batch_size or n
        sums: dict[str, float] = {}
        count = 0
        gap_sum, gap_max, gap_tokens, nonfinite = 0.0, 0.0, 0, 0
        tokens_sum = 0.0  # image tokens of the rows trained on (first iteration: each row once)
        first = True  # the first optimizer step of this rollout batch: the weights are still π_old
        optimizer_step = 0
        order_gen = torch.Generator().manual_seed(derive_seed(self.recipe.seed, "update_order", step))
        for iteration in range(cfg.num_iterations):
            order = torch.randperm(n, generator=order_gen) if iteration > 0 or mini < n else torch.arange(n)
            for start in range(0, n, mini):
                idx = order[start:start + mini]
                optimizer_step += 1
                self.optimizer.zero_grad(set_to_none=True)
                n_active = all_reduce_sum(float(active[idx].sum()), coll)  # this mini-batch, all ranks
                step_sums: dict[str, float] = {}
                step_count, step_loss = 0, 0.0
                for mstart in range(0, len(idx), micro):
                    j = idx[mstart:mstart + micro]
                    a = active[j].to(dev)
                    with self.policy.autocast():
                        scored_j = self.policy.logprobs(ids[j], mask[j], tokens[j], sampling, with_entropy=True,
                                                        with_hidden=anchor > 0)
                    logp, entropy = scored_j[0], scored_j[1]
                    old_j = logp.detach() if first else old[j]
                    if iteration == 0 and bool(a.any()):  # every row once: the sampler-vs-trainer gap
                        gap = (behaviour[j] - old_j)[a].abs()
                        gap_sum, gap_tokens = gap_sum + float(gap.sum()), gap_tokens + gap.numel()
                        gap_max = max(gap_max, float(gap.max()))
                    if not bool(a.any()):  # DDP: this rank's rows here are all dropped; still one backward
                        (logp.sum() * 0.0).backward()
                        continue
                    weights = (grpo.behaviour_weights(old_j[a], behaviour[j][a], cfg.behaviour_correction_cap)
                               if cfg.behaviour_correction == "tis" else None)
                    loss, lm = grpo.grpo_loss(
                        logp[a], old_j[a], ref[j][a] if ref is not None else None, adv[j][a], completion_mask[j][a],
                        beta=cfg.beta, epsilon=cfg.epsilon, epsilon_high=cfg.epsilon_high,
                        loss_type=cfg.loss_type, importance_sampling_level=cfg.importance_sampling_level,
                        max_completion_length=tokens.shape[1], use_bias_correction_kl=cfg.use_bias_correction_kl,
                        behaviour_weights=weights)
                    if anchor > 0:
                        drift = grpo.conditioning_anchor(scored_j[2][a], ref_hidden[j][a])
                        loss = loss + anchor * drift.mean()
                        lm = {**lm, "anchor/hidden_rel": float(drift.detach().sqrt().mean())}
                    k = int(a.sum())
                    share = k * world / max(n_active, 1.0)  # = len(j) / len(idx) in one process without drops
                    (loss * share).backward()
                    step_loss += float(loss.detach()) * share / world
                    lm = {**lm, "loss": float(loss.detach()), "entropy": float(entropy.detach()[a].mean())}
                    lm.pop("tokens", None)  # one micro-batch's count; the step's count is summed below
                    if iteration == 0:
                        tokens_sum += float(completion_mask[j][a].sum())
                    if weights is not None:
                        lm["behaviour_weight/mean"] = float(weights.mean())
                    for key, v in lm.items():
                        step_sums[key] = step_sums.get(key, 0.0) + float(v) * k
                    step_count += k
                grad_norm = clip_gradients(self.policy.trainable_parameters(), cfg.max_grad_norm)
                step_sums["grad_norm"] = grad_norm * step_count
                if n_active == 0:  # every row of this mini-batch dropped, on every rank: no update, as in one process
                    self.optimizer.zero_grad(set_to_none=True)
                    continue
                if update_is_finite(step_loss, grad_norm, coll):
                    self.optimizer.step()
                    first = False
                else:
                    self.optimizer.zero_grad(set_to_none=True)  # the non-finite gradient goes nowhere
                    where = (f"step {step}, iteration {iteration + 1}/{cfg.num_iterations}, optimizer step "
                             f"{optimizer_step}/{self.updates_per_step}")
                    values = ", ".join(f"{key} {step_sums[key] / max(step_count, 1):.4g}"
                                       for key in ("loss", "kl", "grad_norm") if key in step_sums)
                    if cfg.nonfinite_update == "error":
                        raise NonFiniteUpdateError(
                            f"{where}: non-finite update ({values}); refused before optimizer.step(), so no NaN/inf "
                            "reached the weights. Set trainer.nonfinite_update: skip to skip such optimizer steps.")
                    nonfinite += 1
                    print(f"{where}: non-finite update ({values}) skipped (trainer.nonfinite_update: skip)",
                          file=sys.stderr)
                with warnings.catch_warnings():  # a skipped first step: the schedule still advances
                    warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step")
                    self.scheduler.step()
                for key, v in step_sums.items():
                    sums[key] = sums.get(key, 0.0) + v
                count += step_count
        # DDP: every logged update metric is the mean over all ranks' rows (sums and counts are all-reduced).
        keys = sorted(sums)
        totals = all_reduce_sums([sums[key] for key in keys] + [float(count), gap_sum, float(gap_tokens), tokens_sum],
                                 coll)
        count_all, gap_sum_all, gap_tokens_all, tokens_all = totals[-4:]
        out = {key: v / max(count_all, 1.0) for key, v in zip(keys, totals)}
        out["tokens"] = tokens_all  # image tokens trained on this step (its rows on all ranks, once each)
        out["lr"] = self.scheduler.get_last_lr()[0]
        out["sampler_gap/mean"] = gap_sum_all / max(gap_tokens_all, 1.0)
        out["sampler_gap/max"] = all_reduce_max(gap_max, coll)
        out["nonfinite_updates"] = nonfinite
        return out

    # ---------------------------------------------------------------- logging, eval, checkpoints
    def _write_samples(self, step: int, batch: Any, total: torch.Tensor) -> None:
        logging = self.recipe.logging
        if logging.archive_every and step % logging.archive_every == 0:
            from rl.archive import archive_rollouts

            archive_rollouts(self.run_dir, step, batch, reward_tags=self.reward_tags)
        if logging.sample_every and step % logging.sample_every == 0:
            k = min(logging.sample_count, len(batch))
            captions = [f"{batch.prompts[i]} | r={float(total[i]):.2f}" for i in range(k)]
            save_sample_grid(self.run_dir / "samples" / f"step-{step:06d}.png", list(batch.images[:k].numpy()),
                             captions)

    def evaluate(self, label: str, *, show_progress: bool = False) -> dict[str, Any]:
        if self.eval_rows is None:
            return {}
        with unsharded(self.policy):
            return self._evaluate(label, show_progress and self.progress and self.dist.is_main)

    def _evaluate(self, label: str, show_progress: bool = False) -> dict[str, Any]:
        result = evaluate_prompts(self.generator, self.eval_rows, self.suite, seeds=self.recipe.eval.seeds,
                                  sampling=self.recipe.rollout.sampling, renderer_cfg=self.recipe.rollout.renderer,
                                  progress=f"eval {label}" if show_progress else None)
        result["label"] = label
        return result

    def save(self) -> Path:
        self.state.prompt_stream = self.stream.state_dict()
        check_finite_weights(self.policy.named_trainable_parameters(), f"checkpoint of step {self.state.step}",
                             collective=self.sharded, device=self.dist.device)
        return save_checkpoint(self.run_dir, self.state, self.policy, self.optimizer, self.scheduler,
                               keep_last=self.recipe.checkpoint.keep_last, sharded=self.sharded,
                               is_main=self.dist.is_main)

    def run(self) -> TrainResult:
        result = TrainResult(run_dir=self.run_dir, steps=self.state.step)
        # A signal stops the steps at a boundary, the evaluations at once (rl/interrupt.py); a second one stops
        # everything at once. Whichever way the run ends, the engine (Ray actors) and the logs are closed.
        with StopRequests() as stop:
            finished = False
            try:
                self._run(result, stop)
                finished = True
            except Interrupted as exc:
                result.interrupted_by = exc.signal_name
            finally:
                if self.metrics is not None:
                    self.metrics.close()
                if self.engine is not None:
                    self.engine.shutdown()
        if finished:  # every rank stopped at the same step; after a second signal they may be anywhere
            shutdown()
        return result

    def _run(self, result: TrainResult, stop: StopRequests) -> None:
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        recipe = self.recipe
        if recipe.eval.before_and_after and self.state.step == 0:
            with stop.immediately():
                result.eval_before = self.evaluate("before", show_progress=True)
            self._write_eval(result.eval_before, "eval_before")
        columns = [TextColumn("[bold]GRPO"), BarColumn(), TextColumn("step {task.completed}/{task.total}"),
                   TextColumn("reward {task.fields[reward]}"), TimeElapsedColumn(), TextColumn("ETA"),
                   TimeRemainingColumn()]
        with Progress(*columns, disable=not (self.progress and self.dist.is_main)) as bar:
            task = bar.add_task("grpo", total=recipe.trainer.max_steps, completed=self.state.step, reward="-")
            # Not a terminal (a log file, `make demo | tee`): rich draws nothing until the end, so say how far it is.
            plain = PlainProgress(recipe.trainer.max_steps, self.state.step) \
                if self.progress and self.dist.is_main and not bar.console.is_terminal else None
            for step in range(self.state.step + 1, recipe.trainer.max_steps + 1):
                metrics = self._step_or_save_on_failure(step)
                self.state.step = step
                if recipe.eval.every and step % recipe.eval.every == 0:
                    ev = self.evaluate(f"step {step}")
                    metrics.update({f"eval/{k}": v for k, v in ev.items() if isinstance(v, (int, float))})
                report = self.monitors.after_step(self._monitor_view(step, metrics=metrics))  # gold, then rules
                metrics.update(report.metrics)
                # Image statistics differ between ranks: rank 0's monitors decide for all of them.
                action = broadcast_from_main(report.action)
                result.last_metrics = self.metrics.append(step, metrics) if self.metrics else metrics
                # Every rank must stop at the same step: rank 0's signal decides (torchrun signals all ranks).
                interrupted = broadcast_from_main(stop.signal_name) if self.dist.enabled else stop.signal_name
                every = recipe.checkpoint.every
                if ((every and step % every == 0) or step == recipe.trainer.max_steps or action.kind != "continue"
                        or interrupted):
                    if action.kind == "rollback":
                        # Keep the gold-best weights as this step's checkpoint, so eval/export/resume use them.
                        load_checkpoint(rollback_checkpoint(self.run_dir, action.rollback_step), self.policy,
                                        self.optimizer, self.scheduler)
                        self.state.step = step
                        self.state.policy_version += 1
                        self._publish()
                    if self.dist.is_main or self.sharded:
                        self.save()
                bar.update(task, completed=step, reward=f"{metrics['reward/mean']:.3f}")
                if plain is not None:
                    plain.update(step, metrics["reward/mean"])
                result.steps = step
                if action.kind != "continue":
                    result.stopped_by_monitor = action.message
                    break
                if interrupted:
                    result.interrupted_by = interrupted
                    break
        result.warnings = self.monitors.warnings()
        if recipe.eval.before_and_after and not result.interrupted_by:
            with stop.immediately():
                result.eval_after = self.evaluate("after", show_progress=True)
            self._write_eval(result.eval_after, "eval_after")

    def _step_or_save_on_failure(self, step: int) -> dict[str, Any]:
        """One step. If it fails before the update touched the weights (a reward server down, out of memory while
        rendering, ...), the weights are still those of the last finished step: checkpoint that step (with the prompt
        stream and RNG as they were before this step began) unless it is saved already, then re-raise, so
        `--resume` loses nothing. One process only: under torchrun the other ranks are blocked in collectives."""
        before = (self.stream.state_dict(), rng_state())
        self._updating = False
        try:
            return self.step(step)
        except Exception as exc:  # not KeyboardInterrupt: a second Ctrl-C means "stop now"
            last = latest_checkpoint(self.run_dir)
            saved = last is not None and int(last.name.split("-")[1]) == self.state.step
            if self.dist.enabled or self._updating or self.state.step == 0 or saved:
                raise
            self.stream.load_state_dict(before[0])
            restore_rng(before[1])
            path = self.save()
            print(f"step {step} failed ({type(exc).__name__}); the weights of step {self.state.step} are saved in "
                  f"{path}: fix the cause and continue with nativerl train --resume {self.run_dir}", file=sys.stderr)
            raise

    def _write_eval(self, result: dict[str, Any], name: str) -> None:
        import json

        if not self.dist.is_main:
            return
        (self.run_dir / f"{name}.json").write_text(json.dumps(result, indent=1))
        (self.run_dir / f"{name}.md").write_text(format_eval_table(result))


def train(recipe: Recipe, run_dir: str | Path, *, recipe_dir: Path | None = None, resume: bool = False,
          resume_step: int | None = None, progress: bool = True) -> TrainResult:
    return GRPOTrainer(recipe, run_dir, recipe_dir=recipe_dir, resume=resume, resume_step=resume_step,
                       progress=progress).run()
