"""Reward-hacking monitors, logged every step (no peer has these).

A proxy reward can rise while the images degrade (OCR rewards wiping the scene: UniRL#407 measured the dark-pixel
fraction going 0.45 → 0.93 and colour entropy −54%). These statistics make that visible in the curves:
- image statistics of the rollouts: mean brightness, dark-pixel fraction, colour entropy, edge density;
- diversity within a group: mean pairwise distance of images and of token sequences (mode collapse shows as → 0);
- with several rewards, their balance inside groups (`reward_balance`): which reward drives the advantage, and
  whether two rewards pull against each other (peers' pain point: a harder reward stalls while an easier one
  takes over; CLIP / HPS / PickScore conflicts).
"""

from __future__ import annotations

import torch

MONITOR_SIDE = 128  # statistics are taken on images area-downsampled to at most this side: cheap at 1024²


def _downsampled(images: torch.Tensor) -> torch.Tensor:
    """uint8 [B,H,W,3] → float [B,h,w,3] in [0,1], h,w ≤ MONITOR_SIDE (area averaging keeps the colour mass)."""
    x = images.float() / 255.0
    h, w = x.shape[1:3]
    if max(h, w) <= MONITOR_SIDE:
        return x
    size = (max(1, h * MONITOR_SIDE // max(h, w)), max(1, w * MONITOR_SIDE // max(h, w)))
    x = torch.nn.functional.interpolate(x.permute(0, 3, 1, 2), size=size, mode="area")
    return x.permute(0, 2, 3, 1)


def image_statistics(images: torch.Tensor) -> dict[str, float]:
    """images: uint8 [B, H, W, 3]."""
    x = _downsampled(images)
    images = (x * 255).round().to(torch.uint8)
    luma = 0.299 * x[..., 0] + 0.587 * x[..., 1] + 0.114 * x[..., 2]
    # Colour entropy over a 4×4×4 RGB histogram, per image, in bits (max 6).
    q = (images.long() // 64).clamp(max=3)
    codes = q[..., 0] * 16 + q[..., 1] * 4 + q[..., 2]
    entropies = []
    for c in codes.flatten(1):
        p = torch.bincount(c, minlength=64).float()
        p = p[p > 0] / p.sum()
        entropies.append(float(-(p * p.log2()).sum()))
    gx = (luma[:, :, 1:] - luma[:, :, :-1]).abs()
    gy = (luma[:, 1:, :] - luma[:, :-1, :]).abs()
    edges = ((gx[:, :-1, :] + gy[:, :, :-1]) > 0.1).float()
    return {
        "images/brightness": float(luma.mean()),
        "images/dark_frac": float((luma < 0.1).float().mean()),
        "images/colour_entropy": float(sum(entropies) / len(entropies)),
        "images/edge_density": float(edges.mean()),
    }


def group_diversity(images: torch.Tensor, tokens: torch.Tensor, group_ids: torch.Tensor) -> dict[str, float]:
    """Mean pairwise distance within each group: images (RMS pixel difference in [0,1]) and tokens (Hamming
    fraction), averaged over groups."""
    img_d, tok_d = [], []
    flat = _downsampled(images).flatten(1)
    for g in torch.unique(group_ids):
        idx = torch.nonzero(group_ids == g).flatten()
        if len(idx) < 2:
            continue
        a = flat[idx]
        d = torch.cdist(a, a) / a.shape[1] ** 0.5
        t = tokens[idx]
        h = (t[:, None, :] != t[None, :, :]).float().mean(-1)
        off = ~torch.eye(len(idx), dtype=torch.bool)
        img_d.append(float(d[off].mean()))
        tok_d.append(float(h[off].mean()))
    if not img_d:
        return {}
    return {"diversity/image": sum(img_d) / len(img_d), "diversity/tokens": sum(tok_d) / len(tok_d)}


def reward_balance(scores: dict[str, torch.Tensor], weights: dict[str, float],
                   group_ids: torch.Tensor) -> dict[str, float]:
    """Multi-reward steps only (empty for one reward). Within each group of G samples:
    - `reward_share/<k>`: reward k's share of the within-group variance of the weighted terms w_k·r_k, summed
      over groups (Σ_g var_g(w_k r_k) / Σ_g Σ_j var_g(w_j r_j)). The advantage is built from within-group spread,
      so a reward whose share falls towards 0 no longer steers training, whatever its weight says.
    - `reward_corr/<a>~<b>`: mean over groups of the Pearson correlation of r_a and r_b (groups where either is
      constant are skipped). Negative: improving one costs the other inside the same prompt's samples.
    """
    names = sorted(k for k in scores if k in weights)
    if len(names) < 2:
        return {}
    groups = [torch.nonzero(group_ids == g).flatten() for g in torch.unique(group_ids)]
    groups = [idx for idx in groups if len(idx) > 1]
    if not groups:
        return {}
    var = {k: sum(float((weights[k] * scores[k][idx].double()).var(unbiased=False)) for idx in groups) for k in names}
    total = sum(var.values())
    out = {f"reward_share/{k}": (var[k] / total if total > 0 else float("nan")) for k in names}
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            corrs = []
            for idx in groups:
                x, y = scores[a][idx].double(), scores[b][idx].double()
                if x.std() > 0 and y.std() > 0:
                    corrs.append(float(torch.corrcoef(torch.stack([x, y]))[0, 1]))
            if corrs:
                out[f"reward_corr/{a}~{b}"] = sum(corrs) / len(corrs)
    return out
