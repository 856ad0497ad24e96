"""Ray rollout engine: images/s with 1 vs 2 rollout actors, and the engine's overhead against local mode.

Four ways to make the same step's rollouts (same preset, prompts, G, renderer steps; every process and actor uses
one torch thread, so the comparison is actors vs cores, not thread counts):
- local: `LocalRolloutEngine` in this process (the baseline);
- ray 1 actor, 1 shard: the whole step as one shard on one actor: the same work as local plus Ray's cost
  (dispatch, the object store, result transfer) -> the overhead number;
- ray 1 actor, 2 shards / ray 2 actors, 2 shards: the step cut into two halves, run on one actor or on two
  in parallel -> the scaling number (same shards, so only the parallelism differs).
Each number is the median of `--steps` interleaved rounds (each round runs every configuration once, in a rotating
order) after one warm-up step each; actor start-up is excluded. The 1-minute load average is printed (start, after
warm-up, end): the machine may be shared.

CPU:  python benchmarks/ray_scaling.py --preset small
GPU:  python benchmarks/ray_scaling.py --device cuda --preset blip3o-next-3b-shape --worker-gpus 1 --prompts 8 \
          --num-generations 16 --render-steps 30
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

import torch

PROMPTS = ["a red circle", "two blue squares", "a green triangle above a red circle", "a yellow star", "a cup",
           "three green balls", "a photo of a red apple", "a blue bicycle"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="small")
    p.add_argument("--device", default="cpu")
    p.add_argument("--prompts", type=int, default=4, help="prompt groups per step (even)")
    p.add_argument("--num-generations", type=int, default=2)
    p.add_argument("--render-steps", type=int, default=10)
    p.add_argument("--steps", type=int, default=6, help="interleaved rounds (after one warm-up)")
    p.add_argument("--worker-gpus", type=float, default=0.0)
    p.add_argument("--json", default=None)
    args = p.parse_args()
    if args.prompts % 2:
        p.error("--prompts must be even (two equal shards)")
    torch.set_num_threads(1)
    from rl.recipe import RolloutConfig
    from rollouts.config import ModelConfig, RendererConfig, SamplingConfig
    from rollouts.generator import NativeImageGenerator
    from engines.local_engine import LocalRolloutEngine
    from engines.ray_engine import RayRolloutEngine
    from engines.ray_session import connect

    model = ModelConfig(preset=args.preset, device=args.device, seed=0)
    sampling = SamplingConfig(temperature=1.0, top_k=None, top_p=None)
    renderer = RendererConfig(num_inference_steps=args.render_steps)
    rows = [{"prompt": PROMPTS[i % len(PROMPTS)]} for i in range(args.prompts)]
    G = args.num_generations
    images = len(rows) * G
    load = [os.getloadavg()[0]]

    # All engines live at once and the configurations are timed in interleaved rounds, so a change in the load of a
    # shared machine hits all of them alike instead of whichever happened to run last.
    local = LocalRolloutEngine(NativeImageGenerator.from_config(model), sampling, renderer)
    connect(num_cpus=2 if args.device == "cpu" else None, object_store_memory=512 * 2**20, log_to_driver=False)
    cfg = RolloutConfig(engine="ray", num_rollout_workers=1, sampling=sampling, renderer=renderer,
                        worker_num_gpus=args.worker_gpus)
    cpus = 0.5 if args.device == "cpu" else 1  # three actors must fit a 2-CPU Ray instance; cores are shared anyway
    one = RayRolloutEngine(model, cfg, "full", None, groups_per_shard=len(rows), worker_num_cpus=cpus)
    two = RayRolloutEngine(model, cfg.model_copy(update={"num_rollout_workers": 2}), "full", None,
                           groups_per_shard=len(rows) // 2, worker_num_cpus=cpus)

    def ray_step(engine, groups_per_shard):
        def run(seed):
            engine.groups_per_shard = groups_per_shard
            return engine.generate(rows, group_size=G, seed=seed, policy_version=0)
        return run

    configs = {"local": lambda seed: local.generate(rows, group_size=G, seed=seed, policy_version=0),
               "ray 1 actor, 1 shard": ray_step(one, len(rows)),
               "ray 1 actor, 2 shards": ray_step(one, len(rows) // 2),
               "ray 2 actors, 2 shards": ray_step(two, len(rows) // 2)}
    walls: dict[str, list[float]] = {name: [] for name in configs}
    compute: dict[str, list[float]] = {name: [] for name in configs}  # AR + render seconds summed over shards
    for fn in configs.values():
        fn(0)  # warm-up
    load.append(os.getloadavg()[0])
    for step in range(1, args.steps + 1):
        names = list(configs)
        names = names[step % len(names):] + names[:step % len(names)]  # rotate the order each round
        for name in names:
            t = time.perf_counter()
            batch = configs[name](step)
            walls[name].append(time.perf_counter() - t)
            compute[name].append(batch.timings["rollout_ar_s"] + batch.timings["render_s"])
    results = {name: statistics.median(w) for name, w in walls.items()}
    shard_compute = {name: statistics.median(c) for name, c in compute.items()}
    one.shutdown()
    two.shutdown()
    load.append(os.getloadavg()[0])

    machine = torch.cuda.get_device_name(0) if args.device.startswith("cuda") else \
        f"{platform.machine()} CPU, {os.cpu_count()} cores, 1 torch thread per process/actor"
    print(f"\nMachine: {machine}; preset {args.preset}; {len(rows)} prompts x G={G} = {images} images/step; "
          f"{args.render_steps} render steps; median of {args.steps} steps; load average "
          + " / ".join(f"{x:.1f}" for x in load))
    print("| configuration | step wall (s) | images/s | AR + render s, summed over shards |")
    print("|---|---|---|---|")
    for name, wall in results.items():
        print(f"| {name} | {wall:.3f} | {images / wall:.2f} | {shard_compute[name]:.3f} |")
    scaling = results["ray 1 actor, 2 shards"] / results["ray 2 actors, 2 shards"]
    overhead = results["ray 1 actor, 1 shard"] / results["local"] - 1
    print(f"\nscaling 1 -> 2 actors: {scaling:.2f}x (target >= 1.7x); Ray overhead vs local: {100 * overhead:+.1f}% "
          "(target < 10%)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": machine, "args": vars(args), "load_average": load, "step_s": results, "shard_compute_s": shard_compute,
                       "scaling": scaling, "overhead": overhead}, f, indent=1)


if __name__ == "__main__":
    main()
