"""Supervised pre-training (SFT) of the shapes world's generator: AR cross-entropy + renderer flow matching.

BLIP3o-NEXT's pretrain/SFT objective (shared notes blip3o-next.md §1): cross-entropy on the image tokens plus
SANA's flow-matching loss on the conditioning window's hidden states, summed; the condition is dropped 10% of the
time (so the renderer supports CFG). Here, on purpose:

- **Two phases.** Phase 1 (`ar_steps`) trains both losses together. Phase 2 (`renderer_steps` more) trains the
  renderer alone on the frozen AR's hidden states. The AR is deliberately **under-trained** (`ar_steps` small), so
  GRPO has room to improve it, while the renderer is trained until it draws what the tokens say (checked at the end:
  ground-truth tokens -> render -> exact detector).
- **Flow-matching gradient reaches the AR in phase 1** (as upstream; `detach_condition` turns it off).
- **Auxiliary window-readout loss** (`window_readout_weight`, phase 1 only): fixed (frozen, random orthonormal)
  linear readouts must tell, from each conditioning row, which window slot it is and which image code sits there.
  SANA's cross-attention has no positions on the caption side, so the renderer can only put code c in cell k if
  row k of the hidden states says "slot k, code c" loudly. A 1.7B Qwen3 does so implicitly; our 2-layer AR does
  not (measured without it: an MLP probe recovered the slot of 60% of rows; with a slot-only readout the code
  component shrank to norm 0.5 against 11 for the rest; ground-truth tokens rendered correctly ~20% of the time).
  Frozen, so the loss cannot be met by scaling up a head. The readouts are discarded after SFT.
- **High-noise emphasis in flow matching** (`high_sigma_fraction`): half of each batch draws sigma from U(0.7, 1)
  rather than U(0, 1) (`flow_matching_loss`). With uniform sigma (upstream) the renderer sat for 1,500+ steps on
  a plateau where it ignores which cell a code belongs to (x0 error at sigma=1 stuck at 0.32 of a 0.58 variance);
  with the emphasis it left the plateau after ~600 steps and reached 0.003 by 3,000 (measured, same data).
- **Renderer learning rate 3e-3** (1e-3 stayed on the same plateau longer).
- **CE on the image tokens only**, over the image-token slice of the vocabulary: the distribution the sampler
  draws from (`SamplingConfig.restrict_to_image_tokens`).
- **A renderer that tolerates a moving AR** (`renderer_condition_noise`, `renderer_ar_snapshots`,
  `release_ar_step`; off by default). GRPO on the AR body (full weights, LoRA on every projection) moves the hidden
  states the frozen renderer reads (README, drift monitor: LoRA on attention at lr 3e-3 moved them 14-16% in one
  update). Phase 2
  can train the renderer on noisy hidden states and on those of AR snapshots taken along phase 1, and the saved AR
  can be an earlier one than the last, so the renderer already knows the hidden states of better ARs.
  `recipes/shapes_sft_conditioned.yaml` uses the first two.
- **Renderer fully trainable.** Upstream freezes SANA except `caption_projection`; SANA is pre-trained there, our
  tiny one starts random.

Data: prompts of the world's *train* split (tags drawn uniformly), each paired with a random scene that satisfies
it exactly (`worlds.shapes.world.sample_scene`); tokens from the k-means VQ, latents from the PCA VAE. A fixed
data set of `num_examples` pairs is drawn once from `seed`. Every random draw (init, codecs, data, batches,
noise) comes from `seed`; bit-identical reruns additionally need the same torch build and thread count.

Entry points: `run_sft(config, progress=True) -> SFTResult`; `load_sft_config(path)` reads the YAML.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field

from rollouts.conditioning import conditioning_window
from rollouts.config import RendererConfig, SamplingConfig
from rollouts.lm_parts import LogitHead, decoder_of, positions_from_mask, run_decoder


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


class SFTData(_Section):
    split: Literal["train", "heldout"] = Field("train", description="Prompt split the SFT pairs come from. "
                                               "Keep 'train': held-out prompts must stay unseen.")
    num_examples: int = Field(20000, ge=1, description="Size of the fixed (prompt, scene) data set.")
    codec_fit_scenes: int = Field(1000, ge=10, description="Random scenes the VQ (k-means) and the VAE (PCA) are "
                                  "fitted on.")


class SFTEval(_Section):
    images_per_tag: int = Field(48, ge=1, description="Held-out images per GenEval tag for the final report.")
    seed: int = Field(1234, description="Fixed seed of the held-out evaluation.")
    ground_truth_images: int = Field(192, ge=0, description="Scenes whose ground-truth tokens are rendered and "
                                     "read by the detector (renderer check); 0 skips it.")
    sampling: SamplingConfig = Field(default_factory=lambda: SamplingConfig(top_k=None, top_p=None))
    renderer: RendererConfig = Field(default_factory=lambda: RendererConfig(num_inference_steps=8,
                                                                            guidance_scale=1.0))


class SFTConfig(_Section):
    """Pre-training of the shapes world generator (`recipes/shapes_sft.yaml`)."""

    world: Literal["shapes"] = Field("shapes", description="Which embedded world to pre-train.")
    output_dir: str = Field("runs/shapes_sft", description="Run folder: metrics.jsonl, summary.json, checkpoint/.")
    save_to: str | None = Field(None, description="Also copy the final checkpoint here (the committed one is "
                                "worlds/shapes/pretrained).")
    seed: int = Field(0, description="Seeds model init, codec fitting, data and every random draw.")
    data: SFTData = Field(default_factory=SFTData)
    batch_size: int = Field(64, ge=1)
    ar_steps: int = Field(300, ge=0, description="Phase 1: joint CE + flow-matching steps. Small on purpose.")
    renderer_steps: int = Field(3000, ge=0, description="Phase 2: renderer-only steps on the frozen AR.")
    ar_lr: float = Field(1e-3, gt=0)
    renderer_lr: float = Field(3e-3, gt=0, description="1e-3 stays longer on the plateau described above.")
    weight_decay: float = Field(0.0, ge=0)
    warmup_steps: int = Field(50, ge=0, description="Linear warm-up, then cosine to 10% (per phase).")
    grad_clip: float = Field(1.0, gt=0)
    ce_weight: float = Field(1.0, ge=0)
    fm_weight: float = Field(1.0, ge=0)
    condition_drop_prob: float = Field(0.1, ge=0, lt=1, description="BLIP3o-NEXT: 0.1 (enables renderer CFG).")
    window_readout_weight: float = Field(1.0, ge=0, description="Weight of the auxiliary window-readout loss "
                                         "in phase 1 (0 disables); see the module docstring.")
    high_sigma_fraction: float = Field(0.5, ge=0, le=1, description="Fraction of each flow-matching batch with "
                                       "sigma ~ U(high_sigma_min, 1) instead of U(0, 1) (upstream: 0).")
    high_sigma_min: float = Field(0.7, ge=0, lt=1)
    detach_condition: bool = Field(False, description="Stop the flow-matching gradient at the hidden states in "
                                   "phase 1. BLIP3o-NEXT lets it reach the AR (False).")
    renderer_condition_noise: float = Field(0.0, ge=0, description="Phase 2: add Gaussian noise to each "
                                            "conditioning row, std = u * this * the row's RMS with u ~ U(0, 1) "
                                            "per image, so the frozen renderer tolerates an AR that moves (GRPO "
                                            "on the AR body). 0: clean hidden states (the original recipe).")
    renderer_ar_snapshots: int = Field(0, ge=0, description="Phase 2: also condition on the hidden states of "
                                       "this many AR snapshots taken evenly from `release_ar_step` (else the "
                                       "middle of phase 1) to its end (a batch picks one of them or the final "
                                       "AR at random): realistic drift of an AR that is still learning. 0: the "
                                       "final AR only.")
    release_ar_step: int | None = Field(None, ge=1, description="Save the AR as it was after this many phase-1 "
                                        "steps (under-trained, so GRPO has room) with the renderer trained on the "
                                        "hidden states of it and of the later, better ARs (the drift GRPO "
                                        "causes). None: the final AR.")
    log_every: int = Field(25, ge=1)
    num_threads: int = Field(1, ge=1, description="torch CPU threads. 1 is fastest on a shared 2-core machine "
                             "(measured: 2 threads ran 40x slower while other jobs held the cores).")
    eval: SFTEval = Field(default_factory=SFTEval)


def load_sft_config(path: str | Path) -> SFTConfig:
    """The YAML at `path` as an SFTConfig, with the recipes' key checking (errors name the key and the file)."""
    from rl.recipe import load_recipe

    return load_recipe(path, schema=SFTConfig)


