"""Data parallelism is exact: one GRPO update of the driver (`GRPOTrainer._update`) with DDP on 2 CPU processes
(gloo), each holding half of the batch, gives the same LM weights as one process updating on the whole batch; FSDP2
too, through the driver's own `_update`. Rewards are gathered across ranks before the group normalisation, as in
production."""

from __future__ import annotations

import copy
import faulthandler
import functools
import gc
import os
import socket
import tempfile
import time
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

pytestmark = pytest.mark.slow  # two spawned processes, each importing the stack: minutes on 2 cores

PROMPTS = ["a red circle", "two blue squares", "a green triangle", "a yellow star"]
G = 2  # 4 prompts x G samples = 8 rows; each rank gets 2 whole groups
REWARDS = [0.1, 0.9, 0.4, 0.2, 0.7, 0.7, 0.0, 0.5]  # group 2 has zero std
TIMEOUT_S = 300  # a hang guard: spawned ranks import the whole driver, slow on 2 busy cores


@functools.lru_cache(maxsize=1)
def _global_batch():
    from transformers import Qwen3Config, Qwen3ForCausalLM

    from rollouts.config import SamplingConfig
    from rollouts.generator import NativeImageGenerator
    from rollouts.presets import tiny_spec
    from rollouts.text_tokenizer import build_byte_tokenizer
    from rollouts.vocab import ImageVocab

    # The tiny preset's LM and vocabulary. The renderer plays no part in the update, so a stand-in module keeps the
    # spawned processes from importing diffusers (test_policy_modes.py covers the real renderer staying frozen).
    spec = tiny_spec()
    tokenizer = build_byte_tokenizer(spec.num_image_tokens)
    vocab = ImageVocab.from_tokenizer(tokenizer, spec.num_image_tokens)
    torch.manual_seed(5)
    lm = Qwen3ForCausalLM(Qwen3Config(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
                                      **spec.lm_config))
    gen = NativeImageGenerator(lm, tokenizer, vocab, torch.nn.Linear(2, 2), spec.tokens_per_image)
    sampling = SamplingConfig(top_k=None, top_p=None)
    ids, mask = gen.encode_prompts([p for p in PROMPTS for _ in range(G)])
    sampled = gen.sample_image_tokens(ids, mask, sampling, generator=torch.Generator().manual_seed(1))
    group_ids = torch.arange(len(PROMPTS)).repeat_interleave(G)
    return gen, sampling, ids, mask, sampled.image_tokens, sampled.logprobs, group_ids, torch.tensor(REWARDS)


def global_batch():
    """A fresh copy of the generator (each update starts from the same weights) and the fixed rollout batch."""
    gen, *rest = _global_batch()
    return (copy.deepcopy(gen), *rest)


