"""Nothing non-finite reaches the weights or a checkpoint.

Two guards, both collective-safe under torchrun (every rank reaches the same verdict, so none hangs):
- `update_is_finite`: before `optimizer.step()`, the step's loss and the gradient norm `clip_grad_norm_` returned
  (NaN/inf if any gradient element is) must be finite. The train loop then refuses the step
  (`trainer.nonfinite_update: error`, raising `NonFiniteUpdateError` with step and values) or skips it (`skip`:
  gradients dropped, optimizer state untouched, counted in `nonfinite_updates`).
- `check_finite_weights`: before any checkpoint is written, every trainable parameter must be finite; otherwise
  `NonFiniteWeightsError` names them and nothing is saved.
(Rewards and advantages have their own guard, `rl.grpo.check_finite`.)
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch

from rl.distributed import all_reduce_sum


class NonFiniteUpdateError(RuntimeError):
    """An optimizer step's loss or gradient was NaN/inf and the recipe says `nonfinite_update: error`."""


class NonFiniteWeightsError(RuntimeError):
    """A trainable parameter is NaN/inf: the checkpoint is not written."""


def update_is_finite(loss: float, grad_norm: float, device: torch.device | str = "cpu") -> bool:
    """True when this rank's and every other rank's loss and gradient norm are finite (`device`: where the
    process group's collectives run, cuda under nccl)."""
    bad = 0.0 if (math.isfinite(loss) and math.isfinite(grad_norm)) else 1.0
    return all_reduce_sum(bad, device) == 0.0


def nonfinite_parameters(named: Iterable[tuple[str, torch.Tensor]]) -> list[str]:
    """Names of parameters holding a NaN/inf (this rank's shard of an FSDP2 DTensor)."""
    bad = []
    with torch.no_grad():
        for name, p in named:
            local = p.to_local() if hasattr(p, "to_local") else p
            if local.numel() and not bool(torch.isfinite(local).all()):
                bad.append(name)
    return bad


def check_finite_weights(named: Iterable[tuple[str, torch.Tensor]], where: str, *, collective: bool = False,
                         device: torch.device | str = "cpu") -> None:
    """Raise NonFiniteWeightsError if a trainable parameter is non-finite. collective=True (FSDP2 shards: every
    rank calls it): the verdict covers every rank's shard, and every rank raises."""
    bad = nonfinite_parameters(named)
    count = all_reduce_sum(float(len(bad)), device) if collective else float(len(bad))
    if count > 0:
        shown = ", ".join(bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
        raise NonFiniteWeightsError(f"{where}: non-finite (NaN/inf) trainable weights"
                                    + (f" in {shown}" if bad else " on another rank")
                                    + "; refusing to write them (the previous checkpoint is kept)")