@dataclass
class SFTResult:
    checkpoint_dir: Path
    metrics_path: Path
    summary: dict[str, Any] = field(default_factory=dict)


# ---- data ------------------------------------------------------------------------------------------------------
@dataclass
class SFTExamples:
    prompts: list[str]
    tokens: torch.Tensor  # [M, N] long, VQ codes
    latents: torch.Tensor  # [M, C, g, g] scaled clean latents


def make_examples(gen, vq, cfg: SFTConfig) -> SFTExamples:
    from worlds.shapes.model import images_to_latents
    from worlds.shapes.prompts import TAGS, shapes_prompt_rows
    from worlds.shapes.world import render_scene, sample_scene

    rng = np.random.default_rng(cfg.seed + 1)
    rows = shapes_prompt_rows(cfg.data.split)
    by_tag = {t: [r for r in rows if r["tag"] == t] for t in TAGS}
    tags = [t for t in TAGS if by_tag[t]]
    prompts, images = [], []
    for _ in range(cfg.data.num_examples):
        tag_rows = by_tag[tags[int(rng.integers(len(tags)))]]
        row = tag_rows[int(rng.integers(len(tag_rows)))]
        prompts.append(row["prompt"])
        images.append(render_scene(sample_scene(row, rng)))
    stacked = np.stack(images)
    tokens = torch.from_numpy(vq.encode(stacked))
    return SFTExamples(prompts, tokens, images_to_latents(gen, stacked))


