"""The frozen renderer: connector → SanaTransformer2DModel → flow-matching Euler with CFG → VAE → pixels.

BLIP3o-NEXT (blip3o_qwen_inference.py::generate_images): the unconditional branch is `connector(zeros)` (zeros
*before* the connector), `v = v_u + g·(v_c − v_u)`, g = 2.0, 30 Euler steps on sigmas `linspace(1, 1/30, 30)`
(passed through the scheduler, which applies its configured shift), decode `latents / scaling_factor`.
Differences, on purpose: cond and uncond run in one batched forward; noise comes from an explicit per-sample seed
(CPU generator, so it is identical on any device); latents are integrated in float32; images are rendered and
decoded `decode_chunk_size` at a time to bound memory.

The VAE is pluggable: anything with `encode(x)` (returning `.latent` or `.latent_dist`), `decode(z).sample`,
`config.scaling_factor` and a spatial compression (`spatial_compression_ratio` attribute, or `config.patch_size`)
works: AutoencoderDC for SANA, `worlds.shapes.patch_autoencoder.PatchAutoencoder` for the shapes world.
Latent size and channels come from the transformer (`sample_size`, `in_channels`) and VAE configs.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from rollouts.config import RendererConfig


def vae_spatial_compression(vae: nn.Module) -> int:
    ratio = getattr(vae, "spatial_compression_ratio", None)
    if ratio is None:
        ratio = getattr(vae.config, "spatial_compression_ratio", None) or getattr(vae.config, "patch_size", None)
    if ratio is None:
        raise TypeError(f"{type(vae).__name__} must expose spatial_compression_ratio or config.patch_size")
    return int(ratio)


def seeded_noise(seeds: Sequence[int], shape: tuple[int, ...]) -> torch.Tensor:
    """[B, *shape] float32 standard normal; row i depends only on seeds[i] (CPU generator: device independent)."""
    rows = []
    for s in seeds:
        g = torch.Generator(device="cpu").manual_seed(int(s))
        rows.append(torch.randn(shape, generator=g, dtype=torch.float32))
    return torch.stack(rows)


class Renderer(nn.Module):
    """Frozen by default (`requires_grad_(False)`); SFT may unfreeze the connector and `caption_projection`."""

    def __init__(self, connector: nn.Module, transformer: nn.Module, vae: nn.Module, scheduler):
        super().__init__()
        self.connector = connector
        self.transformer = transformer
        self.vae = vae
        self.scheduler = scheduler  # a diffusers FlowMatchEulerDiscreteScheduler (config + sigma schedule)

    # ---- shapes ------------------------------------------------------------------------------------------
    @property
    def latent_channels(self) -> int:
        return int(self.transformer.config.in_channels)

    @property
    def native_latent_size(self) -> int:
        return int(self.transformer.config.sample_size)

    @property
    def native_resolution(self) -> int:
        return self.native_latent_size * vae_spatial_compression(self.vae)

    def latent_size(self, resolution: int | None) -> int:
        if resolution is None:
            return self.native_latent_size
        f = vae_spatial_compression(self.vae)
        if resolution % f:
            raise ValueError(f"resolution {resolution} is not a multiple of the VAE compression {f}")
        return resolution // f

    @property
    def dtype(self) -> torch.dtype:
        return next(self.transformer.parameters()).dtype

    @property
    def device(self) -> torch.device:
        return next(self.transformer.parameters()).device

    # ---- pieces --------------------------------------------------------------------------------------------
    def encoder_states(self, cond_hidden: torch.Tensor) -> torch.Tensor:
        """LM hidden states [B, N+1, H] → SANA cross-attention states [B, N+1, caption_width]."""
        return self.connector(cond_hidden.to(self.dtype))

    def velocity(self, latents: torch.Tensor, encoder_states: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
        t = timestep.expand(latents.shape[0]) * getattr(self.transformer.config, "timestep_scale", 1.0)
        out = self.transformer(latents.to(self.dtype), encoder_hidden_states=encoder_states, timestep=t,
                               return_dict=False)[0]
        return out.float()

    def guided_velocity(self, latents: torch.Tensor, cond: torch.Tensor, uncond: torch.Tensor | None,
                        timestep: torch.Tensor, guidance_scale: float) -> torch.Tensor:
        """CFG with cond and uncond in one batched forward (uncond=None: no guidance)."""
        if uncond is None:
            return self.velocity(latents, cond, timestep)
        v_u, v_c = self.velocity(torch.cat([latents, latents]), torch.cat([uncond, cond]), timestep).chunk(2)
        return v_u + guidance_scale * (v_c - v_u)

    def sigmas_and_timesteps(self, steps: int) -> tuple[torch.Tensor, torch.Tensor]:
        """σ_0..σ_S (σ_S = 0) and the model timesteps, as upstream: set_timesteps(sigmas=linspace(1, 1/S, S))."""
        self.scheduler.set_timesteps(sigmas=np.linspace(1.0, 1.0 / steps, steps).tolist())
        return self.scheduler.sigmas.float().clone(), self.scheduler.timesteps.float().clone()

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents → uint8 [B, H, W, 3]."""
        cfg = self.vae.config
        z = latents / cfg.scaling_factor
        shift = getattr(cfg, "shift_factor", None)
        if shift is not None:
            z = z + shift
        vae_dtype = next(self.vae.parameters()).dtype
        x = self.vae.decode(z.to(vae_dtype)).sample.float()
        return ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu()

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 [B, H, W, 3] (or float [B, 3, H, W] in [−1, 1]) → scaled clean latents for `training_loss`."""
        if images.dtype == torch.uint8:
            images = images.permute(0, 3, 1, 2).float() / 127.5 - 1
        vae_dtype = next(self.vae.parameters()).dtype
        enc = self.vae.encode(images.to(self.device, vae_dtype))
        z = enc.latent if hasattr(enc, "latent") else enc.latent_dist.sample()
        shift = getattr(self.vae.config, "shift_factor", None)
        if shift is not None:
            z = z - shift
        return z.float() * self.vae.config.scaling_factor

    # ---- sampling and training -----------------------------------------------------------------------------
    @torch.no_grad()
    def sample_latents(self, cond_hidden: torch.Tensor, noise: torch.Tensor, cfg: RendererConfig) -> torch.Tensor:
        """Euler flow-matching from `noise` (σ=1) to σ=0: x ← x + (σ_{i+1} − σ_i)·v."""
        cond = self.encoder_states(cond_hidden)
        guided = cfg.guidance_scale != 1.0
        uncond = self.encoder_states(torch.zeros_like(cond_hidden)) if guided else None
        sigmas, timesteps = self.sigmas_and_timesteps(cfg.num_inference_steps)
        x = noise.to(self.device, torch.float32)
        for i, t in enumerate(timesteps):
            v = self.guided_velocity(x, cond, uncond, t.to(self.device), cfg.guidance_scale)
            x = x + (sigmas[i + 1] - sigmas[i]).item() * v
        return x

    def training_loss(self, cond_hidden: torch.Tensor, clean_latents: torch.Tensor,
                      generator: torch.Generator | None = None, drop_prob: float = 0.1) -> torch.Tensor:
        """Flow-matching loss for SFT (BLIP3o-NEXT / SANA): σ ~ U(0, 1) (uniform weighting),
        x_σ = (1 − σ)·x + σ·ε, target ε − x, MSE. Each row's condition is dropped with `drop_prob` (hidden states
        zeroed *before* the connector, as upstream), which is what makes renderer CFG work.
        Random draws use `generator` (CPU) so the loss is reproducible."""
        b = clean_latents.shape[0]
        device = clean_latents.device
        keep = (torch.rand(b, generator=generator) >= drop_prob).to(device)
        sigma = torch.rand(b, generator=generator).to(device)
        noise = torch.randn(clean_latents.shape, generator=generator).to(device)
        hidden = cond_hidden * keep.to(cond_hidden.dtype)[:, None, None]
        x = clean_latents.float()
        s = sigma[:, None, None, None]
        noisy = (1 - s) * x + s * noise
        num_train = float(self.scheduler.config.num_train_timesteps)
        pred = self.velocity(noisy, self.encoder_states(hidden), sigma * num_train)
        return F.mse_loss(pred, noise - x)


@torch.no_grad()
def render_images(renderer: Renderer, cond_hidden: torch.Tensor, seeds: Sequence[int] | torch.Tensor,
                  cfg: RendererConfig) -> torch.Tensor:
    """Conditioning hidden states [B, N+1, H] + one noise seed per row → uint8 images [B, H, W, 3] (CPU).

    Deterministic given the seeds; rows with equal seeds get identical noise (common random numbers)."""
    seeds = [int(s) for s in (seeds.tolist() if isinstance(seeds, torch.Tensor) else seeds)]
    if len(seeds) != cond_hidden.shape[0]:
        raise ValueError(f"render_images got {len(seeds)} seeds for {cond_hidden.shape[0]} rows")
    size = renderer.latent_size(cfg.resolution)
    out = []
    for s in range(0, len(seeds), cfg.decode_chunk_size):
        chunk_seeds = seeds[s:s + cfg.decode_chunk_size]
        noise = seeded_noise(chunk_seeds, (renderer.latent_channels, size, size))
        latents = renderer.sample_latents(cond_hidden[s:s + len(chunk_seeds)].to(renderer.device), noise, cfg)
        out.append(renderer.decode(latents))
    return torch.cat(out)
