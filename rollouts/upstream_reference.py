"""Upstream's way of running BLIP3o-NEXT, written out step by step, to compare our sampler and renderer against.

BLIP3o-NEXT (blip3o_qwen_grpo.py::generate_images / diffusion_decode; shared notes §1):

1. `hf_generate`: HF `generate(do_sample=True)` over the **full vocabulary** with the given temperature / top-k /
   top-p (HF's own logits warpers), no EOS stop (upstream's 729 tokens never hit one). Returns the new ids and the
   log-prob of each under the warped distribution (from `generate`'s processed scores).
2. `second_forward_hidden`: a second full forward over prompt + generated ids with `output_hidden_states=True`;
   the last layer's states from `<S0>` on (upstream: `hidden_states[-1][b, start+1:]` after `<im_start>`).
3. `warped_logprobs`: the same warped distribution recomputed teacher-forced from that forward's logits.
4. `upstream_render`: `diffusion_decode`: `connector(cat([zeros, h]))` (CFG's null condition is zeros *before* the
   connector), `FlowMatchEulerDiscreteScheduler.step` on sigmas `linspace(1, 1/S, S)`, raw scheduler timesteps,
   `v = v_u + g·(v_c − v_u)`, decode `latents / scaling_factor (+ shift)`, `(x/2 + 0.5).clamp(0, 1)`. For an edit
   model (branch BLIP3o-NEXT-edit) the reference latents' tokens follow the AR tokens (zeroed after their connector
   in the null condition) and/or the reference latent is concatenated to the noise along the width.

Used by `nativerl doctor` (rl/doctor.py) and benchmarks/rollout_throughput.py. None of this is used for training.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
from torch import nn

from rollouts.config import SamplingConfig


# ---- timing ----------------------------------------------------------------------------------------------------
def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device, repeats: int = 1) -> tuple[float, object]:
    """(best wall time over `repeats`, the last result)."""
    best, out = float("inf"), None
    for _ in range(repeats):
        sync(device)
        t = time.perf_counter()
        out = fn()
        sync(device)
        best = min(best, time.perf_counter() - t)
    return best, out


def measure(fn: Callable[[], object], device: torch.device, repeats: int = 1) -> tuple[float, float | None, object]:
    """(best seconds, peak GPU memory in GiB during the calls or None on CPU, result)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    seconds, out = timed(fn, device, repeats)
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    return seconds, peak, out


# ---- AR side ---------------------------------------------------------------------------------------------------
def hf_warpers(sampling: SamplingConfig):
    """HF's logits warpers for this sampling, in `generate`'s order (temperature, top-k, top-p)."""
    from transformers.generation.logits_process import (LogitsProcessorList, TemperatureLogitsWarper,
                                                        TopKLogitsWarper, TopPLogitsWarper)

    warpers = LogitsProcessorList()
    if sampling.temperature != 1.0:
        warpers.append(TemperatureLogitsWarper(sampling.temperature))
    if sampling.top_k is not None:
        warpers.append(TopKLogitsWarper(sampling.top_k))
    if sampling.top_p is not None and sampling.top_p < 1.0:
        warpers.append(TopPLogitsWarper(sampling.top_p))
    return warpers


