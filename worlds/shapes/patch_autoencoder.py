"""The renderer's VAE for the shapes world: a per-cell linear (PCA) autoencoder, fitted in closed form.

BLIP3o-NEXT's renderer diffuses in the latent space of SANA's DC-AE (f32, 32 channels). Training a DC-AE is far
outside a 2-core CPU budget, and this world does not need one: every 16x16 cell is one of a few dozen patches, so
a linear map from a cell's 768 pixels to `latent_channels` numbers, fitted by PCA on rendered scenes, reconstructs
the data manifold almost exactly (`tests/test_shapes_model.py` measures it). It keeps the DC-AE's interface, so the
renderer code is the same for the real model and this one:

- `encode(x)`: images in [-1, 1], [B, 3, 64, 64] -> `EncoderOutput(latent=[B, C, 4, 4])` (unscaled, like DC-AE);
- `decode(z).sample`: [B, C, 4, 4] -> images in [-1, 1];
- `config.scaling_factor` (1 / std of the latents, so scaled latents have unit variance for flow matching),
  `config.latent_channels`, `save_pretrained` / `from_pretrained` (diffusers' ModelMixin + ConfigMixin).

Latent pixel (i, j) is the PCA code of grid cell (i, j): the latent grid is the token grid.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.autoencoders.vae import DecoderOutput, EncoderOutput
from diffusers.models.modeling_utils import ModelMixin


class PatchAutoencoder(ModelMixin, ConfigMixin):
    config_name = "config.json"

    @register_to_config
    def __init__(self, image_size: int = 64, patch_size: int = 16, in_channels: int = 3, latent_channels: int = 32,
                 scaling_factor: float = 1.0, shift_factor: float = 0.0):
        super().__init__()
        if image_size % patch_size:
            raise ValueError(f"image_size {image_size} is not a multiple of patch_size {patch_size}")
        dim = patch_size * patch_size * in_channels
        if latent_channels > dim:
            raise ValueError(f"latent_channels {latent_channels} exceeds the patch dimension {dim}")
        # Fitted by `fit` (PCA); saved with the model. Pixels here are in [-1, 1]. Frozen parameters rather than
        # buffers, so code that reads a VAE's dtype from `next(vae.parameters())` works unchanged.
        self.patch_mean = nn.Parameter(torch.zeros(dim), requires_grad=False)
        self.components = nn.Parameter(torch.zeros(latent_channels, dim), requires_grad=False)  # orthonormal rows

    @property
    def grid(self) -> int:
        return self.config.image_size // self.config.patch_size

    def _to_patches(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        p, g = self.config.patch_size, self.grid
        if (c, h, w) != (self.config.in_channels, self.config.image_size, self.config.image_size):
            raise ValueError(f"PatchAutoencoder expects [B, {self.config.in_channels}, {self.config.image_size}, "
                             f"{self.config.image_size}], got {tuple(x.shape)}")
        # [B, C, g, p, g, p] -> [B, g, g, p, p, C]: the same patch layout as worlds.shapes.world.cell_patches.
        return x.reshape(b, c, g, p, g, p).permute(0, 2, 4, 3, 5, 1).reshape(b, g, g, p * p * c)

    def _from_patches(self, patches: torch.Tensor) -> torch.Tensor:
        b = patches.shape[0]
        p, g, c = self.config.patch_size, self.grid, self.config.in_channels
        return patches.reshape(b, g, g, p, p, c).permute(0, 5, 1, 3, 2, 4).reshape(b, c, g * p, g * p)

    def encode(self, x: torch.Tensor, return_dict: bool = True):
        patches = self._to_patches(x.to(self.components.dtype))
        latent = (patches - self.patch_mean) @ self.components.T  # [B, g, g, C]
        latent = latent.permute(0, 3, 1, 2).contiguous()
        return EncoderOutput(latent=latent) if return_dict else (latent,)

    def decode(self, z: torch.Tensor, return_dict: bool = True):
        patches = z.to(self.components.dtype).permute(0, 2, 3, 1) @ self.components + self.patch_mean
        sample = self._from_patches(patches).clamp(-1.0, 1.0)
        return DecoderOutput(sample=sample) if return_dict else (sample,)

    @classmethod
    def fit(cls, images: np.ndarray, latent_channels: int = 32, patch_size: int = 16) -> PatchAutoencoder:
        """PCA on the cell patches of uint8 images [B, H, W, 3]; sets `scaling_factor` = 1 / std(latents)."""
        x = torch.from_numpy(np.asarray(images)).permute(0, 3, 1, 2).double() / 127.5 - 1.0
        model = cls(image_size=x.shape[-1], patch_size=patch_size, in_channels=x.shape[1],
                    latent_channels=latent_channels)
        patches = model._to_patches(x).reshape(-1, model.patch_mean.numel())
        mean = patches.mean(dim=0)
        # Principal axes = right singular vectors of the centred data (closed form, no training).
        _, _, vh = torch.linalg.svd(patches - mean, full_matrices=False)
        with torch.no_grad():
            model.patch_mean.copy_(mean.float())
            model.components.copy_(vh[:latent_channels].float())
        latents = model.encode(x.float()).latent
        model.register_to_config(scaling_factor=float(1.0 / latents.std()))
        return model
