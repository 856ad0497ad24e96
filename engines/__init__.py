"""Rollout engines: what runs the generator for the driver, in this process (`local_engine`) or on Ray actors
(`ray_engine`, with `rollout_actor`, `shard_plan`, `ray_session`), behind one interface (`protocol.RolloutEngine`).

Engines sit above the generator (`rollouts/`) and the rewards (`rewards/`: the Ray engine's reward actors score
shards while later shards render) and below the driver (`rl/`), which picks one (`rl/train_loop.py: build_engine`).
"""