def driver_update(mode: str, rows: slice, info=None, strategy: str = "ddp", drop_zero_std: bool = False,
                  **trainer: object) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    """The driver's own `GRPOTrainer._update` on `rows` of the global batch, with only what `_update` reads set up
    (the rest of the driver is not needed). Every rank scores only its own rows; the group statistics gather all of
    them (`gather_for_advantages`, as `step` does). With `drop_zero_std` (drop_zero_std_groups) one process drops
    the zero-std rows, as `step` does, and under DDP each rank forwards all its rows and marks the dropped ones
    inactive. Plain SGD with lr 1: the update is exactly −gradient, so equal weights ⟺ equal averaged gradients.
    (AdamW's first step is ≈ lr·sign(g): it turns 1e-10 summation-order noise in near-zero gradients into 1e-5
    weight differences, which says nothing about DDP.) Returns (full trainable weights, logged metrics)."""
    from types import SimpleNamespace

    from rl import distributed, grpo
    from rl.distributed import DistInfo
    from rl.optim import build_scheduler
    from rl.policy import Policy
    from rl.recipe import Recipe
    from rl.train_loop import GRPOTrainer

    gen, sampling, ids, mask, tokens, old, group_ids, rewards = global_batch()
    settings = {"policy": mode, "beta": 0.04, "micro_batch_size": 2, "max_grad_norm": 1e9,
                "lr_scheduler_type": "constant", "lora": {"r": 4, "lora_alpha": 8},
                "drop_zero_std_groups": drop_zero_std, **trainer}
    recipe = Recipe.model_validate({"rewards": [{"name": "jpeg_compressibility"}],
                                    "rollout": {"sampling": sampling.model_dump()}, "trainer": settings})
    driver = GRPOTrainer.__new__(GRPOTrainer)
    driver.recipe, driver.dist = recipe, info or DistInfo()
    driver.updates_per_step = recipe.trainer.num_iterations  # one mini-batch: all of the rank's rows
    torch.manual_seed(0)  # LoRA's A matrices are drawn from the global RNG (the loop seeds it from the recipe)
    driver.policy = Policy(gen, recipe.trainer)
    if info is not None:
        distributed.wrap_policy(driver.policy, info, strategy)
        if strategy == "fsdp2":  # as GRPOTrainer.__init__: FSDP2 must see its root (the scorer) run first
            warm_ids, warm_mask = gen.encode_prompts(["warm-up"])
            with torch.no_grad():
                driver.policy.logprobs(warm_ids, warm_mask, tokens[:1], sampling)
    driver.optimizer = torch.optim.SGD(driver.policy.trainable_parameters(), lr=1.0)
    driver.scheduler = build_scheduler(driver.optimizer, recipe.trainer, recipe.trainer.num_iterations)
    scores, all_groups, mine = distributed.gather_for_advantages({"r": rewards[rows]},
                                                                 group_ids[rows] - group_ids[rows].min())
    advantages, _, _ = grpo.combine_rewards(scores, {"r": 1.0}, all_groups, scale_rewards="group", eps=1e-4)
    batch = SimpleNamespace(prompt_ids=ids[rows], prompt_mask=mask[rows], image_tokens=tokens[rows], logprobs=old[rows])
    keep = keep_rows()[rows] if drop_zero_std else torch.ones(rows.stop - rows.start, dtype=torch.bool)
    if info is None:  # one process: the dropped rows are not trained at all
        metrics = driver._update(batch, advantages[mine], torch.nonzero(keep).flatten(), step=1)
    else:
        metrics = driver._update(batch, advantages[mine], torch.arange(len(keep)), step=1, active=keep)
    # FSDP2 holds each rank's shard as a DTensor: compare the full (gathered) tensors.
    weights = {n: (p.full_tensor() if hasattr(p, "full_tensor") else p).detach().clone()
               for n, p in driver.policy.named_trainable_parameters()}
    return weights, metrics


def one_update(mode: str, rows: slice, world_size: int, info=None, strategy: str = "ddp") -> dict[str, torch.Tensor]:
    """One optimizer step of the driver's `_update` (DAPO loss, β > 0, micro-batches of two rows: gradient
    accumulation inside a rank too); the trainable weights after it."""
    return driver_update(mode, rows, info, strategy, loss_type="dapo")[0]


def fsdp2_driver_update(rows: slice, world_size: int, info=None) -> dict[str, torch.Tensor]:
    """FSDP2: the driver's own `_update` with full weights and DAPO, after the driver's no-grad warm-up forward of
    the sharded root; the gathered trainable weights. Before `rl/policy.py` resharded the root after no-grad
    forwards, this differed from one process by up to 0.054 on embed_tokens."""
    strategy = "fsdp2" if info is not None else "ddp"
    return driver_update("full", rows, info, strategy, loss_type="dapo")[0]


def keep_rows() -> torch.Tensor:
    """drop_zero_std_groups: the rows of groups whose rewards differ (group 2, rows 4-5, has zero std)."""
    from rl import grpo

    *_, group_ids, rewards = _global_batch()
    _, _, zero_std = grpo.combine_rewards({"r": rewards}, {"r": 1.0}, group_ids, scale_rewards="group", eps=1e-4)
    return ~zero_std