# ---- losses ----------------------------------------------------------------------------------------------------
def ar_forward(gen, prompts: list[str], tokens: torch.Tensor, with_grad: bool, lm=None
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """One teacher-forced pass → (CE on the image tokens, conditioning window [B, N+1, H]). `lm`: another AR with
    the generator's architecture (an SFT snapshot) instead of `gen.lm`."""
    lm = gen.lm if lm is None else lm
    prompt_ids, prompt_mask = gen.encode_prompts(prompts)
    n = tokens.shape[1]
    input_ids = torch.cat([prompt_ids, gen.vocab.to_ids(tokens)], dim=1)
    mask = torch.cat([prompt_mask, torch.ones_like(tokens)], dim=1)
    with torch.set_grad_enabled(with_grad):
        hidden = run_decoder(decoder_of(lm), input_ids, mask, positions_from_mask(mask))
        window = hidden[:, conditioning_window(prompt_ids.shape[1], n)]  # <S0> + N image tokens
        # Row j of the window predicts image token j+1 (rollouts/conditioning.py).
        logits = LogitHead(lm, gen.vocab.image_id_range)(window[:, :n])
        ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), tokens.reshape(-1))
    return ce, window


def flow_matching_loss(renderer, cond_hidden: torch.Tensor, clean_latents: torch.Tensor, *,
                       generator: torch.Generator, drop_prob: float, high_sigma_fraction: float,
                       high_sigma_min: float) -> torch.Tensor:
    """`Renderer.training_loss` (x_s = (1-s) x + s eps, target eps - x, MSE, condition zeroed with `drop_prob`)
    with one change: a `high_sigma_fraction` of rows draw s from U(high_sigma_min, 1) instead of U(0, 1).
    Near s = 1 the noisy latent says nothing about the image, so only there must the renderer route each cell to
    its own conditioning row; with uniform s alone it stayed on that plateau (module docstring)."""
    b = clean_latents.shape[0]
    keep = (torch.rand(b, generator=generator) >= drop_prob).to(cond_hidden.dtype)
    u = torch.rand(b, generator=generator)
    high = torch.rand(b, generator=generator) < high_sigma_fraction
    sigma = torch.where(high, high_sigma_min + (1 - high_sigma_min) * u, u)
    noise = torch.randn(clean_latents.shape, generator=generator)
    x = clean_latents.float()
    s = sigma[:, None, None, None]
    num_train = float(renderer.scheduler.config.num_train_timesteps)
    pred = renderer.velocity((1 - s) * x + s * noise, renderer.encoder_states(cond_hidden * keep[:, None, None]),
                             sigma * num_train)
    return F.mse_loss(pred, noise - x)


def perturb_condition(window: torch.Tensor, scale: float, generator: torch.Generator) -> torch.Tensor:
    """Gaussian noise on each conditioning row, std = u * scale * RMS(row), u ~ U(0, 1) per image (so the renderer
    sees clean and perturbed states alike). Stands in for the drift an RL update of the AR body causes."""
    if scale <= 0:
        return window
    rms = window.pow(2).mean(-1, keepdim=True).sqrt()
    u = torch.rand(window.shape[0], 1, 1, generator=generator)
    return window + u * scale * rms * torch.randn(window.shape, generator=generator)


