"""Rollout side: the AR+diffusion generator, its sampler and renderer, prompt sets and rollout workers."""
