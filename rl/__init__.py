"""Training side: recipes, the GRPO math (`rl.grpo`), the driver loop, checkpoints and logging."""