def window_readout(hidden_size: int, n_window: int, num_codes: int, seed: int) -> torch.Tensor:
    """The frozen readouts of the auxiliary loss (module docstring): [N+1+K, H], orthonormal rows drawn from
    `seed`, the first N+1 for the window slots, the next K for the image codes. Same `seed` → same readouts, so a
    later stage (editing SFT) can hold a trained AR to the very directions its renderer learned to read."""
    basis = torch.linalg.qr(torch.randn(hidden_size, n_window + num_codes,
                                        generator=torch.Generator().manual_seed(seed)))[0]
    return basis.T.contiguous()


def window_readout_loss(window: torch.Tensor, tokens: torch.Tensor, readout: torch.Tensor) -> torch.Tensor:
    """CE of the frozen readouts: each window row [B, N+1, H] must say its slot, rows 1..N also their code."""
    n_window = window.shape[1]
    logits = window @ readout.T  # [B, N+1, N+1+K]
    slot_loss = F.cross_entropy(logits[..., :n_window].reshape(-1, n_window),
                                torch.arange(n_window, device=window.device).repeat(logits.shape[0]))
    code_loss = F.cross_entropy(logits[:, 1:, n_window:].reshape(-1, logits.shape[-1] - n_window),
                                tokens.reshape(-1))  # row j >= 1 holds image token j
    return slot_loss + code_loss


def _lr_factor(step: int, total: int, warmup: int) -> float:
    if warmup and step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