def trainer_update(rows: slice, world_size: int, info=None) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    """The driver's `_update` with full weights, β > 0, μ = 2, micro-batches of 2 and drop_zero_std_groups."""
    return driver_update("full", rows, info, drop_zero_std=True, num_iterations=2, loss_type="bnpo")


def rollout_stats(rows: slice, world_size: int) -> dict[str, float]:
    """The driver's logged image statistics and group diversity of `rows` of a fixed batch of random images."""
    from rl.train_loop import rollout_statistics

    *_, tokens, _, group_ids, _ = _global_batch()
    images = torch.randint(0, 256, (8, 32, 32, 3), generator=torch.Generator().manual_seed(3), dtype=torch.uint8)
    return rollout_statistics(images[rows], tokens[rows], group_ids[rows], world_size)


def _worker(rank: int, world: int, port: int, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank), HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    torch.set_num_threads(1)
    faulthandler.enable(all_threads=True)  # an abort inside gloo prints where each Python thread was
    from rl import distributed

    info = distributed.init_distributed(backend="gloo", timeout_s=TIMEOUT_S)
    half = 8 // world
    for mode in ("full", "lora"):
        weights = one_update(mode, slice(rank * half, (rank + 1) * half), world, info)
        torch.save(weights, Path(out_dir) / f"{mode}-rank{rank}.pt")
    weights = fsdp2_driver_update(slice(rank * half, (rank + 1) * half), world, info)
    torch.save(weights, Path(out_dir) / f"fsdp2-rank{rank}.pt")
    torch.save(trainer_update(slice(rank * half, (rank + 1) * half), world, info),
               Path(out_dir) / f"drop-rank{rank}.pt")
    torch.save(rollout_stats(slice(rank * half, (rank + 1) * half), world), Path(out_dir) / f"stats-rank{rank}.pt")
    # The wrapped policies of the updates above are garbage in reference cycles: free them (and their hold on the
    # process group) now, not in the interpreter's finalizer. On an exception above there is no shutdown (the other
    # rank would wait in its barrier): spawn reports the exception and terminates the other rank.
    gc.collect()
    distributed.shutdown()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run_two_ranks(out_dir: str, attempts: int = 3) -> None:
    for attempt in range(attempts):
        ctx = mp.start_processes(_worker, args=(2, _free_port(), out_dir), nprocs=2, join=False,
                                 start_method="spawn")
        deadline = time.monotonic() + TIMEOUT_S
        try:
            while not ctx.join(timeout=1):
                if time.monotonic() > deadline:
                    for p in ctx.processes:
                        p.kill()
                    pytest.fail(f"2-process gloo run did not finish within {TIMEOUT_S} s")
            return
        except mp.ProcessExitedException as exc:
            # A rank aborting inside gloo ("terminate called without an active exception", SIGABRT): seen once in
            # ~10 full-suite runs on the 2-core VM and twice in a row in one CI run (2026-12-04). Not reproduced in
            # 26 runs of the two ranks without a retry on a 2-core VM (2026-12-06, most beside two training runs),
            # so the worker's explicit collection and `shutdown`'s barrier are a guess at the cause, not a proven
            # fix. A fresh start on a new port each time; a Python exception, or an abort on every attempt, still
            # fails the test, and faulthandler has printed where each rank's Python threads were.
            if attempt + 1 == attempts or exc.signal_name != "SIGABRT":
                raise


