"""Data-parallel training with torch.distributed: process-group setup, DDP or FSDP2 around the policy, and the
collectives GRPO needs (rewards are gathered from every rank *before* group normalisation, as BLIP3o-NEXT/TRL do).

Launch: `torchrun --nproc-per-node K ...` or a Ray actor that sets the same env vars (RANK, WORLD_SIZE,
LOCAL_RANK, MASTER_ADDR, MASTER_PORT). Without them everything here is a single-process no-op.

What is wrapped is `policy.scorer` (`rl.policy.ImageTokenScorer`): its forward is the whole log-prob computation,
so DDP's gradient hooks and FSDP2's all-gathers run on every policy forward. Order: Policy(...) → wrap_policy(...)
→ build_optimizer(policy.trainable_parameters(), ...) (FSDP2 replaces parameters by sharded DTensors).
"""

from __future__ import annotations

import contextlib
import datetime
import os
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed(backend: str | None = None, timeout_s: float = 1800.0) -> DistInfo:
    """Join the process group described by the env (torchrun / Ray). nccl on GPU, gloo on CPU."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() and backend != "gloo"
    device = torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(device)
    if world <= 1:
        return DistInfo(device=device)
    for key in ("MASTER_ADDR", "MASTER_PORT"):
        if key not in os.environ:
            raise RuntimeError(f"WORLD_SIZE={world} but {key} is not set (launch with torchrun or set it)")
    if not dist.is_initialized():
        dist.init_process_group(backend or ("nccl" if use_cuda else "gloo"), rank=rank, world_size=world,
                                timeout=datetime.timedelta(seconds=timeout_s))
    return DistInfo(rank=rank, world_size=world, local_rank=local_rank, device=device)


def shutdown() -> None:
    """Leave the process group at the end of a run that every rank finished: wait for the others at a barrier, so
    no rank tears its gloo/nccl pairs down while a peer still uses them, then destroy the group while the
    interpreter is fully alive rather than in its finalizer at exit. (A rank aborting inside gloo, SIGABRT, was
    seen twice in a row in one CI run of tests/test_distributed_gloo.py; this ordering is the documented shutdown,
    not a proven cure.) Not for a failed run: its peers may never reach the barrier."""
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


# ---------------------------------------------------------------------------------------------------------------
# Wrapping the policy
# ---------------------------------------------------------------------------------------------------------------
def wrap_policy(policy, info: DistInfo, strategy: Literal["ddp", "fsdp2"] = "ddp") -> None:
    """Replace `policy.scorer` by its DDP or FSDP2 version (in place). No-op in a single process.

    ddp    LoRA or full weights: every rank holds the LM; gradients of trainable parameters are averaged.
    fsdp2  full weights only (`torch.distributed.fsdp.fully_shard`): each decoder layer is one shard group, the
           scorer (embeddings, final norm, lm_head) the root group. The frozen full-mode reference stays a plain
           local copy (no gradients, no optimizer state).
    """
    if not info.enabled:
        return
    if strategy == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        device_ids = [info.device.index] if info.device.type == "cuda" else None
        policy.scorer = DistributedDataParallel(policy.scorer, device_ids=device_ids)
    elif strategy == "fsdp2":
        if policy.cfg.policy != "full":
            raise ValueError("FSDP2 is for trainer.policy=full; use DDP for LoRA (its trainable state is small)")
        from torch.distributed.fsdp import fully_shard

        from rollouts.lm_parts import decoder_of

        for layer in decoder_of(policy.lm).layers:
            fully_shard(layer)
        fully_shard(policy.scorer)
    else:
        raise ValueError(f"strategy must be 'ddp' or 'fsdp2', got {strategy!r}")


@contextlib.contextmanager
def unsharded(policy):
    """FSDP2 only: hold the root parameters gathered, e.g. while sampling rollouts from `generator.lm` directly
    (outside the scorer's forward). A no-op otherwise."""
    scorer = policy.scorer
    if not hasattr(scorer, "unshard"):
        yield
        return
    scorer.unshard()
    try:
        yield
    finally:
        scorer.reshard()


# ---------------------------------------------------------------------------------------------------------------
# Collectives for GRPO
# ---------------------------------------------------------------------------------------------------------------
def all_gather_rows(local: torch.Tensor) -> torch.Tensor:
    """Concatenate every rank's [b_r, ...] tensor along dim 0 in rank order (the b_r may differ)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return local
    world = dist.get_world_size()
    size = torch.tensor([local.shape[0]], device=local.device)
    sizes = [torch.zeros_like(size) for _ in range(world)]
    dist.all_gather(sizes, size)
    sizes_int = [int(s) for s in sizes]
    longest = max(sizes_int)
    padded = torch.zeros((longest, *local.shape[1:]), dtype=local.dtype, device=local.device)
    padded[: local.shape[0]] = local
    parts = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded)
    return torch.cat([p[:n] for p, n in zip(parts, sizes_int)])


def gather_for_advantages(scores: dict[str, torch.Tensor], group_ids: torch.Tensor,
                          ) -> tuple[dict[str, torch.Tensor], torch.Tensor, slice]:
    """Every rank's per-reward scores and group ids, so group (and batch) statistics are global.

    Each rank numbers its own groups from 0; they are offset here so groups of different ranks stay distinct.
    Returns (global scores, global group ids, this rank's slice of the global rows) — compute advantages on the
    global tensors, then take `[local_slice]`.
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return scores, group_ids, slice(0, group_ids.shape[0])
    rank = dist.get_rank()
    n_groups = torch.tensor([int(group_ids.max()) + 1 if group_ids.numel() else 0], device=group_ids.device)
    counts = all_gather_rows(n_groups)
    rows = all_gather_rows(torch.tensor([group_ids.shape[0]], device=group_ids.device))
    offset = int(counts[:rank].sum())
    start = int(rows[:rank].sum())
    all_ids = all_gather_rows(group_ids + offset)
    # sorted names: every rank must issue the collectives in the same order
    all_scores = {name: all_gather_rows(scores[name]) for name in sorted(scores)}
    return all_scores, all_ids, slice(start, start + group_ids.shape[0])


def all_reduce_mean(value: float, device: torch.device | str = "cpu") -> float:
    """Mean of a python float over ranks (for logging metrics)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return float(t) / dist.get_world_size()


def all_reduce_sum(value: float | torch.Tensor, device: torch.device | str = "cpu") -> float:
    """Sum over ranks, e.g. the active-token count `num_items_in_batch` of the dapo loss."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return float(value)
    t = torch.tensor([float(value)], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return float(t)


def all_reduce_sums(values: list[float], device: torch.device | str = "cpu") -> list[float]:
    """Element-wise sums over ranks of a list of floats, in one collective (every rank passes the same length,
    e.g. metric sums and counts in sorted-key order)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return [float(v) for v in values]
    t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def all_reduce_max(value: float, device: torch.device | str = "cpu") -> float:
    """Max of a python float over ranks."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return float(value)
    t = torch.tensor([float(value)], dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return float(t)


def broadcast_from_main(obj: Any) -> Any:
    """Rank 0's `obj` on every rank (e.g. a monitor's decision, which must be the same everywhere or ranks hang)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def scatter_from_main(parts: list[Any] | None) -> Any:
    """Rank r receives rank 0's `parts[r]` (other ranks pass None). One process: `parts[0]`."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return parts[0]
    out = [None]
    dist.scatter_object_list(out, parts if dist.get_rank() == 0 else None, src=0)
    return out[0]