# ---- the loop --------------------------------------------------------------------------------------------------
def run_sft(config: SFTConfig, *, progress: bool = True) -> SFTResult:
    """Fit the codecs, build the generator, train (phase 1 joint, phase 2 renderer only), evaluate, save."""
    from tqdm.auto import tqdm

    from worlds.shapes.evaluate import evaluate_ground_truth_rendering, evaluate_heldout
    from worlds.shapes.model import build_shapes_generator, save_shapes_model

    torch.set_num_threads(config.num_threads)
    torch.manual_seed(config.seed)
    out = Path(config.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "sft_config.json").write_text(config.model_dump_json(indent=2))
    metrics_path = out / "metrics.jsonl"
    metrics_file = metrics_path.open("w")
    t_start = time.perf_counter()

    def log(record: dict[str, Any]) -> None:
        record["elapsed_s"] = round(time.perf_counter() - t_start, 2)
        metrics_file.write(json.dumps(record) + "\n")
        metrics_file.flush()

    gen, vq = build_shapes_generator(config.seed, vq_fit_scenes=config.data.codec_fit_scenes,
                                     vae_fit_scenes=config.data.codec_fit_scenes)
    examples = make_examples(gen, vq, config)
    log({"event": "data", "examples": len(examples.prompts), "setup_s": round(time.perf_counter() - t_start, 2)})

    renderer = gen.renderer
    renderer_params = [p for name, p in renderer.named_parameters() if not name.startswith("vae.")]
    for p in renderer_params:
        p.requires_grad_(True)
    renderer.train()
    n_window = gen.tokens_per_image + 1
    readout = None
    ar_params = list(gen.lm.parameters())
    if config.window_readout_weight > 0:
        # Training-only, *frozen* readouts (discarded after SFT): fixed orthonormal directions, one per window slot
        # and one per image code. Frozen so that the loss cannot be met by scaling a head up: the hidden states
        # themselves must carry large "which slot" and "which code" components, what the renderer needs.
        readout = window_readout(gen.lm.config.hidden_size, n_window, gen.vocab.num_image_tokens, config.seed)
    ar_opt = torch.optim.AdamW(ar_params, lr=config.ar_lr, weight_decay=config.weight_decay)
    r_opt = torch.optim.AdamW(renderer_params, lr=config.renderer_lr, weight_decay=config.weight_decay)
    data_rng = torch.Generator().manual_seed(config.seed + 2)
    noise_rng = torch.Generator().manual_seed(config.seed + 3)
    m = len(examples.prompts)
    total = config.ar_steps + config.renderer_steps
    snapshots: list[torch.nn.Module] = []  # frozen copies of the AR along phase 1 (renderer_ar_snapshots)
    if config.release_ar_step is not None and config.release_ar_step >= config.ar_steps:
        raise ValueError(f"release_ar_step {config.release_ar_step} must be below ar_steps {config.ar_steps}")
    first = config.release_ar_step or config.ar_steps // 2
    snap_at = {first + (k * (config.ar_steps - first)) // config.renderer_ar_snapshots
               for k in range(config.renderer_ar_snapshots)} if config.renderer_ar_snapshots else set()
    released = None  # the AR state saved instead of the final one (release_ar_step)
    bar = tqdm(total=total, desc="shapes SFT", disable=not progress, mininterval=2.0)
    for step in range(total):
        joint = step < config.ar_steps
        phase_step, phase_total = (step, config.ar_steps) if joint else (step - config.ar_steps,
                                                                          config.renderer_steps)
        factor = _lr_factor(phase_step, phase_total, config.warmup_steps)
        idx = torch.randint(m, (config.batch_size,), generator=data_rng)
        prompts = [examples.prompts[int(i)] for i in idx]
        tokens, latents = examples.tokens[idx], examples.latents[idx]
        pos_loss = torch.zeros(())
        if joint and step in snap_at:
            import copy

            snapshots.append(copy.deepcopy(gen.lm).eval().requires_grad_(False))
        if joint and step == config.release_ar_step:  # state after `release_ar_step` updates
            released = {k: v.detach().clone() for k, v in gen.lm.state_dict().items()}
        if joint:
            gen.lm.train()
            ce, window = ar_forward(gen, prompts, tokens, with_grad=True)
            if readout is not None:
                pos_loss = window_readout_loss(window, tokens, readout)
        else:
            gen.lm.eval()
            pick = int(torch.randint(len(snapshots) + 1, (1,), generator=noise_rng)) if snapshots else 0
            ce, window = ar_forward(gen, prompts, tokens, with_grad=False,
                                    lm=snapshots[pick - 1] if pick else None)
            window = perturb_condition(window, config.renderer_condition_noise, noise_rng)
        condition = window.detach() if (config.detach_condition or not joint) else window
        fm = flow_matching_loss(renderer, condition, latents, generator=noise_rng,
                                drop_prob=config.condition_drop_prob, high_sigma_fraction=config.high_sigma_fraction,
                                high_sigma_min=config.high_sigma_min)
        loss = config.fm_weight * fm
        if joint:
            loss = loss + config.ce_weight * ce + config.window_readout_weight * pos_loss
        ar_opt.zero_grad(set_to_none=True)
        r_opt.zero_grad(set_to_none=True)
        loss.backward()
        for group in r_opt.param_groups:
            group["lr"] = config.renderer_lr * factor
        torch.nn.utils.clip_grad_norm_(renderer_params, config.grad_clip)
        r_opt.step()
        if joint:
            for group in ar_opt.param_groups:
                group["lr"] = config.ar_lr * factor
            torch.nn.utils.clip_grad_norm_(ar_params, config.grad_clip)
            ar_opt.step()
        if step % config.log_every == 0 or step == total - 1:
            log({"step": step, "phase": "joint" if joint else "renderer", "ce": round(float(ce.detach()), 4),
                 "fm": round(float(fm.detach()), 4), "readout_loss": round(float(pos_loss.detach()), 4),
                 "lr_factor": round(factor, 4)})
            bar.set_postfix(ce=f"{float(ce.detach()):.3f}", fm=f"{float(fm.detach()):.3f}",
                            phase="joint" if joint else "renderer")
        bar.update(1)
    bar.close()
    train_s = time.perf_counter() - t_start

    gen.lm.eval()
    if released is not None:
        gen.lm.load_state_dict(released)
    renderer.requires_grad_(False)
    renderer.eval()
    summary: dict[str, Any] = {"train_wall_s": round(train_s, 1), "ar_steps": config.ar_steps,
                               "released_ar_step": config.release_ar_step or config.ar_steps,
                               "renderer_steps": config.renderer_steps, "threads": config.num_threads}
    if config.eval.ground_truth_images:
        summary["renderer_on_ground_truth"] = evaluate_ground_truth_rendering(
            gen, vq, num_images=config.eval.ground_truth_images, seed=config.eval.seed,
            renderer_cfg=config.eval.renderer)
    summary["heldout"] = evaluate_heldout(gen, images_per_tag=config.eval.images_per_tag, seed=config.eval.seed,
                                          sampling=config.eval.sampling, renderer_cfg=config.eval.renderer).summary()
    summary["total_wall_s"] = round(time.perf_counter() - t_start, 1)
    log({"event": "summary", **summary})
    metrics_file.close()

    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    ckpt = out / "checkpoint"
    save_shapes_model(gen, vq, ckpt)
    if config.save_to:
        target = Path(config.save_to)
        if target.exists():
            shutil.rmtree(target)
        shutil.copytree(ckpt, target)
        (target / "sft_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return SFTResult(checkpoint_dir=ckpt, metrics_path=metrics_path, summary=summary)


def run_recipe(config: SFTConfig, progress: bool = True) -> Path:
    """`nativerl train` on a `kind: sft` recipe (the world's RecipeKind): train, return the checkpoint folder."""
    return run_sft(config, progress=progress).checkpoint_dir
