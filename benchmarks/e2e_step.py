"""Where the time of one GRPO step goes: rollout AR (image-token sampling), render (diffusion + VAE), reward,
update (μ × minibatch forward/backward/step), sync (publishing the new weights to the rollout side).

It runs the real driver (`rl/train_loop.py::GRPOTrainer.step`) on a randomly initialised preset and reads the
step's own timing metrics; the first step is a warm-up and is not reported. Times are medians over the steps.

CPU:  python benchmarks/e2e_step.py --preset tiny small
      python benchmarks/e2e_step.py --preset tiny --engine ray
GPU:  python benchmarks/e2e_step.py --device cuda --preset blip3o-next-3b-shape --prompts-per-step 1 \
          --num-generations 16 --render-steps 30 --policy lora
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time

import torch

KEYS = [("rollout AR", "timing/rollout_ar_s"), ("render", "timing/render_s"), ("reward", "timing/reward_s"),
        ("update", "timing/update_s"), ("sync", "timing/sync_s")]


def make_recipe(args: argparse.Namespace, preset: str):
    from rl.recipe import Recipe

    return Recipe.model_validate({
        "name": f"e2e-{preset}", "seed": 0,
        "model": {"source": "preset", "preset": preset, "device": args.device},
        "rollout": {"prompts": {"format": "inline", "prompts": ["a red circle", "two blue squares",
                                                                "a green triangle above a red circle",
                                                                "a yellow star", "a cup", "three green balls"]},
                    "prompts_per_step": args.prompts_per_step,
                    "sampling": {"temperature": 1.0, "top_k": None, "top_p": None},
                    "renderer": {"num_inference_steps": args.render_steps, "guidance_scale": 2.0},
                    "engine": args.engine, "num_rollout_workers": args.workers},
        "rewards": [{"name": args.reward}],
        "trainer": {"num_generations": args.num_generations, "max_steps": args.steps + 1, "policy": args.policy,
                    "lora": {"r": 16, "lora_alpha": 32}, "learning_rate": 1e-5, "micro_batch_size": 8},
        "logging": {"sample_every": 0, "tensorboard": False},
        "checkpoint": {"every": 0},
    })


def measure(args: argparse.Namespace, preset: str) -> dict:
    from rl.train_loop import GRPOTrainer

    recipe = make_recipe(args, preset)
    with tempfile.TemporaryDirectory() as run_dir:
        t0 = time.perf_counter()
        trainer = GRPOTrainer(recipe, run_dir, progress=False)
        setup_s = time.perf_counter() - t0
        rows, walls = [], []
        try:
            for step in range(1, args.steps + 2):
                t = time.perf_counter()
                m = trainer.step(step)
                trainer.state.step = step
                if step > 1:  # step 1 warms up allocators, kernels and (Ray) actor imports
                    walls.append(time.perf_counter() - t)
                    rows.append(m)
        finally:
            trainer.engine.shutdown()
            trainer.metrics.close()
    out = {"preset": preset, "engine": args.engine, "device": args.device, "setup_s": setup_s,
           "images_per_step": args.prompts_per_step * args.num_generations, "steps": len(rows),
           "step_s": statistics.median(walls)}
    for label, key in KEYS:
        out[label] = statistics.median(float(r.get(key, 0.0)) for r in rows)
    out["rollout (wall)"] = statistics.median(float(r["timing/rollout_s"]) for r in rows)
    out["other"] = out["step_s"] - sum(out[k] for k, _ in KEYS)  # prompt encoding, advantages, logging, ...
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", nargs="+", default=["tiny", "small"])
    p.add_argument("--device", default="cpu")
    p.add_argument("--engine", choices=["local", "ray"], default="local")
    p.add_argument("--workers", type=int, default=1, help="Ray rollout actors (engine=ray)")
    p.add_argument("--prompts-per-step", type=int, default=2)
    p.add_argument("--num-generations", type=int, default=4)
    p.add_argument("--render-steps", type=int, default=10)
    p.add_argument("--policy", choices=["lora", "full"], default="lora")
    p.add_argument("--reward", default="jpeg_compressibility")
    p.add_argument("--steps", type=int, default=3, help="measured steps (after one warm-up step)")
    p.add_argument("--threads", type=int, default=1, help="torch threads in this process")
    p.add_argument("--json", default=None, help="also write the results here")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    if args.engine == "ray":
        from engines.ray_session import connect

        connect(num_cpus=2 if args.device == "cpu" else None, object_store_memory=512 * 2**20,
                log_to_driver=False)
    machine = f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch thread(s)"
    if args.device.startswith("cuda"):
        machine = torch.cuda.get_device_name(0)
    results = [measure(args, preset) for preset in args.preset]
    cols = ["rollout AR", "render", "reward", "update", "sync", "other", "step_s"]
    print(f"\nMachine: {machine}; engine={args.engine}; {args.prompts_per_step} prompts x G={args.num_generations}; "
          f"{args.render_steps} render steps; policy={args.policy}; reward={args.reward}; median of {args.steps} "
          "steps after 1 warm-up")
    print("| preset | images/step | " + " | ".join(c if c != "step_s" else "step (wall)" for c in cols) + " |")
    print("|---|---|" + "---|" * len(cols))
    for r in results:
        cells = " | ".join(f"{r[c]:.3f} s ({100 * r[c] / r['step_s']:.0f}%)" if c != "step_s" else f"{r[c]:.3f} s"
                           for c in cols)
        print(f"| {r['preset']} | {r['images_per_step']} | {cells} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": machine, "args": vars(args), "results": results}, f, indent=1)


if __name__ == "__main__":
    main()
