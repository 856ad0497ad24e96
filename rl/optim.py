"""Optimizer and learning-rate schedule of the policy update (AdamW; constant or cosine, with linear warmup).

The schedules are transformers' own (`get_scheduler`), so a run's learning-rate curve is the one TRL/HF users
know. BLIP3o-NEXT: AdamW, lr 1e-6 (OCR) / 5e-6 (GenEval), cosine, no warmup, weight decay 0, grad clip 1.0.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

from rl.recipe import TrainerConfig


def build_optimizer(params: Iterable[torch.nn.Parameter], cfg: TrainerConfig) -> torch.optim.AdamW:
    params = [p for p in params if p.requires_grad]
    if not params:
        raise ValueError("build_optimizer: no trainable parameters (is every LM parameter frozen?)")
    return torch.optim.AdamW(params, lr=cfg.learning_rate, betas=(cfg.adam_beta1, cfg.adam_beta2),
                             weight_decay=cfg.weight_decay)


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainerConfig, total_steps: int):
    """`total_steps` = optimizer steps the schedule spans (`schedule_horizon` × num_iterations × mini-batches per
    rollout; the horizon is max_steps unless trainer.lr_schedule_steps/epochs says otherwise).

    constant → transformers' constant_with_warmup (identical to constant when warmup_steps = 0);
    cosine → cosine decay to 0 after a linear warmup over `warmup_steps`.
    """
    from transformers import get_scheduler

    if total_steps < 1:
        raise ValueError(f"build_scheduler: total_steps must be >= 1, got {total_steps}")
    name = {"constant": "constant_with_warmup", "cosine": "cosine"}[cfg.lr_scheduler_type]
    return get_scheduler(name, optimizer, num_warmup_steps=cfg.warmup_steps, num_training_steps=total_steps)


def schedule_horizon(cfg: TrainerConfig, num_prompts: int, prompts_per_step: int) -> int:
    """GRPO steps the learning-rate schedule spans: lr_schedule_steps, or lr_schedule_epochs passes over the
    prompts (TRL's num_train_epochs with one prompt group per prompt per epoch: floor(epochs * prompts /
    prompts_per_step)), else max_steps. Never below max_steps (the cosine would climb back up)."""
    if cfg.lr_schedule_steps is not None:
        return cfg.lr_schedule_steps
    if cfg.lr_schedule_epochs is None:
        return cfg.max_steps
    steps = int(cfg.lr_schedule_epochs * num_prompts // prompts_per_step)
    if steps < cfg.max_steps:
        raise ValueError(f"trainer.lr_schedule_epochs = {cfg.lr_schedule_epochs} over {num_prompts} prompts at "
                         f"{prompts_per_step} per step is {steps} steps, below max_steps = {cfg.max_steps}: use "
                         "more epochs or set lr_schedule_steps")
    return steps


def apply_optimizer_settings(optimizer: torch.optim.Optimizer, scheduler: Any, cfg: TrainerConfig) -> None:
    """After a checkpoint's optimizer and scheduler state are loaded: the recipe's learning rate, betas and weight
    decay replace the saved ones (the state dicts carry the values the run started with, so a `--set` on
    `--resume` would otherwise be ignored). The current lr is recomputed from the schedule's position, which gives
    back exactly the saved lr when nothing changed, so an unchanged resume stays exact."""
    for group in optimizer.param_groups:
        group["initial_lr"] = cfg.learning_rate
        group["betas"] = (cfg.adam_beta1, cfg.adam_beta2)
        group["weight_decay"] = cfg.weight_decay
    scheduler.base_lrs = [cfg.learning_rate for _ in optimizer.param_groups]
    for group, factor in zip(optimizer.param_groups, scheduler.lr_lambdas):
        group["lr"] = cfg.learning_rate * factor(scheduler.last_epoch)
    scheduler._last_lr = [group["lr"] for group in optimizer.param_groups]


def clip_gradients(params: Iterable[torch.nn.Parameter], max_norm: float) -> float:
    """Clip the global gradient norm (works on DDP and on FSDP2's sharded DTensor grads); returns the norm before
    clipping."""
    norm = torch.nn.utils.clip_grad_norm_([p for p in params if p.grad is not None], max_norm)
    if hasattr(norm, "full_tensor"):  # FSDP2 returns a DTensor
        norm = norm.full_tensor()
    return float(norm)