@pytest.mark.parametrize("mode", ["full", "lora"])
def test_ddp_update_equals_single_process_update(mode, ddp_results):
    single = one_update(mode, slice(0, 8), world_size=1)
    rank0, rank1 = ddp_results[mode]
    assert single.keys() == rank0.keys() == rank1.keys()
    changed = 0
    for name, w in single.items():
        for rank_weights in (rank0, rank1):
            torch.testing.assert_close(rank_weights[name], w, atol=1e-6, rtol=0, msg=lambda m, n=name: f"{n}: {m}")
        changed += int(not torch.equal(w, ddp_results["initial"][mode][name]))
    assert changed > 0  # the update did move weights
    # ...and differently from what rank 0 alone would do with its half: the ranks really did communicate
    alone = one_update(mode, slice(0, 4), world_size=1)
    assert max((alone[n] - single[n]).abs().max().item() for n in single) > 1e-4


def test_fsdp2_full_weights_update_equals_single_process_update(ddp_results):
    """FSDP2 (fully_shard per decoder layer + the scorer) on gloo: after one update, the gathered weights equal a
    single process's update on the whole batch, through the driver's own `_update`."""
    single = fsdp2_driver_update(slice(0, 8), world_size=1)
    for rank_weights in ddp_results["fsdp2"]:
        assert rank_weights.keys() == single.keys()
        for name, w in single.items():
            torch.testing.assert_close(rank_weights[name], w, atol=1e-6, rtol=0, msg=lambda m, n=name: f"{n}: {m}")


def test_drop_zero_std_groups_and_metrics_are_the_same_with_and_without_ddp(ddp_results):
    """drop_zero_std_groups through the driver's `_update`: the DDP gradient (rank 1 holds the dropped group) equals
    the single-process one, and the logged update metrics are means over both ranks, not rank 0's."""
    single_weights, single_metrics = trainer_update(slice(0, 8), world_size=1)
    assert not bool(keep_rows()[4:6].any()) and bool(keep_rows()[6:].all())  # rank 1 holds the dropped group
    for rank_weights, rank_metrics in ddp_results["drop"]:
        for name, w in single_weights.items():
            torch.testing.assert_close(rank_weights[name], w, atol=1e-6, rtol=0, msg=lambda m, n=name: f"{n}: {m}")
        for key in ("loss", "kl", "ratio/mean", "clip_ratio/low", "clip_ratio/high", "grad_norm", "entropy",
                    "sampler_gap/mean", "sampler_gap/max"):
            assert rank_metrics[key] == pytest.approx(single_metrics[key], rel=1e-5, abs=1e-7), key
    # the metrics are not vacuous: the second iteration moved the ratio away from 1 and both ranks agree
    assert single_metrics["ratio/mean"] != 1.0 and single_metrics["kl"] > 0
    assert ddp_results["drop"][0][1] == ddp_results["drop"][1][1]


@pytest.fixture(scope="module")
def ddp_results():
    from rl.policy import Policy
    from rl.recipe import TrainerConfig

    with tempfile.TemporaryDirectory() as out:
        _run_two_ranks(out)
        results = {mode: [torch.load(Path(out) / f"{mode}-rank{r}.pt") for r in (0, 1)]
                   for mode in ("full", "lora", "fsdp2", "drop", "stats")}
    results["initial"] = {}
    for mode in ("full", "lora"):
        torch.manual_seed(0)
        policy = Policy(global_batch()[0], TrainerConfig(policy=mode, lora={"r": 4, "lora_alpha": 8}))
        results["initial"][mode] = {n: p.detach().clone() for n, p in policy.named_trainable_parameters()}
    return results


def test_image_and_diversity_metrics_are_means_over_ranks(ddp_results):
    """Under DDP the logged image statistics and group diversity cover every rank's rollouts, not rank 0's."""
    single = rollout_stats(slice(0, 8), world_size=1)
    assert {"images/brightness", "images/edge_density", "diversity/image", "diversity/tokens"} <= set(single)
    halves = [rollout_stats(slice(0, 4), world_size=1), rollout_stats(slice(4, 8), world_size=1)]
    assert any(halves[0][k] != pytest.approx(halves[1][k]) for k in single)  # the ranks really differ
    for rank_stats in ddp_results["stats"]:
        for key, value in single.items():
            assert rank_stats[key] == pytest.approx(value, rel=1e-6), key
