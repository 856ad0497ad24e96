"""Image rewards. Never imports `rl/`. One file per reward; `rewards.registry` maps names to them."""