@torch.no_grad()
def hf_generate(lm: nn.Module, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, num_tokens: int,
                sampling: SamplingConfig, pad_token_id: int, seed: int = 0,
                with_logprobs: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
    """→ (new ids [B, N] over the full vocabulary, their log-probs [B, N] under HF's warped distribution, or None
    without `with_logprobs`: HF then keeps no per-step scores, as upstream's rollout)."""
    from transformers import GenerationConfig

    gc = GenerationConfig(do_sample=True, max_new_tokens=num_tokens, temperature=sampling.temperature,
                          top_k=sampling.top_k or 0, top_p=sampling.top_p or 1.0, pad_token_id=pad_token_id,
                          eos_token_id=None, bos_token_id=None, output_scores=with_logprobs,
                          return_dict_in_generate=True)
    devices = [prompt_ids.device] if prompt_ids.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        out = lm.generate(input_ids=prompt_ids, attention_mask=prompt_mask, generation_config=gc)
    new = out.sequences[:, prompt_ids.shape[1]:]
    if new.shape[1] != num_tokens:
        raise RuntimeError(f"HF generate returned {new.shape[1]} tokens, expected {num_tokens}")
    if not with_logprobs:
        return new, None
    # out.scores: one [B, V] of warped logits per step (−inf outside the kept set); gathered step by step.
    logp = torch.stack([s.float().log_softmax(-1).gather(-1, new[:, i:i + 1])[:, 0]
                        for i, s in enumerate(out.scores)], dim=1)
    return new, logp


@torch.no_grad()
def second_forward(lm: nn.Module, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor,
                   new_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Upstream's second full forward → (window hidden states [B, N+1, H], logits at the N token positions)."""
    ids = torch.cat([prompt_ids, new_ids], dim=1)
    mask = torch.cat([prompt_mask, torch.ones_like(new_ids)], dim=1)
    out = lm(input_ids=ids, attention_mask=mask, output_hidden_states=True)
    p, n = prompt_ids.shape[1], new_ids.shape[1]
    return out.hidden_states[-1][:, p - 1:], out.logits[:, p - 1:p - 1 + n]


def second_forward_hidden(lm, prompt_ids, prompt_mask, new_ids) -> torch.Tensor:
    return second_forward(lm, prompt_ids, prompt_mask, new_ids)[0]


def warped_logprobs(logits: torch.Tensor, new_ids: torch.Tensor, sampling: SamplingConfig,
                    input_ids: torch.Tensor | None = None) -> torch.Tensor:
    """Log-probs [B, N] of `new_ids` under HF's warpers applied to teacher-forced logits [B, N, V]."""
    warpers = hf_warpers(sampling)
    b, n, v = logits.shape
    flat = logits.float().reshape(b * n, v)
    dummy = input_ids if input_ids is not None else torch.zeros((b * n, 1), dtype=torch.long, device=flat.device)
    warped = warpers(dummy, flat).reshape(b, n, v)
    return warped.log_softmax(-1).gather(-1, new_ids.unsqueeze(-1)).squeeze(-1)


def upstream_tokens_and_hidden(lm, prompt_ids, prompt_mask, num_tokens, sampling, pad_token_id, seed=0,
                               with_logprobs: bool = True):
    """Upstream's rollout: generate, then the second forward. → (ids, generate's log-probs or None, hidden)."""
    new, logp = hf_generate(lm, prompt_ids, prompt_mask, num_tokens, sampling, pad_token_id, seed, with_logprobs)
    return new, logp, second_forward_hidden(lm, prompt_ids, prompt_mask, new)


# ---- renderer side ---------------------------------------------------------------------------------------------
@torch.no_grad()
def upstream_render(renderer, cond_hidden: torch.Tensor, noise: torch.Tensor, guidance_scale: float,
                    num_inference_steps: int, reference_latents: torch.Tensor | None = None) -> torch.Tensor:
    """upstream's diffusion_decode on one chunk → uint8 [B, H, W, 3]. `renderer` only lends its modules."""
    import numpy as np

    transformer, vae, scheduler = renderer.transformer, renderer.vae, renderer.scheduler
    device, dtype = renderer.device, renderer.dtype
    h = cond_hidden.to(device, dtype)
    cond = renderer.connector(torch.cat([torch.zeros_like(h), h]))  # [null; cond]
    latent_connector = getattr(renderer, "latent_connector", None)
    ref = reference_latents.to(device, dtype) if reference_latents is not None else None
    if latent_connector is not None:
        tokens = latent_connector(ref.flatten(2).transpose(1, 2))
        cond = torch.cat([cond, torch.cat([torch.zeros_like(tokens), tokens])], dim=1)
    concat = bool(getattr(renderer, "concat_noise", False))
    latents = noise.to(device, dtype)
    scheduler.set_timesteps(num_inference_steps,
                            sigmas=np.linspace(1.0, 1 / num_inference_steps, num_inference_steps))
    w = latents.shape[-1]
    for t in scheduler.timesteps:
        x = torch.cat([latents] * 2)
        if concat:
            x = torch.cat([x, torch.cat([ref, ref])], dim=-1)
        pred = transformer(hidden_states=x, encoder_hidden_states=cond,
                           timestep=t.unsqueeze(0).expand(x.shape[0]).to(device), encoder_attention_mask=None).sample
        pred = pred[..., :w]
        uncond, c = pred.chunk(2)
        pred = uncond + guidance_scale * (c - uncond)
        latents = scheduler.step(pred, t, latents).prev_sample
    z = latents / vae.config.scaling_factor
    shift = getattr(vae.config, "shift_factor", None)
    if shift is not None:
        z = z + shift
    x = vae.decode(z.to(next(vae.parameters()).dtype)).sample.float()
    x = (x / 2 + 0.5).clamp(0, 1)
    return (x * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu()
